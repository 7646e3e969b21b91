"""Dataset statistics for ``detector data stats``: what is in a dataset and what the reader changed.

Box areas use COCO's size buckets, so the numbers line up with the AP_small / AP_medium / AP_large
columns of the evaluation: small < 32^2 <= medium < 96^2 <= large (pixels of the original image).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from detector.structures import Dataset, DatasetReport

__all__ = ["AREA_BUCKETS", "area_bucket_counts", "count_converted_images", "dataset_stats", "format_stats",
           "report_datasets"]

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
        "report": dataset.report.to_json(),
    }


def count_converted_images(dataset: Dataset) -> int:
    """Images that are not 8-bit RGB (grayscale, palette, RGBA, 16-bit, float), which `load_image` converts, from
    their headers only; counted into ``dataset.report.converted_images`` with the files in its details."""
    report = dataset.report
    report.converted_images = 0
    report.details.pop("converted_images", None)
    for record in dataset.records:
        try:
            with Image.open(record.image_path) as image:
                mode = image.mode
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # undecodable files are reported when they are loaded
        if mode != "RGB":
            report.converted_images += 1
            report.note("converted_images", f"{record.image_path.name} ({mode})")
    return report.converted_images


def report_datasets(datasets: dict[str, Dataset], out_dir: Path | None = None) -> list[str]:
    """Print the readers' reports of ``datasets`` (split name -> dataset), one line per kind of change, and write
    them with the files behind every count to ``out_dir/data_report.json``. Splits filtered from one read share
    its report and print it once. Returns the printed lines."""
    groups: dict[int, tuple[list[str], DatasetReport]] = {}
    for name, dataset in datasets.items():
        groups.setdefault(id(dataset.report), ([], dataset.report))[0].append(name)
    lines = [f"data ({'/'.join(names)}): {line}" for names, report in groups.values() for line in report.summary()]
    for line in lines:
        print(line)
    if out_dir is not None:
        payload = {"/".join(names): report.to_json() for names, report in groups.values()}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "data_report.json").write_text(json.dumps(payload, indent=2))
    return lines


def _table(rows: list[list[str]]) -> list[str]:
    """Left-align the first column and right-align the others."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    aligned = [[row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])] for row in rows]
    return ["  " + "  ".join(row) for row in aligned]


def _report_lines(report: dict) -> list[str]:
    return ["  " + line for line in report["summary"]] or ["  nothing changed or dropped"]


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
