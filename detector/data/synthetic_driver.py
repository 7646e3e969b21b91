"""The driver's-eye view of the synthetic scenes: a level dash camera on a straight road.

:class:`Camera` projects world metres to pixels; :func:`driver_car` draws one car seen from behind (or
oncoming); ``_DriverWorld`` lays out sky, road, roadside objects and cars, streaming past over time.
Boxes as in :mod:`detector.data.synthetic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

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
    _shade,
    _texture,
    _unit_vector,
)
from detector.data.synthetic_traffic import StopAndGo


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
    the far end) while other cars keep their own lanes and speeds.

    Videos may add (each off by default, so a seed's scene stays what it was):
    - ``stop_and_go``: the ego and every car in its direction slow to a standstill together, wait a few seconds and
      drive off again (`StopAndGo`); oncoming traffic keeps its speed. ``jam`` holds the profile.
    - ``occlusions``: a car parked on the shoulder passes fully behind a van driving in the outer lane on that side,
      as the ego drives by: hidden for a few frames, then seen again (other traffic may hide it too, as any car).
      ``occlusion`` holds their ids and the time the two line up.
    Both draw from the generator after the scene is laid out, so the rest of the scene is the seed's.

    A still (``duration`` 0) places its cars 4.5..34 m away at the default zoom (16..120 px wide), where a video's
    traffic also pulls away and comes from afar: with ``far_cars`` > 0 each car of a still is, with that probability,
    placed 1-3 times beyond that range instead (about 5..16 px wide, the far cars a dash camera sees most of).
    At 0 (the default) no extra number is drawn, so a seed's scene stays what it was."""

    _SPAN = 100.0  # metres of roadside that stream past, then wrap

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], duration: float = 0.0,
                 stop_and_go: bool = False, occlusions: bool = False, far_cars: float = 0.0) -> None:
        height, width = size
        self.rng, self.size, self.far_cars = rng, size, far_cars
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
        self.jam = StopAndGo.sample(rng, duration) if stop_and_go and duration else None
        self.occlusion = self._add_occlusion(duration) if occlusions and duration else None

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
        edge = {-1: self.left - self.walk, 1: self.right + self.walk}  # outer sidewalk edge on each side
        specs = self._trees(edge)
        if rng.random() < 0.5:  # a row of street lamps
            side, spacing = int(rng.choice([-1, 1])), rng.uniform(25, 35)
            for z in np.arange(rng.uniform(5, 30), 4 + self._SPAN, spacing):
                specs.append((z, partial(_roadside_pole, camera, edge[side] + side * 0.4, height=8.0,
                                          arm=-side * rng.uniform(1.2, 2.2), sign=0)))
        for _ in range(rng.integers(0, 3)):
            side = int(rng.choice([-1, 1]))
            specs.append((rng.uniform(6, 60), partial(_roadside_pole, camera, edge[side] + side * 0.6, height=2.3,
                                                       arm=0.0, sign=int(rng.integers(1, 4)))))
        specs += self._people(edge)
        for side in (-1, 1):
            if rng.random() < 0.5:
                specs += self._street_front(edge[side] + side * rng.uniform(3, 12))
        return specs

    def _trees(self, edge: dict[int, float]) -> list[tuple[float, object]]:
        """Roadside trees beyond the outer sidewalk ``edge`` (lateral metres per side -1 / +1)."""
        rng, specs = self.rng, []
        for _ in range(rng.integers(0, 9)):
            side, radius = int(rng.choice([-1, 1])), rng.uniform(1.5, 3.2)
            green = np.array([rng.uniform(35, 80), rng.uniform(70, 115), rng.uniform(25, 55)])
            blobs = [(rng.uniform(-0.6, 0.6) * radius, rng.uniform(0.2, 1.3) * radius, radius * rng.uniform(0.5, 0.8),
                      _shade(green, rng.uniform(0.7, 1.25)), rng.normal(0, 0.06 * radius, (16, 2))) for _ in range(6)]
            x, trunk = edge[side] + side * rng.uniform(1, 9), rng.uniform(1.5, 3.5)
            builder = partial(_roadside_tree, self.camera, x, trunk=trunk, blobs=blobs)
            specs.append((rng.uniform(4, 4 + self._SPAN), builder))
        return specs

    def _people(self, edge: dict[int, float]) -> list[tuple[float, object]]:
        """Pedestrians on the sidewalks; a quarter of the scenes also have one crossing the road nearby."""
        rng, specs = self.rng, []
        crossing = rng.random() < 0.25
        for index in range(rng.integers(0, 5) + crossing):
            side = int(rng.choice([-1, 1]))
            on_sidewalk = edge[side] - side * rng.uniform(0.3, 1.5)
            x = rng.uniform(self.left, self.right) if index == 0 and crossing else on_sidewalk
            clothes = [_shade(rng.uniform(20, 230, 3), 1.0) for _ in range(2)]
            skin = _shade((205, 160, 125), rng.uniform(0.45, 1.1))
            specs.append((rng.uniform(6, 30 if crossing and index == 0 else 60),
                          partial(_roadside_person, self.camera, x, height=rng.uniform(1.55, 1.9), shirt=clothes[0],
                                   trousers=clothes[1], skin=skin)))
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
        self.lanes = lanes = [
            (self.left + (k + 0.5) * self.lane, "front" if k < self.oncoming else "rear",
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
            if not duration and self.far_cars and rng.random() < self.far_cars:
                z = far * rng.uniform(1.0, 3.0)
            if any(c["lane"] == lane_index and abs(c["z"] - z) < 6.5 for c in cars):
                continue
            style = ("sedan", "hatchback", "suv", "van")[rng.choice(4, p=[0.4, 0.2, 0.25, 0.15])]
            cars.append({"lane": lane_index, "x": x + rng.uniform(-0.35, 0.35), "z": z, "velocity": velocity,
                         "facing": facing, "style": style, "colour": _paint(rng), "id": len(cars)})
        return cars

    def _add_occlusion(self, duration: float) -> dict:
        """A car parked at the kerb and a van driving in the outer lane beside it (never the ego's lane) line up, seen
        from the camera, early in the video (before any stop): the van, nearer and larger, hides the whole parked car
        for a few frames while the ego drives by. An oncoming van keeps its lane's speed; in a lane of the ego's
        direction the van overtakes (4-8 m/s faster than the ego), so that it sweeps past the parked car quickly.
        Cars of the van's lane that it would come within 6.5 m of are taken away."""
        rng = self.rng
        side = int(rng.choice([side for side, outer in ((-1, 0), (1, self.num_lanes - 1)) if outer != self.ego]))
        lane = 0 if side < 0 else self.num_lanes - 1
        x_van, facing, velocity = self.lanes[lane]
        if facing == "rear":
            velocity = rng.uniform(4, 8)
        x_parked = (self.left if side < 0 else self.right) + side * 1.1  # on the shoulder, just off the road
        z_parked = max(rng.uniform(25, 40), abs(x_parked) / 0.3)  # within 0.3 rad of the axis: well inside the frame
        z_van = z_parked * x_van / x_parked  # the same line of sight: x / z is the image column
        when = duration * rng.uniform(0.12, 0.22)
        if velocity > 0:  # an overtaking van: in view from the start rather than popping up beside the camera
            when = min(when, (z_van - 8.0) / velocity)
        style = ("sedan", "hatchback", "suv")[rng.integers(3)]
        van = {"lane": lane, "x": x_van, "z": 0.0, "velocity": velocity, "facing": facing, "style": "van",
               "colour": _paint(rng), "id": len(self.cars)}
        parked = {"lane": -1, "x": x_parked, "z": 0.0, "velocity": -self.speed, "facing": facing, "style": style,
                  "colour": _paint(rng), "id": len(self.cars) + 1}
        van["z"], parked["z"] = z_van - self._distance(van, when), z_parked - self._distance(parked, when)
        times = np.linspace(0, duration, 50)
        path = np.array([self._distance(van, t) for t in times])
        self.cars = [c for c in self.cars if c["lane"] != lane or min(
            abs(self._distance(c, t) - z) for t, z in zip(times, path)) >= 6.5] + [van, parked]
        return {"car_id": parked["id"], "occluder_id": van["id"], "time": float(when)}

    def _distance(self, car: dict, time: float) -> float:
        """How far ahead of the camera ``car`` is at ``time`` (metres). Without a stop: its start plus its speed
        relative to the ego times ``time``; with one, its own travel and the ego's follow the profile."""
        if self.jam is None:
            return car["z"] + car["velocity"] * time
        own = self.jam.distance(time) if car["facing"] == "rear" else time  # parked cars do not move either way
        return car["z"] + (car["velocity"] + self.speed) * own - self.speed * self.jam.distance(time)

    def traffic(self) -> dict:
        """What a video's ground truth should know of the options: the stop (seconds, and the ids of the cars that
        stop with the ego) and the occlusion (the hidden car's id, the van's, and when they line up)."""
        jam = None if self.jam is None else {
            **asdict(self.jam), "car_ids": [c["id"] for c in self.cars if c["facing"] == "rear" and c["lane"] >= 0]}
        return {"stop_and_go": jam, "occlusion": self.occlusion}

    def travelled(self, time: float) -> float:
        """Metres the ego has driven by ``time``."""
        return self.speed * (self.jam.distance(time) if self.jam is not None else time)

    def frame(self, time: float) -> tuple[list[Sprite], list[tuple[np.ndarray, Colour]]]:
        """Sprites and road marks at ``time`` seconds."""
        travelled = self.travelled(time)
        sprites = [build(z=4 + (z - travelled - 4) % self._SPAN if time else z) for z, build in self.static]
        for car in self.cars:
            z = self._distance(car, time)
            if 2.5 <= z <= 200:  # passed or too far to draw
                sprites.append(driver_car(self.camera, car["x"], z, car["colour"], car["style"], car["facing"],
                                          car["id"], self.sun))
        return sprites, self._lane_marks(travelled)
