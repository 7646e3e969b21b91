"""Write a `Dataset` as COCO, Pascal VOC, YOLO or KITTI files that `detector.data.readers` reads back unchanged.

Layouts (the readers' defaults, so ``read_dataset(dst, fmt)`` needs no options):

- coco:  ``dst/images/NAME`` + ``dst/annotations.json``; bbox ``[x, y, w, h]``, the source's ``area`` where the
  records have one (else the box's), ignore regions as ``iscrowd: 1`` annotations of their class (a crowd of cars,
  as COCO writes crowds) or, for regions of any class, of their own category ``DontCare``;
- voc:   ``dst/JPEGImages/NAME`` + ``dst/Annotations/STEM.xml``; 1-based inclusive pixel indices (x1 + 1, y1 + 1,
  x2, y2, which the reader's "1-based" convention inverts), ignore regions as objects of their class, or
  ``DontCare``, with ``<difficult>1</difficult>``;
- yolo:  ``dst/images/NAME`` + ``dst/labels/STEM.txt`` + ``dst/classes.txt`` + ``dst/data.yaml``; YOLO has no
  ignore regions, so they are dropped with a logged warning;
- kitti: ``dst/training/image_2/NAME`` + ``dst/training/label_2/STEM.txt``; ignore regions as ``DontCare`` (KITTI
  has no crowd of a class: such a region is widened to any class).

Ignore regions of any class ("unlabelled, any class", as KITTI's DontCare says; label 0) are written under the
category ``DontCare``, never under a real class: a tool that honours neither ``iscrowd`` nor ``difficult`` then
reads a DontCare object, not a phantom car, and every reader here takes ``DontCare`` back as ignore regions of any
class, and a crowd or difficult object back as an ignore region of its class.
Images are copied (``link=True`` hard-links them instead: no copy, but editing one edits the other). The dataset is
written into a temporary folder next to
``dst`` and renamed at the end, so a failed conversion leaves nothing behind; a non-empty ``dst`` is refused.
"""

from __future__ import annotations

import json
import math
import logging
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from detector.boxes import xyxy_to_cxcywh_norm, xyxy_to_xywh
from detector.data.raw import IGNORE_CATEGORY
from detector.structures import Dataset, DetectorError, ImageRecord

__all__ = ["WRITE_FORMATS", "write_dataset"]

log = logging.getLogger(__name__)

WRITE_FORMATS = ("coco", "voc", "yolo", "kitti")
# KITTI's "unknown" values for the fields a 2D dataset does not have: truncated, occluded, alpha,
# and after the box: dimensions h w l, location x y z, rotation_y.
_KITTI_UNKNOWN_HEAD = "-1 -1 -10"
_KITTI_UNKNOWN_TAIL = "-1 -1 -1 -1000 -1000 -1000 -10"


def _number(value: float) -> str:
    """A coordinate with at most 2 decimals and no trailing zeros: integral pixels stay integers ("136")."""
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _file_names(records: list[ImageRecord]) -> list[str]:
    """Output image names: the source basename, made unique (``STEM_INDEX``) where stems collide."""
    stems = Counter(record.image_path.stem for record in records)
    names = [
        path.name if stems[path.stem] == 1 else f"{path.stem}_{index}{path.suffix}"
        for index, path in enumerate(record.image_path for record in records)
    ]
    duplicates = [name for name, count in Counter(Path(n).stem for n in names).items() if count > 1]
    if duplicates:
        raise DetectorError(f"cannot give every image a unique file name (e.g. {duplicates[0]!r}); rename the sources")
    return names


def _place_image(source: Path, target: Path, link: bool) -> None:
    """Copy ``source`` to ``target``; with ``link``, hard-link it (same bytes, no copy) where the file system can."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not supported
            pass
    shutil.copy2(source, target)


def _check_ignore_name(dataset: Dataset, fmt: str) -> None:
    if IGNORE_CATEGORY in dataset.class_names:
        raise DetectorError(f"class name {IGNORE_CATEGORY!r} is reserved for ignore regions in {fmt} files; rename "
                            "that class (data.class_map)")


def _coco_annotations(record: ImageRecord, image_id: int, first_id: int, ignore_id: int) -> list[dict]:
    """COCO annotations of one image: its boxes (with the source's areas where the record has them), then its ignore
    regions as crowd objects: of their class (a crowd of cars), or of category DontCare (id ``ignore_id``) for a
    region of any class."""
    crowd = [0] * len(record.boxes) + [1] * len(record.ignore)
    categories = record.labels.tolist() + [label or ignore_id for label in record.ignore_labels.tolist()]
    boxes = np.concatenate([record.boxes, record.ignore])  # (M + G, 4) xyxy
    areas = [math.nan] * len(boxes) if record.areas is None else record.areas.tolist() + [math.nan] * len(record.ignore)
    annotations = []
    for box, xywh, category, iscrowd, area in zip(boxes.tolist(), xyxy_to_xywh(boxes).tolist(), categories, crowd,
                                                  areas):
        x1, y1, x2, y2 = (round(v, 3) for v in box)
        annotations.append({
            "id": first_id + len(annotations),
            "image_id": image_id,
            "category_id": int(category),
            "bbox": [round(v, 3) for v in xywh],
            "area": round(area if math.isfinite(area) else xywh[2] * xywh[3], 3),
            "iscrowd": iscrowd,
            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],  # the box as a polygon, for mask-based tools
        })  # fmt: skip
    return annotations


def _write_coco(dataset: Dataset, root: Path, names: list[str], final: Path, link: bool) -> None:
    ids = [int(record.image_id) for record in dataset.records]
    if len(set(ids)) != len(ids):
        ids = list(range(1, len(ids) + 1))  # COCO needs unique image ids
    _check_ignore_name(dataset, "coco")
    ignore_id = len(dataset.class_names) + 1
    images, annotations = [], []
    for image_id, record, name in zip(ids, dataset.records, names):
        _place_image(record.image_path, root / "images" / name, link)
        images.append({"id": image_id, "file_name": name, "width": record.width, "height": record.height})
        # annotation ids start at 1: pycocotools' matcher reads a ground-truth id of 0 as "unmatched"
        annotations += _coco_annotations(record, image_id, len(annotations) + 1, ignore_id)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(dataset.class_names)]
    if any((record.ignore_labels == 0).any() for record in dataset.records):
        categories.append({"id": ignore_id, "name": IGNORE_CATEGORY, "supercategory": "ignore"})
    content = {
        "info": {"description": f"written by detector from {len(images)} images"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations.json").write_text(json.dumps(content, indent=1))


def _voc_object(parent: ET.Element, name: str, box: list[float], difficult: bool) -> None:
    obj = ET.SubElement(parent, "object")
    ET.SubElement(obj, "name").text = name
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = "0"
    ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
    bndbox = ET.SubElement(obj, "bndbox")
    x1, y1, x2, y2 = box
    for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):  # VOC's 1-based pixels
        ET.SubElement(bndbox, tag).text = _number(value)


def _write_voc(dataset: Dataset, root: Path, names: list[str], final: Path, link: bool) -> None:
    _check_ignore_name(dataset, "voc")
    for record, name in zip(dataset.records, names):
        _place_image(record.image_path, root / "JPEGImages" / name, link)
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "folder").text = "JPEGImages"
        ET.SubElement(annotation, "filename").text = name
        size = ET.SubElement(annotation, "size")
        for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        ET.SubElement(annotation, "segmented").text = "0"
        for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
            _voc_object(annotation, dataset.class_names[label - 1], box, difficult=False)
        for box, label in zip(record.ignore.tolist(), record.ignore_labels.tolist()):
            # a region of a class is a difficult object of that class; a region of any class, DontCare
            _voc_object(annotation, dataset.class_names[label - 1] if label else IGNORE_CATEGORY, box, difficult=True)
        ET.indent(annotation)
        xml_path = root / "Annotations" / f"{Path(name).stem}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(annotation).write(xml_path, encoding="utf-8", xml_declaration=False)


def _write_yolo(dataset: Dataset, root: Path, names: list[str], final: Path, link: bool) -> None:
    (root / "labels").mkdir(parents=True)
    for record, name in zip(dataset.records, names):
        _place_image(record.image_path, root / "images" / name, link)
        normalized = xyxy_to_cxcywh_norm(record.boxes, record.width, record.height)  # (M, 4) cx cy w h in [0, 1]
        lines = [
            f"{label - 1} " + " ".join(f"{v:.6f}" for v in row)  # YOLO class ids are 0-based
            for label, row in zip(record.labels.tolist(), normalized.tolist())
        ]
        # negatives get an empty file, so "no objects" is stated rather than a missing label
        (root / "labels" / f"{Path(name).stem}.txt").write_text("".join(line + "\n" for line in lines))
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.class_names))
    data = {"path": str(final.resolve()), "train": "images", "val": "images", "nc": dataset.num_classes,
            "names": list(dataset.class_names)}  # fmt: skip
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    dropped = sum(len(record.ignore) for record in dataset.records)
    if dropped:
        log.warning("YOLO cannot express ignore regions: %d ignore regions were not written to %s", dropped, final)


def _write_kitti(dataset: Dataset, root: Path, names: list[str], final: Path, link: bool) -> None:
    for class_name in dataset.class_names:
        if not class_name or class_name != "".join(class_name.split()) or class_name == IGNORE_CATEGORY:
            raise DetectorError(
                f"class name {class_name!r} cannot be written as a KITTI type (no spaces, not {IGNORE_CATEGORY!r})"
            )
    for record, name in zip(dataset.records, names):
        _place_image(record.image_path, root / "training" / "image_2" / name, link)
        kinds = [dataset.class_names[label - 1] for label in record.labels.tolist()] + [IGNORE_CATEGORY] * len(
            record.ignore
        )
        boxes = np.concatenate([record.boxes, record.ignore])  # (M + G, 4) xyxy
        lines = [
            f"{kind} {_KITTI_UNKNOWN_HEAD} {' '.join(f'{v:.2f}' for v in box)} {_KITTI_UNKNOWN_TAIL}\n"
            for kind, box in zip(kinds, boxes.tolist())
        ]
        label_path = root / "training" / "label_2" / f"{Path(name).stem}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(lines))


_WRITERS: dict[str, Callable[[Dataset, Path, list[str], Path, bool], None]] = {
    "coco": _write_coco,
    "voc": _write_voc,
    "yolo": _write_yolo,
    "kitti": _write_kitti,
}


def _warn_class_list(dataset: Dataset, fmt: str) -> None:
    """VOC and KITTI store no class list: readers see the classes that have objects, sorted by name."""
    used = {dataset.class_names[label - 1] for record in dataset.records for label in record.labels.tolist()}
    if sorted(used) != list(dataset.class_names):
        log.warning(
            "%s stores no class list: the classes will read back as %s instead of %s (labels renumbered)",
            fmt.upper(), sorted(used), list(dataset.class_names),
        )  # fmt: skip


def _check_destination(dst: Path) -> None:
    if dst.is_file() or dst.is_symlink():
        raise DetectorError(f"conversion destination {dst} is a file; expected a new or empty folder")
    if dst.is_dir() and any(dst.iterdir()):
        raise DetectorError(f"conversion destination {dst} is not empty; choose a new folder (nothing is overwritten)")


def write_dataset(dataset: Dataset, dst: str | Path, fmt: str, link: bool = False) -> Path:
    """Write ``dataset`` to the new folder ``dst`` in format ``fmt`` (coco | voc | yolo | kitti); returns ``dst``.

    Boxes go in as stored (pixel xyxy, labels 1..K) and come back identical from
    ``read_dataset(dst, fmt)`` up to each format's precision (0.005 px for VOC / KITTI, 1e-6 of the image
    size for YOLO); see the module docstring for layouts, ignore regions and what YOLO cannot express.
    Images are copied, or hard-linked with ``link`` (then editing a converted image edits its source).
    Raises DetectorError for an unknown format or a ``dst`` that exists and is not an empty folder.
    """
    if fmt not in _WRITERS:
        raise DetectorError(f"unknown output format {fmt!r}; expected one of: {', '.join(WRITE_FORMATS)}")
    dst = Path(dst)
    _check_destination(dst)
    names = _file_names(dataset.records)
    if fmt in ("voc", "kitti"):
        _warn_class_list(dataset, fmt)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial"))
    try:
        _WRITERS[fmt](dataset, staging, names, dst, link)
        _check_destination(dst)  # nothing appeared there while writing
        if dst.is_dir():
            dst.rmdir()
        staging.chmod(0o755)  # mkdtemp makes the folder private (0700); a dataset folder is for sharing
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst
