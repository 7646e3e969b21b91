"""Drawing primitives of the synthetic scenes: sprites, the far-to-near compositor that boxes cars by
their visible pixels, textures and lighting.

Polygons are drawn in 1/8-pixel fixed point (``_SHIFT``). Boxes are (M, 4) float32 absolute pixel
``x1, y1, x2, y2`` with ``x2 = last covered column + 1``. Shared by the top-down and driver views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

MIN_VISIBLE_FRACTION = 0.3  # below this a car is too hidden to ask a detector for: ignore region
MIN_BOX_SIDE = 4.0  # pixels; smaller visible boxes are dropped, nothing learnable is left
_SHIFT = 3  # polygons use 1/8-pixel fixed point, so small cars keep smooth outlines
Colour = tuple[int, int, int]

# Car paints seen on real roads, with how often they occur (white, greys and black dominate).
_PAINTS = np.array([[235, 235, 232], [188, 190, 194], [118, 120, 124], [28, 28, 32], [32, 48, 92],
                    [45, 85, 160], [165, 28, 28], [105, 22, 28], [42, 88, 62], [198, 184, 150],
                    [215, 185, 45], [205, 105, 35]], np.float64)
_PAINT_WEIGHTS = np.array([20, 15, 14, 17, 6, 7, 8, 3, 3, 3, 2, 2], np.float64)


def _shade(colour: Sequence[float], factor: float) -> Colour:
    return tuple(min(255, max(0, int(c * factor))) for c in colour)


def _fixed(points: np.ndarray) -> np.ndarray:
    """(P, 2) float pixel points -> (P, 2) int32 fixed-point points for cv2 drawing with ``_SHIFT``."""
    return np.round(np.asarray(points, np.float64) * (1 << _SHIFT)).astype(np.int32)


def _fill(canvas: np.ndarray, polygon: np.ndarray, value) -> None:
    cv2.fillPoly(canvas, [polygon], value, lineType=cv2.LINE_8, shift=_SHIFT)


def _circle(cx: float, cy: float, rx: float, ry: float | None = None, n: int = 16) -> np.ndarray:
    """(n, 2) float points of an ellipse (a circle when ``ry`` is None)."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + (rx if ry is None else ry) * np.sin(angles)], 1)


def _rect(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)


def _paint(rng: np.random.Generator) -> np.ndarray:
    colour = _PAINTS[rng.choice(len(_PAINTS), p=_PAINT_WEIGHTS / _PAINT_WEIGHTS.sum())]
    return np.clip(colour * rng.uniform(0.88, 1.1), 0, 255)


@dataclass
class SceneRender:
    """One rendered scene.

    image: (H, W, 3) uint8 RGB; boxes: (M, 4) float32 pixel xyxy of the visible cars;
    ignore: (G, 4) float32 pixel xyxy full boxes of cars less than 30% visible;
    track_ids: (M,) int64 identity of each box's car (stable across the frames of a video).
    """

    image: np.ndarray
    boxes: np.ndarray
    ignore: np.ndarray
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


@dataclass
class Sprite:
    """One object: ``parts`` are (P, 2) int32 fixed-point polygons with RGB colours, painted in order;
    their union is the object's mask. ``depth`` orders sprites (larger is painted first, so nearer
    sprites occlude); ``car_id`` is None for distractors; ``shadows`` darken the ground beneath all sprites."""

    parts: list[tuple[np.ndarray, Colour]]
    depth: float
    car_id: int | None = None
    shadows: list[np.ndarray] = field(default_factory=list)

    def full_extent(self) -> tuple[np.ndarray, int]:
        """(4,) float32 xyxy box and pixel count of the whole mask, as if unoccluded on an endless image."""
        points = np.concatenate([polygon for polygon, _ in self.parts])
        low = (points.min(0) >> _SHIFT) - 1
        high = (points.max(0) >> _SHIFT) + 2
        patch = np.zeros((high[1] - low[1], high[0] - low[0]), np.uint8)
        for polygon, _ in self.parts:  # whole-pixel offsets keep the rasterisation identical
            _fill(patch, polygon - (low << _SHIFT), 1)
        ys, xs = np.nonzero(patch)
        box = [xs.min() + low[0], ys.min() + low[1], xs.max() + 1 + low[0], ys.max() + 1 + low[1]]
        return np.array(box, np.float32), len(xs)

    @classmethod
    def build(cls, shapes: Sequence[tuple[np.ndarray, Sequence[float]]], depth: float, car_id: int | None = None,
              shadows: Sequence[np.ndarray] = ()) -> Sprite:
        """A sprite from (P, 2) float pixel polygons with colours; ``shadows`` are fixed-point polygons."""
        parts = [(_fixed(points), tuple(int(c) for c in colour)) for points, colour in shapes]
        return cls(parts, depth, car_id, list(shadows))


def compose_scene(
    background: np.ndarray, sprites: Sequence[Sprite], marks: Sequence[tuple[np.ndarray, Colour]] = (),
    shadow_strength: float = 0.45,
) -> SceneRender:
    """Paint road ``marks``, sprite shadows and sprites (far to near) on a copy of ``background``
    ((H, W, 3) uint8 RGB) and box every car by its visible pixels (see the module docstring)."""
    image = background.copy()
    for polygon, colour in marks:
        _fill(image, polygon, colour)
    shadows = [polygon for sprite in sprites for polygon in sprite.shadows]
    if shadows and shadow_strength > 0:
        shade = np.zeros(image.shape[:2], np.uint8)
        for polygon in shadows:
            _fill(shade, polygon, 255)
        shade = cv2.GaussianBlur(shade, (5, 5), 1.2).astype(np.float32) * (shadow_strength / 255)
        image = (image * (1 - shade[..., None])).astype(np.uint8)
    owner = np.zeros(image.shape[:2], np.int32)  # 0 = background, i + 1 = sprites[i]
    for index in sorted(range(len(sprites)), key=lambda i: -sprites[i].depth):
        for polygon, colour in sprites[index].parts:
            _fill(image, polygon, colour)
            _fill(owner, polygon, index + 1)
    return _label_cars(image, owner, sprites)


def _label_cars(image: np.ndarray, owner: np.ndarray, sprites: Sequence[Sprite]) -> SceneRender:
    height, width = owner.shape
    boxes, ignore, ids = [], [], []
    for index, sprite in enumerate(sprites):
        if sprite.car_id is None:
            continue
        full_box, full_area = sprite.full_extent()
        x1, y1 = np.clip(full_box[:2].astype(int), 0, [width, height])
        x2, y2 = np.clip(full_box[2:].astype(int), 0, [width, height])
        ys, xs = np.nonzero(owner[y1:y2, x1:x2] == index + 1)
        if len(xs) == 0:  # entirely hidden: not in the image at all
            continue
        if len(xs) < MIN_VISIBLE_FRACTION * full_area:
            if x2 > x1 and y2 > y1:
                ignore.append([x1, y1, x2, y2])
            continue
        box = [x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1]
        if min(box[2] - box[0], box[3] - box[1]) >= MIN_BOX_SIDE:
            boxes.append(box)
            ids.append(sprite.car_id)
    return SceneRender(image, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(ignore, np.float32).reshape(-1, 4), np.array(ids, np.int64))


def _texture(rng: np.random.Generator, size: tuple[int, int], base: Sequence[float], blotch: float,
             grain: float, cell: int = 24) -> np.ndarray:
    """(H, W, 3) uint8: a flat colour with low-frequency blotches and per-pixel grain."""
    height, width = size
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    light = blotch * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    light += grain * rng.standard_normal((height, width), dtype=np.float32)
    # saturating per-channel offsets: several times faster than numpy broadcasting and clipping
    return cv2.merge([cv2.convertScaleAbs(light, alpha=1.0, beta=float(level)) for level in base])


@dataclass
class _Light:
    """Global exposure: gain, gamma, per-channel tint, sensor noise (std, levels) and lens blur (sigma)."""

    gain: float
    gamma: float
    tint: np.ndarray
    noise: float
    blur: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Light:
        tint = 1 + rng.uniform(-0.06, 0.06, 3) + np.array([1, 0, -1]) * rng.uniform(-0.05, 0.06)
        blur = rng.uniform(0.4, 0.9) if rng.random() < 0.5 else 0.0
        return cls(rng.uniform(0.7, 1.25), rng.uniform(0.8, 1.25), tint, rng.uniform(1.5, 5.0), blur)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        levels = (np.arange(256) / 255.0)[:, None] ** self.gamma
        table = np.clip(255 * levels * self.gain * self.tint, 0, 255).astype(np.uint8)
        image = cv2.LUT(image, table.reshape(1, 256, 3))  # (256, 3) -> one table per channel
        if self.blur:
            image = cv2.GaussianBlur(image, (3, 3), self.blur)
        grain = (rng.standard_normal(image.shape[:2], dtype=np.float32) * self.noise).astype(np.int16)
        return cv2.add(image.astype(np.int16), cv2.merge([grain] * 3), dtype=cv2.CV_8U)  # luminance noise


def _rounded_rect(half_length: float, half_width: float, radius: float, n: int = 4) -> np.ndarray:
    """(4n, 2) points of a rectangle centred at 0 with rounded corners (x along the length)."""
    quarter = np.linspace(0, np.pi / 2, n)
    corners = []
    for sx, sy, start in ((1, 1, 0), (-1, 1, np.pi / 2), (-1, -1, np.pi), (1, -1, 1.5 * np.pi)):
        angles = start + quarter
        centre = (sx * (half_length - radius), sy * (half_width - radius))
        corners.append(np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1))
    return np.concatenate(corners)


def _hull(*point_sets: np.ndarray) -> np.ndarray:
    """(K, 2) fixed-point convex hull of float point sets: an object together with its offset shadow."""
    points = np.concatenate(point_sets).astype(np.float32)
    return _fixed(cv2.convexHull(points).reshape(-1, 2))  # (K, 1, 2) -> (K, 2)


def _car_count(rng: np.random.Generator, duration: float) -> int:
    """0..8 cars for a still (about 12% negatives); a video gets 6..16 over its length, since cars leave."""
    if duration:
        return int(rng.integers(3, 9)) * 2
    return 0 if rng.random() < 0.12 else int(rng.integers(1, 9))


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)])
