"""Dataset statistics: hand-counted boxes, COCO area buckets at their exact boundaries, readable text."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detector.cli import main
from detector.data.readers import read_dataset
from detector.data.stats import area_bucket_counts, count_converted_images, dataset_stats, format_stats, report_datasets
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
    report = lines[lines.index("reader report:") + 1:]
    assert report == ["  2 boxes extended outside their image and were clipped",
                      "  3 objects of classes not selected were dropped, in 1 images",
                      "  1 label files have no image and were skipped (first: x.txt)"]


def test_train_eval_and_convert_print_the_readers_report_and_save_its_details(tmp_path, capsys):
    """The report `data stats` shows is printed by every command that reads data, with the files behind each count
    in data_report.json; splits filtered from one read print it once."""
    root = tmp_path / "yolo"
    for name, label in (("a.png", "0 0.95 0.5 0.2 0.2\n"), ("b.png", "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.1 0.1\n")):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "images" / name), np.zeros((40, 40, 3), np.uint8))
        (root / "labels" / name.replace(".png", ".txt")).write_text(label)
    (root / "classes.txt").write_text("car\ntruck\n")
    dataset = read_dataset(root, "yolo", classes=["car"])
    lines = report_datasets({"train": dataset, "val": dataset}, tmp_path / "run")
    assert lines == ["data (train/val): 1 boxes extended outside their image and were clipped (first: a.png)",
                     "data (train/val): 1 objects of classes not selected were dropped, in 1 images (first: b.png)"]
    assert capsys.readouterr().out.splitlines() == lines
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())["train/val"]
    assert saved["details"] == {"clipped_boxes": ["a.png"], "dropped_labels": ["b.png"]}
    cv2.imwrite(str(root / "images" / "b.png"), np.zeros((40, 40), np.uint8))  # grayscale: converted when loaded
    assert count_converted_images(dataset) == 1 and dataset.report.details["converted_images"] == ["b.png (L)"]
    assert main(["convert", "--from", "yolo", "--to", "coco", str(root), str(tmp_path / "coco")]) == 0
    assert "data (source): 1 boxes extended outside their image and were clipped" in capsys.readouterr().out


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
