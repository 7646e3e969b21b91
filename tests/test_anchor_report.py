"""Anchor report: hand-computed shape-only IoUs, coverage counts, k-means and the proposed grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from detector.anchor_report import (anchor_report, anchor_shapes, box_shapes, coverage, format_report, kmeans_1d,
                                    propose_anchors, shape_iou)
from detector.structures import Dataset, ImageRecord

# A 64x32 (w x h) anchor: area 2048, so size sqrt(2048) with ratio h/w 0.5.
SIZE_64x32 = math.sqrt(2048.0)


def test_anchor_shapes_follow_the_model_convention() -> None:
    # ratio = h / w, area = size**2: size 32 ratio 1 is 32x32; size sqrt(2048) ratio 0.5 is 64 wide, 32 high
    np.testing.assert_allclose(anchor_shapes([32.0, SIZE_64x32], [1.0, 0.5]),
                               [[32, 32], [45.254834, 22.627417], [45.254834, 45.254834], [64, 32]], rtol=1e-6)


@pytest.mark.parametrize(("box", "anchor", "expected"), [
    ((64, 32), (64, 32), 1.0),          # same shape
    ((64, 32), (32, 32), 0.5),          # intersection 32*32 = 1024, union 2048 + 1024 - 1024 = 2048
    ((32, 32), (64, 32), 0.5),          # symmetric
    ((16, 16), (32, 32), 0.25),         # nested: 256 / 1024
    ((100, 10), (32, 32), 320 / 1704),  # crossing: 32*10 / (1000 + 1024 - 320)
])
def test_shape_iou_by_hand(box, anchor, expected) -> None:
    assert shape_iou(np.array([box], float), np.array([anchor], float))[0, 0] == pytest.approx(expected)


def test_coverage_counts_boxes_by_hand() -> None:
    boxes = np.array([[64, 32], [32, 32], [16, 16], [100, 10]], float)
    anchors = anchor_shapes([32.0], [1.0])  # one 32x32 anchor: IoUs 0.5, 1, 0.25, 0.188
    assert coverage(boxes, anchors, 0.7) == 0.25
    assert coverage(boxes, anchors, 0.5) == 0.5
    # adding the 64x32 anchor covers the first box as well
    assert coverage(boxes, np.concatenate([anchors, [[64.0, 32.0]]]), 0.7) == 0.5
    assert coverage(np.zeros((0, 2)), anchors, 0.7) == 0.0


def test_box_shapes_scale_with_the_image_to_max_size() -> None:
    # a 200x100 image resized to a longest side of 100 halves its boxes; a 50x50 one doubles them
    records = [
        ImageRecord("a.jpg", 200, 100, [[0, 0, 64, 32], [10, 10, 20, 30]], [1, 1], 1),
        ImageRecord("b.jpg", 50, 50, [[5, 5, 15, 10]], [1], 2, ignore=[[0, 0, 40, 40]]),
        ImageRecord("c.jpg", 80, 60, np.zeros((0, 4)), [], 3),
    ]
    shapes = box_shapes(Dataset(["car"], records), max_size=100)
    np.testing.assert_allclose(shapes, [[32, 16], [5, 10], [20, 10]])  # ignore regions are not boxes


def test_kmeans_1d_finds_two_groups() -> None:
    centres = kmeans_1d(np.array([0.9, 1.0, 1.1, 9.8, 10.0, 10.2]), 2)
    np.testing.assert_allclose(centres, [1.0, 10.0])
    assert len(kmeans_1d(np.array([3.0, 3.0, 3.0]), 4)) == 1  # one distinct value, one centre


def _grid_boxes(sizes: list[float], ratios: list[float], copies: int = 5) -> np.ndarray:
    return np.repeat(anchor_shapes(sizes, ratios), copies, axis=0)


def test_proposal_recovers_the_grid_the_boxes_come_from() -> None:
    boxes = _grid_boxes([20.0, 40.0], [0.5, 2.0])  # 4 shapes: a 2 x 2 grid fits all of them exactly
    proposed = propose_anchors(boxes, num_anchors=4, threshold=0.7)
    assert proposed["sizes"] == [20.0, 40.0] and proposed["ratios"] == [0.5, 2.0]
    assert proposed["covered"] == len(boxes) and proposed["mean_best_iou"] == pytest.approx(1.0)
    # the 1 x 4 and 4 x 1 grids were tried too (with two ratios or two sizes in the data, k-means gives two, so
    # they shrink to 1 x 2 and 2 x 1) and cover fewer boxes
    shapes = sorted((len(g["sizes"]), len(g["ratios"])) for g in proposed["grids"])
    assert shapes == [(1, 2), (2, 1), (2, 2)]
    assert all(g["covered"] < len(boxes) for g in proposed["grids"] if (len(g["sizes"]), len(g["ratios"])) != (2, 2))


def test_fpn_keeps_one_size_per_level_and_never_more_anchors() -> None:
    boxes = _grid_boxes([16.0, 30.0, 60.0], [0.5, 1.0])
    proposed = propose_anchors(boxes, num_anchors=6, num_sizes=2)  # 2 levels, at most 3 ratios each
    assert len(proposed["sizes"]) == 2 and len(proposed["ratios"]) <= 3
    for grid in propose_anchors(boxes, num_anchors=5)["grids"]:
        assert len(grid["sizes"]) * len(grid["ratios"]) <= 5


def test_report_names_unmatched_anchors_and_prints_pasteable_yaml() -> None:
    boxes = _grid_boxes([32.0], [0.5, 1.0])  # two shapes; the 256 anchors match none of them
    report = anchor_report(boxes, [32.0, 256.0], [0.5, 1.0], threshold=0.7)
    current = report["current"]
    assert current["coverage"] == {"0.7": 1.0, "0.5": 1.0}
    assert [(a["size"], a["ratio"]) for a in current["unmatched_anchors"]] == [(256.0, 0.5), (256.0, 1.0)]
    assert [a["boxes_at_iou"] for a in current["anchors"]] == [5, 5, 0, 0]
    text = format_report(report, "title")
    snippet = yaml.safe_load("\n".join(line for line in text.splitlines() if line.startswith("  anchor_")))
    assert snippet == {"anchor_sizes": report["proposed"]["anchor_sizes"],
                       "anchor_ratios": report["proposed"]["anchor_ratios"]}
    assert report["proposed"]["coverage"]["0.7"] == 1.0
    assert "shape-only" in text and "256 x 0.5" in text


def test_the_proposal_never_covers_fewer_boxes_than_the_current_grid() -> None:
    # two shapes the k-means starts fit poorly with one anchor: the search from the current grid keeps its fit
    boxes = np.array([[64.0, 32.0]] * 3 + [[32.0, 64.0]] * 3)
    report = anchor_report(boxes, [SIZE_64x32], [0.5, 2.0], threshold=0.7)
    assert report["current"]["coverage"]["0.7"] == 1.0 and report["proposed"]["coverage"]["0.7"] == 1.0
    assert report["grids_tried"][-1]["from"] == "current grid"
