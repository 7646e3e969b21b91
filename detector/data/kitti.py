"""KITTI object ``label_2`` reader.

Layout: ``PATH/training/image_2`` + ``PATH/training/label_2``, or ``image_2`` / ``label_2`` directly
under ``PATH``. Each label line has 15 whitespace-separated fields (16 in result files, the last a score):

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry

``x1 y1 x2 y2`` are already pixel ``x1, y1, x2, y2`` (floats, 0-based), so they are used as they are.
``DontCare`` marks unlabeled regions: by default they become ignore regions, not background.

``difficulty`` applies the KITTI benchmark's own rule (devkit ``evaluate_object``): at level easy, moderate or
hard only objects at least ``MIN_HEIGHT`` pixels tall, occluded at most ``MAX_OCCLUSION`` (0 visible, 1 partly,
2 largely occluded, 3 unknown) and truncated at most ``MAX_TRUNCATION`` count; the others are neither found nor
missed, so they become ignore regions (``crowd``), as the devkit does with them.
"""

from __future__ import annotations

from pathlib import Path

from detector.data.images import list_images, read_image_size
from detector.data.raw import RawDataset, RawImage, RawObject, build_dataset, index_by_stem, parse_numbers
from detector.structures import Dataset, DetectorError

__all__ = ["DIFFICULTIES", "parse_kitti_label", "read_kitti"]

# level -> (min box height in px, max occlusion level, max truncation), the devkit's values
DIFFICULTIES = {"easy": (40.0, 0, 0.15), "moderate": (25.0, 1, 0.30), "hard": (25.0, 2, 0.50)}

_FIELDS = "type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry"


def _find_folders(path: Path) -> tuple[Path, Path]:
    """(image folder, label folder) under ``path``."""
    for root in (path / "training", path):
        if (root / "image_2").is_dir() and (root / "label_2").is_dir():
            return root / "image_2", root / "label_2"
    raise DetectorError(
        f"{path} is not a KITTI dataset: expected training/image_2 and training/label_2 (or image_2 and label_2)"
    )


def _counts_at(difficulty: str, truncated: float, occluded: float, box: tuple[float, float, float, float]) -> bool:
    """Whether the KITTI benchmark scores this object at `difficulty` ("all": every object)."""
    if difficulty == "all":
        return True
    min_height, max_occlusion, max_truncation = DIFFICULTIES[difficulty]
    return box[3] - box[1] >= min_height and occluded <= max_occlusion and truncated <= max_truncation


def parse_kitti_label(label_path: Path, difficulty: str = "all") -> list[RawObject]:
    """Objects of one ``label_2`` file, those below `difficulty` marked ``crowd`` (ignore regions);
    a DetectorError naming ``file:line`` for a malformed line."""
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
        truncated, occluded = values[0], values[1]
        box = (values[3], values[4], values[5], values[6])  # fields 5-8 of the line: x1 y1 x2 y2
        objects.append(RawObject(fields[0], box, crowd=not _counts_at(difficulty, truncated, occluded, box)))
    return objects


def read_kitti(
    path: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    ignore_classes: list[str] | None = None,
    difficulty: str = "all",
) -> Dataset:
    """Read a KITTI ``label_2`` dataset; ``ignore_classes`` defaults to ``["DontCare"]``; ``difficulty`` (all,
    easy, moderate, hard) turns the objects the KITTI benchmark would not score at that level into ignore regions.

    Default classes are every type found (after ``class_map``, minus ignore classes), sorted. Image sizes
    come from the image headers (KITTI frames differ slightly in size); image ids follow sorted file names.
    """
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"dataset path does not exist: {path}")
    if difficulty != "all" and difficulty not in DIFFICULTIES:
        raise DetectorError(f"KITTI difficulty must be all, {', '.join(DIFFICULTIES)}; got {difficulty!r}")
    image_dir, label_dir = _find_folders(path)
    images = index_by_stem(list_images(image_dir), image_dir)
    labels = index_by_stem(sorted(label_dir.glob("*.txt")), label_dir)
    if not images:
        raise DetectorError(f"no images found in {image_dir}")
    raw_images, names = [], set()
    for key, image_path in images.items():
        objects = parse_kitti_label(labels[key], difficulty) if key in labels else []
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
    return build_dataset(raw, classes, class_map, ignore_classes)
