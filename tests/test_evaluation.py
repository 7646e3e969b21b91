"""COCO evaluation: hand-built ground truth and predictions, checked against pycocotools and by hand."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import METRIC_NAMES, COCOEvaluator, coco_ground_truth, detections_to_coco
from detector.structures import Detections, DetectorError, Targets

CLASSES = ["car", "truck"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _targets(boxes: list, labels: list, size: tuple[int, int] = (100, 100), ignore: list | None = None) -> Targets:
    return Targets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels), size,
                   torch.tensor(ignore or [], dtype=torch.float32).reshape(-1, 4))


def _detections(boxes: list, scores: list, labels: list) -> Detections:
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # [] -> (0, 4)
    return Detections(boxes_tensor, torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64))


def _evaluator(image_ids: list[int], targets: list[Targets], detections: list[Detections]) -> COCOEvaluator:
    evaluator = COCOEvaluator(CLASSES)
    evaluator.process(image_ids, targets, detections)
    return evaluator


def _pycocotools_stats(gt_path: Path, results_path: Path) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


# Hand-written COCO ground truth (xywh): small, medium and large objects of two classes, one
# ignore region (a crowd annotation per class) and an image with no objects.
GT_IMAGES = {1: (150, 200), 2: (200, 300), 3: (100, 100)}  # id -> (height, width)
GT_OBJECTS = {
    1: [([10, 10, 20, 20], 1), ([50, 40, 60, 50], 1), ([100, 20, 90, 110], 2)],
    2: [([30, 30, 120, 100], 1), ([200, 50, 25, 30], 2)],
    3: [],
}
GT_IGNORE = {1: [[0, 100, 40, 40]], 2: [], 3: []}
RESULTS = [  # (image_id, category_id, xywh, score)
    (1, 1, [11, 11, 20, 20], 0.9), (1, 1, [50, 40, 60, 50], 0.6), (1, 1, [55, 45, 60, 50], 0.95),
    (1, 2, [100, 20, 90, 110], 0.8), (1, 1, [5, 105, 20, 20], 0.7), (1, 2, [150, 130, 30, 15], 0.3),
    (2, 1, [35, 30, 120, 100], 0.85), (2, 2, [200, 50, 25, 30], 0.4), (2, 1, [200, 50, 25, 30], 0.5),
    (3, 1, [10, 10, 30, 30], 0.65),
]


def _hand_written_json(tmp_path: Path) -> tuple[Path, Path]:
    annotations = []
    for image_id, objects in GT_OBJECTS.items():
        crowds = [(box, cat, 1) for box in GT_IGNORE[image_id] for cat in (1, 2)]
        for box, cat, crowd in [(box, cat, 0) for box, cat in objects] + crowds:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": crowd})
    gt = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in GT_IMAGES.items()],
          "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "truck"}], "annotations": annotations}
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in RESULTS]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "results.json"


def _hand_written_evaluator(category_ids: list[int] | None = None) -> COCOEvaluator:
    """The hand-written ground truth and results above, fed to our evaluator image by image."""
    evaluator = COCOEvaluator(CLASSES, category_ids)
    for image_id, (height, width) in GT_IMAGES.items():
        objects = GT_OBJECTS[image_id]
        target = _targets([_xywh_to_xyxy(b) for b, _ in objects], [c for _, c in objects], (height, width),
                          [_xywh_to_xyxy(b) for b in GT_IGNORE[image_id]])
        mine = [r for r in RESULTS if r[0] == image_id]
        dets = _detections([_xywh_to_xyxy(r[2]) for r in mine], [r[3] for r in mine], [r[1] for r in mine])
        evaluator.process([image_id], [target], [dets])
    return evaluator


def test_every_stat_equals_pycocotools_on_the_same_hand_written_json(tmp_path: Path) -> None:
    expected = _pycocotools_stats(*_hand_written_json(tmp_path))
    metrics = _hand_written_evaluator().evaluate().metrics
    assert 0.0 < metrics["AP"] < 1.0  # a non-trivial case, not all zeros or ones
    for name, value in zip(METRIC_NAMES, expected):
        if value == -1:
            assert math.isnan(metrics[name]), name
        else:
            assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_saved_files_use_the_source_ids_and_reproduce_the_table(tmp_path: Path) -> None:
    """detections.json used the internal labels 1..K as category ids and the ground truth was never saved: with the
    source's ids (COCO's 3 and 7 here) both files go to pycocotools and give back every number of the table."""
    evaluator = _hand_written_evaluator(category_ids=[3, 7])
    evaluator.save_results_json(tmp_path / "detections.json")
    evaluator.save_ground_truth_json(tmp_path / "ground_truth.json")
    saved = json.loads((tmp_path / "detections.json").read_text())
    assert {d["category_id"] for d in saved} == {3, 7}
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert gt["categories"] == [{"id": 3, "name": "car"}, {"id": 7, "name": "truck"}]
    stats = _pycocotools_stats(tmp_path / "ground_truth.json", tmp_path / "detections.json")
    metrics = evaluator.evaluate().metrics
    assert 0.0 < metrics["AP"] < 1.0
    for name, value in zip(METRIC_NAMES, stats):
        assert math.isnan(metrics[name]) if value == -1 else metrics[name] == pytest.approx(value, abs=1e-12), name


def test_perfect_predictions_score_one() -> None:
    boxes = [[10, 10, 50, 40], [60, 20, 90, 90]]
    evaluator = _evaluator([1, 2], [_targets(boxes, [1, 2]), _targets([], [])],
                           [_detections(boxes, [0.9, 0.8], [1, 2]), _detections([], [], [])])
    result = evaluator.evaluate()
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert result.metrics[name] == pytest.approx(1.0)
    assert result.per_class == {"car": pytest.approx({"AP": 1.0, "AP50": 1.0, "num_gt": 1}),
                                "truck": pytest.approx({"AP": 1.0, "AP50": 1.0, "num_gt": 1})}


def test_false_positive_above_true_positive_matches_hand_computed_ap() -> None:
    # 2 cars; ranked detections: FP (0.9), TP (0.8). Precision [0, 1/2] at recall [0, 1/2]; the
    # interpolated precision is 1/2 for the 51 recall thresholds 0.00..0.50 and 0 above, so
    # AP50 = 51 * 0.5 / 101. The TP box is exact, so every IoU threshold gives the same value.
    targets = [_targets([[10, 10, 40, 40]], [1]), _targets([[20, 20, 60, 60]], [1])]
    detections = [_detections([[10, 10, 40, 40]], [0.8], [1]), _detections([[70, 70, 90, 90]], [0.9], [1])]
    metrics = _evaluator([1, 2], targets, detections).evaluate().metrics
    assert metrics["AP50"] == pytest.approx(25.5 / 101)
    assert metrics["AP"] == pytest.approx(25.5 / 101)
    assert metrics["AR100"] == pytest.approx(0.5)
    # Area ranges (small < 32**2 = 1024 px <= medium < 96**2): car 1 (900 px) and both detections are
    # small, so APs ranks the same FP, TP against one car -> 0.5. Car 2 (1600 px) is the only medium
    # object and no medium detection matches it -> APm 0. No large objects -> APl undefined (nan).
    assert metrics["APs"] == pytest.approx(0.5)
    assert metrics["APm"] == 0.0
    assert math.isnan(metrics["APl"])


@pytest.mark.parametrize("ignore, expected_ap", [([[0, 60, 40, 100]], 1.0), (None, 0.5)])
def test_detections_in_an_ignore_region_do_not_lower_ap(ignore: list | None, expected_ap: float) -> None:
    # A car (label 1) and a truck (label 2) scored above the true car, both on the region. Without
    # the region they are FPs ranked first: car precision [0, 1/2] -> AP 0.5.
    target = _targets([[10, 10, 40, 40]], [1], ignore=ignore)
    dets = _detections([[5, 65, 25, 85], [10, 10, 40, 40], [10, 70, 30, 90]], [0.9, 0.8, 0.95], [1, 1, 2])
    truck_image = (_targets([[50, 50, 90, 90]], [2]), _detections([[50, 50, 90, 90]], [0.5], [2]))
    result = _evaluator([1, 2], [target, truck_image[0]], [dets, truck_image[1]]).evaluate()
    assert result.per_class["car"]["AP"] == pytest.approx(expected_ap)
    assert result.per_class["truck"]["AP"] == pytest.approx(expected_ap)


def test_zero_detections_give_zero_ap() -> None:
    evaluator = _evaluator([1, 2], [_targets([[10, 10, 40, 40]], [1]), _targets([], [])],
                           [_detections([], [], []), _detections([], [], [])])
    result = evaluator.evaluate()
    assert result.metrics["AP"] == 0.0
    assert result.metrics["AR100"] == 0.0
    assert result.per_class["car"]["AP"] == 0.0
    assert math.isnan(result.per_class["truck"]["AP"])  # no truck ground truth: undefined, not 0
    assert evaluator.results() == []


def test_images_without_ground_truth_or_detections() -> None:
    empty = (_targets([], []), _detections([], [], []))
    only_empty = _evaluator([1, 2], [empty[0]] * 2, [empty[1]] * 2).evaluate()
    assert all(math.isnan(value) for value in only_empty.metrics.values())
    assert "nan" in only_empty.table()
    with_one_object = _evaluator([1, 2], [_targets([[0, 0, 30, 30]], [2]), empty[0]],
                                 [_detections([[0, 0, 30, 30]], [0.7], [2]), empty[1]]).evaluate()
    assert with_one_object.metrics["AP"] == pytest.approx(1.0)


def _confusion_scene() -> COCOEvaluator:
    # Image 1: car A is found (plus a duplicate), car B is called a truck, truck C is missed,
    # car D is found only with score 0.1, one truck FP, one car inside the ignore region.
    # Image 2: nothing at all. Image 3: no ground truth, one confident car FP.
    target = _targets([[0, 0, 20, 20], [50, 50, 80, 80], [100, 100, 140, 140], [150, 0, 190, 40]], [1, 1, 2, 1],
                      size=(200, 200), ignore=[[0, 150, 60, 200]])
    dets = _detections([[0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 80, 80], [10, 160, 40, 190], [160, 160, 190, 190],
                        [150, 0, 190, 40]], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1], [1, 1, 2, 1, 2, 1])
    empty = (_targets([], []), _detections([], [], []))
    fp_image = _detections([[10, 10, 30, 30]], [0.95], [1])
    return _evaluator([1, 2, 3], [target, empty[0], empty[0]], [dets, empty[1], fp_image])


@pytest.mark.parametrize("score_threshold, expected", [
    (0.25, [[1, 1, 1], [0, 0, 1], [2, 1, 0]]),  # D missed (its detection scores below 0.25)
    (0.05, [[2, 1, 0], [0, 0, 1], [2, 1, 0]]),  # D found
])
def test_confusion_matrix_hand_counted(score_threshold: float, expected: list) -> None:
    matrix = _confusion_scene().confusion_matrix(iou_threshold=0.5, score_threshold=score_threshold)
    np.testing.assert_array_equal(matrix, np.array(expected))


def test_confusion_matrix_matches_greedily_by_score() -> None:
    # The truck detection scores higher, so it takes the car (IoU 324/476 = 0.68) before the exact
    # car detection (IoU 1.0) can: one confusion plus one car FP.
    dets = _detections([[2, 2, 22, 22], [0, 0, 20, 20]], [0.95, 0.8], [2, 1])
    evaluator = _evaluator([1], [_targets([[0, 0, 20, 20]], [1])], [dets])
    np.testing.assert_array_equal(evaluator.confusion_matrix(), [[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(evaluator.confusion_matrix(iou_threshold=0.7), [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    evaluator = _confusion_scene()
    evaluator.evaluate().plot_pr_curves(tmp_path / "plots" / "pr.png")
    evaluator.plot_confusion_matrix(tmp_path / "confusion.png")
    for name in ("plots/pr.png", "confusion.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_results_json_loads_with_pycocotools(tmp_path: Path) -> None:
    dets = _detections([[10.123, 20.456, 30.789, 40.0], [0, 0, 10, 10]], [0.75, 0.5], [2, 1])
    evaluator = _evaluator([4], [_targets([[10, 20, 30, 40]], [2])], [dets])
    evaluator.save_results_json(tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved[0] == {"image_id": 4, "category_id": 2, "bbox": [10.12, 20.46, 20.67, 19.54], "score": 0.75}
    gt = coco_ground_truth([4], [_targets([[10, 20, 30, 40]], [2])], CLASSES)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        loaded = coco_gt.loadRes(str(tmp_path / "results.json"))
    assert sorted(ann["category_id"] for ann in loaded.loadAnns(loaded.getAnnIds())) == [1, 2]


def test_coco_ground_truth_layout() -> None:
    target = _targets([[10, 20, 40, 60]], [2], size=(100, 200), ignore=[[0, 0, 5, 5]])
    gt = coco_ground_truth([7], [target], CLASSES)
    assert gt["images"] == [{"id": 7, "width": 200, "height": 100}]
    assert gt["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "truck"}]
    assert [(a["id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 2, [10, 20, 30, 40], 1200, 0), (2, 1, [0, 0, 5, 5], 25, 1), (3, 2, [0, 0, 5, 5], 25, 1)]
    assert detections_to_coco([7], [_detections([[1, 2, 4, 8]], [0.5], [1])]) == [
        {"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 6], "score": 0.5}]


def test_table_lists_metrics_and_classes_aligned() -> None:
    evaluator = _evaluator([1], [_targets([[0, 0, 40, 40]], [1])], [_detections([[0, 0, 40, 40]], [0.9], [1])])
    table = evaluator.evaluate().table()
    blocks = table.split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].split("\n")[0].split() == ["metric", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert blocks[2].split("\n")[2].split() == ["car", "1.000", "1.000", "1"]
    assert blocks[2].split("\n")[3].split() == ["truck", "nan", "nan", "0"]
    for block in blocks:  # right-aligned columns: every line of a block has the same width
        assert len({len(line) for line in block.split("\n")}) == 1


def test_reset_forgets_processed_images() -> None:
    evaluator = _evaluator([1], [_targets([[0, 0, 40, 40]], [1])], [_detections([], [], [])])
    evaluator.reset()
    evaluator.process([1], [_targets([[0, 0, 40, 40]], [1])], [_detections([[0, 0, 40, 40]], [0.9], [1])])
    assert evaluator.evaluate().metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("call, message", [
    (lambda e: e.process([1, 2], [_targets([], [])], [_detections([], [], [])]), "one targets entry per image"),
    (lambda e: e.process([1], [_targets([[0, 0, 5, 5]], [3])], [_detections([], [], [])]), "labels must be"),
    (lambda e: e.process([1], [_targets([], [])], [_detections([[0, 0, 5, 5]], [0.5], [0])]), "Detections of image 1"),
    (lambda e: e.process([1, 1], [_targets([], [])] * 2, [_detections([], [], [])] * 2), "already processed"),
    (lambda e: e.evaluate(), "call process"),
    (lambda e: e.confusion_matrix(iou_threshold=0.0), "iou_threshold"),
])
def test_user_errors_are_one_sentence(call, message: str) -> None:
    evaluator = COCOEvaluator(CLASSES)
    with pytest.raises(DetectorError, match=message):
        call(evaluator)
    assert evaluator._images == []  # a rejected batch leaves nothing behind


def test_a_crowd_of_cars_absorbs_car_detections_only() -> None:
    # The scene of the test above with the region labelled car (a COCO crowd of cars): the car FP on it is absorbed
    # (car AP 1), the truck FP on it is not (truck precision [0, 1/2] -> AP 0.5), in COCO AP and in the confusion
    # matrix alike. A region of any class (label 0) absorbs both, as before.
    target = Targets(torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([1]), (100, 100),
                     torch.tensor([[0.0, 60, 40, 100]]), torch.tensor([1]))
    dets = _detections([[5, 65, 25, 85], [10, 10, 40, 40], [10, 70, 30, 90]], [0.9, 0.8, 0.95], [1, 1, 2])
    truck_image = (_targets([[50, 50, 90, 90]], [2]), _detections([[50, 50, 90, 90]], [0.5], [2]))
    evaluator = _evaluator([1, 2], [target, truck_image[0]], [dets, truck_image[1]])
    result = evaluator.evaluate()
    assert result.per_class["car"]["AP"] == pytest.approx(1.0)
    assert result.per_class["truck"]["AP"] == pytest.approx(0.5)
    crowds = [a for a in evaluator.ground_truth()["annotations"] if a["iscrowd"]]
    assert [a["category_id"] for a in crowds] == [1]  # written under its class only
    matrix = evaluator.confusion_matrix(iou_threshold=0.5, score_threshold=0.0)
    assert matrix[2, 1] == 1 and matrix[2, 0] == 0  # background row: the truck on the crowd is a FP, the car not
    anyclass = _targets([[10, 10, 40, 40]], [1], ignore=[[0, 60, 40, 100]])
    crowds = [a for a in coco_ground_truth([1], [anyclass], CLASSES)["annotations"] if a["iscrowd"]]
    assert [a["category_id"] for a in crowds] == [1, 2]  # label 0: once per category


@pytest.mark.parametrize("areas, small, medium", [(None, math.nan, 1.0), ([900.0], 1.0, math.nan),
                                                  ([math.nan], math.nan, 1.0)])
def test_source_areas_decide_the_size_split(areas, small, medium) -> None:
    # a 40x40 box is 1600 px, medium; its source area (a COCO segment) of 900 px makes it small; NaN: the box's
    target = Targets(torch.tensor([[10.0, 10, 50, 50]]), torch.tensor([1]), (100, 100), areas=areas)
    evaluator = _evaluator([1], [target], [_detections([[10, 10, 50, 50]], [0.9], [1])])
    metrics = evaluator.evaluate().metrics
    for name, expected in (("APs", small), ("APm", medium)):
        assert math.isnan(metrics[name]) if math.isnan(expected) else metrics[name] == pytest.approx(expected)
    assert evaluator.ground_truth()["annotations"][0]["area"] == (1600.0 if areas is None or math.isnan(areas[0])
                                                                  else 900.0)
