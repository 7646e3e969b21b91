"""ROI pooling: the lecture's worked examples, torchvision agreement, gradients, dtypes and FPN routing."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import script_module

import detector.roi_pool as roi_pool_module
from detector.roi_pool import RoIPool, assign_fpn_levels, roi_align_separable, roi_pool, roi_pool_reference
from detector.structures import DetectorError

# The lecture's two feature maps (4 rows x 7 cols, 5 rows x 9 cols) and their pooled results on its "3x2" grid,
# 2 rows x 3 cols (output_size=(2, 3)).
LECTURE_4X7 = [[1, 2, 6, 2, 8, 2, 0], [4, 7, 1, 3, 5, 2, 4], [3, 0, 7, 4, 5, 2, 9], [9, 1, 2, 7, 0, 3, 0]]
LECTURE_4X7_POOLED = [[7, 6, 8], [9, 7, 9]]
LECTURE_5X9 = [
    [6, 2, 8, 5, 2, 9, 5, 2, 5],
    [1, 3, 7, 1, 3, 5, 5, 2, 5],
    [3, 2, 0, 7, 4, 5, 0, 3, 0],
    [2, 7, 1, 2, 7, 0, 3, 8, 4],
    [7, 0, 1, 2, 6, 2, 8, 2, 7],
]
LECTURE_5X9_POOLED = [[8, 9, 5], [7, 7, 8]]
LECTURES = [(LECTURE_4X7, LECTURE_4X7_POOLED), (LECTURE_5X9, LECTURE_5X9_POOLED)]


def as_map(rows: list[list[int]]) -> torch.Tensor:
    """A (1, 1, H, W) float32 feature map."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def whole_map_roi(rows: list[list[int]]) -> torch.Tensor:
    """The ROI covering every cell: the map's corners, as continuous x1, y1, x2, y2."""
    return torch.tensor([[0.0, 0.0, 0.0, len(rows[0]), len(rows)]])


def torchvision_rois(rois: torch.Tensor, scale: float) -> torch.Tensor:
    """The same cells in torchvision.ops.roi_pool's convention: corners rounded, the end cell inclusive."""
    cells = torch.cat([torch.floor(rois[:, 1:3] * scale), torch.ceil(rois[:, 3:] * scale) - 1], 1)
    cells[:, 2:] = torch.maximum(cells[:, 2:], cells[:, :2])
    return torch.cat([rois[:, :1], cells / scale], 1)


def distinct_map(shape: tuple[int, ...], seed: int, dtype=torch.float32) -> torch.Tensor:
    """Random features with all values distinct (at least 1/numel apart), so every bin has one argmax."""
    generator = torch.Generator().manual_seed(seed)
    numel = int(torch.tensor(shape).prod())
    return (torch.randperm(numel, generator=generator).to(dtype) / numel - 0.5).reshape(shape)


@pytest.mark.parametrize("rows, expected", LECTURES)
def test_lecture_examples_pooled_whole(rows, expected):
    pooled = roi_pool(as_map(rows), whole_map_roi(rows), (2, 3))
    assert pooled.tolist() == [[expected]]


@pytest.mark.parametrize("rows, expected", LECTURES)
def test_lecture_examples_at_an_offset_in_a_larger_map(rows, expected):
    height, width = len(rows), len(rows[0])
    big = torch.full((1, 1, height + 7, width + 9), 100.0)  # larger than every lecture value: must not leak in
    big[0, 0, 3 : 3 + height, 5 : 5 + width] = torch.tensor(rows, dtype=torch.float32)
    roi = torch.tensor([[0.0, 5, 3, 5 + width, 3 + height]])
    assert roi_pool(big, roi, (2, 3)).tolist() == [[expected]]


@pytest.mark.parametrize("rows, expected", LECTURES)
def test_lecture_examples_with_spatial_scale_one_sixteenth(rows, expected):
    height, width = len(rows), len(rows[0])
    big = torch.full((2, 1, height + 4, width + 6), 100.0)
    big[1, 0, 2 : 2 + height, 3 : 3 + width] = torch.tensor(rows, dtype=torch.float32)
    # The same cells in input pixels at stride 16: corners anywhere inside the first and the last cell.
    x1, y1, x2, y2 = 3 * 16 + 15.9, 2 * 16 + 0.1, (3 + width) * 16 - 15.9, (2 + height) * 16 - 0.1
    roi = torch.tensor([[1.0, x1, y1, x2, y2]])
    assert roi_pool(big, roi, (2, 3), spatial_scale=1 / 16).tolist() == [[expected]]


def test_torchvision_bins_overlap_on_the_lecture_example():
    """Documentation: torchvision's roi_pool uses ceil for bin ends, so its 3 bins over 7 columns overlap."""
    pooled = torchvision.ops.roi_pool(as_map(LECTURE_4X7), torchvision_rois(whole_map_roi(LECTURE_4X7), 1), (2, 3))
    assert pooled.tolist() == [[[[7, 8, 8], [9, 7, 9]]]]
    assert roi_pool(as_map(LECTURE_4X7), whole_map_roi(LECTURE_4X7), (2, 3), mode="torchvision").tolist() == [
        [[[7, 8, 8], [9, 7, 9]]]
    ]


def test_gradient_lands_only_on_argmax_cells():
    features = as_map(LECTURE_4X7).requires_grad_()
    pooled = roi_pool(features, whole_map_roi(LECTURE_4X7), (2, 3))
    pooled.backward(torch.tensor([[[[1.0, 2, 3], [4, 5, 6]]]]))
    expected = torch.zeros(4, 7)
    # bin -> its max cell; bin (1, 1) holds two 7s, at (2, 2) and (3, 3): the first in row-major order wins
    for (row, col), grad in zip([(1, 1), (0, 2), (0, 4), (3, 0), (2, 2), (2, 6)], [1.0, 2, 3, 4, 5, 6], strict=True):
        expected[row, col] = grad
    assert torch.equal(features.grad[0, 0], expected)


def test_roi_smaller_than_the_grid_repeats_cells_instead_of_empty_bins():
    features = torch.tensor([[1.0, 2], [3, 4]])[None, None]
    pooled = roi_pool(features, torch.tensor([[0.0, 0, 0, 2, 2]]), 3)
    # n = 2 cells into k = 3 bins: bins [0, 1), [0, 1), [1, 2)
    assert pooled.tolist() == [[[[1, 1, 2], [1, 1, 2], [3, 3, 4]]]]
    single_cell = roi_pool(as_map(LECTURE_4X7), torch.tensor([[0.0, 4.2, 2.1, 4.7, 2.9]]), 7)  # inside cell (2, 4)
    assert torch.equal(single_cell, torch.full((1, 1, 7, 7), 5.0))
    assert torch.equal(roi_pool(as_map(LECTURE_4X7), torch.tensor([[0.0, 4, 2, 4, 2]]), 7), single_cell)  # empty box


def test_roi_partly_outside_the_map_is_clamped_to_it():
    roi = torch.tensor([[0.0, -5, -2, 4, 2]])  # cells -5..3 x -2..1 -> columns 0..3, rows 0..1
    assert roi_pool(as_map(LECTURE_4X7), roi, 2).tolist() == [[[[2, 6], [7, 3]]]]
    outside = torch.tensor([[0.0, 40, 30, 50, 35]])  # wholly outside: the corner cell
    assert roi_pool(as_map(LECTURE_4X7), outside, (2, 3)).tolist() == [[[[0, 0, 0], [0, 0, 0]]]]
    inverted = torch.tensor([[0.0, 5, 2, 1, 2]])  # x2 < x1: one cell at x1, as in torchvision
    assert roi_pool(as_map(LECTURE_4X7), inverted, (2, 3)).tolist() == [[[[2, 2, 2], [2, 2, 2]]]]


def test_a_box_pools_the_cells_it_overlaps():
    """floor(x1) .. ceil(x2) - 1: x1 = 0.5 starts in column 0, y2 = 2.5 ends in row 2 (torchvision's own rule
    rounds and takes the end inclusively: columns 1..6, rows 0..3); a box [8, 24) at stride 16 pools cells 0-1."""
    roi = torch.tensor([[0.0, 0.5, 0, 6, 2.5]])  # columns 0..5, rows 0..2: 3 rows into bins [0, 1), [1, 3)
    pooled = roi_pool(as_map(LECTURE_4X7), roi, (2, 3))
    assert pooled.tolist() == [[[[2, 6, 8], [7, 7, 5]]]]
    # torchvision on the same cells: its bins overlap (3 rows -> rows 0-1 and 1-2), so only the bottom row agrees
    theirs = torchvision.ops.roi_pool(as_map(LECTURE_4X7), torchvision_rois(roi, 1), (2, 3))
    assert theirs.tolist() == [[[[7, 6, 8], [7, 7, 5]]]]
    wide = torch.arange(4.0).reshape(1, 1, 1, 4)  # columns hold 0, 1, 2, 3
    assert roi_pool(wide, torch.tensor([[0.0, 8, 0, 24, 16]]), (1, 2), spatial_scale=1 / 16).tolist() == [[[[0, 1]]]]


def test_negative_zero_ties_with_zero_and_the_first_cell_wins():
    features = torch.tensor([[[[-0.0, 0.0, -1.0]]]], requires_grad=True)
    roi_pool(features, torch.tensor([[0.0, 0, 0, 2, 0]]), 1).sum().backward()
    assert features.grad.tolist() == [[[[1.0, 0.0, 0.0]]]]


def random_grid_multiple_rois(generator, num_rois, output_size, num_images, height, width):
    """(R, 5) in-map ROIs whose cell counts are multiples of the grid, corners anywhere in their first/last cell."""
    rois = []
    for _ in range(num_rois):
        n_h, n_w = (k * int(torch.randint(1, 4, (1,), generator=generator)) for k in output_size)
        y0 = int(torch.randint(0, height - n_h + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, width - n_w + 1, (1,), generator=generator))
        jitter = torch.rand(4, generator=generator) * 0.98 * torch.tensor([1.0, 1, -1, -1])
        corners = torch.tensor([x0, y0, x0 + n_w, y0 + n_h]) + jitter
        rois.append([float(torch.randint(0, num_images, (1,), generator=generator)), *corners.tolist()])
    return torch.tensor(rois)


@pytest.mark.parametrize("output_size", [(2, 3), (7, 7), (3, 2)])
@pytest.mark.parametrize("tied", [False, True])
def test_partition_equals_torchvision_when_its_bins_do_not_overlap(output_size, tied):
    generator = torch.Generator().manual_seed(1)
    features = distinct_map((2, 3, 24, 30), seed=2)
    if tied:  # few distinct values: many ties, resolved to the first cell like torchvision's strict '>'
        features = (features * 6).round()
    rois = random_grid_multiple_rois(generator, 40, output_size, 2, 24, 30) * torch.tensor([1.0, 8, 8, 8, 8])
    ours, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
    pooled = roi_pool(ours, rois, output_size, spatial_scale=1 / 8)
    expected = torchvision.ops.roi_pool(theirs, torchvision_rois(rois, 1 / 8), output_size, 1 / 8)
    assert torch.equal(pooled, expected)
    upstream = torch.randint(-3, 4, pooled.shape, generator=generator).float()  # integers: sums are exact
    pooled.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(ours.grad, theirs.grad)


def test_torchvision_mode_is_torchvision_on_the_same_cells():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 20, 26, generator=generator)
    boxes = torch.rand(50, 4, generator=generator) * torch.tensor([500.0, 400, 500, 400]) - 60
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=generator).float(), boxes], 1)
    for output_size in [(2, 3), (7, 7)]:
        expected = torchvision.ops.roi_pool(features, torchvision_rois(rois, 1 / 16), output_size, 1 / 16)
        assert torch.equal(roi_pool(features, rois, output_size, 1 / 16, mode="torchvision"), expected)


def test_align_mode_is_torchvision_roi_align_aligned():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(1, 3, 12, 12, generator=generator)
    rois = torch.tensor([[0.0, 10, 12, 150, 90], [0.0, 0, 0, 40, 40]])
    expected = torchvision.ops.roi_align(features, rois, (7, 7), 1 / 16, sampling_ratio=3, aligned=True)
    assert torch.equal(roi_pool(features, rois, 7, 1 / 16, mode="align", sampling_ratio=3), expected)


def align_rois(generator: torch.Generator, count: int, images: int, extent: float) -> torch.Tensor:
    """Random ROIs in shuffled image order: inside, across and wholly outside the map, tiny and inverted ones."""
    corners = torch.rand(count, 4, generator=generator) * 1.4 * extent - 0.2 * extent
    corners[::7, 2:] = corners[::7, :2] + 0.3  # smaller than a cell
    corners[::11, 2:] = corners[::11, :2] - 5  # inverted: torchvision's aligned mode takes the negative size as is
    return torch.cat([torch.randint(0, images, (count, 1), generator=generator).float(), corners], 1)


@pytest.mark.parametrize("shape, output_size, sampling_ratio, scale", [
    ((3, 4, 13, 17), (7, 7), 2, 1 / 8),
    ((2, 3, 9, 6), (2, 3), 3, 1 / 16),
    ((2, 2, 1, 5), (7, 7), 2, 1 / 4),  # one row: every sample reads it
    ((1, 2, 6, 1), (3, 2), 1, 1 / 4),  # one column
])
def test_separable_align_equals_torchvision_values_and_gradients(shape, output_size, sampling_ratio, scale):
    """The matrix-product RoIAlign used for CPU training against torchvision's kernel, in float64 so only
    the summation order may differ, and against its gradient for an arbitrary upstream gradient."""
    generator = torch.Generator().manual_seed(11)
    features = torch.randn(*shape, generator=generator, dtype=torch.float64)
    rois = align_rois(generator, 40, shape[0], max(shape[2:]) / scale).double()
    ours_in, theirs_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours = roi_align_separable(ours_in, rois, output_size, scale, sampling_ratio)
    theirs = torchvision.ops.roi_align(theirs_in, rois, output_size, scale, sampling_ratio, aligned=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    ours.backward(upstream)
    theirs.backward(upstream)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=0, atol=1e-11)


def test_align_mode_trains_on_the_cpu_with_the_separable_form(monkeypatch):
    """roi_pool's align mode takes the matrix form when gradients flow on the CPU, torchvision's kernel otherwise
    (inference, export); both give the same numbers in float32."""
    calls = []
    real = roi_pool_module.roi_align_separable
    monkeypatch.setattr(roi_pool_module, "roi_align_separable", lambda *args: calls.append(1) or real(*args))
    generator = torch.Generator().manual_seed(12)
    features = torch.randn(2, 8, 20, 24, generator=generator)
    rois = align_rois(generator, 30, 2, 320)
    inferred = roi_pool(features, rois, 7, 1 / 16, mode="align")
    assert calls == []
    trained = roi_pool(features.requires_grad_(), rois, 7, 1 / 16, mode="align")
    assert calls == [1]
    torch.testing.assert_close(trained.detach(), inferred, rtol=0, atol=1e-5)
    with torch.no_grad():
        roi_pool(features, rois, 7, 1 / 16, mode="align")
    assert calls == [1]
    assert roi_pool(features, torch.zeros(0, 5), 7, 1 / 16, mode="align").shape == (0, 8, 7, 7)


@pytest.mark.parametrize("output_size", [(2, 3), (7, 7), (3, 2), (1, 5)])
def test_partition_equals_its_plain_loop_definition(output_size):
    """The sparse-table implementation against `roi_pool_reference` on boxes of every size: smaller and larger
    than the grid, not multiples of it, partly or wholly outside the map, at stride 8, with many ties."""
    generator = torch.Generator().manual_seed(9)
    features = (torch.randn(2, 3, 17, 23, generator=generator) * 3).round()
    corners = torch.rand(60, 4, generator=generator) * torch.tensor([220.0, 170, 220, 170]) - 20
    boxes = torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=generator).float(), boxes], 1)
    expected = roi_pool_reference(features, rois, output_size, 1 / 8)
    assert torch.equal(roi_pool(features, rois, output_size, 1 / 8), expected)


def test_partition_gradcheck_float64():
    features = distinct_map((2, 2, 9, 11), seed=5, dtype=torch.float64).requires_grad_()
    rois = torch.tensor(
        [[0, 0, 0, 10, 8], [1, 2, 1, 8, 7], [0, 3, 3, 4, 4], [1, -3, 5, 30, 20], [0, 1, 2, 9, 6]], dtype=torch.float64
    )
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (2, 3)), (features,))
    assert torch.autograd.gradcheck(
        lambda f: roi_pool(f, rois * torch.tensor([1.0, 4, 4, 4, 4]), 3, spatial_scale=0.25), (features,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_equal_the_float32_result_cast(dtype):
    generator = torch.Generator().manual_seed(6)
    features = (torch.randn(2, 5, 24, 30, generator=generator) * 4).round().to(dtype)  # rounded: many ties
    rois = random_grid_multiple_rois(generator, 30, (7, 7), 2, 24, 30)
    rois[::3, 3:] += torch.rand(10, 2, generator=generator) * 9  # some sizes not multiples of the grid
    low, single = features.clone().requires_grad_(), features.float().requires_grad_()
    pooled = roi_pool(low, rois, 7)
    expected = roi_pool(single, rois, 7)
    assert pooled.dtype == dtype and torch.equal(pooled, expected.to(dtype))
    upstream = torch.randint(-3, 4, pooled.shape, generator=generator)
    pooled.backward(upstream.to(dtype))
    expected.backward(upstream.float())
    assert low.grad.dtype == dtype and torch.equal(low.grad, single.grad.to(dtype))


def test_chunked_computation_matches_a_single_chunk(monkeypatch):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 6, 15, 17, generator=generator).requires_grad_()
    xs, ys = (torch.rand(25, 2, generator=generator).sort(1).values * 17 for _ in range(2))  # (R, 2) lo, hi
    batch = torch.randint(0, 2, (25, 1), generator=generator).float()
    rois = torch.cat([batch, xs[:, :1], ys[:, :1], xs[:, 1:], ys[:, 1:]], 1)
    whole = roi_pool(features, rois, (2, 3))
    grad_whole = torch.autograd.grad(whole.sum(), features)[0]
    # budgets this small force one channel and a few ROIs per chunk
    monkeypatch.setitem(roi_pool_module._CHUNK_BUDGETS, "cpu", (1, 4 * 6 * 4))
    chunked = roi_pool(features, rois, (2, 3))
    assert torch.equal(chunked, whole)
    assert torch.equal(torch.autograd.grad(chunked.sum(), features)[0], grad_whole)


def test_output_size_int_and_pair_and_empty_rois():
    features = torch.randn(1, 4, 10, 10)
    rois = torch.tensor([[0.0, 0, 0, 10, 10]])
    assert roi_pool(features, rois, 7).shape == (1, 4, 7, 7)
    assert roi_pool(features, rois, (2, 3)).shape == (1, 4, 2, 3)
    for mode in ["partition", "torchvision", "align"]:
        assert roi_pool(features, torch.zeros(0, 5), 7, mode=mode).shape == (0, 4, 7, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output_size=0), "output_size"),
        (dict(output_size=(2, 3, 4)), "output_size"),
        (dict(output_size=7, mode="max"), "mode"),
        (dict(output_size=7, spatial_scale=0.0), "spatial_scale"),
        (dict(output_size=7, rois=torch.tensor([[2.0, 0, 0, 4, 4]])), r"rois\[:, 0\]"),
        (dict(output_size=7, rois=torch.zeros(3, 4)), r"\(R, 5\)"),
        (dict(output_size=7, features=torch.zeros(4, 10, 10)), r"\(N, C, H, W\)"),
    ],
)
def test_invalid_arguments_raise_one_sentence_errors(kwargs, message):
    arguments = {"features": torch.zeros(1, 2, 10, 10), "rois": torch.tensor([[0.0, 0, 0, 4, 4]]), **kwargs}
    with pytest.raises(DetectorError, match=message):
        roi_pool(**arguments)


def test_assign_fpn_levels_hand_computed():
    sides = torch.tensor([224.0, 112, 448, 111, 0, 5000, 56, 28])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], 1)
    # floor(4 + log2(side / 224)): 4, 3, 5, 2.98 -> 2, -inf -> 2, 8.5 -> 5, 2, 1 -> 2
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [4, 3, 5, 2, 2, 5, 2, 2]
    rectangle = torch.tensor([[10.0, 10, 10 + 448, 10 + 112]])  # sqrt(448 * 112) = 224
    assert assign_fpn_levels(rectangle, 2, 5).tolist() == [4]


def test_roipool_with_one_level_equals_roi_pool():
    features = torch.randn(2, 3, 20, 20)
    boxes_per_image = [torch.tensor([[0.0, 0, 100, 60], [30, 40, 150, 150]]), torch.tensor([[10.0, 10, 50, 90]])]
    pooled = RoIPool((2, 3), [1 / 8])([features], boxes_per_image)
    rois = torch.tensor([[0.0, 0, 0, 100, 60], [0, 30, 40, 150, 150], [1, 10, 10, 50, 90]])
    assert torch.equal(pooled, roi_pool(features, rois, (2, 3), 1 / 8))


def test_roipool_routes_each_box_to_its_fpn_level_in_order():
    generator = torch.Generator().manual_seed(8)
    p2, p3 = torch.randn(2, 3, 64, 64, generator=generator), torch.randn(2, 3, 32, 32, generator=generator)
    small, large = [0.0, 0, 56, 56], [10.0, 20, 10 + 224, 20 + 224]  # levels 2 and 4 -> clamped to 3
    boxes_per_image = [torch.tensor([large, small]), torch.tensor([small])]
    pooled = RoIPool(7, [1 / 4, 1 / 8])([p2, p3], boxes_per_image)
    assert pooled.shape == (3, 3, 7, 7)
    assert torch.equal(pooled[0], roi_pool(p3, torch.tensor([[0.0, *large]]), 7, 1 / 8)[0])
    assert torch.equal(pooled[1], roi_pool(p2, torch.tensor([[0.0, *small]]), 7, 1 / 4)[0])
    assert torch.equal(pooled[2], roi_pool(p2, torch.tensor([[1.0, *small]]), 7, 1 / 4)[0])
    assert not torch.equal(pooled[0], roi_pool(p2, torch.tensor([[0.0, *large]]), 7, 1 / 4)[0])


def test_roipool_rejects_scales_that_are_not_a_pyramid():
    with pytest.raises(DetectorError, match="spatial_scales"):
        RoIPool(7, [1 / 4, 1 / 16])
    with pytest.raises(DetectorError, match="mode"):
        RoIPool(7, [1 / 16], mode="avg")


def test_benchmark_script_writes_both_methods_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "align.json"
    argv = ["bench_roi_pool.py", "--mode", "align", "--rois", "16", "--repeats", "2", "--warmup", "0", "--json", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with script_module("bench_roi_pool") as module:
        module.main()
        figures = json.loads(out.read_text())
        assert figures["workload"]["mode"] == "align" and figures["workload"]["rois"] == 16
        cpu = figures["figures"]["cpu"]
        assert cpu["separable_median_ms"] > 0 and cpu["torchvision_median_ms"] > 0
        assert cpu["ratio"] == pytest.approx(cpu["separable_median_ms"] / cpu["torchvision_median_ms"], rel=0.05)
        with pytest.raises(SystemExit, match="exists"):
            module.main()
        blocked = tmp_path / "a_file"
        blocked.write_text("")
        with pytest.raises(SystemExit, match="cannot write"):
            module.write_json(blocked / "align.json", {})
