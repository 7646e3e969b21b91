"""COCO JSON reader (through ``pycocotools.coco.COCO``).

Accepted layouts: a ``.json`` file, or a folder holding ``annotations.json`` or exactly one
``annotations/*.json``. An image's ``file_name`` is looked up under ``image_root`` when given (``data.image_root``,
as detectron2's ``register_coco_instances`` takes one), else relative to the JSON's folder, its ``images/``
subfolder, ``images/`` next to the ``annotations/`` folder, and for COCO's own ``annotations/instances_<split>.json``
the ``<split>/`` folder beside ``annotations/`` (``train2017/``). Annotations of an image id the file does not list
are dropped and counted; images missing on disk are skipped and listed (`DatasetReport`).

COCO ``bbox`` is ``[x, y, width, height]`` in 0-based pixels; it becomes ``x1, y1, x2, y2`` through
`boxes.xywh_to_xyxy`. ``iscrowd`` objects become ignore regions. Default classes follow category id order;
image ids are COCO's own ids, and records are sorted by them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

from pycocotools.coco import COCO

from detector.boxes import xywh_to_xyxy
from detector.data.images import read_image_size
from detector.data.raw import RawDataset, RawImage, RawObject, build_dataset
from detector.structures import Dataset, DetectorError

__all__ = ["find_coco_json", "load_coco", "read_coco"]

_REQUIRED = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def find_coco_json(path: Path) -> Path:
    """The annotation file: ``path`` itself, ``path/annotations.json`` or the one ``path/annotations/*.json``."""
    if path.is_file():
        return path
    if (path / "annotations.json").is_file():
        return path / "annotations.json"
    candidates = sorted((path / "annotations").glob("*.json")) if (path / "annotations").is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise DetectorError(f"{path / 'annotations'} holds several JSON files ({names}); pass the one to read")
    raise DetectorError(f"{path} is not a COCO dataset: expected a .json file, annotations.json or annotations/*.json")


def _validate(content: object, json_path: Path) -> None:
    """Check the fields pycocotools indexes, so a bad file fails with its name instead of a KeyError."""
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DetectorError(f"{json_path}: expected a COCO object with an 'images' list")
    if not isinstance(content.get("categories"), list):
        raise DetectorError(f"{json_path}: expected a 'categories' list")
    content.setdefault("annotations", [])  # image-only files (test sets) are valid: every image is a negative
    if not isinstance(content["annotations"], list):
        raise DetectorError(f"{json_path}: expected an 'annotations' list, got {type(content['annotations']).__name__}")
    for section, keys in _REQUIRED.items():
        for index, entry in enumerate(content[section]):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise DetectorError(f"{json_path}: {section}[{index}] has no {', '.join(map(repr, missing))}")
    _validate_types(content, json_path)
    category_ids = {category["id"] for category in content["categories"]}
    for annotation in content["annotations"]:
        _validate_annotation(annotation, json_path, category_ids)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_types(content: dict, json_path: Path) -> None:
    """Ids must be integers and image sizes numbers, as the COCO format defines them."""
    for section, keys in (("images", ("id",)), ("annotations", ("id", "image_id", "category_id")),
                          ("categories", ("id",))):
        for index, entry in enumerate(content[section]):
            for key in keys:
                if not _is_int(entry[key]):
                    raise DetectorError(f"{json_path}: {section}[{index}] has {key} {entry[key]!r}; expected an integer")
    for section, key in (("images", "file_name"), ("categories", "name")):
        for index, entry in enumerate(content[section]):
            if not isinstance(entry[key], str) or not entry[key]:
                raise DetectorError(f"{json_path}: {section}[{index}] has {key} {entry[key]!r}; expected a non-empty "
                                    "string")
    for index, annotation in enumerate(content["annotations"]):
        if annotation.get("iscrowd", 0) not in (0, 1):
            raise DetectorError(f"{json_path}: annotations[{index}] has iscrowd {annotation['iscrowd']!r}; expected 0 "
                                "or 1")
        area = annotation.get("area")
        if area is not None and not (isinstance(area, (int, float)) and not isinstance(area, bool)
                                     and math.isfinite(area) and area >= 0):
            raise DetectorError(f"{json_path}: annotations[{index}] has area {area!r}; expected a non-negative number "
                                "of pixels")
    for index, image in enumerate(content["images"]):
        for key in ("width", "height"):
            value = image.get(key)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value) and value >= 0):
                raise DetectorError(f"{json_path}: images[{index}] has {key} {value!r}; expected a non-negative "
                                    "number of pixels")


def _validate_annotation(annotation: dict, json_path: Path, category_ids: set) -> None:
    where = f"{json_path}: annotation id {annotation['id']}"
    bbox = annotation["bbox"]
    numbers = isinstance(bbox, list) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    if not (numbers and len(bbox) == 4):
        raise DetectorError(f"{where} has bbox {bbox}, expected [x, y, width, height]")
    if annotation["category_id"] not in category_ids:
        raise DetectorError(f"{where} has category_id {annotation['category_id']}, which is not in 'categories'")


def load_coco(json_path: Path) -> COCO:
    """A pycocotools index of ``json_path``; malformed JSON or missing fields name the file."""
    try:
        content = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise DetectorError(f"{json_path}: malformed JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DetectorError(f"cannot read COCO annotations {json_path}: {error}") from None
    _validate(content, json_path)
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _image_roots(path: Path, json_path: Path, image_root: str | Path | None) -> list[Path]:
    if image_root:
        if not Path(image_root).is_dir():
            raise DetectorError(f"data.image_root {image_root} is not a folder (the folder COCO's file_name values "
                                "are relative to)")
        return [Path(image_root)]
    roots = [json_path.parent, json_path.parent / "images", json_path.parent.parent / "images"]
    if path.is_dir():
        roots.append(path / "images")
    if json_path.stem.startswith("instances_"):  # COCO's own layout: annotations/instances_train2017.json
        roots.append(json_path.parent.parent / json_path.stem[len("instances_"):])
    return list(dict.fromkeys(root for root in roots if root.is_dir()))  # keep order, drop duplicates


def _find_file(file_name: str, roots: list[Path]) -> Path | None:
    return next((root / file_name for root in roots if (root / file_name).is_file()), None)


def _raw_image(coco: COCO, image: dict, image_path: Path, names: dict[int, str]) -> RawImage:
    annotations = coco.imgToAnns[image["id"]]
    boxes = xywh_to_xyxy([annotation["bbox"] for annotation in annotations])  # (M, 4) xywh -> (M, 4) xyxy
    objects = [
        RawObject(names[annotation["category_id"]], tuple(box), crowd=bool(annotation.get("iscrowd", 0)),
                  area=float(annotation["area"]) if annotation.get("area") else None)
        for annotation, box in zip(annotations, boxes.tolist())
    ]
    width, height = int(image.get("width") or 0), int(image.get("height") or 0)
    if width <= 0 or height <= 0:
        width, height = read_image_size(image_path)
    return RawImage(image_path, width, height, objects, image_id=int(image["id"]))


def read_coco(
    path: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    image_root: str | Path | None = None,
) -> Dataset:
    """Read a COCO detection dataset (see the module doc for where images are looked up)."""
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"dataset path does not exist: {path}")
    json_path = find_coco_json(path)
    coco = load_coco(json_path)
    categories = coco.loadCats(sorted(coco.getCatIds()))
    names = {category["id"]: str(category["name"]) for category in categories}
    roots = _image_roots(path, json_path, image_root)
    raw_images, missing = [], []
    for image in coco.loadImgs(sorted(coco.getImgIds())):
        image_path = _find_file(image["file_name"], roots)
        if image_path is None:
            missing.append(str(image["file_name"]))
        else:
            raw_images.append(_raw_image(coco, image, image_path, names))
    if not coco.imgs:
        raise DetectorError(f"no images found in {json_path}: its 'images' list is empty")
    if not raw_images:
        raise DetectorError(f"no images of {json_path} were found (looked in: {', '.join(map(str, roots))})")
    source_names = list(dict.fromkeys(names[i] for i in sorted(names)))
    orphans = [str(a["id"]) for a in coco.dataset["annotations"] if a["image_id"] not in coco.imgs]
    raw = RawDataset(json_path, raw_images, source_names, sort_names=False, missing_images=missing,
                     orphan_annotations=orphans)
    dataset = build_dataset(raw, classes, class_map, ignore_classes)
    # each output class keeps its COCO category id where exactly one source category maps to it
    sources = {name: [i for i in sorted(names) if (class_map or {}).get(names[i], names[i]) == name]
               for name in dataset.class_names}
    if all(len(ids) == 1 for ids in sources.values()):
        dataset.category_ids = [sources[name][0] for name in dataset.class_names]
    return dataset
