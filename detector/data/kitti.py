"""KITTI object ``label_2`` reader.

Layout: ``PATH/training/image_2`` + ``PATH/training/label_2``, or ``image_2`` / ``label_2`` directly
under ``PATH``. Each label line has 15 whitespace-separated fields (16 in result files, the last a score):

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry

``x1 y1 x2 y2`` are already pixel ``x1, y1, x2, y2`` (floats, 0-based), so they are used as they are.
``DontCare`` marks unlabeled regions: by default they become ignore regions, not background.
"""

from __future__ import annotations

from pathlib import Path

from detector.data.images import list_images, read_image_size
from detector.data.readers import RawDataset, RawImage, RawObject, build_dataset, index_by_stem, parse_numbers
from detector.structures import Dataset, DetectorError

__all__ = ["DEFAULT_IGNORE_CLASSES", "parse_kitti_label", "read_kitti"]

DEFAULT_IGNORE_CLASSES = ["DontCare"]

_FIELDS = "type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry"


def _find_folders(path: Path) -> tuple[Path, Path]:
    """(image folder, label folder) under ``path``."""
    for root in (path / "training", path):
        if (root / "image_2").is_dir() and (root / "label_2").is_dir():
            return root / "image_2", root / "label_2"
    raise DetectorError(
        f"{path} is not a KITTI dataset: expected training/image_2 and training/label_2 (or image_2 and label_2)"
    )


def parse_kitti_label(label_path: Path) -> list[RawObject]:
    """Objects of one ``label_2`` file; a DetectorError naming ``file:line`` for a malformed line."""
    objects = []
    try:
        lines = label_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DetectorError(f"cannot read KITTI label file {label_path}: {error}") from None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue  # blank lines (a trailing newline) carry no object
        where = f"{label_path}:{line_number}"
        if len(fields) not in (15, 16):
            raise DetectorError(f"{where}: expected 15 fields ({_FIELDS}), got {len(fields)}")
        values = parse_numbers(fields[1:], where, _FIELDS)
        x1, y1, x2, y2 = values[3:7]  # fields 5-8 of the line
        objects.append(RawObject(fields[0], (x1, y1, x2, y2)))
    return objects


def read_kitti(
    path: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
) -> Dataset:
    """Read a KITTI ``label_2`` dataset; ``ignore_classes`` defaults to ``["DontCare"]``.

    Default classes are every type found (after ``class_map``, minus ignore classes), sorted. Image sizes
    come from the image headers (KITTI frames differ slightly in size); image ids follow sorted file names.
    """
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"dataset path does not exist: {path}")
    image_dir, label_dir = _find_folders(path)
    images = index_by_stem(list_images(image_dir), image_dir)
    labels = index_by_stem(sorted(label_dir.glob("*.txt")), label_dir)
    if not images:
        raise DetectorError(f"no images found in {image_dir}")
    raw_images, names = [], set()
    for key, image_path in images.items():
        objects = parse_kitti_label(labels[key]) if key in labels else []
        names.update(obj.name for obj in objects)
        width, height = read_image_size(image_path)
        raw_images.append(RawImage(image_path, width, height, objects))
    raw = RawDataset(
        root=path,
        images=raw_images,
        source_names=sorted(names),
        sort_names=True,
        images_without_labels=sum(key not in labels for key in images),
        labels_without_image=[labels[key].name for key in labels if key not in images],
    )
    if ignore_classes is None:
        ignore_classes = DEFAULT_IGNORE_CLASSES
    return build_dataset(raw, classes, class_map, ignore_classes)
