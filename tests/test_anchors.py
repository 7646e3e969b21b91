"""Anchor generation: hand-computed anchors, level/size rules, ordering and caching."""

from __future__ import annotations

import pytest
import torch

from detector.anchors import AnchorGenerator, cell_anchors

# sqrt(2) * 16 and sqrt(2) * 8: half-width / half-height of a 32-pixel anchor with ratio 2 or 0.5.
LONG, SHORT = 22.627417, 11.313708


def test_cell_anchors_have_requested_area_and_ratio() -> None:
    anchors = cell_anchors((32.0, 64.0), (0.5, 1.0, 2.0))
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    # size-major: sizes (32, 32, 32, 64, 64, 64), ratios (0.5, 1, 2, 0.5, 1, 2)
    torch.testing.assert_close(widths * heights, torch.tensor([1024.0] * 3 + [4096.0] * 3, dtype=torch.float64))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0] * 2, dtype=torch.float64))


def test_two_by_two_map_at_stride_16_by_hand() -> None:
    generator = AnchorGenerator(sizes=(32.0,), ratios=(0.5, 1.0, 2.0), strides=[16])
    (anchors,) = generator([torch.zeros(1, 8, 2, 2)])
    # Centres (x + 0.5) * 16: x, y in {8, 24}. Ratio 0.5 (wide): w = 45.25, h = 22.63; ratio 2 (tall) the transpose.
    cell = torch.tensor(
        [
            [-LONG, -SHORT, LONG, SHORT],  # ratio 0.5
            [-16.0, -16.0, 16.0, 16.0],  # ratio 1
            [-SHORT, -LONG, SHORT, LONG],  # ratio 2
        ]
    )
    expected = torch.cat(
        [
            cell + torch.tensor([8.0, 8.0, 8.0, 8.0]),  # (y=0, x=0)
            cell + torch.tensor([24.0, 8.0, 24.0, 8.0]),  # (y=0, x=1)
            cell + torch.tensor([8.0, 24.0, 8.0, 24.0]),  # (y=1, x=0)
            cell + torch.tensor([24.0, 24.0, 24.0, 24.0]),  # (y=1, x=1)
        ]
    )
    assert anchors.shape == (12, 4)
    assert anchors.dtype == torch.float32
    torch.testing.assert_close(anchors, expected, atol=1e-4, rtol=0)
    # Spot values written out: the square anchor of cell (0, 0) and the wide anchor of cell (1, 1).
    torch.testing.assert_close(anchors[1], torch.tensor([-8.0, -8.0, 24.0, 24.0]))
    torch.testing.assert_close(anchors[9], torch.tensor([1.372583, 12.686292, 46.627417, 35.313708]))


def test_single_level_uses_every_size() -> None:
    generator = AnchorGenerator(sizes=(16.0, 32.0), ratios=(0.5, 1.0, 2.0), strides=[8])
    assert generator.num_anchors_per_location == 6
    (anchors,) = generator([torch.zeros(2, 4, 3, 5)])
    assert anchors.shape == (3 * 5 * 6, 4)
    areas = (anchors[:6, 2] - anchors[:6, 0]) * (anchors[:6, 3] - anchors[:6, 1])
    torch.testing.assert_close(areas, torch.tensor([256.0] * 3 + [1024.0] * 3))


def test_several_levels_use_one_size_each() -> None:
    generator = AnchorGenerator(sizes=(32.0, 64.0), ratios=(1.0,), strides=[8, 16])
    assert generator.num_anchors_per_location == 1
    fine, coarse = generator([torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 2)])
    assert fine.shape == (16, 4) and coarse.shape == (4, 4)
    torch.testing.assert_close(fine[0], torch.tensor([-12.0, -12.0, 20.0, 20.0]))  # centre (4, 4), side 32
    torch.testing.assert_close(coarse[3], torch.tensor([-8.0, -8.0, 56.0, 56.0]))  # centre (24, 24), side 64


@pytest.mark.parametrize(
    "sizes, ratios, strides",
    [
        ((32.0, 64.0, 128.0), (1.0,), [8, 16]),  # several levels, sizes != levels
        ((32.0,), (1.0,), [8, 16]),
        ((), (1.0,), [8]),
        ((32.0,), (0.0,), [8]),
        ((-32.0,), (1.0,), [8]),
        ((32.0,), (1.0,), []),
    ],
)
def test_invalid_configurations_raise(sizes, ratios, strides) -> None:
    with pytest.raises(ValueError):
        AnchorGenerator(sizes, ratios, strides)


def test_wrong_number_of_feature_maps_raises() -> None:
    generator = AnchorGenerator(sizes=(32.0, 64.0), ratios=(1.0,), strides=[8, 16])
    with pytest.raises(ValueError, match="2 feature levels"):
        generator([torch.zeros(1, 4, 4, 4)])


def test_anchors_are_cached_per_shape_and_dtype() -> None:
    generator = AnchorGenerator(sizes=(32.0,), ratios=(1.0,), strides=[16])
    first = generator([torch.zeros(1, 2, 3, 3)])[0]
    assert generator([torch.ones(4, 2, 3, 3)])[0] is first  # batch size and channels do not matter
    other_shape = generator([torch.zeros(1, 2, 3, 4)])[0]
    assert other_shape is not first and other_shape.shape == (12, 4)
    double = generator([torch.zeros(1, 2, 3, 3, dtype=torch.float64)])[0]
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), first)


def test_half_precision_features_give_float32_anchors() -> None:
    generator = AnchorGenerator(sizes=(32.0,), ratios=(0.5,), strides=[32])
    (anchors,) = generator([torch.zeros(1, 2, 64, 64, dtype=torch.float16)])
    assert anchors.dtype == torch.float32
    # The last centre is 63.5 * 32 = 2032; fp16 would round 2032 + 22.627 to 2054.
    torch.testing.assert_close(anchors[-1, 2], torch.tensor(2032.0 + LONG))


def test_traced_anchors_equal_the_cached_ones_and_are_not_cached():
    """The exported graph builds anchors from each level's traced size: the same boxes as forward, no cache entry."""
    generator = AnchorGenerator((32, 64), (0.5, 1.0), [8, 16])
    features = [torch.zeros(1, 4, 6, 5), torch.zeros(1, 4, 3, 3)]
    traced = generator.traced(features)
    assert not generator._cache
    for got, expected in zip(traced, generator(features)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
