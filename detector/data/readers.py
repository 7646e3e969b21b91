"""One entry point for every annotation format: `read_dataset` dispatches to the format modules, `detect_format`
guesses a dataset's format from its layout. The records and the class selection the formats share live in
`detector.data.raw`, which the formats import (imports go one way: readers -> formats -> raw)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detector.data.coco import read_coco
from detector.data.kitti import read_kitti
from detector.data.raw import IGNORE_CATEGORY
from detector.data.voc import read_voc
from detector.data.yolo import read_yolo
from detector.structures import Dataset, DetectorError

__all__ = ["FORMATS", "IGNORE_CATEGORY", "detect_format", "read_dataset"]

FORMATS = ("coco", "voc", "yolo", "kitti")

_READERS: dict[str, Callable[..., Dataset]] = {"coco": read_coco, "voc": read_voc, "yolo": read_yolo, "kitti": read_kitti}


def read_dataset(
    path: str | Path,
    fmt: str,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    names_file: str | None = None,
    kitti_difficulty: str = "all",
    image_root: str | None = None,
    voc_coordinates: str = "auto",
) -> Dataset:
    """Read a dataset in one of `FORMATS` into a `Dataset` of pixel-xyxy `ImageRecord`s.

    ``names_file`` (class names, one per line, or a YAML with ``names:``) is for the yolo format only;
    ``ignore_classes`` defaults to ``[IGNORE_CATEGORY]`` (``DontCare``); ``kitti_difficulty``
    (kitti only: all, easy, moderate, hard) makes objects below that KITTI level ignore regions; ``image_root``
    (coco only) is the folder the JSON's file names are relative to; ``voc_coordinates`` (voc only: auto, 1-based,
    0-based) how VOC pixel values are read (detector/data/voc.py).
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
    if fmt == "coco":
        options["image_root"] = image_root
    elif image_root:
        raise DetectorError(f"data.image_root is only used by the coco format, not {fmt!r}; leave it empty")
    if fmt == "voc":
        options["coordinates"] = voc_coordinates
    elif voc_coordinates != "auto":
        raise DetectorError(f"data.voc_coordinates is only used by the voc format, not {fmt!r}; leave it at auto")
    if fmt == "kitti":
        options["difficulty"] = kitti_difficulty
    elif kitti_difficulty != "all":
        raise DetectorError(f"data.kitti_difficulty is only used by the kitti format, not {fmt!r}; leave it at all")
    return _READERS[fmt](path, **options)


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
