"""What every annotation format shares: the raw records a format parses into, and the class selection.

Each format module (coco.py, voc.py, yolo.py, kitti.py) imports this module and only parses its files into
`RawImage`s (`detector.data.readers` dispatches to the formats; nothing here imports them):
source class names and pixel ``x1, y1, x2, y2`` boxes. `build_dataset` then does what must be identical
across formats, so that switching format never changes the training data:

- ``class_map`` renames source classes (``{"Car": "car", "Van": "car"}``);
- ``ignore_classes`` become ignore regions (KITTI ``DontCare``), as do crowd / difficult objects;
- ``classes`` picks and orders the output classes (label ``i + 1`` is ``classes[i]``); other objects are
  dropped and counted in the report;
- boxes are clipped to the image and degenerate ones dropped, both counted in the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.boxes import clip_boxes, nondegenerate
from detector.data.images import check_image_file
from detector.errors import UnknownClassError
from detector.structures import Dataset, DatasetReport, DetectorError, ImageRecord

__all__ = ["IGNORE_CATEGORY", "RawDataset", "RawImage", "RawObject", "build_dataset", "find_subdir", "index_by_stem",
           "parse_numbers"]

# The class name of ignore regions ("unlabelled, any class"): KITTI's DontCare, and what `writers` writes ignore
# regions under in COCO and VOC. Every format reads it as ignore regions unless ignore_classes says otherwise.
IGNORE_CATEGORY = "DontCare"


@dataclass
class RawObject:
    """One annotated object as a format stores it: source class name and pixel xyxy box."""

    name: str
    box: tuple[float, float, float, float]
    crowd: bool = False  # COCO iscrowd / VOC difficult: an ignore region of its class when the class is selected
    area: float | None = None  # the source's area (COCO ``area``: a segment's), None where it has none


@dataclass
class RawImage:
    """One image with its raw objects; ``image_id`` is None unless the format has ids (COCO)."""

    image_path: Path
    width: int
    height: int
    objects: list[RawObject]
    image_id: int | None = None


@dataclass
class RawDataset:
    """A parsed dataset before class selection.

    source_names: every class name the format declares or uses, in its natural order;
    sort_names: True where that order is arbitrary (VOC, KITTI), so default output classes are sorted.
    """

    root: Path
    images: list[RawImage]
    source_names: list[str]
    sort_names: bool
    images_without_labels: int = 0
    labels_without_image: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)  # listed by the annotations, absent on disk (COCO)
    orphan_annotations: list[str] = field(default_factory=list)  # ids of annotations of an unlisted image (COCO)


def parse_numbers(fields: Sequence[str], where: str, expected: str) -> list[float]:
    """Parse annotation fields as finite floats; ``where`` is ``file:line`` and ``expected`` names the fields."""
    try:
        values = [float(text) for text in fields]
    except ValueError:
        bad = next(text for text in fields if not _is_float(text))
        raise DetectorError(f"{where}: expected numbers ({expected}), got {bad!r}") from None
    if not all(math.isfinite(value) for value in values):
        raise DetectorError(f"{where}: expected finite numbers ({expected}), got {' '.join(fields)}")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def find_subdir(root: Path, candidates: Iterable[str], what: str) -> Path:
    """The first of ``candidates`` that is a folder under ``root``, else a DetectorError naming them."""
    candidates = list(candidates)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DetectorError(f"{root} has no {what} folder (expected one of: {', '.join(candidates)})")


def index_by_stem(paths: Iterable[Path], root: Path) -> dict[str, Path]:
    """Map each file's path relative to ``root`` without its extension to the file.

    Two files with the same key (``a.jpg`` and ``a.png``) are an error: a label could not tell which it describes.
    """
    index: dict[str, Path] = {}
    for path in paths:
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in index:
            raise DetectorError(f"{index[key]} and {path} share the basename {key!r}; keep one image per basename")
        index[key] = path
    return index


def _check_names(names: Iterable[str], available: Sequence[str], option: str) -> None:
    for name in names:
        if name not in available:
            raise UnknownClassError(name, option, list(available))


def _output_names(raw: RawDataset, class_map: dict[str, str], ignore: set[str]) -> list[str]:
    """Output class names in default order: mapped source names minus ignore classes, deduplicated."""
    names: list[str] = []
    for source in raw.source_names:
        name = class_map.get(source, source)
        if name not in ignore and source not in ignore and name not in names:
            names.append(name)
    return sorted(names) if raw.sort_names else names


def _clip_and_filter(boxes: list, raw: RawImage, report: DatasetReport) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) xyxy boxes of ``raw`` -> (clipped boxes (M', 4), keep mask (M,)); counts clipped and degenerate
    boxes and names the image behind each count."""
    width, height = raw.width, raw.height
    original = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))  # (M, 4), also when M == 0
    clipped = clip_boxes(original, (height, width))
    keep = nondegenerate(clipped)
    changed = (clipped != original).any(dim=1)
    degenerate, clipped_boxes = int((~keep).sum()), int((changed & keep).sum())
    report.degenerate_boxes += degenerate
    report.clipped_boxes += clipped_boxes
    for kind, count in (("degenerate_boxes", degenerate), ("clipped_boxes", clipped_boxes)):
        if count:
            report.note(kind, raw.image_path.name)
    return clipped[keep].numpy(), keep.numpy()


def _build_record(
    raw: RawImage,
    index: int,
    label_of: dict[str, int],
    class_map: dict[str, str],
    ignore: set[str],
    report: DatasetReport,
) -> ImageRecord:
    """One record: selected objects become boxes, ignore-class objects regions of any class (label 0), crowd
    objects regions of their class; the rest is dropped. Source areas ride along when the format has them."""
    boxes, labels, areas, regions, region_labels, dropped = [], [], [], [], [], 0
    for obj in raw.objects:
        name = class_map.get(obj.name, obj.name)
        if obj.name in ignore or name in ignore:
            regions.append(obj.box)
            region_labels.append(0)
        elif name not in label_of:
            dropped += 1
        elif obj.crowd:
            regions.append(obj.box)
            region_labels.append(label_of[name])
        else:
            boxes.append(obj.box)
            labels.append(label_of[name])
            areas.append(math.nan if obj.area is None else obj.area)
    report.dropped_labels += dropped
    if dropped:
        report.images_with_dropped_labels += 1
        report.note("dropped_labels", raw.image_path.name)
    kept_boxes, keep = _clip_and_filter(boxes, raw, report)
    kept_regions, keep_regions = _clip_and_filter(regions, raw, report)
    kept_areas = np.asarray(areas, dtype=np.float32)[keep]
    return ImageRecord(
        image_path=raw.image_path,
        width=raw.width,
        height=raw.height,
        boxes=kept_boxes,
        labels=np.asarray(labels, dtype=np.int64)[keep],
        image_id=index if raw.image_id is None else raw.image_id,
        ignore=kept_regions,
        ignore_labels=np.asarray(region_labels, dtype=np.int64)[keep_regions],
        areas=kept_areas if np.isfinite(kept_areas).any() else None,
    )


def build_dataset(
    raw: RawDataset,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
) -> Dataset:
    """Apply class mapping / selection / ignore classes and box clipping to a parsed dataset.

    Records keep the order of ``raw.images``; an image without ``image_id`` gets its index in that order.
    ``class_map`` and ``ignore_classes`` names (source or mapped) that the data lacks are simply unused, so the
    default (``[IGNORE_CATEGORY]``, KITTI's ``DontCare``) works on every dataset.
    """
    if not raw.images:
        raise DetectorError(f"no images found in {raw.root}")
    class_map = dict(class_map or {})
    ignore = {IGNORE_CATEGORY} if ignore_classes is None else set(ignore_classes)
    # class_map names the data lacks are unused, as ignore_classes' are: a subset without Vans still reads with
    # {Van: car}; a misspelt key shows when `classes` (model.class_names) names a class the data then lacks
    available = _output_names(raw, class_map, ignore)
    if classes is None:
        classes = available
    elif not classes:
        raise DetectorError(f"classes is empty; pick at least one of: {', '.join(available) or 'none'}")
    _check_names(classes, available, "classes")
    if len(set(classes)) != len(classes):
        raise DetectorError(f"classes lists a name more than once: {', '.join(classes)}")
    label_of = {name: i + 1 for i, name in enumerate(classes)}
    report = DatasetReport(
        images_without_labels=raw.images_without_labels, labels_without_image=list(raw.labels_without_image),
        missing_images=list(raw.missing_images), orphan_annotations=list(raw.orphan_annotations),
    )
    records = []
    for i, image in enumerate(raw.images):
        problem = check_image_file(image.image_path)
        if problem:
            report.unreadable_images.append(f"{image.image_path.name} ({problem})")
        else:
            records.append(_build_record(image, i, label_of, class_map, ignore, report))
    root = raw.root.parent if raw.root.is_file() else raw.root  # a COCO JSON's folder
    return Dataset(class_names=list(classes), records=records, report=report, root=root)
