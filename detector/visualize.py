"""Drawing boxes on images, image grids, atomic image writes and the dataset preview behind `detector data show`.

Images are (H, W, 3) uint8 RGB numpy arrays; boxes are (N, 4) pixel ``x1, y1, x2, y2`` (numpy or CPU tensors),
labels are foreground classes ``1..K`` (label ``l`` is ``class_names[l - 1]``). Drawing never modifies its
input: every function returns a new image.

`show_dataset` draws samples exactly as training sees them (after `DetectionDataset` and the augmentation),
so a box that does not sit on its object in the preview is a bug in the data path, not in the drawing.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from detector.errors import DetectorError

if TYPE_CHECKING:  # drawing needs no torch; only show_dataset does, and imports it when called
    from detector.structures import Dataset

__all__ = ["IGNORE_COLOR", "class_color", "draw_detections", "image_grid", "save_image", "show_dataset"]

# Sasha Trubetskoy's 20 distinct colours minus the greys, which are kept for ignore regions.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128),
]  # fmt: skip
IGNORE_COLOR = (160, 160, 160)
BACKGROUND_RGB = (32, 32, 32)  # grid cells and letterbox bars
HATCH_STEP = 8  # pixels between the diagonal lines that mark an ignore region
DASH, GAP = 6, 4  # pixels of an ignore region's dashed outline
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_CELL = 512  # show_dataset cell size cap, so a 16-image grid stays a few megapixels


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of foreground label ``label`` (1..K); colours repeat after len(PALETTE) classes."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A copy of ``image`` as (H, W, 3) uint8 RGB; grayscale (H, W) / (H, W, 1) is expanded."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DetectorError(f"images to draw must be uint8, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) -> (H, W)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DetectorError(f"images to draw must have shape (H, W, 3), got {image.shape}")
    return image.copy()


def _pixel_corners(box: Sequence[float], shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Continuous xyxy -> inclusive pixel corners inside the image (a box [0, 10) covers pixels 0..9)."""
    height, width = shape[:2]
    x1, y1, x2, y2 = np.rint(np.asarray(box, dtype=np.float64)).astype(int).tolist()
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width - 1, x2 - 1), min(height - 1, y2 - 1)
    return (x1, y1, x2, y2) if x2 >= x1 and y2 >= y1 else None


def _dashed_line(canvas: np.ndarray, start: tuple[int, int], end: tuple[int, int], color: tuple, width: int) -> None:
    length = max(abs(end[0] - start[0]), abs(end[1] - start[1]), 1)

    def point(t: int) -> tuple[int, int]:
        return start[0] + (end[0] - start[0]) * t // length, start[1] + (end[1] - start[1]) * t // length

    for offset in range(0, length + 1, DASH + GAP):
        cv2.line(canvas, point(offset), point(min(offset + DASH, length)), color, width)


def _draw_ignore(canvas: np.ndarray, box: Sequence[float], thickness: int) -> None:
    """Grey diagonal hatching inside the region and a dashed grey outline."""
    corners = _pixel_corners(box, canvas.shape)
    if corners is None:
        return
    x1, y1, x2, y2 = corners
    region = canvas[y1 : y2 + 1, x1 : x2 + 1]  # a view: lines drawn into it are clipped to the region
    height, width = region.shape[:2]
    for start in range(-height, width, HATCH_STEP):
        cv2.line(region, (start, height - 1), (start + height - 1, 0), IGNORE_COLOR, 1)
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x1, y2), (x2, y2)), ((x1, y1), (x1, y2))):
        _dashed_line(canvas, a, b, IGNORE_COLOR, max(1, thickness // 2))


def _draw_label(canvas: np.ndarray, text: str, corner: tuple[int, int], color: tuple, thickness: int) -> None:
    """Text on a filled box of the class colour, above the box's top-left corner (inside when at the top)."""
    scale = max(0.4, 0.25 * thickness)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = corner
    top = y - text_h - baseline - 2 if y - text_h - baseline - 2 >= 0 else y
    cv2.rectangle(canvas, (x, top), (x + text_w + 2, top + text_h + baseline + 2), color, cv2.FILLED)
    # dark text on light colours, white on dark ones (ITU-R BT.601 luma)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)


def _label_text(label: int, class_names: Sequence[str], score: float | None) -> str:
    name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    boxes: Any,
    labels: Any,
    class_names: Sequence[str],
    scores: Any | None = None,
    ignore: Any | None = None,
    thickness: int = 2,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 RGB with boxes drawn. ``texts`` replaces the "class score" labels
    (tracking writes "#ID class score").

    boxes: (N, 4) pixel xyxy; labels: (N,) in 1..K (one colour per class); scores: (N,) in [0, 1] or None
    (shown after the class name); ignore: (G, 4) pixel xyxy regions, drawn hatched with a dashed grey outline.
    """
    canvas = _as_rgb(image)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (N, 4), also when N == 0
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = None if scores is None else np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(labels)} labels / scores")
    for region in np.asarray([] if ignore is None else ignore, dtype=np.float32).reshape(-1, 4):
        _draw_ignore(canvas, region, thickness)
    corners = [_pixel_corners(box, canvas.shape) for box in boxes]
    for corner, label in zip(corners, labels):
        if corner is not None:
            cv2.rectangle(canvas, corner[:2], corner[2:], class_color(label), thickness)
    # labels last, so no box outline crosses a label
    for index, (corner, label) in enumerate(zip(corners, labels)):
        if corner is not None:
            score = None if scores is None else float(scores[index])
            text = texts[index] if texts is not None else _label_text(int(label), class_names, score)
            _draw_label(canvas, text, corner[:2], class_color(label), thickness)
    return canvas


def _fit(image: np.ndarray, cell_size: int) -> np.ndarray:
    """(H, W, 3) -> (cell_size, cell_size, 3): scaled to fit, centred on the background colour."""
    height, width = image.shape[:2]
    scale = cell_size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR  # AREA avoids aliasing when shrinking
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    cell = np.empty((cell_size, cell_size, 3), np.uint8)
    cell[:] = BACKGROUND_RGB
    top, left = (cell_size - new_h) // 2, (cell_size - new_w) // 2
    cell[top : top + new_h, left : left + new_w] = resized
    return cell


def image_grid(
    images: list[np.ndarray], cols: int, cell_size: int, captions: Sequence[str] | None = None
) -> np.ndarray:
    """Images in a grid of ``cols`` columns of square ``cell_size`` cells -> (rows * cell, cols * cell, 3) uint8.

    Each image is scaled to fit its cell (aspect kept); ``captions`` are written at each cell's bottom-left.
    """
    if not images:
        raise DetectorError("image_grid needs at least one image")
    if cols < 1 or cell_size < 8:
        raise DetectorError(f"image_grid needs cols >= 1 and cell_size >= 8, got {cols} and {cell_size}")
    rows = math.ceil(len(images) / cols)
    grid = np.empty((rows * cell_size, cols * cell_size, 3), np.uint8)
    grid[:] = BACKGROUND_RGB
    for index, image in enumerate(images):
        cell = _fit(_as_rgb(image), cell_size)
        if captions is not None:
            _draw_label(cell, captions[index], (0, cell_size - 1), (255, 255, 255), 1)
        row, col = divmod(index, cols)
        grid[row * cell_size : (row + 1) * cell_size, col * cell_size : (col + 1) * cell_size] = cell
    return grid


def save_image(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image (format from the suffix) atomically: a temp file, then os.replace.

    Parent folders are created; an existing file is replaced (callers decide whether that is wanted).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DetectorError(f"cannot write image {path}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)}")
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(_as_rgb(image_rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise DetectorError(f"cannot encode image {path} as {suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(encoded.tobytes())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; a picture is for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def show_dataset(dataset: Dataset, out: Path, augment: Any | None, max_size: int, num: int = 16, seed: int = 0) -> Path:
    """Draw ``num`` randomly chosen samples (by ``seed``) after the training data path into a grid image at ``out``.

    With ``augment`` (an `AugmentConfig`) the samples are augmented as in training; with None they are only
    resized to ``max_size``. Boxes are drawn per class, ignore regions hatched grey. Returns ``out``.
    """
    if not dataset.records:
        raise DetectorError("the dataset to show has no images")
    if num < 1:
        raise DetectorError(f"the number of images to show must be at least 1, got {num}")
    count = min(num, len(dataset.records))
    chosen = np.random.default_rng(seed).choice(len(dataset.records), size=count, replace=False)
    indices = sorted(chosen.tolist())
    from detector.data.dataset import DetectionDataset
    from detector.data.mosaic_augment import build_mosaic
    from detector.data.transforms import build_transform

    transform = build_transform(augment, max_size, train=augment is not None)
    # the whole dataset, so a mosaic draws its other images from all of it, as in training
    data = DetectionDataset(dataset, transform, seed=seed, mosaic=build_mosaic(augment))
    tiles = []
    for index in indices:
        sample = data[index]
        # (3, h, w) float in [0, 1] -> (h, w, 3) uint8
        image = (sample.image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        targets = sample.targets
        tiles.append(draw_detections(image, targets.boxes, targets.labels, dataset.class_names, ignore=targets.ignore))
    cols = math.ceil(math.sqrt(len(tiles)))
    captions = [dataset.records[index].image_path.name for index in indices]
    return save_image(out, image_grid(tiles, cols, min(max_size, MAX_CELL), captions))
