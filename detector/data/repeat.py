"""Repeat-factor sampling: images that hold something rare are drawn more often during training.

Detectron2's rule for LVIS (Gupta et al., 2019, section 3.3): a group g that appears in a share f(g) of the training
images gets the repeat factor r(g) = max(1, sqrt(t / f(g))) for a threshold t, and an image gets the largest factor of
the groups it holds, r(I) = max over g in I of r(g). A group is a class, and, with ``long_side``, also "a box of this
class whose long side is at least ``long_side`` pixels at the training scale": in a one-class dataset the rare things
are shapes, not classes (buses and trucks labelled car among ordinary cars seen from above).

`detector.engine.EpochSampler` turns the factors into the images of each epoch by stochastic rounding, as
Detectron2's RepeatFactorTrainingSampler does.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from detector.structures import Dataset, DetectorError


def _groups(boxes: np.ndarray, labels: np.ndarray, scale: float, long_side: float) -> set[tuple[str, int]]:
    """The groups one image holds: ("class", c) for each class, ("long", c) for each class with a long box."""
    groups = {("class", int(label)) for label in labels}
    if long_side > 0 and len(boxes):
        sides = (boxes[:, 2:] - boxes[:, :2]).max(axis=1) * scale  # (M, 4) xyxy -> (M,) long side at training scale
        groups |= {("long", int(label)) for label in labels[sides >= long_side]}
    return groups


def repeat_factors(dataset: Dataset, threshold: float, long_side: float = 0.0, max_size: int = 0) -> np.ndarray:
    """(N,) float64 repeat factor of each record of ``dataset``, each at least 1.

    threshold: t above; 0 gives every image 1 (sampling off). long_side: pixels, 0 = classes only. max_size: the
    training scale (``data.max_size``: the longest image side is resized to it); 0 measures boxes in source pixels.
    """
    if threshold < 0 or long_side < 0:
        raise DetectorError(f"repeat factors need a threshold and a long side of at least 0, got {threshold} and "
                            f"{long_side}")
    if threshold == 0 or not dataset.records:
        return np.ones(len(dataset.records))
    per_image = [_groups(np.asarray(r.boxes, np.float64).reshape(-1, 4), np.asarray(r.labels).reshape(-1),
                         max_size / max(r.width, r.height) if max_size else 1.0, long_side) for r in dataset.records]
    counts = Counter(group for groups in per_image for group in groups)  # group -> images holding it
    group_factor = {g: max(1.0, float(np.sqrt(threshold / (n / len(per_image))))) for g, n in counts.items()}
    return np.array([max((group_factor[g] for g in groups), default=1.0) for groups in per_image])


def describe(factors: np.ndarray) -> str:
    """One line for the training log: how many images repeat, by how much, and the epoch's expected share of them."""
    repeated = factors > 1
    if not repeated.any():
        return "repeat-factor sampling: no image is rare enough to repeat"
    share = factors[repeated].sum() / factors.sum()
    return (f"repeat-factor sampling: {int(repeated.sum())} of {len(factors)} training images repeat "
            f"{factors[repeated].min():.2f}-{factors[repeated].max():.2f}x, {share:.1%} of each epoch's draws "
            f"(against {repeated.mean():.1%} without)")
