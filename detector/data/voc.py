"""Pascal VOC XML reader.

Layout: ``PATH/{JPEGImages,images}/NAME.ext`` and ``PATH/{Annotations,labels_xml,annotations}/NAME.xml``.
An XML file is matched to the image with the same basename; when there is none, to the basename of its
``<filename>`` (which often still holds the annotation tool's old folder, as in drone_cars).

Pixel convention: the VOC spec stores 1-based pixel indices. Following py-faster-rcnn, 1 is subtracted
from all four values (``VOC_PIXEL_OFFSET``) to get 0-based pixel ``x1, y1, x2, y2``. The data agrees:
drone_cars is annotated in both formats, and every one of its 4828 VOC boxes minus 1 equals its YOLO box
exactly, on all four coordinates (the test suite checks this). Its XML values do reach 0 and 640,
so its YOLO export, too, puts boxes that touch the left or top border 1 px outside the image. Both readers
clip those boxes and count them in ``report.clipped_boxes`` (435 of them in drone_cars).

``<difficult>1</difficult>`` objects become ignore regions. The image size comes from ``<size>``, or from
the image header when ``<size>`` is missing or zero.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detector.data.images import list_images, read_image_size
from detector.data.readers import RawDataset, RawImage, RawObject, build_dataset, find_subdir, index_by_stem
from detector.structures import Dataset, DetectorError

__all__ = ["ANNOTATION_DIRS", "IMAGE_DIRS", "VOC_PIXEL_OFFSET", "parse_voc_xml", "read_voc"]

IMAGE_DIRS = ("JPEGImages", "images")
ANNOTATION_DIRS = ("Annotations", "labels_xml", "annotations")
VOC_PIXEL_OFFSET = 1.0

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _number(element: ET.Element | None, tag: str) -> float | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _parse_object(obj: ET.Element, xml_path: Path, index: int, offset: float) -> RawObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DetectorError(f"{xml_path}: <object> {index + 1} has no <name>")
    box = obj.find("bndbox")
    values = [_number(box, tag) for tag in _BOX_TAGS]
    if any(value is None for value in values):
        raise DetectorError(f"{xml_path}: <object> {index + 1} ({name!r}) needs numeric <bndbox> xmin ymin xmax ymax")
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
    x1, y1, x2, y2 = (value - offset for value in values)
    return RawObject(name, (x1, y1, x2, y2), crowd=difficult)


def parse_voc_xml(
    xml_path: Path, offset: float = VOC_PIXEL_OFFSET
) -> tuple[str, tuple[int, int] | None, list[RawObject]]:
    """(``<filename>``, (width, height) from ``<size>`` or None when absent/zero, objects) of one XML file."""
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
    objects = [_parse_object(obj, xml_path, i, offset) for i, obj in enumerate(root.findall("object"))]
    return (root.findtext("filename") or "").strip(), size, objects


def _match_image(xml_key: str, filename: str, images: dict[str, Path]) -> str | None:
    """Key of the image an XML describes: same basename first, then ``<filename>``'s basename."""
    if xml_key in images:
        return xml_key
    # <filename> may use Windows separators from the annotation tool's machine
    fallback = Path(filename.replace("\\", "/")).stem
    return fallback if fallback in images else None


def _read_annotations(
    xml_dir: Path, images: dict[str, Path], offset: float
) -> tuple[dict[str, tuple[tuple[int, int] | None, list[RawObject]]], list[str]]:
    """({image key: (size or None, objects)}, names of XML files whose image is missing)."""
    annotations, labels_without_image = {}, []
    for xml_path in sorted(xml_dir.glob("*.xml")):
        filename, size, objects = parse_voc_xml(xml_path, offset)
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
    pixel_offset: float = VOC_PIXEL_OFFSET,
) -> Dataset:
    """Read a Pascal VOC dataset; default classes are every ``<name>`` found, sorted.

    ``pixel_offset`` is subtracted from every coordinate (1 for 1-based VOC files, 0 for 0-based exports).
    Image ids follow the sorted image names.
    """
    path = Path(path)
    if not path.is_dir():
        raise DetectorError(f"VOC dataset folder not found: {path}")
    image_dir = find_subdir(path, IMAGE_DIRS, "image")
    xml_dir = find_subdir(path, ANNOTATION_DIRS, "annotation")
    images = index_by_stem(list_images(image_dir), image_dir)
    if not images:
        raise DetectorError(f"no images found in {image_dir}")
    annotations, labels_without_image = _read_annotations(xml_dir, images, pixel_offset)
    raw_images = []
    for key, image_path in images.items():
        size, objects = annotations.get(key, (None, []))
        width, height = size or read_image_size(image_path)
        raw_images.append(RawImage(image_path, width, height, objects))
    names = sorted({obj.name for _, objects in annotations.values() for obj in objects})
    raw = RawDataset(path, raw_images, names, True, len(images) - len(annotations), labels_without_image)
    return build_dataset(raw, classes, class_map, ignore_classes)
