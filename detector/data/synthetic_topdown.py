"""The top-down view of the synthetic scenes: a drone hovering over a straight road.

:func:`topdown_car` draws one car from above; ``_TopdownWorld`` lays out the road, its markings,
roadside objects and the cars, and gives the sprites of any moment of a video. Pixel coordinates,
boxes as in :mod:`detector.data.synthetic`. Stop-and-go traffic uses `detector.data.synthetic_traffic.StopAndGo`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import cv2
import numpy as np

from detector.data.synthetic_draw import (
    Colour,
    Sprite,
    _car_count,
    _circle,
    _fill,
    _fixed,
    _hull,
    _Light,
    _paint,
    _rect,
    _rounded_rect,
    _shade,
    _texture,
    _unit_vector,
)
from detector.data.synthetic_traffic import StopAndGo

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
    shapes = [
        (outline, _shade(colour, 0.5) if np.mean(colour) > 60 else (70, 70, 74)),
        (place(_rounded_rect(half_l - edge, half_w - edge, 0.32 * width - edge)), _shade(colour, 1.0)),
        (place(cabin), (38, 43, 52)),
        (place(_rect(rear_front * length, -0.34 * width, shield_back * length, 0.34 * width)), _shade(colour, 1.06)),
    ]
    shapes += _topdown_fittings(place, length, width, shield_front, colour)
    shadow = _hull(outline, outline + np.asarray(sun, np.float64) * 0.33 * length)
    return Sprite.build(shapes, depth=0.0, car_id=car_id, shadows=[shadow])


def _topdown_fittings(
    place: Callable[[np.ndarray], np.ndarray], length: float, width: float, shield_front: float,
    colour: Sequence[float],
) -> list[tuple[np.ndarray, Colour]]:
    """(P, 2) pixel polygons of both headlights, tail lights and mirrors; ``place`` maps the car frame
    (x forward, y right, pixels from the centre) to the image."""
    half_l, half_w = length / 2, width / 2
    lamp_x, tail_x = half_l - 0.055 * length, -half_l + 0.015 * length
    mirror_x = shield_front * length - 0.04 * length
    shapes = []
    for side in (-1, 1):
        shapes.append((place(_rect(lamp_x, side * 0.2 * width, lamp_x + 0.04 * length, side * 0.42 * width)),
                       (232, 230, 212)))
        shapes.append((place(_rect(tail_x, side * 0.24 * width, tail_x + 0.03 * length, side * 0.43 * width)),
                       (160, 22, 24)))
        shapes.append((place(_rect(mirror_x, side * half_w, mirror_x + 0.03 * length, side * (half_w + 0.08 * width))),
                       _shade(colour, 0.8)))
    return shapes


class _TopdownWorld:
    """A drone hovering over a straight road: lanes, sidewalks, roofs, trees, lamps, people, maybe a bridge.

    Road coordinates: ``s`` along the road, ``t`` across it, in pixels. ``unit`` is the mean car length.
    Cars in one lane share a speed, so they never collide; parked cars have speed 0.

    Videos may add (each off by default, so a seed's scene stays what it was):
    - ``stop_and_go``: every car of one moving lane slows to a standstill together, waits a few seconds and drives
      off again (`StopAndGo`, as if at a light); ``jam`` holds the profile and ``jam_lane`` the lane.
    - ``occlusions``: a bridge wider than a car across the road in the middle of the image (not where a car is parked
      or stands still in the stopping lane), so each car passing under it is hidden for a few frames. ``occlusion``
      holds where it is.
    Both draw from the generator after the scene is laid out, so the rest of the scene is the seed's.
    """

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], duration: float = 0.0,
                 stop_and_go: bool = False, occlusions: bool = False) -> None:
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
        moving = sorted({car["lane"] for car in self.cars if car["speed"] > 0})
        self.jam = StopAndGo.sample(rng, duration) if stop_and_go and duration and moving else None
        self.jam_lane = int(rng.choice(moving)) if self.jam is not None else None
        self.occlusion = self._add_bridge() if occlusions and duration else None

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
            sprites.append(self._bridge(rng.uniform(-0.25, 0.25) * self.reach, unit * rng.uniform(0.4, 0.9)))
        return sprites

    def _add_bridge(self) -> dict:
        """A bridge 1.5-1.9 mean car lengths wide (a whole car fits under it) across the road in the middle half of the
        image, where no parked car stands nor any car of a stopping lane stands still (that would hide it for
        seconds)."""
        rng, half = self.rng, self.unit * self.rng.uniform(0.75, 0.95)
        corners = np.array([[0, 0], [self.size[1], 0], [0, self.size[0]], [self.size[1], self.size[0]]])
        extent = (corners - self.origin) @ self.axis  # the s-range the image spans
        stop = self.jam.start + self.jam.slow if self.jam is not None else 0.0
        standing = [(self._along(car, stop), car["length"]) for car in self.cars
                    if car["speed"] == 0 or car["lane"] == self.jam_lane]  # parked, or stopping with its lane
        for _ in range(20):
            s = rng.uniform(extent.min(), extent.max()) / 2
            if all(abs(at - s) > half + length / 2 + 0.2 * self.unit for at, length in standing):
                break
        self.static.append(self._bridge(s, half))
        centre = self.at(s, 0.0).round(1).tolist()
        return {"bridge_s": float(s), "bridge_width": float(2 * half), "bridge_centre": centre}

    def _bridge(self, s: float, half: float) -> Sprite:
        """A deck ``2 * half`` wide with railings across the whole road at ``s``, above everything but trees."""
        rng, unit = self.rng, self.unit
        deck = self.band(s - half, s + half, -self.reach, self.reach)
        rails = [self.band(s + e, s + e + 2, -self.reach, self.reach) for e in (-half, half - 2)]
        concrete = _shade((165, 163, 158), rng.uniform(0.8, 1.1))
        parts = [(deck, concrete)] + [(rail, _shade(concrete, 0.7)) for rail in rails]
        return Sprite.build(parts, -9.0, shadows=[_hull(deck, deck + self.sun * unit)])

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

    def _lanes(self) -> list[tuple[float, int, float]]:
        """Per lane (parking lane last): offset ``t`` of its centre, direction (+1 along ``s``), speed (px/s)."""
        rng, lane = self.rng, self.lane
        lanes = [(-self.num_lanes * lane / 2 + (k + 0.5) * lane,
                  -1 if self.two_way and k >= self.num_lanes // 2 else 1, self.unit * rng.uniform(0.8, 1.8))
                 for k in range(self.num_lanes)]
        if not self.two_way and rng.random() < 0.5:  # one-way roads run either way
            lanes = [(t, -d, v) for t, d, v in lanes]
        if self.parking:  # parked cars face the traffic of the lane beside them
            lanes.append((self.high - 0.45 * lane if self.parking > 0 else self.low + 0.45 * lane,
                          lanes[-1 if self.parking > 0 else 0][1], 0.0))
        return lanes

    def _place_cars(self, duration: float) -> list[dict]:
        """Cars as dicts of lane offset ``t``, start ``s``, direction, speed (px/s), length, style, colour, id."""
        rng, unit, lane = self.rng, self.unit, self.lane
        lanes = self._lanes()
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
            cars.append({"lane": lane_index, "t": t + rng.uniform(-0.08, 0.08) * lane, "s": s, "direction": direction,
                         "speed": speed, "length": length, "style": style, "colour": _paint(rng),
                         "heading": rng.normal(0, 0.03), "id": len(cars)})
        return cars

    def _along(self, car: dict, time: float) -> float:
        """Where ``car`` is along the road at ``time`` (pixels): its start plus its speed times ``time``, or times the
        stop's `StopAndGo.distance` in the lane that stops."""
        travel = self.jam.distance(time) if self.jam is not None and car["lane"] == self.jam_lane else time
        return car["s"] + car["direction"] * car["speed"] * travel

    def traffic(self) -> dict:
        """What a video's ground truth should know of the options: the stop (seconds, and the ids of the cars in the
        lane that stops) and the bridge (where along the road, how wide, its centre in pixels)."""
        jam = None if self.jam is None else {
            **asdict(self.jam), "car_ids": [c["id"] for c in self.cars if c["lane"] == self.jam_lane]}
        return {"stop_and_go": jam, "occlusion": self.occlusion}

    def frame(self, time: float) -> tuple[list[Sprite], list[tuple[np.ndarray, Colour]]]:
        """Sprites and road marks at ``time`` seconds."""
        sprites = list(self.static)
        for car in self.cars:
            s = self._along(car, time)
            heading = self.angle + (0 if car["direction"] > 0 else np.pi) + car["heading"]
            sprites.append(topdown_car(self.at(s, car["t"]), car["length"], heading, car["colour"], car["style"],
                                       car["id"], self.sun))
        return sprites, self.marks


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
