"""Speed from a homography: image points of the road mapped to ground coordinates in metres.

The homography file is JSON: ``{"image": [[x, y], ...], "ground": [[X, Y], ...]}`` with four or more
corresponding points (pixels, and metres on the road plane; e.g. lane-marking corners of known spacing). Each
track's bottom-centre point is mapped to the ground; its speed is the distance travelled over the last
``window_s`` seconds divided by that time, in km/h. Without a homography no speed is claimed.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path

import cv2
import numpy as np

from detector.structures import DetectorError

__all__ = ["SpeedEstimator", "read_homography"]


def read_homography(path: str | Path) -> np.ndarray:
    """The (3, 3) image -> ground homography of a JSON file (see the module doc)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetectorError(f"cannot read the homography file {path}: {error}") from None
    try:
        image = np.asarray(content["image"], np.float64).reshape(-1, 2)
        ground = np.asarray(content["ground"], np.float64).reshape(-1, 2)
    except (TypeError, KeyError, ValueError):
        raise DetectorError(f"{path}: expected {{\"image\": [[x, y], ...], \"ground\": [[X, Y], ...]}} with numbers") from None
    if len(image) != len(ground) or len(image) < 4:
        raise DetectorError(f"{path}: expected four or more image points with as many ground points, got "
                            f"{len(image)} and {len(ground)}")
    if not (np.isfinite(image).all() and np.isfinite(ground).all()):
        raise DetectorError(f"{path}: the points must be finite numbers")
    matrix, _ = cv2.findHomography(image, ground, 0)
    if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        raise DetectorError(f"{path}: the points give no invertible homography (three of them on one line?)")
    return matrix


class SpeedEstimator:
    """Per-track speed in km/h from ground positions over a sliding window of ``window_s`` seconds."""

    def __init__(self, homography: np.ndarray, window_s: float = 1.0) -> None:
        self.homography, self.window_s = homography, window_s
        self._history: dict[int, deque] = defaultdict(deque)  # track id -> (time_s, ground (2,))

    def ground(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) image pixels -> (N, 2) ground metres."""
        points = np.asarray(points, np.float64).reshape(-1, 1, 2)
        return cv2.perspectiveTransform(points, self.homography).reshape(-1, 2)

    def update(self, time_s: float, track_ids: list[int], points: np.ndarray) -> dict[int, float | None]:
        """Record this frame's positions; returns each track's speed (None until it has half a window of history)."""
        speeds: dict[int, float | None] = {}
        for track_id, position in zip(track_ids, self.ground(points) if len(track_ids) else []):
            history = self._history[track_id]
            history.append((time_s, position))
            while history and time_s - history[0][0] > self.window_s:
                history.popleft()
            elapsed = time_s - history[0][0]
            if elapsed < self.window_s / 2:
                speeds[track_id] = None
                continue
            metres = float(np.linalg.norm(position - history[0][1]))
            speeds[track_id] = metres / elapsed * 3.6
        return speeds
