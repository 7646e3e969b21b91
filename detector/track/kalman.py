"""Constant-velocity Kalman filter for boxes, in the (cx, cy, w, h) measurement space of BoT-SORT.

State (8,): box centre x, y, width w, height h, and their velocities per frame. Noise scales with the box's size
(x and w with its width, y and h with its height), so a near (large) car may move more pixels per frame than a far
one: position noise w / 20 and h / 20 (ByteTrack's and BoT-SORT's), velocity noise w / 80 and h / 80 plus half the
velocity itself per frame (theirs: w / 160 and h / 160 alone).

Why width and height rather than SORT's and ByteTrack's aspect ratio w / h: the aspect ratio's noise is tiny (made for
pedestrians, whose shape does not change), so when a car's box changes shape (a car entering the frame, whose box grows
on one side; a car sliding under a bridge) the filter's aspect lagged for dozens of frames and its predicted box was
up to twice as wide as the car. BoT-SORT (Aharon et al., 2022) estimates the width directly for the same reason.

Why the velocity term: a car approaching a dash camera at a constant speed accelerates on the screen. Its offset from
the vanishing point and its size scale as 1 / distance, so each frame its image velocity grows by 2 x (distance closed
in a frame) / distance of itself: 50% for a car 10 m away closing at 25 m/s, filmed at 10 fps (its box grows 25% a
frame). With ByteTrack's h / 160 the filter's velocity lagged so far behind that a lost track's prediction took the car
instead (the driver's-eye benchmark video, true boxes as detections: 9 ID switches, each a car's ID passed on to the
next car in its lane). Noise proportional to the velocity lets a fast track follow its acceleration; a slow or parked
car's track stays as steady as before.

Shapes: ``mean`` (8,), ``covariance`` (8, 8); batched predictions take (T, 8) and (T, 8, 8) for T tracks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["KalmanFilter", "cxcywh_to_xyxy", "xyxy_to_cxcywh"]

STD_POSITION = 1.0 / 20  # ByteTrack's: position noise per frame, as a fraction of the box's width or height
STD_VELOCITY = 1.0 / 80  # velocity noise per frame, as a fraction of the box's width or height (ByteTrack's: 1 / 160)
STD_VELOCITY_CHANGE = 0.5  # more velocity noise per frame, as a fraction of the velocity itself (ByteTrack's: 0)


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, width, height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, width, height -> (N, 4) x1, y1, x2, y2."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)


class KalmanFilter:
    """x' = F x (the box advances by its velocities each frame), z = H x (the box part of the state).

    The noise weights are the module doc's; ``KalmanFilter(1 / 20, 1 / 160, 0)`` is BoT-SORT's filter."""

    def __init__(self, std_position: float = STD_POSITION, std_velocity: float = STD_VELOCITY,
                 std_velocity_change: float = STD_VELOCITY_CHANGE) -> None:
        self.std_position, self.std_velocity, self.std_velocity_change = std_position, std_velocity, std_velocity_change
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)  # (8, 8): box += velocity
        self.observation = np.eye(4, 8)  # (4, 8): measure the box, not its velocity

    @staticmethod
    def _sizes(box: np.ndarray) -> np.ndarray:
        """(..., 4+) cx, cy, w, h, ... -> (..., 4) the size each coordinate's noise scales with: w, h, w, h."""
        return box[..., [2, 3, 2, 3]]

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A new track from one (4,) cxcywh measurement: zero velocity, uncertainty scaled by its size."""
        sizes = self._sizes(measurement)
        std = np.concatenate([2 * self.std_position * sizes, 10 * self.std_velocity * sizes])
        return np.concatenate([measurement, np.zeros(4)]), np.diag(np.square(std))

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead for T tracks: (T, 8), (T, 8, 8) -> the same shapes (single (8,) / (8, 8) too)."""
        single = mean.ndim == 1
        mean, covariance = np.atleast_2d(mean), covariance.reshape(-1, 8, 8)
        sizes = self._sizes(mean)  # (T, 4)
        velocity = self.std_velocity * sizes + self.std_velocity_change * np.abs(mean[:, 4:])  # (T, 4)
        std = np.concatenate([self.std_position * sizes, velocity], 1)  # (T, 8)
        noise = np.einsum("ti,ij->tij", np.square(std), np.eye(8))  # (T, 8, 8) diagonal
        mean = mean @ self.motion.T
        covariance = self.motion @ covariance @ self.motion.T + noise
        return (mean[0], covariance[0]) if single else (mean, covariance)

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state as a measurement: (4,) mean and (4, 4) covariance with the measurement noise added."""
        noise = np.diag(np.square(self.std_position * self._sizes(mean)))
        return self.observation @ mean, self.observation @ covariance @ self.observation.T + noise

    def update(self, mean: np.ndarray, covariance: np.ndarray,
               measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track's (8,), (8, 8) state with a (4,) cxcywh measurement."""
        projected_mean, projected_cov = self.project(mean, covariance)
        factor = scipy.linalg.cho_factor(projected_cov, lower=True, check_finite=False)
        # gain K = P H^T S^-1, solved rather than inverted: (4, 8) -> (8, 4)
        gain = scipy.linalg.cho_solve(factor, (covariance @ self.observation.T).T, check_finite=False).T
        innovation = measurement - projected_mean
        return mean + innovation @ gain.T, covariance - gain @ projected_cov @ gain.T
