"""Matching predictions (anchors, proposals) to ground truth, and sampling a balanced training set.

Shared by the RPN (anchors vs gt boxes) and the ROI heads (proposals vs gt boxes), so nothing
here knows which stage calls it: the matcher sees an IoU matrix, the sampler a label vector.
"""

from __future__ import annotations

import torch

from detector.boxes import box_ioa

__all__ = ["BalancedSampler", "Matcher", "ignored_by_regions"]


class Matcher:
    """Assigns every prediction the index of its best ground-truth box, or a negative code.

    A prediction whose best IoU is ``>= high_threshold`` is matched to that gt; one whose best IoU
    is ``< low_threshold`` gets ``BELOW_LOW_THRESHOLD``; one in between ``BETWEEN_THRESHOLDS`` (too ambiguous to
    train on either way); torchvision's Matcher names its codes the same way. These are match codes, not labels:
    what becomes background, ignored or sampled is the caller's decision (`structures.BACKGROUND` is label 0). With ``low_threshold == high_threshold`` nothing is ignored.

    ``allow_low_quality_matches`` (Faster R-CNN) additionally makes positive, for each gt, the
    predictions with that gt's highest IoU (all of them on ties), so that a box no anchor overlaps
    by ``high_threshold`` still trains the network. As in Faster R-CNN, a promoted prediction keeps
    its own best gt as the match (the two differ only when it overlaps another gt more). A gt that
    overlaps no prediction at all (highest IoU 0) promotes nothing: every prediction would tie.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise ValueError(
                f"Matcher: expected 0 <= low_threshold <= high_threshold <= 1, got low={low_threshold}, "
                f"high={high_threshold}"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> torch.Tensor:
        """iou: (M gt, N preds) -> (N,) int64: gt index in 0..M-1, ``BELOW_LOW_THRESHOLD`` or
        ``BETWEEN_THRESHOLDS``.

        With M == 0 (an image without boxes) every prediction is ``BELOW_LOW_THRESHOLD``.
        """
        if iou.dim() != 2:
            raise ValueError(f"Matcher: expected an (M, N) IoU matrix, got shape {tuple(iou.shape)}")
        num_gt, num_preds = iou.shape
        if num_gt == 0 or num_preds == 0:
            return torch.full((num_preds,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        best_iou, best_gt = iou.max(dim=0)  # (N,) each
        matches = best_gt.clone()
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            promoted = self.low_quality_predictions(iou)
            matches[promoted] = best_gt[promoted]
        return matches

    @staticmethod
    def low_quality_predictions(iou: torch.Tensor) -> torch.Tensor:
        """(N,) bool: predictions that have the highest IoU (ties included) of some gt with IoU > 0.

        iou: (M, N) with M >= 1.
        """
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (M, 1)
        is_best = (iou == best_per_gt) & (best_per_gt > 0)  # (M, N)
        return is_best.any(dim=0)


class BalancedSampler:
    """Samples up to ``batch_size_per_image`` labelled predictions with a bounded positive fraction.

    Without it the loss would be swamped by easy negatives (an image has ~100x more background
    anchors than object anchors). Positives fill at most ``batch_size_per_image * positive_fraction``
    slots; negatives fill the rest, so an image with few positives still gives a full batch.
    Draws use torch's global RNG (``torch.manual_seed`` makes a run reproducible).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 1:
            raise ValueError(
                f"BalancedSampler: batch_size_per_image must be a positive integer, got {batch_size_per_image}"
            )
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"BalancedSampler: positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = positive_fraction

    def __call__(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """labels: (N,) int, ``>= 1`` positive (1, or a class label 1..K), ``0`` negative, ``< 0`` ignored.

        Returns (pos_mask, neg_mask), each (N,) bool, disjoint, never selecting an ignored entry.
        """
        if labels.dim() != 1:
            raise ValueError(f"BalancedSampler: expected (N,) labels, got shape {tuple(labels.shape)}")
        positive = torch.nonzero(labels >= 1).flatten()
        negative = torch.nonzero(labels == 0).flatten()
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
        pos_mask = _random_subset_mask(positive, num_pos, len(labels))
        neg_mask = _random_subset_mask(negative, num_neg, len(labels))
        return pos_mask, neg_mask


def _random_subset_mask(indices: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """(length,) bool mask with ``count`` of ``indices`` chosen uniformly without replacement."""
    chosen = indices[torch.randperm(indices.numel(), device=indices.device)[:count]]
    mask = torch.zeros(length, dtype=torch.bool, device=indices.device)
    mask[chosen] = True
    return mask


def ignored_by_regions(boxes: torch.Tensor, regions: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N,) bool: boxes lying more than ``threshold`` of their own area inside some ignore region.

    boxes: (N, 4) xyxy; regions: (G, 4) xyxy (KITTI DontCare, COCO crowd). Intersection over the
    box's area (IoA), not IoU, because a small anchor entirely inside a large crowd region has a
    tiny IoU with it yet must not be trained as background.
    """
    if len(regions) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    ioa = box_ioa(boxes, regions.to(boxes))  # (N, G)
    return ioa.max(dim=1).values > threshold
