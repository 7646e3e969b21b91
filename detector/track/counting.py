"""Counting tracked cars: crossings of a line, and occupancy of a zone.

A track's position is the bottom centre of its box, where the car meets the road. Lines and zones are in frame
pixels.

- `LineCounter`: a segment from its first to its second point. "left" is on the left hand of someone walking
  from the first point to the second (image coordinates, y down). A track counts when its position moves from one
  side to the other across the segment itself; each track counts at most once per line, so a car that stops on
  the line, jitters across it or turns back is counted once. Positions within ``tolerance`` pixels of the line
  keep the side the track was last seen on. With ``min_frames`` above 1 a crossing counts only once the track has
  been seen on the new side that many times in a row (supervision's ``minimum_crossing_threshold``): a box
  that jumps across the line for a frame and back, or whose track ends there, is not a car crossing. The event keeps
  the frame where the track first showed on the new side.
- `ZoneCounter`: a simple polygon (three or more points, no crossing edges). Occupancy per frame, an event for
  every entry and exit, and each track's dwell time (frames inside / fps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detector.structures import DetectorError

__all__ = ["CountEvent", "LineCounter", "ZoneCounter", "bottom_centre", "check_polygon", "point_in_polygon"]


@dataclass
class CountEvent:
    """A line crossing (kind "cross", direction "left" or "right") or a zone entry / exit (kind "enter" / "exit")."""

    name: str
    kind: str
    direction: str
    track_id: int
    label: str
    frame: int
    time_s: float


def bottom_centre(box: np.ndarray) -> np.ndarray:
    """(4,) or (N, 4) xyxy -> (2,) or (N, 2) x, y of the middle of the bottom edge."""
    box = np.asarray(box, np.float64)
    return np.stack([(box[..., 0] + box[..., 2]) / 2, box[..., 3]], -1)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """z of (a - o) x (b - o). In image coordinates (y down) it is negative when b lies on the left hand of someone
    walking from o towards a on the screen, positive on the right, 0 on the line."""
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _on_segment(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> bool:
    """For a point r on the line through p and q: whether it lies between them."""
    return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])


def _segments_intersect(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether segments p1-p2 and q1-q2 cross or touch."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True
    return ((d1 == 0 and _on_segment(q1, q2, p1)) or (d2 == 0 and _on_segment(q1, q2, p2))
            or (d3 == 0 and _on_segment(p1, p2, q1)) or (d4 == 0 and _on_segment(p1, p2, q2)))


class LineCounter:
    """Crossings of the segment ``start`` -> ``end`` per direction and class (see the module doc)."""

    def __init__(self, name: str, start: tuple[float, float], end: tuple[float, float], tolerance: float = 2.0,
                 min_frames: int = 1) -> None:
        self.name, self.start, self.end = name, np.asarray(start, np.float64), np.asarray(end, np.float64)
        self.length = float(np.hypot(*(self.end - self.start)))
        if self.length == 0:
            raise DetectorError(f"line {name!r}: its two points are the same; expected a segment")
        if min_frames < 1:
            raise DetectorError(f"line {name!r}: min_frames is {min_frames}; expected at least 1")
        self.tolerance, self.min_frames = tolerance, min_frames
        self.counts: dict[str, dict[str, int]] = {"left": {}, "right": {}}
        self._side: dict[int, int] = {}  # track id -> last settled side (+1 left, -1 right)
        self._position: dict[int, np.ndarray] = {}  # track id -> position where that side was last seen
        self._pending: dict[int, tuple[int, float, int]] = {}  # track id -> (frame, time, frames seen) on the far side
        self._counted: set[int] = set()

    def _signed_distance(self, point: np.ndarray) -> float:
        """> 0 on the left of start -> end (image coordinates, y down: the left hand of a walker on screen)."""
        return -_cross(self.start, self.end, point) / self.length

    def update(self, frame: int, time_s: float, tracks: list[tuple[int, str, np.ndarray]]) -> list[CountEvent]:
        """``tracks``: (track id, class name, (2,) position) of the tracks seen in this frame."""
        events = []
        for track_id, label, point in tracks:
            point = np.asarray(point, np.float64)
            distance = self._signed_distance(point)
            if abs(distance) <= self.tolerance:
                continue  # on the line: the side stays what it was
            side = 1 if distance > 0 else -1
            previous = self._side.get(track_id)
            if previous is None or previous == side:  # first seen, or still on its side: nothing pending
                self._side[track_id], self._position[track_id] = side, point
                self._pending.pop(track_id, None)
                continue
            if track_id not in self._pending:
                if track_id in self._counted or not _segments_intersect(self._position[track_id], point, self.start,
                                                                         self.end):
                    self._side[track_id], self._position[track_id] = side, point  # counted, or went round the end
                    continue
                self._pending[track_id] = (frame, time_s, 0)
            first_frame, first_time, seen = self._pending[track_id]
            self._pending[track_id] = (first_frame, first_time, seen + 1)
            if seen + 1 < self.min_frames:
                continue
            del self._pending[track_id]
            self._side[track_id], self._position[track_id] = side, point
            direction = "left" if side > 0 else "right"
            self._counted.add(track_id)
            self.counts[direction][label] = self.counts[direction].get(label, 0) + 1
            events.append(CountEvent(self.name, "cross", direction, track_id, label, first_frame, first_time))
        return events

    def total(self, direction: str | None = None) -> int:
        directions = [direction] if direction else ["left", "right"]
        return sum(sum(self.counts[d].values()) for d in directions)


def _edges_cross(points: np.ndarray) -> bool:
    count = len(points)
    for i in range(count):
        for j in range(i + 1, count):
            if j == i + 1 or (i == 0 and j == count - 1):
                continue  # neighbouring edges share a point
            if _segments_intersect(points[i], points[(i + 1) % count], points[j], points[(j + 1) % count]):
                return True
    return False


def check_polygon(name: str, points: np.ndarray) -> np.ndarray:
    """(P, 2) polygon points, checked: at least three, a non-zero area, no two edges crossing."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) < 3:
        raise DetectorError(f"zone {name!r} has {len(points)} points; a polygon needs at least 3")
    if _edges_cross(points):
        raise DetectorError(f"zone {name!r} crosses itself; list its points in order around the polygon")
    area = 0.5 * abs(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1], np.roll(points[:, 0], -1)))
    if area == 0:
        raise DetectorError(f"zone {name!r} has no area: its points lie on one line")
    return points


def point_in_polygon(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Ray casting (even-odd rule) for one (2,) point and a (P, 2) polygon."""
    x, y = float(point[0]), float(point[1])
    inside = False
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


@dataclass
class ZoneCounter:
    """Occupancy, entries, exits and dwell time of a polygon zone (see the module doc)."""

    name: str
    polygon: np.ndarray
    fps: float
    occupancy: list[int] = field(default_factory=list)  # per updated frame
    entries: int = 0
    exits: int = 0
    dwell_frames: dict[int, int] = field(default_factory=dict)  # track id -> frames seen inside
    _inside: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.polygon = check_polygon(self.name, self.polygon)

    def update(self, frame: int, time_s: float, tracks: list[tuple[int, str, np.ndarray]]) -> list[CountEvent]:
        events, now_inside = [], set()
        for track_id, label, point in tracks:
            inside = point_in_polygon(point, self.polygon)
            if inside:
                now_inside.add(track_id)
                self.dwell_frames[track_id] = self.dwell_frames.get(track_id, 0) + 1
                if track_id not in self._inside:
                    self.entries += 1
                    events.append(CountEvent(self.name, "enter", "in", track_id, label, frame, time_s))
            elif track_id in self._inside:
                self.exits += 1
                events.append(CountEvent(self.name, "exit", "out", track_id, label, frame, time_s))
        seen = {track_id for track_id, _, _ in tracks}
        self._inside = now_inside | (self._inside - seen)  # a track not seen this frame is where it was
        self.occupancy.append(len(self._inside))
        return events

    def dwell_seconds(self) -> dict[int, float]:
        return {track_id: frames / self.fps for track_id, frames in self.dwell_frames.items()}
