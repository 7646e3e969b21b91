"""Near-duplicates across splits: does any validation or test image nearly repeat a training image?

A split by contiguous blocks of a video can still leak: a drone that hovers, or passes the same street twice,
films near-identical frames hundreds of frames apart. The check compares every pair of images from different
splits by the Pearson correlation of small grey thumbnails (32x32, area-averaged, so that the layout of the
scene counts and moving cars, noise and compression barely do). Pairs at or above ``threshold`` (0.9 by default)
are near-duplicates. On the drone set, frames a few seconds apart score 0.95-1.00, different streets below 0.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.structures import Dataset, DetectorError

THUMBNAIL = 32  # pixels per side
THRESHOLD = 0.9


def thumbnail(path: Path, size: int = THUMBNAIL) -> np.ndarray:
    """(size*size,) float32 unit vector: the grey image shrunk to size x size, zero mean, unit norm, so the dot
    product of two thumbnails is their Pearson correlation."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DetectorError(f"image file {path} cannot be read")
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small  # a flat image correlates with nothing


@dataclass(frozen=True)
class DuplicatePair:
    """Two images of different splits whose thumbnails correlate at ``correlation``."""

    split_a: str
    image_a: str
    split_b: str
    image_b: str
    correlation: float


def cross_split_correlation(splits: dict[str, Dataset]) -> tuple[dict[tuple[str, str], float], list[DuplicatePair]]:
    """For every pair of splits: the highest thumbnail correlation between their images, and every pair of
    images at or above `THRESHOLD` (highest first)."""
    names = list(splits)
    vectors = {
        name: np.stack([thumbnail(r.image_path) for r in splits[name].records]) if splits[name].records
        else np.zeros((0, THUMBNAIL * THUMBNAIL), np.float32)
        for name in names
    }
    highest: dict[tuple[str, str], float] = {}
    pairs: list[DuplicatePair] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            corr = vectors[a] @ vectors[b].T  # (Na, Nb)
            highest[(a, b)] = float(corr.max()) if corr.size else float("nan")
            for ia, ib in zip(*np.nonzero(corr >= THRESHOLD)):
                pairs.append(DuplicatePair(a, splits[a].records[ia].image_path.name, b,
                                           splits[b].records[ib].image_path.name, float(corr[ia, ib])))
    return highest, sorted(pairs, key=lambda p: -p.correlation)


def format_split_report(splits: dict[str, Dataset], highest: dict[tuple[str, str], float],
                        pairs: list[DuplicatePair]) -> str:
    """Images and boxes per split, the highest cross-split correlation of each pair, and the near-duplicates."""
    lines = [f"{name:>5}: {len(d.records)} images, {sum(len(r.boxes) for r in d.records)} boxes"
             for name, d in splits.items()]
    lines += [f"highest thumbnail correlation {a} x {b}: {value:.3f}" for (a, b), value in highest.items()]
    if pairs:
        lines.append(f"{len(pairs)} near-duplicate pairs (correlation >= {THRESHOLD}):")
        lines += [f"  {p.split_a} {p.image_a}  ~  {p.split_b} {p.image_b}  {p.correlation:.3f}" for p in pairs[:20]]
    else:
        lines.append(f"no near-duplicate across splits (every correlation < {THRESHOLD})")
    return "\n".join(lines)
