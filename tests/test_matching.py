"""Matcher labels from written IoU matrices, sampler counts, ignore regions by hand."""

from __future__ import annotations

import pytest
import torch

from detector.matching import BalancedSampler, Matcher, ignored_by_regions

BG, IGN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS

# 2 gt x 6 predictions.
IOU = torch.tensor(
    [
        [0.90, 0.50, 0.10, 0.00, 0.65, 0.20],
        [0.10, 0.60, 0.25, 0.40, 0.70, 0.20],
    ]
)


def test_thresholds_without_low_quality_matches() -> None:
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=False)(IOU)
    # pred 0: 0.90 -> gt 0; pred 1: 0.60 ignore; pred 2: 0.25 bg; pred 3: 0.40 ignore;
    # pred 4: 0.70 (boundary, inclusive) -> gt 1; pred 5: 0.20 bg.
    assert matches.tolist() == [0, IGN, BG, IGN, 1, BG]
    assert matches.dtype == torch.int64


def test_low_threshold_is_inclusive_for_ignore() -> None:
    matches = Matcher(0.5, 0.25, allow_low_quality_matches=False)(IOU)
    # pred 2: 0.25 == low -> ignore (not background); pred 1: 0.60 -> gt 1.
    assert matches.tolist() == [0, 1, IGN, IGN, 1, BG]


def test_equal_thresholds_leave_nothing_ignored() -> None:
    matches = Matcher(0.5, 0.5, allow_low_quality_matches=False)(IOU)
    assert matches.tolist() == [0, 1, BG, BG, 1, BG]


def test_low_quality_matches_promote_each_gts_best_predictions_with_ties() -> None:
    iou = torch.tensor(
        [
            [0.40, 0.40, 0.10, 0.00, 0.00],  # gt 0: best 0.40, tied between preds 0 and 1
            [0.00, 0.20, 0.00, 0.55, 0.30],  # gt 1: best 0.55 at pred 3
            [0.00, 0.00, 0.00, 0.00, 0.00],  # gt 2 overlaps nothing: promotes nothing
        ]
    )
    plain = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
    assert plain.tolist() == [IGN, IGN, BG, IGN, IGN]
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert matches.tolist() == [0, 0, BG, 1, IGN]


def test_low_quality_match_keeps_the_predictions_own_best_gt() -> None:
    # Pred 0 is gt 0's best (0.30) but overlaps gt 1 more (0.50): as in Faster R-CNN it becomes
    # positive and is matched to gt 1; pred 1 is gt 1's best and matches it above threshold.
    iou = torch.tensor([[0.30, 0.00], [0.50, 0.80]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [1, 1]


def test_no_gt_gives_all_background() -> None:
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(torch.zeros((0, 5)))
    assert matches.tolist() == [BG] * 5
    assert matches.dtype == torch.int64


def test_no_predictions_gives_empty() -> None:
    assert Matcher(0.7, 0.3, True)(torch.zeros((3, 0))).shape == (0,)


@pytest.mark.parametrize("high, low", [(0.3, 0.7), (1.5, 0.5), (0.5, -0.1)])
def test_matcher_rejects_bad_thresholds(high: float, low: float) -> None:
    with pytest.raises(ValueError):
        Matcher(high, low)


def test_sampler_respects_quota_and_fraction() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([1] * 30 + [0] * 100 + [-1] * 20)
    pos, neg = BalancedSampler(batch_size_per_image=32, positive_fraction=0.25)(labels)
    assert int(pos.sum()) == 8 and int(neg.sum()) == 24
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert not bool((pos & neg).any())


def test_sampler_fills_with_negatives_when_positives_are_few() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([1] * 3 + [0] * 100 + [-1] * 10)
    pos, neg = BalancedSampler(64, 0.5)(labels)
    assert int(pos.sum()) == 3 and int(neg.sum()) == 61
    assert bool(pos[:3].all())


def test_sampler_with_too_few_of_both_takes_everything_labelled() -> None:
    labels = torch.tensor([1, 0, -1, 0, 1, -1])
    pos, neg = BalancedSampler(256, 0.5)(labels)
    assert pos.tolist() == [True, False, False, False, True, False]
    assert neg.tolist() == [False, True, False, True, False, False]


def test_sampler_treats_class_labels_as_positive() -> None:
    pos, neg = BalancedSampler(10, 0.5)(torch.tensor([3, 0, 2, -1]))
    assert pos.tolist() == [True, False, True, False] and neg.tolist() == [False, True, False, False]


def test_sampler_is_reproducible_with_a_seed_and_random_without() -> None:
    labels = torch.tensor([1] * 50 + [0] * 200)
    sampler = BalancedSampler(20, 0.5)
    torch.manual_seed(7)
    first = sampler(labels)
    torch.manual_seed(7)
    second = sampler(labels)
    third = sampler(labels)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(second[1], third[1])


@pytest.mark.parametrize("size, fraction", [(0, 0.5), (-4, 0.5), (16, 1.5), (16, -0.1)])
def test_sampler_rejects_bad_arguments(size: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        BalancedSampler(size, fraction)


def test_ignored_by_regions_by_hand() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # area 100, 60 inside region 0 (x 4..10) -> IoA 0.6
            [0.0, 0.0, 20.0, 20.0],  # area 400, 16 x 10 inside region 0 -> IoA 0.4
            [5.0, 0.0, 15.0, 10.0],  # inside region 0 entirely -> IoA 1.0
            [30.0, 30.0, 40.0, 40.0],  # half inside region 1 (x 35..40) -> IoA exactly 0.5, not > 0.5
            [50.0, 50.0, 60.0, 60.0],  # outside everything
        ]
    )
    regions = torch.tensor([[4.0, 0.0, 20.0, 10.0], [35.0, 0.0, 100.0, 45.0]])
    assert ignored_by_regions(boxes, regions).tolist() == [True, False, True, False, False]
    assert ignored_by_regions(boxes, regions, threshold=0.7).tolist() == [False, False, True, False, False]
    assert ignored_by_regions(boxes, regions, threshold=0.3).tolist() == [True, True, True, True, False]


def test_ignored_by_regions_without_regions_ignores_nothing() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert ignored_by_regions(boxes, torch.zeros((0, 4))).tolist() == [False]
    assert ignored_by_regions(torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 5.0, 5.0]])).shape == (0,)
