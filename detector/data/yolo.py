"""YOLO (Darknet / Ultralytics txt) reader.

Layout: ``PATH/images/**/NAME.ext`` with ``PATH/labels/**/NAME.txt`` at the same relative path
(split subfolders such as ``images/train`` are fine). Each label line is

    class cx cy w h

with ``class`` a 0-based integer id and the box centre and size normalized by the image width / height.
Boxes become pixel ``x1, y1, x2, y2`` via `boxes.cxcywh_norm_to_xyxy`, using each image's size read from
its header (no pixel decode). Class names come from ``names_file``, else from a names file in ``PATH``
(see `NAMES_CANDIDATES`), else the ids themselves ("0", "1", ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from detector.boxes import cxcywh_norm_to_xyxy
from detector.data.images import list_images, read_image_size
from detector.data.raw import RawDataset, RawImage, RawObject, build_dataset, index_by_stem, parse_numbers
from detector.structures import Dataset, DetectorError

__all__ = ["NAMES_CANDIDATES", "declared_split_filters", "parse_yolo_label", "read_class_names", "read_yolo"]

NAMES_CANDIDATES = ("data.yaml", "dataset.yaml", "classes.txt", "names.txt", "labels/classes.txt")

_FIELDS = "class cx cy w h"


def _names_from_yaml(path: Path) -> list[str]:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DetectorError(f"cannot read class names from {path}: {error}") from None
    names = content.get("names") if isinstance(content, dict) else None
    if isinstance(names, dict):
        ids = sorted(int(key) for key in names)
        if ids != list(range(len(ids))):
            raise DetectorError(f"{path}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [names[key] for key in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise DetectorError(f"{path}: expected a 'names:' list or id -> name mapping")
    return [str(name) for name in names]


def declared_split_filters(path: str | Path, names_file: str | Path | None = None) -> dict[str, str]:
    """The train / val / test folders an Ultralytics data.yaml declares (``val: images/val``), as regular expressions
    on image paths relative to the dataset folder ``path`` (`detector.data.build.filter_records`). Splits that name
    the same folders as train are left out (a single-folder dataset declares no validation split); {} without a
    data.yaml. Entries are taken relative to the dataset folder being read, not to the file's ``path:`` key (which
    goes stale when a dataset is moved). An image-list .txt entry or one outside the dataset folder is refused."""
    path = Path(path)
    candidates = [Path(names_file)] if names_file and Path(names_file).suffix.lower() in (".yaml", ".yml") else \
        [path / "data.yaml", path / "dataset.yaml"]
    yaml_path = next((p for p in candidates if p.is_file()), None)
    if yaml_path is None:
        return {}
    try:
        content = yaml.safe_load(yaml_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DetectorError(f"cannot read {yaml_path}: {error}") from None
    if not isinstance(content, dict):
        return {}
    folders: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        entries = content.get(split)
        if entries is None:
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            folder = (path / str(entry)).resolve()
            if str(entry).endswith(".txt"):
                raise DetectorError(f"{yaml_path}: '{split}: {entry}' is an image list; list the split's folders "
                                    "(for example images/val) or set data.val_filter")
            try:
                relative = folder.relative_to(path.resolve()).as_posix()
            except ValueError:
                raise DetectorError(f"{yaml_path}: '{split}: {entry}' is outside the dataset folder {path}") from None
            folders.setdefault(split, []).append(relative)
    train = sorted(folders.get("train", []))
    return {split: "^(" + "|".join(re.escape(f) + "/" for f in names) + ")"
            for split, names in folders.items() if split == "train" or sorted(names) != train}


def read_class_names(names_file: str | Path) -> list[str]:
    """Class names (index = YOLO class id) from a text file (one per line) or a YAML with ``names:``."""
    path = Path(names_file)
    if not path.is_file():
        raise DetectorError(f"class names file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _names_from_yaml(path)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DetectorError(f"class names file {path} is empty (expected one class name per line)")
    return names


def _find_names(path: Path, names_file: str | Path | None) -> list[str] | None:
    if names_file is not None:
        return read_class_names(names_file)
    for candidate in NAMES_CANDIDATES:
        if (path / candidate).is_file():
            return read_class_names(path / candidate)
    return None


def parse_yolo_label(label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (M,) int64, normalized cx cy w h (M, 4) float64) of one label file."""
    ids, rows = [], []
    try:
        lines = label_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DetectorError(f"cannot read YOLO label file {label_path}: {error}") from None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_number}"
        if len(fields) != 5:
            raise DetectorError(f"{where}: expected 5 fields ({_FIELDS}), got {len(fields)}")
        values = parse_numbers(fields, where, _FIELDS)
        if values[0] < 0 or not values[0].is_integer():
            raise DetectorError(f"{where}: class id must be a non-negative integer, got {fields[0]!r}")
        if not all(0.0 <= v <= 1.0 for v in values[1:]):  # Ultralytics refuses these too
            raise DetectorError(f"{where}: cx cy w h must be normalized to [0, 1] by the image size, got "
                                f"{' '.join(fields[1:])} (pixel values? divide by the image width and height)")
        ids.append(int(values[0]))
        rows.append(values[1:])
    return np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _read_image(image_path: Path, label_path: Path | None, names: list[str] | None) -> RawImage:
    width, height = read_image_size(image_path)
    if label_path is None:
        return RawImage(image_path, width, height, [])
    ids, normalized = parse_yolo_label(label_path)
    if names is not None and len(ids) and ids.max() >= len(names):
        raise DetectorError(f"{label_path}: class id {ids.max()} is out of range for {len(names)} class names")
    boxes = cxcywh_norm_to_xyxy(normalized, width, height)
    objects = [RawObject(names[i] if names else str(i), tuple(box)) for i, box in zip(ids.tolist(), boxes.tolist())]
    return RawImage(image_path, width, height, objects)


def read_yolo(
    path: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    names_file: str | Path | None = None,
) -> Dataset:
    """Read a YOLO dataset; default classes follow the names order (class id i -> label i + 1).

    Images without a label file are negatives (counted in the report); label files without an image are
    skipped and listed. Image ids follow the sorted image paths.
    """
    path = Path(path)
    if not path.is_dir():
        raise DetectorError(f"YOLO dataset folder not found: {path}")
    if not ((path / "images").is_dir() and (path / "labels").is_dir()):
        raise DetectorError(f"{path} is not a YOLO dataset: expected the folders images/ and labels/")
    names = _find_names(path, names_file)
    image_dir, label_dir = path / "images", path / "labels"
    images = index_by_stem(list_images(image_dir, recursive=True), image_dir)
    label_files = [p for p in sorted(label_dir.rglob("*.txt")) if p != label_dir / "classes.txt"]
    labels = index_by_stem(label_files, label_dir)
    if not images:
        raise DetectorError(f"no images found in {image_dir}")
    raw_images = [_read_image(image, labels.get(key), names) for key, image in images.items()]
    if names is None:
        ids = {int(obj.name) for image in raw_images for obj in image.objects}
        names = [str(i) for i in range(max(ids) + 1)] if ids else []
    raw = RawDataset(
        root=path,
        images=raw_images,
        source_names=names,
        sort_names=False,
        images_without_labels=sum(key not in labels for key in images),
        labels_without_image=[labels[key].relative_to(label_dir).as_posix() for key in labels if key not in images],
    )
    return build_dataset(raw, classes, class_map, ignore_classes)
