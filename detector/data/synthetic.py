"""Synthetic road scenes: the embedded sample data of the demo and of most tests (nothing to download).

Two views are drawn with OpenCV polygons: ``"topdown"`` (a drone over a road) and ``"driver"`` (a dash
camera). Every object is a :class:`Sprite`, a stack of filled polygons painted far-to-near; an owner map
remembers which sprite painted each pixel last, so a car's box is the tight box of its *visible* pixels
after occlusion. A car with under 30% of its pixels visible (hidden, or outside the image) becomes an
ignore region (its full box, clipped to the image), one with none visible is not in the image at all,
and a visible box under 4 px on a side is dropped.

Sizes are ``(height, width)``. Boxes are (M, 4) float32 absolute pixel ``x1, y1, x2, y2`` with
``x2 = last covered column + 1``: a car covering columns 10..29 has ``x1 = 10, x2 = 30``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from detector.boxes import xyxy_to_xywh
from detector.structures import DetectorError

MIN_VISIBLE_FRACTION = 0.3  # below this a car is too hidden to ask a detector for: ignore region
MIN_BOX_SIDE = 4.0  # pixels; smaller visible boxes are dropped, nothing learnable is left
VIEWS = ("topdown", "driver")
_VERSION = 1  # bump when rendering changes, so a cached dataset is not mistaken for a new one
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
              shadows: Sequence[np.ndarray] = ()) -> "Sprite":
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
    def sample(cls, rng: np.random.Generator) -> "_Light":
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


# Top-down silhouettes: width / length, then windshield front and back, rear window front and back,
# as signed fractions of the length from the centre (+ is the front).
_TOP_STYLES = {
    "sedan": (0.44, 0.22, 0.06, -0.2, -0.33),
    "hatchback": (0.45, 0.2, 0.05, -0.3, -0.43),
    "suv": (0.47, 0.3, 0.18, -0.4, -0.47),
}


def topdown_car(
    centre: Sequence[float], length: float, heading: float, colour: Sequence[float], style: str = "sedan",
    car_id: int = 0, sun: Sequence[float] = (0.0, 0.0),
) -> Sprite:
    """A car seen from above: dark outline, body, glass cabin with a roof, lights and mirrors.

    centre: (x, y) pixels; length: pixels; heading: radians (0 faces +x, pi/2 faces +y);
    sun: pixel shadow offset per pixel of object height (the shadow is not part of the car's mask).
    """
    ratio, shield_front, shield_back, rear_front, rear_back = _TOP_STYLES[style]
    half_l, width = length / 2, length * ratio
    half_w = width / 2
    rotation = np.array([[np.cos(heading), np.sin(heading)], [-np.sin(heading), np.cos(heading)]])

    def place(points: np.ndarray) -> np.ndarray:  # car frame (x forward, y right) -> image pixels
        return np.asarray(points, np.float64) @ rotation + np.asarray(centre, np.float64)

    edge = max(0.8, 0.06 * width)
    outline = place(_rounded_rect(half_l, half_w, 0.32 * width))
    cabin = [[shield_front * length, -0.42 * width], [shield_front * length, 0.42 * width],
             [rear_back * length, 0.4 * width], [rear_back * length, -0.4 * width]]
    lamp_x, tail_x = half_l - 0.055 * length, -half_l + 0.015 * length
    mirror_x = shield_front * length - 0.04 * length
    shapes = [
        (outline, _shade(colour, 0.5) if np.mean(colour) > 60 else (70, 70, 74)),
        (place(_rounded_rect(half_l - edge, half_w - edge, 0.32 * width - edge)), _shade(colour, 1.0)),
        (place(cabin), (38, 43, 52)),
        (place(_rect(rear_front * length, -0.34 * width, shield_back * length, 0.34 * width)), _shade(colour, 1.06)),
    ]
    for side in (-1, 1):  # both headlights, tail lights and mirrors
        shapes.append((place(_rect(lamp_x, side * 0.2 * width, lamp_x + 0.04 * length, side * 0.42 * width)),
                       (232, 230, 212)))
        shapes.append((place(_rect(tail_x, side * 0.24 * width, tail_x + 0.03 * length, side * 0.43 * width)),
                       (160, 22, 24)))
        shapes.append((place(_rect(mirror_x, side * half_w, mirror_x + 0.03 * length, side * (half_w + 0.08 * width))),
                       _shade(colour, 0.8)))
    shadow = _hull(outline, outline + np.asarray(sun, np.float64) * 0.33 * length)
    return Sprite.build(shapes, depth=0.0, car_id=car_id, shadows=[shadow])


class _TopdownWorld:
    """A drone hovering over a straight road: lanes, sidewalks, roofs, trees, lamps, people, maybe a bridge.

    Road coordinates: ``s`` along the road, ``t`` across it, in pixels. ``unit`` is the mean car length.
    Cars in one lane share a speed, so they never collide; parked cars have speed 0.
    """

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], duration: float = 0.0) -> None:
        height, width = size
        self.rng, self.size = rng, size
        self.unit = rng.uniform(34, 62) * min(height, width) / 320
        angle = rng.choice([0, np.pi / 2]) + rng.uniform(-0.1, 0.1) if rng.random() < 0.5 else rng.uniform(0, np.pi)
        self.angle = angle
        self.axis, self.normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        self.origin = np.array([width, height]) * (0.5 + rng.uniform(-0.18, 0.18, 2))
        self.reach = float(np.hypot(height, width))  # half the road's length: past every image corner
        self.lane = self.unit * rng.uniform(0.68, 0.8)
        self.num_lanes = int(rng.integers(2, 5))
        self.two_way = rng.random() < 0.7
        self.parking = int(rng.choice([-1, 0, 1], p=[0.2, 0.6, 0.2]))  # side of a parking lane, 0 = none
        self.low = -self.num_lanes * self.lane / 2 - (self.lane * 0.9 if self.parking < 0 else 0)
        self.high = self.num_lanes * self.lane / 2 + (self.lane * 0.9 if self.parking > 0 else 0)
        self.walk = self.unit * rng.uniform(0.3, 0.7)
        self.sun = _unit_vector(rng) * rng.uniform(0.15, 0.6)
        self.shadow_strength = rng.uniform(0.15, 0.55)
        self.light = _Light.sample(rng)
        self.background = self._ground()
        self.marks = self._markings()
        self.static = self._distractors()
        self.cars = self._place_cars(duration)

    def at(self, s, t) -> np.ndarray:
        """Road coordinates (arrays of P) -> (P, 2) image pixels."""
        s, t = np.broadcast_arrays(np.asarray(s, np.float64), np.asarray(t, np.float64))
        return self.origin + s[..., None] * self.axis + t[..., None] * self.normal

    def band(self, s1: float, s2: float, t1: float, t2: float) -> np.ndarray:
        return self.at([s1, s2, s2, s1], [t1, t1, t2, t2])

    def _ground(self) -> np.ndarray:
        rng, unit = self.rng, self.unit
        bases = [(88, 112, 62), (142, 132, 98), (150, 148, 142), (118, 100, 76), (70, 92, 55)]
        image = _texture(rng, self.size, bases[rng.integers(len(bases))], rng.uniform(6, 18), rng.uniform(3, 7),
                         cell=int(unit / 2) + 8)
        asphalt = np.array([1.0, 1.0, 1.04]) * rng.uniform(55, 115)
        road = _texture(rng, self.size, asphalt, rng.uniform(4, 10), rng.uniform(3, 6), cell=16)
        mask = np.zeros(self.size, np.uint8)
        _fill(mask, _fixed(self.band(-self.reach, self.reach, self.low, self.high)), 1)
        cv2.copyTo(road, mask, image)
        concrete = _shade((170, 168, 162), rng.uniform(0.8, 1.1))
        for near, far in ((self.high, self.high + self.walk), (self.low, self.low - self.walk)):
            _fill(image, _fixed(self.band(-self.reach, self.reach, near, far)), concrete)
            _fill(image, _fixed(self.band(-self.reach, self.reach, near, near + np.sign(far - near) * 1.5)),
                  _shade(concrete, 0.75))  # the kerb
            for s in np.arange(-self.reach, self.reach, self.unit * 0.5):  # paving-slab joints
                _fill(image, _fixed(self.band(s, s + 1, near, far)), _shade(concrete, 0.85))
        return image

    def _markings(self) -> list[tuple[np.ndarray, Colour]]:
        rng, lane, reach = self.rng, self.lane, self.reach
        white, yellow = _shade((236, 236, 228), rng.uniform(0.8, 1.0)), (214, 178, 52)
        line = max(1.3, 0.06 * lane)
        lanes_low, lanes_high = -self.num_lanes * lane / 2, self.num_lanes * lane / 2
        marks = [(self.band(-reach, reach, t, t + line), white) for t in (lanes_low + 2, lanes_high - 2 - line)]
        period, phase = self.unit * 1.6, rng.uniform(0, self.unit)
        for k in range(1, self.num_lanes):
            t = lanes_low + k * lane
            if self.two_way and k == self.num_lanes // 2:
                marks += [(self.band(-reach, reach, t + off, t + off + line), yellow)
                          for off in (-1.5 * line, 0.5 * line)]
                continue
            marks += [(self.band(s, s + 0.6 * self.unit, t - line / 2, t + line / 2), white)
                      for s in np.arange(-reach + phase, reach, period)]
        if rng.random() < 0.3:  # a zebra crossing
            s = rng.uniform(-0.3, 0.3) * reach
            marks += [(self.band(s, s + 0.7 * self.unit, t, t + 0.3 * lane), white)
                      for t in np.arange(lanes_low + 0.1 * lane, lanes_high - 0.3 * lane, 0.6 * lane)]
        for _ in range(rng.integers(0, 4)):  # patched asphalt and manholes
            s, t = rng.uniform(-0.4, 0.4) * reach, rng.uniform(self.low, self.high)
            patch = self.band(s, s + rng.uniform(0.3, 1.2) * self.unit, t, t + rng.uniform(0.2, 0.6) * lane)
            marks.append((_circle(*self.at(s, t), 0.12 * self.unit) if rng.random() < 0.5 else patch,
                          _shade(np.full(3, 80.0), rng.uniform(0.6, 1.3))))
        return [(_fixed(points), colour) for points, colour in marks]

    def _distractors(self) -> list[Sprite]:
        rng, unit = self.rng, self.unit
        sprites = []
        for _ in range(rng.integers(0, 7)):  # trees, some overhanging the road
            side = rng.choice([-1, 1])
            radius = unit * rng.uniform(0.45, 1.0)
            edge = self.high + self.walk if side > 0 else self.low - self.walk
            t = edge + side * rng.uniform(-0.7, 1.6) * radius
            centre = self.at(rng.uniform(-0.5, 0.5) * self.reach, t)
            sprites.append(_tree_from_above(rng, centre, radius, self.sun * unit))
        for _ in range(rng.integers(0, 3)):  # roofs beyond the sidewalks
            side, depth = rng.choice([-1, 1]), unit * rng.uniform(1.2, 3.0)
            edge = self.high + self.walk if side > 0 else self.low - self.walk
            t = edge + side * (rng.uniform(0.2, 1.0) * unit + depth / 2)
            s = rng.uniform(-0.5, 0.5) * self.reach
            sprites.append(self._roof(s, t, unit * rng.uniform(1.5, 4.0), depth))
        for _ in range(rng.integers(0, 6)):  # pedestrians on the sidewalks
            side = rng.choice([-1, 1])
            t = (self.high if side > 0 else self.low) + side * self.walk * rng.uniform(0.2, 0.8)
            sprites.append(_person_from_above(rng, self.at(rng.uniform(-0.5, 0.5) * self.reach, t), unit, self.sun))
        for _ in range(rng.integers(0, 3)):  # street lamps reaching over the road
            side = rng.choice([-1, 1])
            base_t = (self.high if side > 0 else self.low) + side * self.walk * 0.2
            tip_t = base_t - side * self.lane * rng.uniform(0.4, 0.9)
            sprites.append(self._lamp(rng.uniform(-0.5, 0.5) * self.reach, base_t, tip_t))
        if rng.random() < 0.12:  # a bridge across the road
            s, half = rng.uniform(-0.25, 0.25) * self.reach, unit * rng.uniform(0.4, 0.9)
            deck = self.band(s - half, s + half, -self.reach, self.reach)
            rails = [self.band(s + e, s + e + 2, -self.reach, self.reach) for e in (-half, half - 2)]
            concrete = _shade((165, 163, 158), rng.uniform(0.8, 1.1))
            parts = [(deck, concrete)] + [(rail, _shade(concrete, 0.7)) for rail in rails]
            sprites.append(Sprite.build(parts, -9.0, shadows=[_hull(deck, deck + self.sun * unit)]))
        return sprites

    def _roof(self, s: float, t: float, length: float, depth: float) -> Sprite:
        rng = self.rng
        roofs = [(120, 118, 115), (85, 85, 88), (150, 80, 60), (170, 160, 140), (200, 200, 195)]
        colour = roofs[rng.integers(len(roofs))]
        outline = self.band(s - length / 2, s + length / 2, t - depth / 2, t + depth / 2)
        if rng.random() < 0.5:  # gable roof: two slopes lit differently
            parts = [(self.band(s - length / 2, s + length / 2, t - depth / 2, t), _shade(colour, 0.8)),
                     (self.band(s - length / 2, s + length / 2, t, t + depth / 2), _shade(colour, 1.1))]
        else:  # flat roof with air-conditioning units
            parts = [(outline, colour)]
            for _ in range(rng.integers(1, 4)):
                ds, dt = rng.uniform(-0.35, 0.35) * length, rng.uniform(-0.3, 0.3) * depth
                box = self.band(s + ds, s + ds + 0.12 * self.unit, t + dt, t + dt + 0.12 * self.unit)
                parts.append((box, (205, 205, 200)))
        shadow = _hull(outline, outline + self.sun * self.unit * rng.uniform(1.5, 3.0))
        return Sprite.build(parts, -8.0, shadows=[shadow])

    def _lamp(self, s: float, base_t: float, tip_t: float) -> Sprite:
        unit, grey = self.unit, _shade((120, 122, 126), self.rng.uniform(0.7, 1.2))
        arm = self.band(s - 0.02 * unit, s + 0.02 * unit, base_t, tip_t)
        head = self.band(s - 0.05 * unit, s + 0.05 * unit, tip_t - 0.08 * unit, tip_t + 0.08 * unit)
        base = _circle(*self.at(s, base_t), 0.05 * unit)
        parts = [(arm, grey), (head, (200, 200, 190)), (base, _shade(grey, 0.8))]
        pole_shadow = _hull(base, base + self.sun * 2 * unit)
        return Sprite.build(parts, -6.0, shadows=[pole_shadow, _hull(arm + self.sun * 2 * unit)])

    def _place_cars(self, duration: float) -> list[dict]:
        """Cars as dicts of lane offset ``t``, start ``s``, direction, speed (px/s), length, style, colour, id."""
        rng, unit, lane = self.rng, self.unit, self.lane
        lanes = [(-self.num_lanes * lane / 2 + (k + 0.5) * lane,
                  -1 if self.two_way and k >= self.num_lanes // 2 else 1, unit * rng.uniform(0.8, 1.8))
                 for k in range(self.num_lanes)]
        if not self.two_way and rng.random() < 0.5:  # one-way roads run either way
            lanes = [(t, -d, v) for t, d, v in lanes]
        if self.parking:  # parked cars face the traffic of the lane beside them
            lanes.append((self.high - 0.45 * lane if self.parking > 0 else self.low + 0.45 * lane,
                          lanes[-1 if self.parking > 0 else 0][1], 0.0))
        corners = np.array([[0, 0], [self.size[1], 0], [0, self.size[0]], [self.size[1], self.size[0]]])
        extent = (corners - self.origin) @ self.axis  # the s-range the image spans
        count = _car_count(rng, duration)
        cars: list[dict] = []
        for _ in range(count * 10):
            if len(cars) == count:
                break
            lane_index = int(rng.integers(len(lanes)))
            t, direction, speed = lanes[lane_index]
            travel = direction * speed * duration
            s = rng.uniform(extent.min() - max(travel, 0), extent.max() - min(travel, 0))
            length = unit * rng.uniform(0.85, 1.2)
            if any(c["lane"] == lane_index and abs(c["s"] - s) < (c["length"] + length) / 2 + 0.2 * unit for c in cars):
                continue
            centre = self.at(s, t)
            if not duration and not (0 <= centre[0] < self.size[1] and 0 <= centre[1] < self.size[0]):
                continue
            style = ("sedan", "hatchback", "suv")[rng.choice(3, p=[0.5, 0.25, 0.25])]
            cars.append(dict(lane=lane_index, t=t + rng.uniform(-0.08, 0.08) * lane, s=s, direction=direction,
                             speed=speed, length=length, style=style, colour=_paint(rng),
                             heading=rng.normal(0, 0.03), id=len(cars)))
        return cars

    def frame(self, time: float) -> tuple[list[Sprite], list[tuple[np.ndarray, Colour]]]:
        """Sprites and road marks at ``time`` seconds."""
        sprites = list(self.static)
        for car in self.cars:
            s = car["s"] + car["direction"] * car["speed"] * time
            heading = self.angle + (0 if car["direction"] > 0 else np.pi) + car["heading"]
            sprites.append(topdown_car(self.at(s, car["t"]), car["length"], heading, car["colour"], car["style"],
                                       car["id"], self.sun))
        return sprites, self.marks


def _car_count(rng: np.random.Generator, duration: float) -> int:
    """0..8 cars for a still (about 12% negatives); a video gets 6..16 over its length, since cars leave."""
    if duration:
        return int(rng.integers(3, 9)) * 2
    return 0 if rng.random() < 0.12 else int(rng.integers(1, 9))


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)])


def _tree_from_above(rng: np.random.Generator, centre: np.ndarray, radius: float, shadow_offset: np.ndarray) -> Sprite:
    """A leafy canopy of overlapping blobs, lit on the side facing away from its shadow."""
    green = np.array([rng.uniform(40, 85), rng.uniform(75, 125), rng.uniform(28, 60)])
    parts, shadows = [], []
    for index in range(rng.integers(6, 11)):
        lit = index >= 6  # the last blobs are highlights, shifted towards the sun
        offset = rng.uniform(-0.5, 0.5, 2) * radius
        if lit:
            offset -= 0.25 * radius * shadow_offset / np.linalg.norm(shadow_offset)
        blob = _circle(*(centre + offset), radius * rng.uniform(0.25 if lit else 0.4, 0.4 if lit else 0.65))
        blob += rng.normal(0, 0.06 * radius, blob.shape)  # ragged, leafy edges
        parts.append((blob, _shade(green, rng.uniform(1.1, 1.35) if lit else rng.uniform(0.7, 1.05))))
        shadows.append(_hull(blob + shadow_offset * 2.0))
    return Sprite.build(parts, -10.0, shadows=shadows)


def _person_from_above(rng: np.random.Generator, centre: np.ndarray, unit: float, sun: np.ndarray) -> Sprite:
    """Shoulders and a head seen from above: a small blob, not a car."""
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    shoulders = _circle(0, 0, 0.11 * unit, 0.06 * unit, n=12) @ rotation + centre
    head = _circle(*centre, 0.045 * unit, n=10)
    shirt = rng.uniform(30, 230, 3)
    hair = _shade((60, 45, 35), rng.uniform(0.4, 2.5))
    shadow = _hull(shoulders, shoulders + sun * 0.4 * unit)
    return Sprite.build([(shoulders, shirt), (head, hair)], -2.0, shadows=[shadow])


@dataclass
class Camera:
    """A level pinhole dash camera: focal length ``f`` (px), principal point (``cx``, ``horizon``) in
    pixels, ``height`` above the road in metres. World axes: x right, y up, z forward, in metres."""

    f: float
    cx: float
    horizon: float
    height: float

    def project(self, x, y, z) -> np.ndarray:
        """World coordinates (broadcastable arrays of P) -> (P, 2) float pixels."""
        x, y, z = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, z)))
        return np.stack([self.cx + self.f * x / z, self.horizon + self.f * (self.height - y) / z], -1)


# Width, height, length (m) and the shoulder line (where the glass starts) as a fraction of the height.
_SIDE_STYLES = {
    "sedan": (1.8, 1.45, 4.6, 0.52),
    "hatchback": (1.75, 1.5, 4.0, 0.55),
    "suv": (1.9, 1.75, 4.7, 0.55),
    "van": (1.95, 2.0, 5.0, 0.5),
}


def driver_car(
    camera: Camera, x: float, z: float, colour: Sequence[float], style: str = "sedan", facing: str = "rear",
    car_id: int = 0, sun: Sequence[float] = (0.0, 0.0),
) -> Sprite:
    """A car seen by a dash camera: its rear (or, oncoming, front) face at ``z`` metres, its side and
    roof when visible, wheels, lights, number plate and glass.

    x: lateral centre in metres (+ is right); sun: ground shadow offset (x, z) per metre of height.
    """
    width, height, length, shoulder = _SIDE_STYLES[style]
    top = shoulder * height
    glass = (44, 50, 60) if facing == "rear" else (78, 88, 100)
    shapes = _car_side(camera, x, z, (width, height, length, top), colour, glass)
    shapes += _car_face(camera, x, z, (width, height, top), colour, glass, facing)
    xs = x + np.array([-1, 1, 1, -1]) * (width / 2 + 0.1)
    zs = z + np.array([-0.2, -0.2, length, length])
    footprint = camera.project(xs, 0, zs)
    shadow = camera.project(xs + sun[0] * height, 0, np.maximum(zs + sun[1] * height, z - 0.2))
    return Sprite.build(shapes, depth=z, car_id=car_id, shadows=[_hull(footprint, shadow)])


def _car_face(camera: Camera, x: float, z: float, dims: tuple[float, float, float], colour: Sequence[float],
              glass: Colour, facing: str) -> list[tuple[np.ndarray, Colour]]:
    width, height, top = dims
    half = width / 2

    def face(points) -> np.ndarray:  # (P, 2) metres right of the centre and above the road -> pixels
        points = np.asarray(points, np.float64)
        return camera.project(x + points[:, 0], points[:, 1], z)

    body = [[-half, 0.28], [half, 0.28], [half, top - 0.06], [half - 0.07, top], [-half + 0.07, top],
            [-half, top - 0.06]]  # rounded shoulders
    cabin = [[-0.46 * width, top], [0.46 * width, top], [0.37 * width, height], [-0.37 * width, height]]
    window = [[-0.41 * width, top + 0.06], [0.41 * width, top + 0.06], [0.33 * width, height - 0.07],
              [-0.33 * width, height - 0.07]]
    lamp = (205, 28, 30) if facing == "rear" else (236, 236, 222)
    shapes = [
        (face(_rect(-half + 0.03, 0, -half + 0.33, 0.36)), (22, 22, 24)),  # tyres under the body
        (face(_rect(half - 0.33, 0, half - 0.03, 0.36)), (22, 22, 24)),
        (face(_rect(-half + 0.1, 0.12, half - 0.1, 0.34)), (12, 12, 14)),  # the dark underbody
        (face(body), _shade(colour, 0.92)),
        (face(_rect(-half, 0.28, half, 0.46)), _shade(colour, 0.75) if np.mean(colour) > 90 else (40, 40, 43)),
        (face(cabin), _shade(colour, 1.0)),
        (face(window), glass),
        (face(_rect(-0.26, 0.5, 0.26, 0.62)), (226, 226, 218)),  # number plate
        (face(_rect(-0.16, 0.54, 0.16, 0.58)), (50, 50, 55)),
    ]
    if facing == "front":
        shapes.append((face(_rect(-half + 0.4, top - 0.24, half - 0.4, top - 0.08)), (30, 30, 33)))  # grille
    for side in (-1, 1):
        shapes.append((face(_rect(side * (half - 0.04), top - 0.24, side * (half - 0.36), top - 0.07)), lamp))
    return shapes


def _car_side(camera: Camera, x: float, z: float, dims: tuple[float, float, float, float], colour: Sequence[float],
              glass: Colour) -> list[tuple[np.ndarray, Colour]]:
    """The flank facing the camera's axis (none when the car is straight ahead) and the roof when the
    camera is above it: both recede towards the vanishing point behind the face."""
    width, height, length, top = dims
    shapes = []
    if abs(x) > width / 2 + 0.2:
        side = -1.0 if x > 0 else 1.0  # the flank nearer the camera axis is the visible one

        def flank(b, d, inset) -> np.ndarray:  # height above the road, depth behind the face, inset (m)
            return camera.project(x + side * (width / 2 - np.asarray(inset)), b, z + np.asarray(d))

        shapes.append((flank([0.28, top, top, 0.28], [0, 0, length, length], 0), _shade(colour, 0.75)))
        for wheel in (0.2 * length, 0.8 * length):
            angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            shapes.append((flank(0.34 + 0.34 * np.sin(angles), wheel + 0.34 * np.cos(angles), 0), (24, 24, 26)))
        insets = np.array([0.04, 0.13, 0.13, 0.04]) * width
        shapes.append((flank([top, height, height, top], [0, 0.05 * length, 0.62 * length, 0.85 * length], insets),
                       _shade(colour, 0.8)))
        shapes.append((flank([top + 0.07, height - 0.07, height - 0.07, top + 0.07],
                             [0.06 * length, 0.1 * length, 0.6 * length, 0.8 * length], insets), glass))
    if camera.height > height:
        roof_x = x + np.array([-1, 1, 1, -1]) * 0.37 * width
        shapes.append((camera.project(roof_x, height, z + np.array([0, 0, 0.62, 0.62]) * length), _shade(colour, 1.12)))
    return shapes


def _roadside_tree(camera: Camera, x: float, z: float, trunk: float, blobs: list) -> Sprite:
    """A trunk and a canopy of blobs ``(dx, dy, radius, colour, ragged)`` in metres around the trunk top."""
    parts = [(camera.project(x + np.array([-0.15, 0.15, 0.15, -0.15]), [0, 0, trunk + 1, trunk + 1], z), (72, 56, 40))]
    for dx, dy, radius, colour, ragged in blobs:
        centre = camera.project(x + dx, trunk + dy, z)[0]
        parts.append((_circle(*centre, camera.f * radius / z) + ragged * camera.f / z, colour))
    return Sprite.build(parts, depth=z)


def _roadside_person(camera: Camera, x: float, z: float, height: float, shirt: Colour, trousers: Colour,
                     skin: Colour) -> Sprite:
    def box(x1, x2, y1, y2) -> np.ndarray:
        return camera.project(x + np.array([x1, x2, x2, x1]), np.array([y1, y1, y2, y2]) * height, z)

    head = _circle(*camera.project(x, 0.92 * height, z)[0], camera.f * 0.11 / z, n=10)
    parts = [(box(-0.17, -0.03, 0, 0.48), trousers), (box(0.03, 0.17, 0, 0.48), trousers),
             (box(-0.21, 0.21, 0.46, 0.84), shirt), (head, skin)]
    return Sprite.build(parts, depth=z)


def _roadside_pole(camera: Camera, x: float, z: float, height: float, arm: float, sign: int) -> Sprite:
    """A lamp post whose arm reaches ``arm`` metres over the road, or (``sign`` > 0) a traffic sign."""
    grey = (120, 122, 126)
    top = 2.3 if sign else height
    parts = [(camera.project(x + np.array([-0.06, 0.06, 0.06, -0.06]), [0, 0, top, top], z), grey)]
    if sign:
        centre, radius = camera.project(x, 2.65, z)[0], camera.f * 0.36 / z
        rim, face = (((205, 30, 30), (235, 235, 235)), ((30, 70, 160), (30, 70, 160)),
                     ((220, 170, 30), (30, 30, 30)))[sign - 1]  # prohibition, information, warning
        parts += [(_circle(*centre, radius), rim), (_circle(*centre, 0.7 * radius), face)]
    else:
        parts.append((camera.project(x + np.array([0, arm, arm, 0]), [top - 0.12, top - 0.12, top, top], z), grey))
        head = camera.project(x + arm + np.array([-0.3, 0.3, 0.3, -0.3]), top - np.array([0.25, 0.25, 0.05, 0.05]), z)
        parts.append((head, (215, 215, 200)))
    return Sprite.build(parts, depth=z)


def _facade(camera: Camera, x: float, z: float, length: float, height: float, colour: Colour, glass: Colour) -> Sprite:
    """A building front parallel to the road with a grid of windows; always behind everything else."""
    z = max(z, 1.5)
    parts = [(camera.project(x, [0, 0, height, height], [z, z + length, z + length, z]), colour)]
    for y in np.arange(1.2, height - 1.4, 3.0):
        for window in np.arange(z + 1.0, z + length - 1.6, 3.5):
            pane = camera.project(x, y + np.array([0, 0, 1.4, 1.4]), window + np.array([0, 1.6, 1.6, 0]))
            parts.append((pane, glass))
    return Sprite.build(parts, depth=1e4 + z)


class _DriverWorld:
    """A dash camera on a straight road: sky, far tree line, lanes, sidewalks, buildings, trees, lamps,
    signs and people. The ego car drives at ``speed`` m/s, so roadside objects stream past (wrapping to
    the far end) while other cars keep their own lanes and speeds."""

    _SPAN = 100.0  # metres of roadside that stream past, then wrap

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], duration: float = 0.0) -> None:
        height, width = size
        self.rng, self.size = rng, size
        self.camera = Camera(width * rng.uniform(0.85, 1.05), width * rng.uniform(0.46, 0.54),
                             height * rng.uniform(0.38, 0.5), rng.uniform(1.3, 1.7))
        self.lane, self.num_lanes = rng.uniform(3.2, 3.8), int(rng.integers(2, 5))
        self.ego = ego = int(rng.integers(self.num_lanes))
        self.oncoming = int(rng.integers(1, ego + 1)) if ego and rng.random() < 0.7 else 0  # lanes left of the ego
        self.left = -(ego + 0.5) * self.lane
        self.right = self.left + self.num_lanes * self.lane
        self.walk = rng.uniform(1.5, 3.0) if rng.random() < 0.6 else 0.0
        self.speed = rng.uniform(8, 20)
        self.sun = _unit_vector(rng) * rng.uniform(0.3, 1.0)
        self.shadow_strength = rng.uniform(0.15, 0.55)
        self.light = _Light.sample(rng)
        self.background = self._scenery()
        self.static = self._distractors()
        self.cars = self._place_cars(duration)

    def _scenery(self) -> np.ndarray:
        rng, camera, (height, width) = self.rng, self.camera, self.size
        skies = [((70, 120, 190), (185, 205, 225)), ((150, 170, 190), (215, 220, 225)),
                 ((150, 155, 160), (205, 205, 205)), ((60, 70, 120), (230, 170, 120))]
        zenith, haze = (np.array(c, np.float32) for c in skies[rng.choice(4, p=[0.45, 0.2, 0.25, 0.1])])
        grounds = [(92, 112, 64), (128, 118, 90), (110, 104, 92)]
        image = _texture(rng, self.size, grounds[rng.integers(3)], rng.uniform(6, 16), rng.uniform(3, 7))
        horizon = int(camera.horizon)
        fraction = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None] ** 0.7  # (rows, 1, 1)
        sky = np.broadcast_to(zenith + (haze - zenith) * fraction, (horizon, width, 3)).astype(np.uint8).copy()
        for _ in range(rng.integers(0, 5)):  # soft clouds
            centre = (rng.uniform(0, width), rng.uniform(0, horizon * 0.7))
            _fill(sky, _fixed(_circle(*centre, rng.uniform(0.08, 0.25) * width, rng.uniform(0.02, 0.06) * height)),
                  _shade(haze, 1.08))
        image[:horizon] = cv2.GaussianBlur(sky, (0, 0), 4)
        steps = np.clip(np.cumsum(rng.normal(0, 0.008, width // 8 + 2)) + 0.04, 0.0, 0.1) * height
        ridge = np.stack([np.arange(len(steps)) * 8.0, camera.horizon - steps], 1)
        line = np.concatenate([ridge, [[width + 8, camera.horizon + 1], [0, camera.horizon + 1]]])
        _fill(image, _fixed(line), _shade(0.5 * haze + 0.5 * np.array([50, 70, 50]), rng.uniform(0.7, 1.0)))
        road = _texture(rng, self.size, np.full(3, rng.uniform(60, 115)), rng.uniform(4, 9), rng.uniform(3, 6), cell=16)
        mask = np.zeros(self.size, np.uint8)
        _fill(mask, self._strip(self.left, self.right, 0.3, 3000), 1)
        cv2.copyTo(road, mask, image)
        if self.walk:
            concrete = _shade((168, 166, 160), rng.uniform(0.8, 1.1))
            for near, far in ((self.right, self.right + self.walk), (self.left, self.left - self.walk)):
                _fill(image, self._strip(near, far, 0.3, 3000), concrete)
                _fill(image, self._strip(near, near + np.sign(far - near) * 0.2, 0.3, 3000), _shade(concrete, 1.12))
        return image

    def _strip(self, x1: float, x2: float, z1: float, z2: float) -> np.ndarray:
        """Fixed-point polygon of a ground rectangle between lateral x1..x2 and distances z1..z2."""
        return _fixed(self.camera.project([x1, x2, x2, x1], 0, [z1, z1, z2, z2]))

    def _lane_marks(self, travelled: float) -> list[tuple[np.ndarray, Colour]]:
        white, yellow = (232, 232, 225), (214, 178, 52)
        marks = [(self._strip(self.left + 0.15, self.left + 0.3, 1, 400), white),
                 (self._strip(self.right - 0.3, self.right - 0.15, 1, 400), white)]
        starts = np.arange((-travelled) % 12 - 12, 150, 12)  # 3 m dashes every 12 m, streaming past
        for k in range(1, self.num_lanes):
            x = self.left + k * self.lane
            if k == self.oncoming:
                marks += [(self._strip(x + a, x + a + 0.13, 1, 400), yellow) for a in (-0.25, 0.12)]
                continue
            marks += [(self._strip(x - 0.07, x + 0.07, max(s, 1), s + 3), white) for s in starts if s + 3 > 1]
        return marks

    def _distractors(self) -> list[tuple[float, object]]:
        """(distance, builder of a Sprite at a given distance) for every roadside object."""
        rng, camera = self.rng, self.camera
        specs = []
        edge = {-1: self.left - self.walk, 1: self.right + self.walk}
        for _ in range(rng.integers(0, 9)):
            side, radius = int(rng.choice([-1, 1])), rng.uniform(1.5, 3.2)
            green = np.array([rng.uniform(35, 80), rng.uniform(70, 115), rng.uniform(25, 55)])
            blobs = [(rng.uniform(-0.6, 0.6) * radius, rng.uniform(0.2, 1.3) * radius, radius * rng.uniform(0.5, 0.8),
                      _shade(green, rng.uniform(0.7, 1.25)), rng.normal(0, 0.06 * radius, (16, 2))) for _ in range(6)]
            x, trunk = edge[side] + side * rng.uniform(1, 9), rng.uniform(1.5, 3.5)
            builder = partial(_roadside_tree, camera, x, trunk=trunk, blobs=blobs)
            specs.append((rng.uniform(4, 4 + self._SPAN), builder))
        if rng.random() < 0.5:  # a row of street lamps
            side, spacing = int(rng.choice([-1, 1])), rng.uniform(25, 35)
            for z in np.arange(rng.uniform(5, 30), 4 + self._SPAN, spacing):
                specs.append((z, partial(_roadside_pole, camera, edge[side] + side * 0.4, height=8.0,
                                          arm=-side * rng.uniform(1.2, 2.2), sign=0)))
        for _ in range(rng.integers(0, 3)):
            side = int(rng.choice([-1, 1]))
            specs.append((rng.uniform(6, 60), partial(_roadside_pole, camera, edge[side] + side * 0.6, height=2.3,
                                                       arm=0.0, sign=int(rng.integers(1, 4)))))
        crossing = rng.random() < 0.25
        for index in range(rng.integers(0, 5) + crossing):
            side = int(rng.choice([-1, 1]))
            on_sidewalk = edge[side] - side * rng.uniform(0.3, 1.5)
            x = rng.uniform(self.left, self.right) if index == 0 and crossing else on_sidewalk
            clothes = [_shade(rng.uniform(20, 230, 3), 1.0) for _ in range(2)]
            skin = _shade((205, 160, 125), rng.uniform(0.45, 1.1))
            specs.append((rng.uniform(6, 30 if crossing and index == 0 else 60),
                          partial(_roadside_person, camera, x, height=rng.uniform(1.55, 1.9), shirt=clothes[0],
                                   trousers=clothes[1], skin=skin)))
        for side in (-1, 1):
            if rng.random() < 0.5:
                specs += self._street_front(edge[side] + side * rng.uniform(3, 12))
        return specs

    def _street_front(self, x: float) -> list[tuple[float, object]]:
        rng, specs = self.rng, []
        z = rng.uniform(3, 20)
        while z < 4 + self._SPAN:
            length = rng.uniform(10, 30)
            walls = [(200, 196, 186), (160, 158, 152), (150, 88, 66), (192, 172, 140), (222, 220, 212), (120, 118, 115)]
            colour = _shade(walls[rng.integers(len(walls))], rng.uniform(0.8, 1.1))
            glass = _shade((60, 70, 85), rng.uniform(0.6, 1.5))
            specs.append((z, partial(_facade, self.camera, x, length=length, height=rng.uniform(5, 20),
                                     colour=colour, glass=glass)))
            z += length + rng.uniform(0, 8)
        return specs

    def _place_cars(self, duration: float) -> list[dict]:
        """Cars as dicts of lateral ``x``, start distance ``z``, velocity relative to the ego (m/s), style, ..."""
        rng = self.rng
        ego = self.ego
        lanes = [(self.left + (k + 0.5) * self.lane, "front" if k < self.oncoming else "rear",
                  -(self.speed + rng.uniform(8, 18)) if k < self.oncoming else rng.uniform(0 if k == ego else -4, 3))
                 for k in range(self.num_lanes)]  # relative m/s: nobody in the ego lane is being caught up
        near, far = np.array([4.5, 34.0]) * self.camera.f / 300  # keeps cars 16..120 px wide at any zoom
        count = _car_count(rng, duration)
        cars: list[dict] = []
        for _ in range(count * 10):
            if len(cars) == count:
                break
            lane_index = int(rng.integers(len(lanes)))
            x, facing, velocity = lanes[lane_index]
            z = 1 / rng.uniform(1 / (far - min(velocity * duration, 0)), 1 / near)  # even spread of pixel sizes
            if any(c["lane"] == lane_index and abs(c["z"] - z) < 6.5 for c in cars):
                continue
            style = ("sedan", "hatchback", "suv", "van")[rng.choice(4, p=[0.4, 0.2, 0.25, 0.15])]
            cars.append(dict(lane=lane_index, x=x + rng.uniform(-0.35, 0.35), z=z, velocity=velocity, facing=facing,
                             style=style, colour=_paint(rng), id=len(cars)))
        return cars

    def frame(self, time: float) -> tuple[list[Sprite], list[tuple[np.ndarray, Colour]]]:
        """Sprites and road marks at ``time`` seconds."""
        travelled = self.speed * time
        sprites = [build(z=4 + (z - travelled - 4) % self._SPAN if time else z) for z, build in self.static]
        for car in self.cars:
            z = car["z"] + car["velocity"] * time
            if 2.5 <= z <= 200:  # passed or too far to draw
                sprites.append(driver_car(self.camera, car["x"], z, car["colour"], car["style"], car["facing"],
                                          car["id"], self.sun))
        return sprites, self._lane_marks(travelled)


def _world(rng: np.random.Generator, size: tuple[int, int], view: str, duration: float):
    if view not in VIEWS:
        raise DetectorError(f"synthetic view must be one of {', '.join(VIEWS)}, got {view!r}")
    if min(size) < 32:
        raise DetectorError(f"synthetic image size must be at least 32x32 pixels (height, width), got {tuple(size)}")
    world_type = _TopdownWorld if view == "topdown" else _DriverWorld
    return world_type(rng, (int(size[0]), int(size[1])), duration)


def _render_frame(world, time: float, rng: np.random.Generator) -> SceneRender:
    sprites, marks = world.frame(time)
    render = compose_scene(world.background, sprites, marks, world.shadow_strength)
    render.image = world.light.apply(render.image, rng)  # lighting never moves pixels, so boxes stay exact
    return render


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (320, 320), view: str = "topdown") -> SceneRender:
    """Render one road scene of ``size`` (height, width) seen ``view`` ("topdown" or "driver").

    Deterministic given the generator state; 0..8 cars (about 12% of scenes have none). Boxes are
    (M, 4) float32 pixel xyxy of visible car pixels; ignore regions are cars under 30% visible.
    """
    return _render_frame(_world(rng, size, view, 0.0), 0.0, rng)


def iter_scenes(num_images: int, size: tuple[int, int] = (320, 320), seed: int = 0,
                views: Sequence[str] = VIEWS) -> Iterator[SceneRender]:
    """Yield ``num_images`` scenes; scene i uses view ``views[i % len(views)]`` and its own generator
    seeded by (seed, i), so a scene does not depend on how many come before it."""
    for index in range(num_images):
        yield render_scene(np.random.default_rng([seed, index]), size, views[index % len(views)])


def _coco_annotations(entries: Sequence[tuple[str, int, int, np.ndarray, np.ndarray]]) -> dict:
    """COCO dict from (file_name, height, width, boxes, ignore) per image; ignore regions become iscrowd 1."""
    images, annotations = [], []
    for image_id, (file_name, height, width, boxes, ignore) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for regions, crowd in ((boxes, 0), (ignore, 1)):
            for x, y, w, h in xyxy_to_xywh(regions).tolist():
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
    categories = [{"id": 1, "name": "car", "supercategory": "vehicle"}]
    info = {"description": "detector synthetic road scenes", "version": str(_VERSION)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_coco_dataset(out_dir: Path, num_images: int, size: tuple[int, int] = (320, 320), seed: int = 0,
                       views: Sequence[str] = VIEWS, image_format: str = "jpg") -> Path:
    """Write ``out_dir/images/*.jpg`` (quality 95, or png) and a COCO ``out_dir/annotations.json``
    (bbox xywh; iscrowd 1 marks ignore regions; one category, car) and return the annotation path.

    A folder already holding this very dataset (same parameters, recorded in synthetic.json) is reused
    as is; a non-empty folder holding anything else raises DetectorError rather than being overwritten.
    """
    out_dir = Path(out_dir)
    if image_format not in ("jpg", "png"):
        raise DetectorError(f"synthetic image_format must be 'jpg' or 'png', got {image_format!r}")
    params = {"version": _VERSION, "num_images": int(num_images), "size": [int(v) for v in size], "seed": int(seed),
              "views": list(views), "image_format": image_format}
    annotation_path, params_path = out_dir / "annotations.json", out_dir / "synthetic.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise DetectorError(f"synthetic dataset folder {out_dir} is a file; expected a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if params_path.is_file() and annotation_path.is_file() and json.loads(params_path.read_text()) == params:
            return annotation_path
        raise DetectorError(f"{out_dir} already holds files that are not a synthetic dataset with these parameters "
                            f"{params}; choose an empty folder or delete it")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    options = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    for index, render in enumerate(iter_scenes(num_images, size, seed, views)):
        file_name = f"images/{index:06d}.{image_format}"
        cv2.imwrite(str(out_dir / file_name), cv2.cvtColor(render.image, cv2.COLOR_RGB2BGR), options)
        entries.append((file_name, *render.image.shape[:2], render.boxes, render.ignore))
    annotation_path.write_text(json.dumps(_coco_annotations(entries), indent=1, sort_keys=True))
    params_path.write_text(json.dumps(params, indent=1, sort_keys=True))  # written last: marks a complete dataset
    return annotation_path


def render_video(path: Path, num_frames: int = 60, size: tuple[int, int] = (320, 480), fps: float = 10,
                 seed: int = 0, view: str = "driver") -> Path:
    """Write an mp4 (codec mp4v) of ``num_frames`` frames of ``size`` (height, width) in which cars move
    smoothly and keep their identities, plus ``path.with_suffix(".json")``: per frame, the ground-truth
    boxes (pixel xyxy), their track ids and the ignore regions. Returns ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise DetectorError(f"synthetic video path must end in .mp4, got {path}")
    if num_frames < 1 or fps <= 0:
        raise DetectorError(f"synthetic video needs num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    rng = np.random.default_rng(seed)
    world = _world(rng, size, view, num_frames / fps)
    height, width = world.size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise DetectorError(f"cannot open {path} for writing an mp4v video")
    frames = []
    try:
        for index in range(num_frames):
            render = _render_frame(world, index / fps, rng)
            writer.write(cv2.cvtColor(render.image, cv2.COLOR_RGB2BGR))
            frames.append({"index": index, "boxes": render.boxes.tolist(), "track_ids": render.track_ids.tolist(),
                           "ignore": render.ignore.tolist()})
    finally:
        writer.release()
    sidecar = {"video": path.name, "view": view, "fps": fps, "num_frames": num_frames, "width": width,
               "height": height, "seed": seed, "box_format": "xyxy pixels", "frames": frames}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return path
