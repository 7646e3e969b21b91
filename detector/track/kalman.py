"""Constant-velocity Kalman filter for boxes, in the (cx, cy, a, h) measurement space of SORT / ByteTrack.

State (8,): box centre x, y, aspect ratio a = w / h, height h, and their velocities per frame. Noise scales with
the box height, so a near (large) car may move more pixels per frame than a far one. The weights are ByteTrack's:
position noise h / 20, velocity noise h / 160 per frame.

Shapes: ``mean`` (8,), ``covariance`` (8, 8); batched calls take (T, 8) and (T, 8, 8) for T tracks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["KalmanFilter", "xyah_to_xyxy", "xyxy_to_xyah"]

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160


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
    """x' = F x (positions advance by their velocities each frame), z = H x (the box part of the state)."""

    def __init__(self) -> None:
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)  # (8, 8): position += velocity
        self.observation = np.eye(4, 8)  # (4, 8): measure the box, not its velocity

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A new track from one (4,) xyah measurement: zero velocity, uncertainty scaled by its height."""
        height = measurement[3]
        mean = np.concatenate([measurement, np.zeros(4)])
        std = [2 * STD_POSITION * height, 2 * STD_POSITION * height, 1e-2, 2 * STD_POSITION * height,
               10 * STD_VELOCITY * height, 10 * STD_VELOCITY * height, 1e-5, 10 * STD_VELOCITY * height]
        return mean, np.diag(np.square(std))

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead for T tracks: (T, 8), (T, 8, 8) -> the same shapes (single (8,) / (8, 8) too)."""
        single = mean.ndim == 1
        mean, covariance = np.atleast_2d(mean), covariance.reshape(-1, 8, 8)
        height = mean[:, 3]
        std = np.stack([STD_POSITION * height, STD_POSITION * height, np.full_like(height, 1e-2),
                        STD_POSITION * height, STD_VELOCITY * height, STD_VELOCITY * height,
                        np.full_like(height, 1e-5), STD_VELOCITY * height], 1)  # (T, 8)
        noise = np.einsum("ti,ij->tij", np.square(std), np.eye(8))  # (T, 8, 8) diagonal
        mean = mean @ self.motion.T
        covariance = self.motion @ covariance @ self.motion.T + noise
        return (mean[0], covariance[0]) if single else (mean, covariance)

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state as a measurement: (4,) mean and (4, 4) covariance with the measurement noise added."""
        height = mean[3]
        noise = np.diag(np.square([STD_POSITION * height, STD_POSITION * height, 1e-1, STD_POSITION * height]))
        return self.observation @ mean, self.observation @ covariance @ self.observation.T + noise

    def update(self, mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track's (8,), (8, 8) state with a (4,) xyah measurement."""
        projected_mean, projected_cov = self.project(mean, covariance)
        factor = scipy.linalg.cho_factor(projected_cov, lower=True, check_finite=False)
        # gain K = P H^T S^-1, solved rather than inverted: (4, 8) -> (8, 4)
        gain = scipy.linalg.cho_solve(factor, (covariance @ self.observation.T).T, check_finite=False).T
        innovation = measurement - projected_mean
        return mean + innovation @ gain.T, covariance - gain @ projected_cov @ gain.T
