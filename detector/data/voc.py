"""Pascal VOC XML reader.

Layout: ``PATH/{JPEGImages,images}/NAME.ext`` and ``PATH/{Annotations,labels_xml,annotations}/NAME.xml``.
An XML file is matched to the image with the same basename; when there is none, to the basename of its
``<filename>`` (which often still holds the annotation tool's old folder, as in drone_cars).

Pixel convention (``data.voc_coordinates``): the VOC spec stores 1-based, inclusive pixel indices, so a box covers
the continuous 0-based extent ``(xmin - 1, ymin - 1, xmax, ymax)``, as Detectron2 reads it ("1-based"). Many tools
export 0-based values instead ("0-based": read as they are). "auto" (the default) reads a dataset as 1-based unless
some box starts at 0 on x or y, impossible in 1-based files: then the whole dataset is read as 0-based, with a
warning. drone_cars is such a dataset: 435 of its 4828 boxes start at 0 on x or y, and read as 0-based none leaves
the image; its YOLO labels are these boxes minus 1 on all four sides (the YOLO reader clips those 435 at 0).

``<difficult>1</difficult>`` objects become ignore regions. The image size comes from ``<size>``, or from
the image header when ``<size>`` is missing or zero.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

from detector.data.images import list_images, read_image_size
from detector.data.raw import RawDataset, RawImage, RawObject, build_dataset, find_subdir, index_by_stem
from detector.structures import Dataset, DetectorError

__all__ = ["ANNOTATION_DIRS", "IMAGE_DIRS", "VOC_COORDINATES", "parse_voc_xml", "read_voc"]

IMAGE_DIRS = ("JPEGImages", "images")
ANNOTATION_DIRS = ("Annotations", "labels_xml", "annotations")
VOC_COORDINATES = ("auto", "1-based", "0-based")

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _number(element: ET.Element | None, tag: str) -> float | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _parse_object(obj: ET.Element, xml_path: Path, index: int) -> RawObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DetectorError(f"{xml_path}: <object> {index + 1} has no <name>")
    box = obj.find("bndbox")
    values = [_number(box, tag) for tag in _BOX_TAGS]
    if any(value is None or not math.isfinite(value) for value in values):
        raise DetectorError(f"{xml_path}: <object> {index + 1} ({name!r}) needs finite numeric <bndbox> xmin ymin xmax "
                            f"ymax, got {', '.join(str(box.findtext(t) if box is not None else None) for t in _BOX_TAGS)}")
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
    return RawObject(name, tuple(values), crowd=difficult)


def parse_voc_xml(xml_path: Path) -> tuple[str, tuple[int, int] | None, list[RawObject]]:
    """(``<filename>``, (width, height) from ``<size>`` or None when absent/zero, objects with the file's own
    xmin ymin xmax ymax values) of one XML file."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise DetectorError(f"{xml_path}: malformed XML ({error})") from None
    except OSError as error:
        raise DetectorError(f"cannot read VOC annotation {xml_path}: {error}") from None
    if root.tag != "annotation":
        raise DetectorError(f"{xml_path}: expected an <annotation> root element, got <{root.tag}>")
    width, height = _number(root.find("size"), "width"), _number(root.find("size"), "height")
    size = (int(width), int(height)) if width and height and width > 0 and height > 0 else None
    objects = [_parse_object(obj, xml_path, i) for i, obj in enumerate(root.findall("object"))]
    return (root.findtext("filename") or "").strip(), size, objects


def _match_image(xml_key: str, filename: str, images: dict[str, Path]) -> str | None:
    """Key of the image an XML describes: same basename first, then ``<filename>``'s basename."""
    if xml_key in images:
        return xml_key
    # <filename> may use Windows separators from the annotation tool's machine
    fallback = Path(filename.replace("\\", "/")).stem
    return fallback if fallback in images else None


def _read_annotations(
    xml_dir: Path, images: dict[str, Path]
) -> tuple[dict[str, tuple[tuple[int, int] | None, list[RawObject]]], list[str]]:
    """({image key: (size or None, objects)}, names of XML files whose image is missing)."""
    annotations, labels_without_image = {}, []
    for xml_path in sorted(xml_dir.glob("*.xml")):
        filename, size, objects = parse_voc_xml(xml_path)
        key = _match_image(xml_path.stem, filename, images)
        if key is None:
            labels_without_image.append(xml_path.name)
        elif key in annotations:
            raise DetectorError(f"{xml_path}: image {images[key].name} is already annotated by another XML file")
        else:
            annotations[key] = (size, objects)
    return annotations, labels_without_image


def read_voc(
    path: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    coordinates: str = "auto",
) -> Dataset:
    """Read a Pascal VOC dataset; default classes are every ``<name>`` found, sorted.

    ``coordinates``: auto, 1-based or 0-based (see the module doc). Image ids follow the sorted image names.
    """
    if coordinates not in VOC_COORDINATES:
        raise DetectorError(f"data.voc_coordinates is {coordinates!r}; expected one of {', '.join(VOC_COORDINATES)}")
    path = Path(path)
    if not path.is_dir():
        raise DetectorError(f"VOC dataset folder not found: {path}")
    image_dir = find_subdir(path, IMAGE_DIRS, "image")
    xml_dir = find_subdir(path, ANNOTATION_DIRS, "annotation")
    images = index_by_stem(list_images(image_dir), image_dir)
    if not images:
        raise DetectorError(f"no images found in {image_dir}")
    annotations, labels_without_image = _read_annotations(xml_dir, images)
    if coordinates == "auto":
        at_zero = [key for key, (_, objects) in annotations.items() for obj in objects if min(obj.box[:2]) == 0]
        coordinates = "0-based" if at_zero else "1-based"
        if at_zero:
            warnings.warn(f"{len(at_zero)} VOC boxes in {xml_dir} start at 0 (first: {images[at_zero[0]].name}), "
                          "impossible in 1-based files: the dataset is read as 0-based pixel coordinates (set "
                          "data.voc_coordinates to 1-based or 0-based to choose)", stacklevel=2)
    if coordinates == "1-based":  # inclusive 1-based pixel indices -> continuous 0-based extent, as Detectron2
        for _, objects in annotations.values():
            for obj in objects:
                x1, y1, x2, y2 = obj.box
                obj.box = (x1 - 1, y1 - 1, x2, y2)
    raw_images = []
    for key, image_path in images.items():
        size, objects = annotations.get(key, (None, []))
        width, height = size or read_image_size(image_path)
        raw_images.append(RawImage(image_path, width, height, objects))
    names = sorted({obj.name for _, objects in annotations.values() for obj in objects})
    raw = RawDataset(path, raw_images, names, True, len(images) - len(annotations), labels_without_image)
    return build_dataset(raw, classes, class_map, ignore_classes)
