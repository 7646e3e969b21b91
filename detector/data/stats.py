"""Dataset statistics for ``detector data stats``: what is in a dataset and what the reader changed.

Box areas use COCO's size buckets, so the numbers line up with the AP_small / AP_medium / AP_large
columns of the evaluation: small < 32^2 <= medium < 96^2 <= large (pixels of the original image).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import numpy as np

from detector.structures import Dataset

__all__ = ["AREA_BUCKETS", "area_bucket_counts", "dataset_stats", "format_stats"]

# (name, lower bound inclusive, upper bound exclusive) in square pixels, as in pycocotools' areaRng
AREA_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def area_bucket_counts(boxes: np.ndarray) -> dict[str, int]:
    """Number of (N, 4) pixel-xyxy boxes in each COCO area bucket."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {name: int(((areas >= low) & (areas < high)).sum()) for name, low, high in AREA_BUCKETS}


def _per_class(dataset: Dataset, boxes: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, int]]:
    per_class = {}
    for label, name in enumerate(dataset.class_names, start=1):
        selected = labels == label
        images = sum(int((record.labels == label).any()) for record in dataset.records)
        per_class[name] = {"boxes": int(selected.sum()), "images": images, **area_bucket_counts(boxes[selected])}
    return per_class


def dataset_stats(dataset: Dataset) -> dict:
    """Counts describing a dataset, as a JSON-ready dict.

    Keys: images, classes, boxes, boxes_per_class, per_class (boxes / images / area buckets per class),
    area_buckets, boxes_per_image (min / mean / max), ignore_regions, images_with_ignore, empty_images,
    image_sizes ("WxH" -> count) and report (the reader's DatasetReport fields).
    """
    records = dataset.records
    boxes = np.concatenate([record.boxes for record in records]) if records else np.zeros((0, 4), np.float32)
    labels = np.concatenate([record.labels for record in records]) if records else np.zeros(0, np.int64)
    counts = np.array([len(record.boxes) for record in records]) if records else np.zeros(1, np.int64)
    per_class = _per_class(dataset, boxes, labels)
    sizes = Counter(f"{record.width}x{record.height}" for record in records)
    return {
        "images": len(records),
        "classes": list(dataset.class_names),
        "boxes": int(len(boxes)),
        "boxes_per_class": {name: entry["boxes"] for name, entry in per_class.items()},
        "per_class": per_class,
        "area_buckets": area_bucket_counts(boxes),
        "boxes_per_image": {"min": int(counts.min()), "mean": round(float(counts.mean()), 2), "max": int(counts.max())},
        "ignore_regions": sum(len(record.ignore) for record in records),
        "images_with_ignore": sum(int(len(record.ignore) > 0) for record in records),
        "empty_images": sum(int(len(record.boxes) == 0) for record in records),
        "image_sizes": dict(sizes.most_common()),
        "report": asdict(dataset.report),
    }


def _table(rows: list[list[str]]) -> list[str]:
    """Left-align the first column and right-align the others."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    aligned = [[row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])] for row in rows]
    return ["  " + "  ".join(row) for row in aligned]


def _report_lines(report: dict) -> list[str]:
    without_image = report["labels_without_image"]
    lines = [
        f"  clipped boxes: {report['clipped_boxes']}",
        f"  degenerate boxes dropped: {report['degenerate_boxes']}",
        f"  objects of unselected classes dropped: {report['dropped_labels']} "
        f"(in {report['images_with_dropped_labels']} images)",
        f"  images without a label file (negatives): {report['images_without_labels']}",
        f"  label files without an image (skipped): {len(without_image)}"
        + (f" (first: {without_image[0]})" if without_image else ""),
        f"  images converted to 8-bit RGB: {report['converted_images']}",
    ]
    return lines


def format_stats(stats: dict) -> str:
    """The dict from `dataset_stats` as readable plain text (one table of per-class counts)."""
    per_image = stats["boxes_per_image"]
    buckets = stats["area_buckets"]
    sizes = ", ".join(f"{size} ({count})" for size, count in list(stats["image_sizes"].items())[:5])
    if len(stats["image_sizes"]) > 5:
        sizes += f", ... ({len(stats['image_sizes'])} sizes)"
    rows = [["class", "boxes", "images", "small", "medium", "large"]]
    for name, entry in stats["per_class"].items():
        rows.append([name] + [str(entry[key]) for key in ("boxes", "images", "small", "medium", "large")])
    rows.append(["total", str(stats["boxes"]), "", *(str(buckets[key]) for key in ("small", "medium", "large"))])
    lines = [
        f"images: {stats['images']} ({stats['empty_images']} without boxes)",
        f"classes: {len(stats['classes'])}",
        f"boxes: {stats['boxes']} (per image min {per_image['min']}, mean {per_image['mean']}, max {per_image['max']})",
        f"ignore regions: {stats['ignore_regions']} (in {stats['images_with_ignore']} images)",
        f"image sizes: {sizes or 'none'}",
        "",
        *_table(rows),
        "",
        "reader report:",
        *_report_lines(stats["report"]),
    ]
    return "\n".join(lines)
