"""Tests for detector/proposals.py (FileProposals, selective search) and detector/data/proposals_file.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector import proposals as proposals_module
from detector.data.images import load_image
from detector.data.proposals_file import proposals_for_record, read_proposals_file, write_proposals_file
from detector.proposals import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileProposals,
    SelectiveSearchProposals,
    compute_proposals,
    selective_search,
)
from detector.structures import Dataset, DetectorError, ImageBatch, ImageRecord

MEAN = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)


def write_json(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "props.json"
    path.write_text(content, encoding="utf-8")
    return path


def normalized_batch(images_rgb: list[np.ndarray], stride: int = 32) -> ImageBatch:
    """uint8 (H, W, 3) RGB images -> an ImageBatch normalized with ImageNet statistics and zero-padded to `stride`."""
    height = max(image.shape[0] for image in images_rgb)
    width = max(image.shape[1] for image in images_rgb)
    padded = (-(-height // stride) * stride, -(-width // stride) * stride)
    images = torch.zeros(len(images_rgb), 3, *padded)
    for i, image in enumerate(images_rgb):
        # (H, W, 3) uint8 -> (3, H, W) float in [0, 1]
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        images[i, :, : image.shape[0], : image.shape[1]] = (tensor - MEAN) / STD
    sizes = [image.shape[:2] for image in images_rgb]
    return ImageBatch(images, sizes, sizes)


# ---------------------------------------------------------------------------------------------------------------
# read_proposals_file: happy paths


def test_read_list_form(tmp_path):
    path = write_json(tmp_path, '{"000012.jpeg": [[1, 2, 30, 40], [5.5, 6, 7, 8]], "13": []}')
    proposals = read_proposals_file(path)
    assert list(proposals) == ["000012.jpeg", "13"]
    np.testing.assert_array_equal(proposals["000012.jpeg"], [[1, 2, 30, 40], [5.5, 6, 7, 8]])
    assert proposals["000012.jpeg"].dtype == np.float32
    assert proposals["13"].shape == (0, 4)


def test_read_object_form_sorts_by_descending_score(tmp_path):
    content = {"a.png": {"boxes": [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], "scores": [0.2, 0.9, 0.5]}}
    proposals = read_proposals_file(write_json(tmp_path, json.dumps(content)))
    np.testing.assert_array_equal(proposals["a.png"], [[0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 1, 1]])


def test_read_object_form_without_scores_keeps_order(tmp_path):
    content = {"7": {"boxes": [[0, 0, 3, 3], [0, 0, 1, 1]]}}
    proposals = read_proposals_file(write_json(tmp_path, json.dumps(content)))
    np.testing.assert_array_equal(proposals["7"], [[0, 0, 3, 3], [0, 0, 1, 1]])


# ---------------------------------------------------------------------------------------------------------------
# read_proposals_file: every error names the file (and the key where there is one)


def test_read_missing_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(DetectorError, match="nowhere.json: proposals file not found") as error:
        read_proposals_file(path)
    assert "model.proposals_file" in str(error.value)


def test_read_invalid_json(tmp_path):
    with pytest.raises(DetectorError, match=r"props.json: the proposals file is not valid JSON \(.*line 1"):
        read_proposals_file(write_json(tmp_path, '{"a.png": [[1, 2, 3, 4]'))


def test_read_not_an_object(tmp_path):
    with pytest.raises(DetectorError, match="props.json: the proposals file must be a JSON object.*got a list"):
        read_proposals_file(write_json(tmp_path, "[[1, 2, 3, 4]]"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("[[1, 2, 3]]", id="three-numbers"),
        pytest.param('"boxes"', id="string"),
        pytest.param("5", id="number"),
        pytest.param('[[1, "2", 3, 4]]', id="string-coordinate"),
        pytest.param("[[1, 2, 3, 4], [1, 2, 3]]", id="ragged"),
        pytest.param("[[1, 2, null, 4]]", id="null"),
    ],
)
def test_read_value_not_a_box_list(tmp_path, value):
    path = write_json(tmp_path, '{"ok.png": [[0, 0, 1, 1]], "bad.png": %s}' % value)
    with pytest.raises(DetectorError, match=r"props.json: key 'bad.png' must be a list of \[x1, y1, x2, y2\] boxes"):
        read_proposals_file(path)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_read_non_finite_coordinates(tmp_path, number):
    path = write_json(tmp_path, '{"12": [[0, 0, 5, 5], [0, 0, %s, 5]]}' % number)
    with pytest.raises(DetectorError, match="props.json: key '12' has non-finite box coordinates"):
        read_proposals_file(path)


@pytest.mark.parametrize("box", [[10, 0, 5, 5], [0, 10, 5, 5]], ids=["x2<x1", "y2<y1"])
def test_read_inverted_box(tmp_path, box):
    path = write_json(tmp_path, json.dumps({"b.jpg": [[0, 0, 1, 1], box]}))
    with pytest.raises(DetectorError, match=r"props.json: key 'b.jpg' box 1 .* has x2 < x1 or y2 < y1"):
        read_proposals_file(path)


def test_read_scores_length_mismatch(tmp_path):
    content = {"c.jpg": {"boxes": [[0, 0, 1, 1], [0, 0, 2, 2]], "scores": [0.5]}}
    with pytest.raises(DetectorError, match=r"props.json: key 'c.jpg' must have one number in \"scores\" per box"):
        read_proposals_file(write_json(tmp_path, json.dumps(content)))


def test_read_non_finite_scores(tmp_path):
    path = write_json(tmp_path, '{"c.jpg": {"boxes": [[0, 0, 1, 1]], "scores": [NaN]}}')
    with pytest.raises(DetectorError, match="props.json: key 'c.jpg' has non-finite scores"):
        read_proposals_file(path)


def test_read_object_without_boxes(tmp_path):
    path = write_json(tmp_path, '{"d.jpg": {"scores": [0.5]}}')
    with pytest.raises(DetectorError, match="props.json: key 'd.jpg' is an object without a \"boxes\" list"):
        read_proposals_file(path)


# ---------------------------------------------------------------------------------------------------------------
# write_proposals_file and lookup


def test_write_then_read_round_trip(tmp_path):
    proposals = {
        "000012.jpeg": np.array([[1.234, 2.0, 30.5, 40.0], [0, 0, 640, 480]], dtype=np.float32),
        "13": np.zeros((0, 4), dtype=np.float32),
    }
    path = tmp_path / "sub" / "proposals.json"
    write_proposals_file(path, proposals)
    back = read_proposals_file(path)
    assert list(back) == ["000012.jpeg", "13"]
    # coordinates are stored to 0.01 pixel: 1.234 comes back as 1.23
    np.testing.assert_allclose(back["000012.jpeg"], [[1.23, 2.0, 30.5, 40.0], [0, 0, 640, 480]], atol=1e-5)
    assert back["13"].shape == (0, 4)
    assert [p.name for p in path.parent.iterdir()] == ["proposals.json"]  # no temporary file left behind


def test_write_refuses_to_overwrite(tmp_path):
    path = write_json(tmp_path, "{}")
    with pytest.raises(DetectorError, match="props.json: the proposals file already exists"):
        write_proposals_file(path, {"a.png": np.array([[0, 0, 1, 1]])})
    assert path.read_text() == "{}"


def test_write_rejects_non_finite_boxes_and_writes_nothing(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(DetectorError, match="out.json: key 'a.png' has non-finite box coordinates"):
        write_proposals_file(path, {"a.png": np.array([[0, 0, np.nan, 1]])})
    assert list(tmp_path.iterdir()) == []


def test_proposals_for_record_looks_up_name_then_id(tmp_path):
    record = ImageRecord(tmp_path / "000012.jpeg", 10, 10, np.zeros((0, 4)), np.zeros(0), image_id=12)
    by_id = {"12": np.ones((1, 4), np.float32)}
    by_name = {"000012.jpeg": np.zeros((2, 4), np.float32), **by_id}
    assert proposals_for_record(by_name, record, "p.json").shape == (2, 4)
    assert proposals_for_record(by_id, record, "p.json").shape == (1, 4)
    with pytest.raises(DetectorError, match="p.json: no proposals for image .*'000012.jpeg' and '12'"):
        proposals_for_record({"000013.jpeg": by_name["000012.jpeg"]}, record, "p.json")


# ---------------------------------------------------------------------------------------------------------------
# FileProposals


def test_file_proposals_clips_drops_degenerate_and_caps(tiny_images):
    boxes = torch.tensor([[-5, 10, 30, 60], [70, 40, 100, 45], [90, 0, 120, 10], [10, 10, 20, 20]], dtype=torch.float32)
    # image 0 is 50x80 inside the 64x96 padded tensor: clipping must use image_sizes, not the padding
    batch = ImageBatch(tiny_images, [(50, 80), (64, 96)], [(50, 80), (64, 96)], [boxes, boxes[:0]])
    proposals, losses = FileProposals()(batch, [], None)
    assert losses == {}
    expected = torch.tensor([[0, 10, 30, 50], [70, 40, 80, 45], [10, 10, 20, 20]], dtype=torch.float32)
    torch.testing.assert_close(proposals[0], expected)
    assert proposals[1].shape == (0, 4)
    capped, _ = FileProposals(max_proposals=2)(batch, [], None)
    torch.testing.assert_close(capped[0], expected[:2])


def test_file_proposals_without_batch_proposals(tiny_images):
    batch = ImageBatch(tiny_images, [(64, 96)] * 2, [(64, 96)] * 2)
    with pytest.raises(DetectorError, match="model.proposals_file"):
        FileProposals()(batch, [], None)


# ---------------------------------------------------------------------------------------------------------------
# Selective search


def rectangle_image() -> np.ndarray:
    """A 200x300 dark noisy RGB image with one saturated rectangle at xyxy (60, 50, 180, 150)."""
    image = (np.random.default_rng(0).random((200, 300, 3)) * 40).astype(np.uint8)
    image[50:150, 60:180] = (220, 200, 30)
    return image


def test_selective_search_missing_ximgproc(monkeypatch):
    monkeypatch.delattr(cv2, "ximgproc")
    monkeypatch.setattr(proposals_module, "_opencv_version", lambda: "9.8.7.6")
    with pytest.raises(DetectorError, match=r"cv2.ximgproc.*make selective-search.*headless==9\.8\.7\.6"):
        SelectiveSearchProposals()


@pytest.mark.parametrize("kwargs", [{"mode": "slow"}, {"pixel_mean": (123.7, 116.3, 103.5)}])
def test_selective_search_rejects_bad_options(kwargs):
    with pytest.raises(DetectorError, match="selective search mode|pixel_mean must be in"):
        SelectiveSearchProposals(**kwargs)


def test_to_bgr_undoes_normalization_and_padding():
    image = rectangle_image()
    batch = normalized_batch([image])
    bgr = SelectiveSearchProposals().to_bgr(batch.images[0], batch.image_sizes[0])
    np.testing.assert_array_equal(bgr, image[..., ::-1])


def test_selective_search_scales_boxes_back_from_downscaled_image():
    # max_side 150 halves the 300-wide image; the rectangle's box must come back in full-size pixels
    boxes = selective_search(rectangle_image()[..., ::-1], max_side=150, max_proposals=50)
    assert boxes.dtype == np.float32 and 0 < len(boxes) <= 50
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 4).all()
    iou = box_iou(torch.from_numpy(boxes), torch.tensor([[60.0, 50.0, 180.0, 150.0]]))
    assert iou.max() > 0.99


def test_selective_search_on_kitti_finds_a_car(shared_data):
    root = shared_data / "kitti_tiny" / "training"
    image = cv2.cvtColor(cv2.imread(str(root / "image_2" / "000004.jpeg")), cv2.COLOR_BGR2RGB)
    lines = (root / "label_2" / "000004.txt").read_text().splitlines()
    # KITTI label_2: type truncated occluded alpha x1 y1 x2 y2 ... (pixel xyxy in fields 5-8)
    gt_cars = torch.tensor([[float(v) for v in line.split()[4:8]] for line in lines if line.startswith("Car ")])
    assert len(gt_cars) > 0
    batch = normalized_batch([image])  # 375x1242 padded to 384x1248; no resize, so labels are input pixels
    proposals, losses = SelectiveSearchProposals(mode="fast", max_side=500)(batch, [], None)
    boxes = proposals[0]
    height, width = batch.image_sizes[0]
    assert losses == {} and boxes.dtype == torch.float32 and 100 < len(boxes) <= 2000
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert box_iou(boxes, gt_cars).max() >= 0.5


def test_compute_proposals_keys_by_name_or_id(tmp_path):
    image = rectangle_image()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "img.png"), image[..., ::-1])
    records = [
        ImageRecord(tmp_path / folder / "img.png", 300, 200, np.zeros((0, 4)), np.zeros(0), image_id=i)
        for i, folder in enumerate(("a", "b"), start=7)
    ]
    by_name = compute_proposals(Dataset(["car"], records[:1]), load_image, max_side=150, progress=False)
    assert list(by_name) == ["img.png"]
    iou = box_iou(torch.from_numpy(by_name["img.png"]), torch.tensor([[60.0, 50.0, 180.0, 150.0]]))
    assert iou.max() > 0.99
    # two images named img.png: keys fall back to image ids so neither overwrites the other
    assert list(compute_proposals(Dataset(["car"], records), load_image, max_side=150, progress=False)) == ["7", "8"]
