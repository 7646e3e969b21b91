"""Mosaics: equal-size annotated tiles placed side by side into one large frame, boxes shifted exactly.

The drone set (../shared/data/drone_cars) is 640x640 tiles; nine of them in a 3x3 grid make a 1920x1920 frame with
native-resolution cars, the case sliced inference (detector.slicing) is for, and one whose ground truth is exact:
every box is its tile's box plus the tile's offset. Boxes are (M, 4) float32 xyxy pixels; tile k goes to row
``k // cols``, column ``k % cols``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from detector.data.images import load_image
from detector.errors import DetectorError

if TYPE_CHECKING:  # torch-free at run time, like the ONNX path it feeds
    from detector.structures import ImageRecord, Targets

__all__ = ["Mosaic", "build_mosaic", "mosaic_groups", "square_tiles"]

TILE_NAME = re.compile(r"^\d+_")  # drone tiles are <scene>_<n>.jpg; Drone2_(n) are video frames of another size


@dataclass
class Mosaic:
    """One mosaic frame and its ground truth, in the mosaic's pixels.

    image: (rows * H, cols * W, 3) uint8 RGB; boxes: (M, 4) float32 xyxy; labels: (M,) int64 in 1..K;
    ignore: (G, 4) float32 xyxy; offsets: per source tile its (x, y) top-left corner in the mosaic;
    records: the source tiles, in placement order; ignore_labels: (G,) int64, a region's class or 0 for any class.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    offsets: list[tuple[int, int]]
    records: list[ImageRecord]
    ignore_labels: np.ndarray

    def targets(self) -> "Targets":
        """The mosaic's ground truth (source areas are not carried: the boxes' areas are used)."""
        from detector.structures import Targets  # torch is imported only when an evaluator needs targets

        return Targets(self.boxes, self.labels, self.image.shape[:2], self.ignore, self.ignore_labels)


def _shift(boxes: np.ndarray, x: int, y: int) -> np.ndarray:
    return (np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([x, y, x, y], np.float32)).astype(np.float32)


def build_mosaic(records: Sequence[ImageRecord], rows: int = 3, cols: int = 3) -> Mosaic:
    """Place ``rows * cols`` annotated tiles of one size (H, W) row-major into one (rows*H, cols*W) frame; each
    tile's boxes and ignore regions move by its (x, y) offset, ``(col * W, row * H)``, and nothing else changes."""
    if rows < 1 or cols < 1 or len(records) != rows * cols:
        raise DetectorError(f"a {rows}x{cols} mosaic needs {rows * cols} tiles, got {len(records)}")
    height, width = records[0].height, records[0].width
    image = np.zeros((rows * height, cols * width, 3), np.uint8)
    boxes, labels, ignore, offsets = [], [], [], []
    for k, record in enumerate(records):
        tile = load_image(record.image_path)
        if tile.shape[:2] != (height, width) or (record.height, record.width) != (height, width):
            raise DetectorError(f"mosaic tiles must all be {width}x{height} pixels; {record.image_path.name} is "
                                f"{tile.shape[1]}x{tile.shape[0]}")
        x, y = (k % cols) * width, (k // cols) * height
        image[y:y + height, x:x + width] = tile
        boxes.append(_shift(record.boxes, x, y)), ignore.append(_shift(record.ignore, x, y))
        labels.append(np.asarray(record.labels, np.int64).reshape(-1)), offsets.append((x, y))
    region_labels = np.concatenate([record.ignore_labels for record in records])
    return Mosaic(image, np.concatenate(boxes), np.concatenate(labels), np.concatenate(ignore), offsets, list(records),
                  region_labels)


def square_tiles(records: Sequence[ImageRecord], size: int = 640) -> list[ImageRecord]:
    """The drone tiles (file name ``<digits>_...``) of ``size`` x ``size`` px, in name order (scene, then number)."""
    def key(record: ImageRecord) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", record.image_path.stem)]

    tiles = [r for r in records if TILE_NAME.match(r.image_path.name) and (r.width, r.height) == (size, size)]
    return sorted(tiles, key=key)


def mosaic_groups(records: Sequence[ImageRecord], rows: int = 3, cols: int = 3) -> list[list[ImageRecord]]:
    """Consecutive groups of ``rows * cols`` records; the remainder (fewer than a mosaic) is left out."""
    per = rows * cols
    return [list(records[i:i + per]) for i in range(0, len(records) - per + 1, per)]
