"""Image loading: every common pixel layout becomes (H, W, 3) uint8 RGB; bad files fail with one sentence."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.data.images import list_images, load_image, load_image_with_info, read_image_size, to_rgb8
from detector.structures import DetectorError


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def test_colour_png_comes_back_rgb_not_bgr(tmp_path):
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # red in OpenCV's BGR order
    bgr[2, 4] = (255, 0, 0)  # blue
    image, converted = load_image_with_info(_write(tmp_path / "colour.png", bgr))
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[2, 4].tolist() == [0, 0, 255]
    assert not converted


def test_grayscale_png_is_replicated_to_three_channels(tmp_path):
    gray = np.array([[0, 77], [200, 255]], np.uint8)
    image, converted = load_image_with_info(_write(tmp_path / "gray.png", gray))
    assert image.shape == (2, 2, 3)
    assert image[..., 0].tolist() == [[0, 77], [200, 255]]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert converted


def test_rgba_png_is_composited_on_black(tmp_path):
    bgra = np.zeros((1, 3, 4), np.uint8)
    bgra[0, 0] = (0, 0, 200, 255)  # opaque red: unchanged
    bgra[0, 1] = (50, 60, 70, 0)  # fully transparent: its colour must not leak
    bgra[0, 2] = (0, 200, 0, 128)  # half transparent green: 200 * 128 / 255 = 100.4 -> 100
    image, converted = load_image_with_info(_write(tmp_path / "rgba.png", bgra))
    assert image.shape == (1, 3, 3)
    assert image[0].tolist() == [[200, 0, 0], [0, 0, 0], [0, 100, 0]]
    assert converted


@pytest.mark.parametrize(
    "value16, value8",
    [(0, 0), (128, 0), (129, 1), (257 * 100, 100), (65535, 255)],  # 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1
)
def test_16bit_grayscale_png_is_scaled_by_1_over_257(tmp_path, value16, value8):
    image, converted = load_image_with_info(_write(tmp_path / "deep.png", np.full((2, 2), value16, np.uint16)))
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert (image == value8).all()
    assert converted


def test_16bit_colour_png_keeps_channel_order(tmp_path):
    bgr16 = np.zeros((1, 1, 3), np.uint16)
    bgr16[0, 0] = (0, 257 * 10, 65535)  # B, G, R
    assert load_image(_write(tmp_path / "deep_colour.png", bgr16))[0, 0].tolist() == [255, 10, 0]


def test_float_array_in_unit_range_is_scaled_to_255():
    image, converted = to_rgb8(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32))
    assert image[0, :, 0].tolist() == [0, 128, 255, 255]  # 0.5 * 255 = 127.5 -> 128; 2.0 clipped to 1
    assert converted


def test_two_channel_array_is_rejected_with_its_shape():
    with pytest.raises(DetectorError, match=r"shape \(2, 2, 2\)"):
        to_rgb8(np.zeros((2, 2, 2), np.uint8), "odd.tif")


def test_path_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "dossier été"
    folder.mkdir()
    path = folder / "bild ü 1.png"
    path.write_bytes(cv2.imencode(".png", np.full((4, 6, 3), 9, np.uint8))[1].tobytes())
    assert load_image(path).shape == (4, 6, 3)
    assert read_image_size(path) == (6, 4)


def test_missing_image_names_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DetectorError, match="image file not found: .*nope.jpg"):
        load_image(missing)
    with pytest.raises(DetectorError, match="image file not found: .*nope.jpg"):
        read_image_size(missing)


def _jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", np.full((30, 40, 3), 128, np.uint8))[1].tobytes()


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a jpeg at all" * 10, _jpeg_bytes()[:200], _jpeg_bytes()[: len(_jpeg_bytes()) // 2]],
    ids=["empty", "text", "header-only", "half"],
)
def test_corrupt_jpeg_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(DetectorError, match=r"cannot decode image .*broken.jpg \(corrupt or not an image\)"):
        load_image(path)


def test_unreadable_header_is_a_clear_error(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello")
    with pytest.raises(DetectorError, match=r"cannot decode image .*text.png"):
        read_image_size(path)


def test_read_image_size_is_width_then_height(tmp_path):
    path = tmp_path / "wide.jpg"
    path.write_bytes(_jpeg_bytes())  # encoded from a (30, 40, 3) array: 40 wide, 30 high
    assert read_image_size(path) == (40, 30)
    assert load_image(path).shape == (30, 40, 3)


def test_list_images_matches_extensions_case_insensitively(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "d.jpeg"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.png",
        "b.JPG",
        "d.jpeg",
        "sub/e.png",
    ]


def test_truncated_jpeg_is_skipped_and_reported_by_the_reader(tmp_path):
    """A JPEG with a valid header and missing data passed the header check and failed mid-epoch."""
    from detector.data.images import check_image_file
    from detector.data.readers import read_dataset

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("good", "cut"):
        assert cv2.imwrite(str(root / "images" / f"{name}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = (root / "images" / "cut.jpg").read_bytes()
    (root / "images" / "cut.jpg").write_bytes(data[: len(data) // 3])
    assert read_image_size(root / "images" / "cut.jpg") == (64, 64)  # the header alone looks fine
    assert check_image_file(root / "images" / "cut.jpg") == "truncated"
    assert check_image_file(root / "images" / "good.jpg") is None
    (root / "images" / "extra.jpg").write_bytes((root / "images" / "good.jpg").read_bytes() + b"camera trailer")
    assert check_image_file(root / "images" / "extra.jpg") is None  # data after the end marker is harmless
    dataset = read_dataset(root, "yolo")
    assert sorted(r.image_path.name for r in dataset.records) == ["extra.jpg", "good.jpg"]
    assert dataset.report.unreadable_images == ["cut.jpg (truncated)"]


def test_decompression_bomb_is_one_sentence(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    assert cv2.imwrite(str(path), np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 10000 pixels > 2x the limit: PIL refuses
    with pytest.raises(DetectorError, match=r"image .*big.png is too large to decode safely"):
        read_image_size(path)
