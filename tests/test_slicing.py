"""Sliced inference (detector.slicing): the tile grid, merging across tile borders, the API and CLI options, and
mosaics of real drone tiles (detector.data.mosaic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.cli import main
from detector.errors import DetectorError
from detector.export import ArrayDetections
from detector.slicing import (COMPLETE, PARTIAL, SlicedPredictor, merge_detections, predict_sliced, resolve_slice,
                              tile_grid)

REPO = Path(__file__).resolve().parents[1]


# --- the tile grid --------------------------------------------------------------------------------------------------

def test_tile_grid_hand_computed_1000x1500():
    # overlap round(0.2 * 640) = 128 px, stride 512. Width 1500: starts 0, 512, then 1024 + 640 > 1500, so the last
    # column is shifted back to 1500 - 640 = 860. Height 1000: 0, then 512 + 640 > 1000 -> 1000 - 640 = 360.
    tiles = tile_grid(1000, 1500, 640, 0.2)
    assert tiles == [(0, 0, 640, 640), (512, 0, 1152, 640), (860, 0, 1500, 640),
                     (0, 360, 640, 1000), (512, 360, 1152, 1000), (860, 360, 1500, 1000)]
    covered = np.zeros((1000, 1500), int)
    for x1, y1, x2, y2 in tiles:
        assert (x2 - x1, y2 - y1) == (640, 640)  # native size, never padded past the border
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1  # every pixel
    assert 512 + 640 - 640 == 512 and (0 + 640) - 512 == 128  # adjacent regular tiles overlap by 0.2 x 640
    assert 1152 - 860 == 292 and 640 - 360 == 280  # the shifted last column / row overlap more, never less


def test_tile_grid_exact_fit_has_no_duplicate_tile():
    assert tile_grid(640, 1152, 640, 0.2) == [(0, 0, 640, 640), (512, 0, 1152, 640)]


@pytest.mark.parametrize("height, width, expected", [
    (300, 400, [(0, 0, 400, 300)]),  # smaller than a tile: one tile, the frame
    (640, 640, [(0, 0, 640, 640)]),
    (500, 1000, [(0, 0, 640, 500), (360, 0, 1000, 500)]),  # a short side is spanned whole
])
def test_tile_grid_small_frames(height, width, expected):
    assert tile_grid(height, width, 640, 0.2) == expected


@pytest.mark.parametrize("size, overlap, needle", [
    (32, 0.2, "slice size"), (63, 0.2, "slice size"), (640, 0.9, "overlap"), (640, -0.1, "overlap"),
    (640.0, 0.2, "slice size"), (True, 0.2, "slice size"),
])
def test_bad_slice_size_or_overlap(size, overlap, needle):
    with pytest.raises(DetectorError, match=needle) as error:
        tile_grid(1000, 1000, size, overlap)
    assert str(error.value).count(". ") == 0 and "\n" not in str(error.value)  # one sentence


def test_resolve_slice_auto_only_for_frames_over_twice_max_size():
    assert resolve_slice(None, 4000, 4000, 640) is None
    assert resolve_slice("auto", 1280, 1280, 640) is None  # exactly twice: whole frame
    assert resolve_slice("auto", 720, 1281, 640) == 640
    assert resolve_slice(800, 100, 100, 640) == 800
    with pytest.raises(DetectorError, match="'auto'"):
        resolve_slice("big", 100, 100, 640)


# --- merging across tile borders ------------------------------------------------------------------------------------

class FakeDetector:
    """Sees `cars` (frame xyxy) as a real detector would: each car clipped to the view it is given, so a car cut by
    a tile border comes back as the partial box ending at that border. The view's frame position is read from its
    pixels (channel 0: x // 8, channel 1: y // 8, channel 2: (x % 8) * 8 + y % 8)."""

    class_names = ["car"]
    max_size = 640

    def __init__(self, cars: list[list[float]], scores: dict[str, float] | None = None) -> None:
        self.cars = np.asarray(cars, np.float32)
        self.scores = scores or {}
        self.calls: list[int] = []

    @staticmethod
    def frame(height: int, width: int) -> np.ndarray:
        y, x = np.mgrid[0:height, 0:width]
        return np.stack([x // 8, y // 8, (x % 8) * 8 + y % 8], axis=-1).astype(np.uint8)

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
        self.calls.append(len(images))
        return [self._see(image) for image in images]

    def _see(self, image: np.ndarray) -> ArrayDetections:
        code = image[0, 0].astype(int)
        x0, y0 = code[0] * 8 + code[2] // 8, code[1] * 8 + code[2] % 8
        view = np.array([x0, y0, x0 + image.shape[1], y0 + image.shape[0]], np.float32)
        clipped = np.concatenate([np.maximum(self.cars[:, :2], view[:2]), np.minimum(self.cars[:, 2:], view[2:])], 1)
        visible = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        boxes = clipped[visible] - view[[0, 1, 0, 1]]
        whole = image.shape[:2] == (self.height, self.width)
        score = self.scores.get("frame" if whole else f"{x0},{y0}", 0.9)
        return ArrayDetections(boxes, np.full(len(boxes), score, np.float32), np.ones(len(boxes), np.int64), ["car"])


# Frame 640 x 1152, tiles (0, 0, 640, 640) and (512, 0, 1152, 640). Car A is cut at a third by tile 1's right
# border (tile 1 sees x 600-640, tile 2 sees it whole): IoU 40/120 = 0.33. Car B is wider than the 128 px overlap:
# tile 1 sees x 450-640, tile 2 sees 512-750, IoU 128/300 = 0.43, IoS 128/190 = 0.67.
CAR_A, CAR_B = [600.0, 100.0, 720.0, 160.0], [450.0, 300.0, 750.0, 380.0]


def cut_detector(**scores: float) -> FakeDetector:
    fake = FakeDetector([CAR_A, CAR_B], {key.replace("_", ","): v for key, v in scores.items()})
    fake.height, fake.width = 640, 1152
    return fake


def as_sorted(boxes) -> list[list[float]]:
    return sorted(np.asarray(boxes).round(3).tolist())


@pytest.mark.parametrize("full_frame", [False, True])
def test_car_cut_by_tile_border_found_once_with_full_box_by_nmm(full_frame):
    fake = cut_detector()
    found = predict_sliced(fake, fake.frame(640, 1152), 640, 0.2, merge="nmm", full_frame=full_frame)
    assert as_sorted(found.boxes) == as_sorted([CAR_A, CAR_B])
    assert isinstance(found, ArrayDetections) and found.labels.tolist() == [1, 1]


def test_nms_alone_keeps_two_boxes_per_cut_car():
    fake = cut_detector()
    found = predict_sliced(fake, fake.frame(640, 1152), 640, 0.2, merge="nms", match="iou", full_frame=False)
    pieces = [[600, 100, 640, 160], CAR_A, [450, 300, 640, 380], [512, 300, 750, 380]]
    assert as_sorted(found.boxes) == as_sorted(pieces)


def test_default_nms_matches_by_ios_and_keeps_one_box_per_cut_car():
    """The default merge (NMS by intersection over the smaller box): car A's cut piece lies inside its whole box (IoS
    1) and leaves; car B's two pieces overlap by IoS 0.67 and one stays. NMS does not widen it (NMM would)."""
    fake = cut_detector()
    found = predict_sliced(fake, fake.frame(640, 1152), 640, 0.2, full_frame=False)
    boxes = as_sorted(found.boxes)
    assert len(boxes) == 2 and CAR_A in boxes
    assert [b for b in boxes if b != CAR_A][0] in as_sorted([[450, 300, 640, 380], [512, 300, 750, 380]])


def test_nmm_keeps_the_highest_score_and_caps_max_det():
    fake = cut_detector(**{"0_0": 0.95, "512_0": 0.6})
    found = predict_sliced(fake, fake.frame(640, 1152), 640, 0.2, full_frame=False, max_det=1)
    assert len(found) == 1 and found.scores.tolist() == pytest.approx([0.95])


def test_whole_boxes_are_suppressed_not_united():
    # the same car seen whole by two views, 4 px apart: the kept box stays as it was (SAHI would widen it)
    boxes = np.array([[100, 100, 200, 150], [104, 100, 204, 150]], np.float32)
    kept, scores, _ = merge_detections(boxes, [0.9, 0.8], [1, 1], groups=np.array([0, 1]),
                                       kinds=np.array([COMPLETE, COMPLETE]))
    assert kept.tolist() == [[100, 100, 200, 150]] and scores.tolist() == pytest.approx([0.9])
    united, _, _ = merge_detections(boxes, [0.9, 0.8], [1, 1], groups=np.array([0, 1]))  # kinds=None: SAHI
    assert united.tolist() == [[100, 100, 204, 150]]


def test_merge_is_class_wise_and_never_within_one_view():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 60, 60], [0, 0, 100, 100]], np.float32)
    kept, _, labels = merge_detections(boxes, [0.9, 0.8, 0.7], [1, 1, 2], groups=np.array([0, 0, 1]))
    assert len(kept) == 3 and sorted(labels.tolist()) == [1, 1, 2]
    kept, _, _ = merge_detections(boxes, [0.9, 0.8, 0.7], [1, 1, 2])  # one view, no groups: the nested box joins
    assert kept.tolist() == [[0, 0, 100, 100], [0, 0, 100, 100]]


def test_cut_boxes_are_visited_after_whole_ones():
    # a partial box scoring higher than the whole box of its car does not become the kept box under NMS
    boxes = np.array([[600, 100, 640, 160], [600, 100, 720, 160]], np.float32)
    kept, _, _ = merge_detections(boxes, [0.95, 0.6], [1, 1], mode="nms", match="ios", groups=np.array([0, 1]),
                                  kinds=np.array([PARTIAL, COMPLETE]))
    assert kept.tolist() == [[600, 100, 720, 160]]


def test_numpy_nms_matches_torchvision_batched_nms():
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (300, 2))], 1).astype(np.float32)
    scores, labels = rng.permutation(300).astype(np.float32) / 300, rng.integers(1, 4, 300)
    kept, kept_scores, _ = merge_detections(boxes, scores, labels, 0.5, mode="nms", match="iou")
    expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    assert kept_scores.tolist() == scores[expected.numpy()].tolist()
    assert np.array_equal(kept, boxes[expected.numpy()])


@pytest.mark.parametrize("mode, match, needle", [("wbf", "ios", "merge"), ("nmm", "giou", "match")])
def test_bad_merge_options(mode, match, needle):
    with pytest.raises(DetectorError, match=needle):
        merge_detections(np.zeros((0, 4)), [], [], mode=mode, match=match)


def test_tiles_are_batched_and_the_full_frame_is_last():
    fake = cut_detector()
    predict_sliced(fake, fake.frame(640, 1152), 640, 0.2, batch_size=2)
    assert fake.calls == [2, 1]  # two tiles, then the whole frame


def test_onnx_path_stays_torch_free():
    code = "import sys, detector.slicing, detector.data.mosaic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# --- the real tiny checkpoint through the API and the CLI -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_detector(tiny_checkpoint):
    from detector.api import Detector

    return Detector.load(tiny_checkpoint, device="cpu", runtime="torch")


def test_frame_that_fits_one_tile_gives_the_unsliced_detections(tiny_detector, rng):
    image = (rng.random((128, 160, 3)) * 255).astype(np.uint8)
    image[40:80, 50:110] = 230  # something car-sized to find
    plain = tiny_detector.predict(image, score_thresh=0.0)
    for size in (160, 640, "auto"):  # data.max_size is 160: auto slices only frames longer than 320
        sliced = tiny_detector.predict(image, score_thresh=0.0, slice=size)
        assert torch.equal(sliced.boxes, plain.boxes) and torch.equal(sliced.scores, plain.scores)
        assert torch.equal(sliced.labels, plain.labels)


def test_sliced_api_returns_detections_in_frame_pixels(tiny_detector, rng):
    from detector.structures import Detections

    images = [(rng.random((200, 400, 3)) * 255).astype(np.uint8) for _ in range(2)]
    found = tiny_detector.predict_batch(images, score_thresh=0.0, max_det=20, slice=96, overlap=0.25)
    assert len(found) == 2
    for detections in found:
        assert isinstance(detections, Detections) and detections.boxes.dtype == torch.float32
        assert len(detections) <= 20 and bool((detections.scores[:-1] >= detections.scores[1:]).all())
        boxes = detections.boxes
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 200).all())
    with pytest.raises(DetectorError, match="slice size"):
        tiny_detector.predict(images[0], slice=32)


def test_sliced_predictor_for_video_and_detect(rng):
    fake = cut_detector()
    sliced = SlicedPredictor(fake, 640, merge="nmm", full_frame=False)
    assert sliced.class_names == ["car"]
    assert [len(d) for d in sliced.predict_batch([fake.frame(640, 1152)] * 2)] == [2, 2]


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("option", [["--slice", "32"], ["--slice", "big"], ["--slice", "640", "--overlap", "0.9"],
                                    ["--slice", "640", "--overlap", "nan"], ["--slice", "640", "--slice-merge", "wbf"]])
@pytest.mark.parametrize("command", ["detect", "eval"])
def test_cli_bad_slice_options_exit_2_with_one_sentence(command, option, capsys):
    extra = ["--format", "coco"] if command == "eval" else []
    with pytest.raises(SystemExit) as stop:
        main([command, "model.pt", "source", *extra, *option])
    assert stop.value.code == 2
    assert option[-1] in one_line_error(capsys)


@pytest.mark.parametrize("command", ["detect", "eval"])
def test_cli_slice_options_without_slice_are_an_error(command, capsys):
    extra = ["--format", "coco"] if command == "eval" else []
    assert main([command, "model.pt", "source", *extra, "--overlap", "0.3", "--no-full-frame"]) == 2
    assert "--overlap, --no-full-frame only apply to sliced inference" in one_line_error(capsys)


def test_cli_detect_and_eval_sliced(tiny_checkpoint, tmp_path, capsys):
    import cv2

    image = tmp_path / "big.jpg"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((240, 400, 3)) * 255).astype(np.uint8))
    assert main(["detect", str(tiny_checkpoint), str(image), "--out", str(tmp_path / "d"), "--runtime", "torch",
                 "--device", "cpu", "--slice", "auto", "--overlap", "0.25", "--slice-merge", "nms"]) == 0
    assert "sliced inference: tiles of auto px, overlap 0.25, merge nms" in capsys.readouterr().out
    assert (tmp_path / "d" / "detections.json").is_file()
    annotations = tiny_checkpoint.parents[2] / "data" / "val" / "annotations.json"
    assert main(["eval", str(tiny_checkpoint), str(annotations), "--format", "coco", "--out", str(tmp_path / "e"),
                 "--slice", "96", "--no-full-frame"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0 and not any(key.startswith("val_") for key in metrics)


# --- mosaics --------------------------------------------------------------------------------------------------------

def test_mosaic_of_hand_made_tiles(tmp_path):
    import cv2

    from detector.data.mosaic import build_mosaic
    from detector.structures import ImageRecord

    records = []
    for k in range(4):
        path = tmp_path / f"{k}_{k}.png"
        cv2.imwrite(str(path), np.full((40, 60, 3), 10 * (k + 1), np.uint8))
        records.append(ImageRecord(path, 60, 40, [[1, 2, 11, 12]], [1], k, ignore=[[0, 0, 5, 5]] if k == 3 else None
                                   or np.zeros((0, 4))))
    mosaic = build_mosaic(records, rows=2, cols=2)
    assert mosaic.image.shape == (80, 120, 3) and mosaic.offsets == [(0, 0), (60, 0), (0, 40), (60, 40)]
    assert mosaic.image[0, 0, 0] == 10 and mosaic.image[0, 60, 0] == 20 and mosaic.image[79, 119, 0] == 40
    assert mosaic.boxes.tolist() == [[1, 2, 11, 12], [61, 2, 71, 12], [1, 42, 11, 52], [61, 42, 71, 52]]
    assert mosaic.ignore.tolist() == [[60, 40, 65, 45]] and mosaic.labels.tolist() == [1, 1, 1, 1]
    with pytest.raises(DetectorError, match="needs 9 tiles, got 4"):
        build_mosaic(records)


def test_mosaic_boxes_match_the_real_drone_tiles(shared_data):
    from detector.config import load_config
    from detector.data.build import filter_records, read_split
    from detector.data.images import load_image
    from detector.data.mosaic import build_mosaic, mosaic_groups, square_tiles

    config = load_config(str(REPO / "configs" / "drone_cars.yaml"))
    root = shared_data / "drone_cars"
    dataset = filter_records(read_split(config.data, str(root), ["car"]), config.data.val_filter, True, "val")
    tiles = square_tiles(dataset.records)
    assert len(tiles) == 49 and all(r.image_path.name.startswith("6_") for r in tiles)  # no Drone2_(n) frames
    group = mosaic_groups(tiles)[1]
    mosaic = build_mosaic(group)
    assert mosaic.image.shape == (1920, 1920, 3)
    expected = []
    for k, record in enumerate(group):  # from the YOLO label files themselves: class cx cy w h, normalized
        x, y = (k % 3) * 640, (k // 3) * 640
        assert np.array_equal(mosaic.image[y:y + 640, x:x + 640], load_image(record.image_path))
        rows = np.loadtxt(root / "labels" / f"{record.image_path.stem}.txt", ndmin=2)
        cx, cy, w, h = (rows[:, 1:] * 640).T
        boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 0, 640)  # the reader clips
        expected.append(boxes + [x, y, x, y])
    expected = np.concatenate(expected)
    assert len(mosaic.boxes) == len(expected) > 0
    np.testing.assert_allclose(mosaic.boxes, expected, atol=1e-3)
