"""Traffic over time, shared by the driver's-eye and top-down videos: :class:`StopAndGo`, the speed profile of
traffic that slows to a standstill and drives off again (``render_video(..., stop_and_go=True)``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StopAndGo"]


@dataclass
class StopAndGo:
    """A speed profile in seconds: full speed until ``start``, a smooth (half-cosine) slowdown over ``slow`` to a
    standstill, ``wait`` standing, a smooth start over ``go`` back to full speed. Speeds are continuous, so positions
    (the integral, `distance`) glide."""

    start: float
    slow: float
    wait: float
    go: float

    @classmethod
    def sample(cls, rng: np.random.Generator, duration: float) -> StopAndGo:
        """A stop within a video of ``duration`` seconds: it starts after 30-40% of it and is over by 82%."""
        start, slow, wait, go = duration * rng.uniform([0.3, 0.08, 0.1, 0.1], [0.4, 0.12, 0.15, 0.15])
        return cls(float(start), float(slow), float(wait), float(go))

    def factor(self, time: float) -> float:
        """The fraction of full speed at ``time``: 1, down to 0, 0, back up to 1."""
        moving = time - self.start - self.slow - self.wait
        if time < self.start or moving >= self.go:
            return 1.0
        if time < self.start + self.slow:
            return float(1 + np.cos(np.pi * (time - self.start) / self.slow)) / 2
        return 0.0 if moving < 0 else float(1 - np.cos(np.pi * moving / self.go)) / 2

    def distance(self, time: float) -> float:
        """The integral of `factor` from 0 to ``time``: seconds' worth of full-speed travel (``time`` if no stop)."""
        if time < self.start:
            return time
        braking = min(time - self.start, self.slow)
        done = self.start + braking / 2 + self.slow / (2 * np.pi) * np.sin(np.pi * braking / self.slow)
        moving = min(time - self.start - self.slow - self.wait, self.go)
        if moving <= 0:
            return float(done)
        done += moving / 2 - self.go / (2 * np.pi) * np.sin(np.pi * moving / self.go)
        return float(done + max(time - self.start - self.slow - self.wait - self.go, 0.0))
