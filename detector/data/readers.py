"""One entry point for every annotation format, and the class selection all formats share.

Each format module (coco.py, voc.py, yolo.py, kitti.py) only parses its files into `RawImage`s:
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.boxes import clip_boxes, nondegenerate
from detector.structures import Dataset, DatasetReport, DetectorError, ImageRecord

__all__ = ["FORMATS", "RawDataset", "RawImage", "RawObject", "build_dataset", "detect_format", "read_dataset"]

FORMATS = ("coco", "voc", "yolo", "kitti")


@dataclass
class RawObject:
    """One annotated object as a format stores it: source class name and pixel xyxy box."""

    name: str
    box: tuple[float, float, float, float]
    crowd: bool = False  # COCO iscrowd / VOC difficult: an ignore region when its class is selected


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
            raise DetectorError(
                f"class {name!r} in {option} does not exist in the data; available: {', '.join(available) or 'none'}"
            )


def _output_names(raw: RawDataset, class_map: dict[str, str], ignore: set[str]) -> list[str]:
    """Output class names in default order: mapped source names minus ignore classes, deduplicated."""
    names: list[str] = []
    for source in raw.source_names:
        name = class_map.get(source, source)
        if name not in ignore and source not in ignore and name not in names:
            names.append(name)
    return sorted(names) if raw.sort_names else names


def _clip_and_filter(boxes: list, width: int, height: int, report: DatasetReport) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) xyxy boxes -> (clipped boxes (M', 4), keep mask (M,)); counts clipped and degenerate boxes."""
    original = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))  # (M, 4), also when M == 0
    clipped = clip_boxes(original, (height, width))
    keep = nondegenerate(clipped)
    changed = (clipped != original).any(dim=1)
    report.degenerate_boxes += int((~keep).sum())
    report.clipped_boxes += int((changed & keep).sum())
    return clipped[keep].numpy(), keep.numpy()


def _build_record(
    raw: RawImage,
    index: int,
    label_of: dict[str, int],
    class_map: dict[str, str],
    ignore: set[str],
    report: DatasetReport,
) -> ImageRecord:
    """One record: selected objects become boxes, ignore-class and crowd objects regions, the rest is dropped."""
    boxes, labels, regions, dropped = [], [], [], 0
    for obj in raw.objects:
        name = class_map.get(obj.name, obj.name)
        if obj.name in ignore or name in ignore:
            regions.append(obj.box)
        elif name not in label_of:
            dropped += 1
        elif obj.crowd:
            regions.append(obj.box)
        else:
            boxes.append(obj.box)
            labels.append(label_of[name])
    report.dropped_labels += dropped
    report.images_with_dropped_labels += int(dropped > 0)
    kept_boxes, keep = _clip_and_filter(boxes, raw.width, raw.height, report)
    kept_regions, _ = _clip_and_filter(regions, raw.width, raw.height, report)
    return ImageRecord(
        image_path=raw.image_path,
        width=raw.width,
        height=raw.height,
        boxes=kept_boxes,
        labels=np.asarray(labels, dtype=np.int64)[keep],
        image_id=index if raw.image_id is None else raw.image_id,
        ignore=kept_regions,
    )


def build_dataset(
    raw: RawDataset,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
) -> Dataset:
    """Apply class mapping / selection / ignore classes and box clipping to a parsed dataset.

    Records keep the order of ``raw.images``; an image without ``image_id`` gets its index in that order.
    ``ignore_classes`` names (source or mapped) that the data lacks simply produce no regions, so a
    format's default (KITTI ``DontCare``) also works on subsets without them.
    """
    if not raw.images:
        raise DetectorError(f"no images found in {raw.root}")
    class_map = dict(class_map or {})
    ignore = set(ignore_classes or [])
    _check_names(class_map, raw.source_names, "class_map")
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
        images_without_labels=raw.images_without_labels, labels_without_image=list(raw.labels_without_image)
    )
    records = [_build_record(image, i, label_of, class_map, ignore, report) for i, image in enumerate(raw.images)]
    return Dataset(class_names=list(classes), records=records, report=report)


def _format_readers() -> dict[str, Callable[..., Dataset]]:
    # Imported here rather than at the top: every format module builds on the helpers above.
    from detector.data.coco import read_coco
    from detector.data.kitti import read_kitti
    from detector.data.voc import read_voc
    from detector.data.yolo import read_yolo

    return {"coco": read_coco, "voc": read_voc, "yolo": read_yolo, "kitti": read_kitti}


def read_dataset(
    path: str | Path,
    fmt: str,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    names_file: str | None = None,
    kitti_difficulty: str = "all",
) -> Dataset:
    """Read a dataset in one of `FORMATS` into a `Dataset` of pixel-xyxy `ImageRecord`s.

    ``names_file`` (class names, one per line, or a YAML with ``names:``) is for the yolo format only;
    ``ignore_classes`` defaults to ``["DontCare"]`` for kitti and to none elsewhere; ``kitti_difficulty``
    (kitti only: all, easy, moderate, hard) makes objects below that KITTI level ignore regions.
    """
    if fmt not in FORMATS:
        raise DetectorError(f"unknown dataset format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"dataset path does not exist: {path}")
    options = {"classes": classes, "class_map": class_map, "ignore_classes": ignore_classes}
    if fmt == "yolo":
        options["names_file"] = names_file
    elif names_file is not None:
        raise DetectorError(f"names_file is only used by the yolo format, not {fmt!r}")
    if fmt == "kitti":
        options["difficulty"] = kitti_difficulty
    elif kitti_difficulty != "all":
        raise DetectorError(f"data.kitti_difficulty is only used by the kitti format, not {fmt!r}; leave it at all")
    return _format_readers()[fmt](path, **options)


def _has_files(folder: Path, suffix: str) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == suffix for p in folder.iterdir())


def detect_format(path: str | Path) -> str:
    """Guess the format of a dataset from its layout; a DetectorError when none or several fit."""
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"dataset path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise DetectorError(f"cannot guess the format of {path}: only a COCO .json file can be given as a file")
    found = []
    if (path / "annotations.json").is_file() or _has_files(path / "annotations", ".json"):
        found.append("coco")
    if any(_has_files(path / name, ".xml") for name in ("Annotations", "labels_xml", "annotations")):
        found.append("voc")
    if (path / "labels").is_dir() and (path / "images").is_dir():
        found.append("yolo")
    if (path / "label_2").is_dir() or (path / "training" / "label_2").is_dir():
        found.append("kitti")
    if len(found) != 1:
        what = "several formats (" + ", ".join(found) + ")" if found else "no known layout"
        raise DetectorError(f"cannot guess the format of {path}: it matches {what}; pass the format explicitly")
    return found[0]
