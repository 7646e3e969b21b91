"""Dataset statistics: hand-counted boxes, COCO area buckets at their exact boundaries, readable text."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data.readers import read_dataset
from detector.data.stats import area_bucket_counts, dataset_stats, format_stats
from detector.structures import Dataset, DatasetReport, ImageRecord


@pytest.fixture
def dataset() -> Dataset:
    """Three images: 3 boxes + 1 ignore region, a negative, and 1 box; classes car (1) and truck (2)."""
    records = [
        ImageRecord(
            "a.jpg", 100, 50,
            boxes=[[0, 0, 10, 10], [0, 0, 32, 32], [0, 0, 96, 96]],  # areas 100, 1024 = 32^2, 9216 = 96^2
            labels=[1, 1, 2],
            image_id=0,
            ignore=[[50, 0, 60, 10]],
        ),
        ImageRecord("b.jpg", 100, 50, boxes=np.zeros((0, 4)), labels=[], image_id=1),
        ImageRecord("c.jpg", 64, 48, boxes=[[0, 0, 31, 33]], labels=[2], image_id=2),  # area 1023 < 32^2
    ]
    report = DatasetReport(
        clipped_boxes=2, dropped_labels=3, images_with_dropped_labels=1, labels_without_image=["x.txt"]
    )
    return Dataset(["car", "truck"], records, report)


def test_area_buckets_follow_coco_boundaries():
    boxes = np.array([[0, 0, 31.99, 32], [0, 0, 32, 32], [0, 0, 95.99, 96], [0, 0, 96, 96]])
    assert area_bucket_counts(boxes) == {"small": 1, "medium": 2, "large": 1}
    assert area_bucket_counts(np.zeros((0, 4))) == {"small": 0, "medium": 0, "large": 0}


def test_dataset_stats_counts(dataset):
    stats = dataset_stats(dataset)
    assert stats["images"] == 3 and stats["boxes"] == 4 and stats["classes"] == ["car", "truck"]
    assert stats["boxes_per_class"] == {"car": 2, "truck": 2}
    assert stats["per_class"]["car"] == {"boxes": 2, "images": 1, "small": 1, "medium": 1, "large": 0}
    assert stats["per_class"]["truck"] == {"boxes": 2, "images": 2, "small": 1, "medium": 0, "large": 1}
    assert stats["area_buckets"] == {"small": 2, "medium": 1, "large": 1}
    assert stats["boxes_per_image"] == {"min": 0, "mean": 1.33, "max": 3}
    assert (stats["ignore_regions"], stats["images_with_ignore"], stats["empty_images"]) == (1, 1, 1)
    assert stats["image_sizes"] == {"100x50": 2, "64x48": 1}
    assert stats["report"]["clipped_boxes"] == 2 and stats["report"]["images_with_dropped_labels"] == 1
    assert stats["report"]["labels_without_image"] == ["x.txt"]


def test_format_stats_is_readable_text(dataset):
    text = format_stats(dataset_stats(dataset))
    lines = text.splitlines()
    assert lines[0] == "images: 3 (1 without boxes)"
    assert "boxes: 4 (per image min 0, mean 1.33, max 3)" in lines
    assert "ignore regions: 1 (in 1 images)" in lines
    assert "image sizes: 100x50 (2), 64x48 (1)" in lines
    table = [line.split() for line in lines if line.startswith("  ") and ":" not in line]
    rows = {fields[0]: fields[1:] for fields in table}
    assert rows["class"] == ["boxes", "images", "small", "medium", "large"]
    assert rows["car"] == ["2", "1", "1", "1", "0"]
    assert rows["truck"] == ["2", "2", "1", "0", "1"]
    assert rows["total"] == ["4", "2", "1", "1"]
    assert "  clipped boxes: 2" in lines
    assert "  objects of unselected classes dropped: 3 (in 1 images)" in lines
    assert "  label files without an image (skipped): 1 (first: x.txt)" in lines


def test_stats_of_an_empty_dataset_do_not_crash():
    stats = dataset_stats(Dataset(["car"], []))
    assert stats["images"] == 0 and stats["boxes_per_class"] == {"car": 0}
    assert "images: 0 (0 without boxes)" in format_stats(stats)


def test_kitti_tiny_stats(shared_data):
    stats = dataset_stats(read_dataset(shared_data / "kitti_tiny", "kitti"))
    assert stats["images"] == 75 and stats["ignore_regions"] == 188
    assert stats["per_class"]["Car"]["boxes"] == 209 and stats["per_class"]["Car"]["images"] == 64
    assert sum(stats["per_class"]["Car"][key] for key in ("small", "medium", "large")) == 209
    assert "  Car" in format_stats(stats)
