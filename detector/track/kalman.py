"""Constant-velocity Kalman filter for boxes, in the (cx, cy, a, h) measurement space of SORT / ByteTrack.

State (8,): box centre x, y, aspect ratio a = w / h, height h, and their velocities per frame. Noise scales with
the box height, so a near (large) car may move more pixels per frame than a far one: position noise h / 20
(ByteTrack's), velocity noise h / 80 plus half the velocity itself per frame (ByteTrack's: h / 160 alone).

Why the velocity term: ByteTrack's noise is made for pedestrians, who walk at a steady pace and keep their size. A car
approaching a dash camera at a constant speed accelerates on the screen: its offset from the vanishing point and its
height scale as 1 / distance, so each frame its image velocity grows by 2 x (distance closed in a frame) / distance
of itself: 50% for a car 10 m away closing at 25 m/s, filmed at 10 fps (its box grows 25% a frame). With h / 160
the filter's velocity lagged so far behind that a lost track's prediction took the car instead (the driver's-eye
benchmark video, true boxes as detections: 9 ID switches, each a car's ID passed on to the next car in its lane).
Noise proportional to the velocity lets a fast track follow its acceleration; a slow or parked car's track stays as
steady as before.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["KalmanFilter", "xyah_to_xyxy", "xyxy_to_xyah"]

STD_POSITION = 1.0 / 20  # ByteTrack's: position noise per frame, as a fraction of the box height
STD_VELOCITY = 1.0 / 80  # velocity noise per frame, as a fraction of the box height (ByteTrack's: 1 / 160)
STD_VELOCITY_CHANGE = 0.5  # more velocity noise per frame, as a fraction of the velocity itself (ByteTrack's: 0)


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, aspect w / h, height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + width / 2, boxes[:, 1] + height / 2, width / np.maximum(height, 1e-6), height], 1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, aspect, height -> (N, 4) x1, y1, x2, y2."""
    xyah = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
    width = xyah[:, 2] * xyah[:, 3]
    return np.stack([xyah[:, 0] - width / 2, xyah[:, 1] - xyah[:, 3] / 2,
                     xyah[:, 0] + width / 2, xyah[:, 1] + xyah[:, 3] / 2], 1)


class KalmanFilter:
    """x' = F x (positions advance by their velocities each frame), z = H x (the box part of the state).

    The noise weights (see the module doc); ``KalmanFilter(1 / 20, 1 / 160, 0)`` is ByteTrack's filter."""

    def __init__(self, std_position: float = STD_POSITION, std_velocity: float = STD_VELOCITY,
                 std_velocity_change: float = STD_VELOCITY_CHANGE) -> None:
        self.std_position, self.std_velocity, self.std_velocity_change = std_position, std_velocity, std_velocity_change
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)  # (8, 8): position += velocity
        self.observation = np.eye(4, 8)  # (4, 8): measure the box, not its velocity

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A new track from one (4,) xyah measurement: zero velocity, uncertainty scaled by its height."""
        position, velocity = 2 * self.std_position * measurement[3], 10 * self.std_velocity * measurement[3]
        mean = np.concatenate([measurement, np.zeros(4)])
        std = [position, position, 1e-2, position, velocity, velocity, 1e-5, velocity]
        return mean, np.diag(np.square(std))

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead for T tracks: (T, 8), (T, 8, 8) -> the same shapes (single (8,) / (8, 8) too)."""
        single = mean.ndim == 1
        mean, covariance = np.atleast_2d(mean), covariance.reshape(-1, 8, 8)
        position = self.std_position * mean[:, 3]  # (T,)
        velocity = self.std_velocity * mean[:, 3:4] + self.std_velocity_change * np.abs(mean[:, [4, 5, 7]])  # (T, 3)
        std = np.stack([position, position, np.full_like(position, 1e-2), position, velocity[:, 0], velocity[:, 1],
                        np.full_like(position, 1e-5), velocity[:, 2]], 1)  # (T, 8)
        noise = np.einsum("ti,ij->tij", np.square(std), np.eye(8))  # (T, 8, 8) diagonal
        mean = mean @ self.motion.T
        covariance = self.motion @ covariance @ self.motion.T + noise
        return (mean[0], covariance[0]) if single else (mean, covariance)

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state as a measurement: (4,) mean and (4, 4) covariance with the measurement noise added."""
        position = self.std_position * mean[3]
        noise = np.diag(np.square([position, position, 1e-1, position]))
        return self.observation @ mean, self.observation @ covariance @ self.observation.T + noise

    def update(self, mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track's (8,), (8, 8) state with a (4,) xyah measurement."""
        projected_mean, projected_cov = self.project(mean, covariance)
        factor = scipy.linalg.cho_factor(projected_cov, lower=True, check_finite=False)
        # gain K = P H^T S^-1, solved rather than inverted: (4, 8) -> (8, 4)
        gain = scipy.linalg.cho_solve(factor, (covariance @ self.observation.T).T, check_finite=False).T
        innovation = measurement - projected_mean
        return mean + innovation @ gain.T, covariance - gain @ projected_cov @ gain.T
