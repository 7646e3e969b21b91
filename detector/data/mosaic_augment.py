"""Mosaic augmentation (YOLOv4, Ultralytics): four training images in one frame, each at its own scale.

With probability ``p`` a training sample becomes a frame of its own size, split at a random centre into four
quadrants: the top left shows a random window of the sample's own image, the other three windows of images drawn from
the training set by the sample's seed. One step sees four scenes' cars and backgrounds. Ultralytics shrinks the four
images onto a 2x canvas and lets its affine step crop back; here no image is shrunk (a partner is only rescaled to
the sample's longest side, as the resize step would do anyway), so the cars keep the sizes the box regression meets
at test time.

A quadrant's edge cuts boxes as a crop does (`detector.data.transforms`): an object keeps its clipped box when at
least ``min_visibility`` of its area stays in its quadrant; otherwise it becomes an ignore region
(``cut_objects_ignored``) or background. Ignore regions and proposals are clipped and kept while any part stays.
The mosaic comes before the transform, which then flips, turns, crops and resizes it like any image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from detector.structures import DetectorError

__all__ = ["MosaicAugment", "RawSample", "build_mosaic"]

MIN_PIECE = 1.0  # pixels: a clipped box narrower or lower than this is dropped, as in the transforms


@dataclass
class RawSample:
    """An image and its annotations before the transform, in its own pixels.

    image: (H, W, 3) uint8 RGB; boxes: (M, 4) float32 xyxy; labels: (M,) int64 in 1..K; ignore: (G, 4) float32 xyxy;
    proposals: (P, 4) float32 xyxy or None.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    proposals: np.ndarray | None = None


def _window(boxes: np.ndarray, scale: float, source: tuple[float, float], target: tuple[float, float, float, float]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) xyxy of an image scaled by ``scale``, whose window at ``source`` (x, y) is pasted at ``target`` (x1, y1,
    x2, y2) -> (boxes moved and clipped to the target (N, 4) float32, visible share of each box's area (N,))."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)  # (N, 4), also when N == 0
    moved = boxes * scale
    moved[:, 0::2] += target[0] - source[0]
    moved[:, 1::2] += target[1] - source[1]
    clipped = moved.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(target[0], target[2])
    clipped[:, 1::2] = clipped[:, 1::2].clip(target[1], target[3])
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped, np.where(area > 0, kept / np.maximum(area, 1e-12), 0.0)


def _sized(boxes: np.ndarray) -> np.ndarray:
    """Mask of the (N, 4) xyxy boxes at least MIN_PIECE wide and high."""
    return ((boxes[:, 2] - boxes[:, 0]) >= MIN_PIECE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_PIECE)


class MosaicAugment:
    """Callable ``(sample, load, count, rng) -> RawSample``: with probability ``p``, the mosaic of ``sample`` (the top
    left) and three samples ``load(i)`` for indices drawn from ``range(count)`` by ``rng``; else ``sample`` itself.

    ``centre``: the range of the split point, as a fraction of the width and of the height.
    """

    def __init__(self, p: float, min_visibility: float, cut_objects_ignored: bool = True,
                 centre: tuple[float, float] = (0.25, 0.75)) -> None:
        if not 0.0 <= p <= 1.0:
            raise DetectorError(f"config key 'augment.mosaic' is a probability and must be in [0, 1], got {p}")
        if not 0.0 < centre[0] <= centre[1] < 1.0:
            raise DetectorError(f"the mosaic centre range must lie within (0, 1), got {list(centre)}")
        self.p = p
        self.min_visibility = min_visibility
        self.cut_objects_ignored = cut_objects_ignored
        self.centre = centre

    def __call__(self, sample: RawSample, load: Callable[[int], RawSample], count: int,
                 rng: np.random.Generator) -> RawSample:
        if self.p == 0.0 or rng.random() >= self.p:
            return sample
        height, width = sample.image.shape[:2]
        cx = int(round(width * rng.uniform(*self.centre)))
        cy = int(round(height * rng.uniform(*self.centre)))
        quadrants = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
        pieces = [sample] + [load(int(i)) for i in rng.integers(0, count, size=3)]
        image = np.empty_like(sample.image)
        parts = [self._paste(piece, quadrant, max(height, width), image, rng)
                 for piece, quadrant in zip(pieces, quadrants)]
        boxes, labels, ignore, proposals = (np.concatenate(column) for column in zip(*parts))
        return RawSample(image, boxes, labels, ignore, None if sample.proposals is None else proposals)

    def _paste(self, piece: RawSample, quadrant: tuple[int, int, int, int], long_side: int, canvas: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Paste a random window of ``piece`` into ``quadrant`` (x1, y1, x2, y2) of ``canvas`` -> (boxes, labels,
        ignore regions, proposals) of that window, in canvas pixels."""
        qx1, qy1, qx2, qy2 = quadrant
        q_width, q_height = qx2 - qx1, qy2 - qy1
        p_height, p_width = piece.image.shape[:2]
        # the partner at the sample's longest side, as the resize step would see it, and at least the quadrant's size
        scale = max(long_side / max(p_height, p_width), q_width / p_width, q_height / p_height)
        image = piece.image
        if scale != 1.0:
            size = (max(q_width, round(p_width * scale)), max(q_height, round(p_height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        x0 = int(rng.integers(0, image.shape[1] - q_width + 1))
        y0 = int(rng.integers(0, image.shape[0] - q_height + 1))
        if q_width > 0 and q_height > 0:
            canvas[qy1:qy2, qx1:qx2] = image[y0:y0 + q_height, x0:x0 + q_width]
        boxes, visible = _window(piece.boxes, scale, (x0, y0), quadrant)
        keep = (visible >= max(self.min_visibility, 1e-6)) & _sized(boxes)
        cut = ~keep & (visible > 0) & _sized(boxes) if self.cut_objects_ignored else np.zeros(len(boxes), bool)
        ignore, seen = _window(piece.ignore, scale, (x0, y0), quadrant)
        regions = np.concatenate([ignore[(seen > 0) & _sized(ignore)], boxes[cut]])
        proposals = np.zeros((0, 4), np.float32)
        if piece.proposals is not None:
            proposals, seen = _window(piece.proposals, scale, (x0, y0), quadrant)
            proposals = proposals[(seen > 0) & _sized(proposals)]
        labels = np.asarray(piece.labels, np.int64).reshape(-1)[keep]
        return boxes[keep], labels, regions.astype(np.float32).reshape(-1, 4), proposals


def build_mosaic(augment: Any | None) -> MosaicAugment | None:
    """The mosaic step of `AugmentConfig` (read duck-typed: enabled, mosaic, min_visibility, cut_objects), or None
    when augmentation is off or ``augment.mosaic`` is 0."""
    if augment is None or not augment.enabled or not float(getattr(augment, "mosaic", 0.0)):
        return None
    return MosaicAugment(float(augment.mosaic), float(augment.min_visibility),
                         getattr(augment, "cut_objects", "ignore") == "ignore")
