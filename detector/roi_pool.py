"""Stage 3: ROI pooling - every region of interest becomes a fixed (out_h, out_w) grid of features.

Three modes behind one function, `roi_pool`:

- ``"partition"``: the lecture's ROI max pooling. The ROI's feature cells are split into
  non-overlapping bins and each bin outputs its maximum (see `roi_pool` for the exact rule, and
  `roi_pool_reference` for the same definition as a plain loop).
- ``"torchvision"``: `torchvision.ops.roi_pool`, whose bins overlap by one cell when the ROI size is
  not a multiple of the grid (it pools the lecture's 4x7 example to [[7, 8, 8], [9, 7, 9]]).
- ``"align"``: `torchvision.ops.roi_align` with ``aligned=True`` (bilinear sampling, no rounding). When training on
  the CPU it is computed as two matrix products instead (`roi_align_separable`, the same numbers): torchvision's
  CPU backward is a single-threaded scatter loop that took a third of a drone training step.

Grids are named rows x cols everywhere: the lecture's "3x2" grid (3 columns, 2 rows) is ``output_size=(2, 3)``,
its 4x7 and 5x9 feature maps have 4 and 5 rows. An ROI is continuous ``x1, y1, x2, y2`` like every box in the
package; the two cell-snapping modes pool the cells it overlaps: columns ``floor(x1 * s) .. ceil(x2 * s) - 1``
(a box [8, 24) at stride 16 pools cells 0 and 1), rows likewise. torchvision's own roi_pool rounds both corners
and takes the end cell inclusively (cells 1 and 2 for that box); the ``"torchvision"`` mode hands it corners that
select the same cells as ``"partition"``, so the two modes differ only in their bins.

How ``"partition"`` is computed. The textbook way (gather each bin's cells, padded to the largest bin,
and take a max with indices) is memory bound on CPU: measured at 4-6x torchvision's C++ kernel.
Instead a 2D sparse table holds, for every cell and every power-of-two block size 2^kh x 2^kw up
to the largest bin, the block maximum. Any bin is the union of four (overlapping) such blocks anchored
at its corners, so a bin costs four table lookups of one C-vector each, whatever its size.
Values and their argmax travel together as one int64 key, ``(order-preserving code << 32) | (2^32 - 1 - cell)``,
so a plain integer max picks the larger value and, on ties, the earlier cell in row-major order,
exactly like torchvision's kernel (strict ``>`` scan). Work is chunked over channels and ROIs so
the table and the gathered corners stay in cache on CPU and bounded in memory on GPU.
The backward pass routes each output gradient to its argmax cell (one `index_add`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import roi_align
from torchvision.ops import roi_pool as tv_roi_pool

from detector.structures import DetectorError

__all__ = ["MODES", "RoIPool", "assign_fpn_levels", "roi_align_separable", "roi_pool", "roi_pool_reference"]

MODES = ("partition", "torchvision", "align")

_LOW32 = 0xFFFFFFFF
_MAGNITUDE_BITS = 0x7FFFFFFF
# Element budgets per chunk of the partition mode: (sparse table, gathered corners).
# CPU: small enough that a chunk stays in L2/L3 (larger chunks measured ~2x slower: memory bound).
# GPU: only bounds memory (512 MiB of int64 each); fewer, larger chunks mean fewer kernel launches.
_CHUNK_BUDGETS = {"cpu": (1 << 22, 1 << 19), "other": (1 << 26, 1 << 26)}


def _pair(output_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or an (h, w) pair -> (out_h, out_w), both positive ints."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise DetectorError(
            f"roi_pool: output_size must be a positive int or an (h, w) pair of them, got {output_size!r}"
        )
    return size


def _check_inputs(features: torch.Tensor, rois: torch.Tensor, spatial_scale: float, mode: str) -> None:
    if mode not in MODES:
        raise DetectorError(f"roi_pool: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if features.dim() != 4 or features.shape[2] == 0 or features.shape[3] == 0 or not features.is_floating_point():
        raise DetectorError(
            "roi_pool: features must be a float (N, C, H, W) tensor with H, W >= 1, "
            f"got {features.dtype} {tuple(features.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise DetectorError(
            f"roi_pool: rois must be (R, 5) [batch_index, x1, y1, x2, y2], got shape {tuple(rois.shape)}"
        )
    if not spatial_scale > 0:
        raise DetectorError(f"roi_pool: spatial_scale must be positive (1 / stride), got {spatial_scale}")
    # Value checks read the tensor on the host: free on the CPU, a device synchronization per call on an accelerator,
    # where the hot path skips them (the boxes come from the model's own proposal stage there).
    if rois.device.type != "cpu" or not len(rois):
        return
    if not bool(torch.isfinite(rois).all()):
        raise DetectorError("roi_pool: rois must be finite")
    if not (0 <= float(rois[:, 0].min()) and float(rois[:, 0].max()) < features.shape[0]):
        raise DetectorError(f"roi_pool: rois[:, 0] must be batch indices in [0, {features.shape[0]})")


def roi_pool(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    mode: str = "partition",
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """Pool every ROI of ``features`` to an (out_h, out_w) grid.

    features: (N, C, H, W) float16 / bfloat16 / float32 / float64 on any device.
    rois: (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input pixels; ``spatial_scale`` (1 / stride)
    maps them onto the feature map. output_size: (out_h, out_w) or an int; the lecture's 3x2 grid is
    (2, 3), 2 rows by 3 columns. sampling_ratio is used by ``mode="align"`` only.
    Returns (R, C, out_h, out_w) in the dtype of ``features``.

    ``mode="partition"`` rules:
    - ROI cells: ``start = floor(x1 * s)``, ``end = ceil(x2 * s) - 1``, end inclusive, ``n = end - start + 1``:
      the cells the continuous box overlaps (computed in float32).
    - An ROI partly or wholly outside the map is clamped to it: ``start`` and ``end`` are clipped to
      ``[0, W - 1]`` and ``end >= start``, so it always covers at least one cell (likewise for rows).
    - Bin i of k spans cells ``[floor(i*n/k), max(floor((i+1)*n/k), floor(i*n/k) + 1))``: bins tile the
      ROI without overlap, and an ROI smaller than the grid repeats cells instead of leaving empty bins.
    - Each bin outputs its maximum; the gradient goes to that cell, the first in row-major order on ties.
      -0.0 counts as equal to +0.0; NaN features are not supported.
    """
    out_h, out_w = _pair(output_size)
    _check_inputs(features, rois, spatial_scale, mode)
    if mode == "torchvision":
        return tv_roi_pool(features, _torchvision_corners(rois, spatial_scale).to(features.dtype), (out_h, out_w),
                           spatial_scale)
    if mode == "align":
        if _separable_align_applies(features, sampling_ratio):
            return roi_align_separable(features, rois, (out_h, out_w), spatial_scale, sampling_ratio)
        return roi_align(features, rois.to(features.dtype), (out_h, out_w), spatial_scale, sampling_ratio, aligned=True)
    return _PartitionMaxPool.apply(features, rois, (out_h, out_w), float(spatial_scale))


def _separable_align_applies(features: torch.Tensor, sampling_ratio: int) -> bool:
    """Training on the CPU in float32/64 with a fixed sampling ratio; inference, export and accelerators keep
    torchvision's kernel (faster forward, and the ONNX graph keeps its RoiAlign node)."""
    return (features.requires_grad and torch.is_grad_enabled() and features.device.type == "cpu"
            and features.dtype in (torch.float32, torch.float64) and sampling_ratio > 0
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())


def _align_axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, sampling_ratio: int,
                        size: int) -> torch.Tensor:
    """(R, bins, size): for each ROI and bin along one axis, the mean over the bin's sampling_ratio sample points
    of their bilinear weights onto the axis' ``size`` cells, with torchvision's rules: a sample outside
    [-1, size] weighs nothing, one in [-1, 0] reads cell 0, one past the last cell reads the last cell."""
    samples = (torch.arange(bins * sampling_ratio, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio
    position = start[:, None] + samples[None] * (length / bins)[:, None]  # (R, bins * sampling_ratio)
    inside = ((position >= -1) & (position <= size)).to(start.dtype)
    position = position.clamp(min=0)
    low = position.floor().clamp(max=size - 1)
    high_weight = position - low  # past the last cell low and high are both that cell: the weights still sum to 1
    high = (low + 1).clamp(max=size - 1)
    weights = torch.zeros((*position.shape, size), dtype=start.dtype, device=start.device)
    weights.scatter_add_(2, low.long()[..., None], ((1 - high_weight) * inside)[..., None])
    weights.scatter_add_(2, high.long()[..., None], (high_weight * inside)[..., None])
    return weights.view(start.shape[0], bins, sampling_ratio, size).mean(2)


def roi_align_separable(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int) -> torch.Tensor:
    """`torchvision.ops.roi_align(..., aligned=True)` with a fixed ``sampling_ratio`` > 0, as matrix products.

    A bin averages sampling_ratio x sampling_ratio bilinear samples on a grid whose rows and columns are
    independent, and bilinear weights factor into a row weight times a column weight, so for ROI r on image b:
    ``out_r = A_r F_b B_r^T`` per channel, A_r (out_h, H) the averaged row weights and B_r (out_w, W) the column
    weights. Plain PyTorch ops: autograd's backward is matrix products too. Same values as torchvision's up to
    float rounding (the tests compare both, and their gradients).
    """
    out_h, out_w = output_size
    height, width = features.shape[2], features.shape[3]
    boxes = rois[:, 1:].to(features.dtype) * spatial_scale - 0.5
    rows = _align_axis_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], out_h, sampling_ratio, height)  # (R, oh, H)
    cols = _align_axis_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], out_w, sampling_ratio, width)  # (R, ow, W)
    image = rois[:, 0].long()
    pooled = features.new_zeros((rois.shape[0], features.shape[1], out_h, out_w))
    for b in range(features.shape[0]):
        selected = torch.nonzero(image == b).squeeze(1)
        by_columns = torch.einsum("chw,rjw->rchj", features[b], cols[selected])  # (r, C, H, out_w)
        pooled = pooled.index_copy(0, selected, torch.einsum("rih,rchj->rcij", rows[selected], by_columns))
    return pooled


def roi_pool_reference(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                       spatial_scale: float = 1.0) -> torch.Tensor:
    """``mode="partition"``, defined as a plain loop (slow; the tests' oracle for the sparse-table version)."""
    out_h, out_w = output_size
    pooled = []
    for batch_index, x1, y1, x2, y2 in rois.tolist():
        feature_map = features[int(batch_index)]  # (C, H, W)
        height, width = feature_map.shape[1:]
        # the cells the box overlaps, clamped to the map; at least one cell
        col0 = min(max(math.floor(x1 * spatial_scale), 0), width - 1)
        col1 = max(min(math.ceil(x2 * spatial_scale) - 1, width - 1), col0)
        row0 = min(max(math.floor(y1 * spatial_scale), 0), height - 1)
        row1 = max(min(math.ceil(y2 * spatial_scale) - 1, height - 1), row0)
        rows, cols = row1 - row0 + 1, col1 - col0 + 1
        grid = feature_map.new_empty(feature_map.shape[0], out_h, out_w)
        for i in range(out_h):  # bin i spans [floor(i*n/k), max(floor((i+1)*n/k), floor(i*n/k) + 1))
            top, bottom = i * rows // out_h, max((i + 1) * rows // out_h, i * rows // out_h + 1)
            for j in range(out_w):
                left, right = j * cols // out_w, max((j + 1) * cols // out_w, j * cols // out_w + 1)
                cells = feature_map[:, row0 + top:row0 + bottom, col0 + left:col0 + right]
                grid[:, i, j] = cells.amax(dim=(1, 2))
        pooled.append(grid)
    return torch.stack(pooled) if pooled else features.new_zeros(0, features.shape[1], out_h, out_w)


class _PartitionMaxPool(torch.autograd.Function):
    """Autograd wrapper: forward picks each bin's argmax cell, backward scatters the gradient there."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float):
        values, cells, batch = _partition_forward(features, rois, output_size, spatial_scale)
        ctx.save_for_backward(cells, batch)
        ctx.features_shape = features.shape
        return values

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        cells, batch = ctx.saved_tensors
        image_numel = math.prod(ctx.features_shape[1:])
        index_dtype = torch.int32 if math.prod(ctx.features_shape) < 2**31 else torch.int64
        # (R, C, out_h, out_w) flat indices into the (N * C * H * W) features
        flat_index = cells.to(index_dtype) + (batch * image_numel).to(index_dtype).view(-1, 1, 1, 1)
        grad = grad_output.new_zeros(math.prod(ctx.features_shape))
        grad = grad.index_add(0, flat_index.reshape(-1), grad_output.reshape(-1))
        return grad.view(ctx.features_shape), None, None, None


def _cell_corners(rois: torch.Tensor, spatial_scale: float) -> torch.Tensor:
    """(R, 5) rois -> (R, 4) int64 first and last (inclusive) column and row the continuous boxes overlap."""
    coords = rois[:, 1:].to(torch.promote_types(rois.dtype, torch.float32)) * spatial_scale
    return torch.cat([torch.floor(coords[:, :2]), torch.ceil(coords[:, 2:]) - 1], 1).long()


def _torchvision_corners(rois: torch.Tensor, spatial_scale: float) -> torch.Tensor:
    """(R, 5) rois -> the (R, 5) rois whose rounded, end-inclusive corners (torchvision's rule) are our cells."""
    cells = _cell_corners(rois, spatial_scale)
    cells[:, 2:] = torch.maximum(cells[:, 2:], cells[:, :2])  # a box inside one cell still pools that cell
    return torch.cat([rois[:, :1], cells.to(rois.dtype) / spatial_scale], 1)


def _roi_cells(rois: torch.Tensor, spatial_scale: float, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """(R, 5) rois -> first row y0, row count ny, first column x0, column count nx: (R,) int64 each."""
    cells = _cell_corners(rois, spatial_scale)  # (R, 4) x1, y1, x2, y2 in cells, end inclusive
    x0 = cells[:, 0].clamp(0, width - 1)
    y0 = cells[:, 1].clamp(0, height - 1)
    x1 = torch.maximum(cells[:, 2].clamp(0, width - 1), x0)
    y1 = torch.maximum(cells[:, 3].clamp(0, height - 1), y0)
    return y0, y1 - y0 + 1, x0, x1 - x0 + 1


def _partition_bins(start: torch.Tensor, count: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) first cell and cell count -> (R, bins) first cell and extent (>= 1) of every bin."""
    i = torch.arange(bins, device=start.device)
    lo = i * count[:, None] // bins
    hi = torch.maximum((i + 1) * count[:, None] // bins, lo + 1)
    return start[:, None] + lo, hi - lo


def _floor_log2(values: torch.Tensor) -> torch.Tensor:
    """int64 values >= 1 -> floor(log2(values)), exact (frexp reads the binary exponent)."""
    return torch.frexp(values.to(torch.float64)).exponent.long() - 1


def _order_codes(features: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(N, C, H, W) features -> int32 codes that sort like the values, and the map from codes back to values."""
    if features.dtype in (torch.float16, torch.bfloat16, torch.float32):
        # Every value is exact in float32. IEEE floats order like sign-magnitude integers; flipping the
        # magnitude bits of negatives makes them order as two's complement. +0.0 turns -0.0 into +0.0.
        bits = (features.float() + 0.0).view(torch.int32)
        codes = bits ^ ((bits >> 31) & _MAGNITUDE_BITS)

        def decode(c: torch.Tensor) -> torch.Tensor:
            return (c ^ ((c >> 31) & _MAGNITUDE_BITS)).view(torch.float32).to(features.dtype)

        return codes, decode
    # float64 does not fit in 32 bits: use each value's rank among the distinct values instead.
    distinct, rank = torch.unique(features, sorted=True, return_inverse=True)
    return rank.int(), lambda c: distinct[c.long()]


def _sparse_table(codes: torch.Tensor, first_channel: int, levels_h: int, levels_w: int) -> torch.Tensor:
    """(N, Cc, H, W) int32 codes of channels first_channel.. -> (levels_h * levels_w, N, H, W, Cc) int64 keys.

    keys[kh * levels_w + kw, n, y, x, c] is the largest key of the block of rows y..y + 2^kh - 1 and
    columns x..x + 2^kw - 1 (defined where the block fits in the map; the rest is never read).
    A key is (code << 32) | (2^32 - 1 - cell) with cell = c * H * W + y * W + x, the offset in the image's
    features: the max is the largest value, then the earliest cell.
    """
    n, cc, height, width = codes.shape
    device = codes.device
    keys = torch.empty(levels_h * levels_w, n, height, width, cc, dtype=torch.int64, device=device)
    channel = torch.arange(first_channel, first_channel + cc, device=device) * (height * width)
    cell = torch.arange(height * width, device=device).view(height, width, 1) + channel  # (H, W, Cc)
    # channels last, so every lookup below copies one contiguous C-vector
    torch.bitwise_or(codes.permute(0, 2, 3, 1).long() << 32, _LOW32 - cell, out=keys[0])
    for kw in range(1, levels_w):
        half = 1 << (kw - 1)
        torch.maximum(keys[kw - 1, :, :, : width - half], keys[kw - 1, :, :, half:], out=keys[kw, :, :, : width - half])
    for kh in range(1, levels_h):
        half = 1 << (kh - 1)
        below, level = slice((kh - 1) * levels_w, kh * levels_w), slice(kh * levels_w, (kh + 1) * levels_w)
        torch.maximum(keys[below, :, : height - half], keys[below, :, half:], out=keys[level, :, : height - half])
    return keys


def _corner_rows(batch, rows, cols, levels_w: int, num_images: int, height: int, width: int) -> torch.Tensor:
    """Rows of the flattened sparse table holding the four blocks that cover each bin.

    batch: (R,); rows / cols: (first cell, extent) pairs of (R, out_h) / (R, out_w) tensors.
    Returns (R, 4, out_h, out_w) int64: top-left, top-right, bottom-left, bottom-right blocks.
    """
    (row0, row_extent), (col0, col_extent) = rows, cols
    level_h, level_w = _floor_log2(row_extent), _floor_log2(col_extent)
    top, bottom = row0, row0 + row_extent - (1 << level_h)  # (R, out_h) each
    left, right = col0, col0 + col_extent - (1 << level_w)  # (R, out_w) each
    level = level_h[:, :, None] * levels_w + level_w[:, None, :]  # (R, out_h, out_w)
    image_row = (level * num_images + batch[:, None, None]) * height

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (image_row + y[:, :, None]) * width + x[:, None, :]

    return torch.stack([at(top, left), at(top, right), at(bottom, left), at(bottom, right)], dim=1)


def _partition_forward(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float):
    """-> values (R, C, out_h, out_w) in features' dtype, their cells c * H * W + y * W + x (int32), batch (R,)."""
    num_images, channels, height, width = features.shape
    out_h, out_w = output_size
    num_rois = len(rois)
    batch = rois[:, 0].long()
    if channels * height * width >= 2**31:
        raise DetectorError(f"roi_pool: mode 'partition' needs C * H * W < 2^31 per image, got {tuple(features.shape)}")
    best = torch.empty(num_rois, out_h, out_w, channels, dtype=torch.int64, device=features.device)
    codes, decode = _order_codes(features)
    if num_rois:
        _pool_keys(codes, rois, spatial_scale, best)
    # (R, out_h, out_w, C) int64 -> (R, out_h, out_w, C, 2) int32 halves: code (high), 2^32 - 1 - cell (low)
    halves = best.view(torch.int32).view(num_rois, out_h, out_w, channels, 2)
    low, high = halves.unbind(-1) if sys.byteorder == "little" else reversed(halves.unbind(-1))
    # (R, out_h, out_w, C) -> (R, C, out_h, out_w); as int32, 2^32 - 1 - cell reads -1 - cell = ~cell
    values = decode(high.permute(0, 3, 1, 2).contiguous())
    cells = torch.bitwise_not(low.permute(0, 3, 1, 2)).contiguous()
    return values, cells, batch


def _pool_keys(codes: torch.Tensor, rois: torch.Tensor, spatial_scale: float, best: torch.Tensor) -> None:
    """Fill best (R, out_h, out_w, C) with the largest key of every bin, in chunks of channels and ROIs."""
    num_images, channels, height, width = codes.shape
    num_rois, out_h, out_w, _ = best.shape
    y0, ny, x0, nx = _roi_cells(rois, spatial_scale, height, width)
    rows, cols = _partition_bins(y0, ny, out_h), _partition_bins(x0, nx, out_w)
    levels_h = int(_floor_log2(rows[1].max())) + 1
    levels_w = int(_floor_log2(cols[1].max())) + 1
    corners = _corner_rows(rois[:, 0].long(), rows, cols, levels_w, num_images, height, width)
    table_budget, query_budget = _CHUNK_BUDGETS["cpu" if codes.device.type == "cpu" else "other"]
    chunk_c = max(1, min(channels, table_budget // (levels_h * levels_w * num_images * height * width)))
    chunk_r = max(1, query_budget // (4 * out_h * out_w * chunk_c))
    for c0 in range(0, channels, chunk_c):
        keys = _sparse_table(codes[:, c0 : c0 + chunk_c], c0, levels_h, levels_w)
        keys = keys.view(-1, keys.shape[-1])  # (L, N, H, W, Cc) -> (L * N * H * W, Cc)
        for r0 in range(0, num_rois, chunk_r):
            block = corners[r0 : r0 + chunk_r]
            found = keys.index_select(0, block.reshape(-1))
            # (Rc * 4 * out_h * out_w, Cc) -> (Rc, 4, out_h, out_w, Cc)
            found = found.view(len(block), 4, out_h, out_w, -1)
            torch.amax(found, dim=1, out=best[r0 : r0 + chunk_r, :, :, c0 : c0 + chunk_c])


def assign_fpn_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: int = 224, canonical_level: int = 4
) -> torch.Tensor:
    """FPN paper eq. 1: (R, 4) xyxy boxes in input pixels -> (R,) int64 pyramid level of each box.

    level = floor(canonical_level + log2(sqrt(w * h) / canonical_size)), clamped to [min_level, max_level];
    a 224-pixel box goes to level 4 (stride 16), each halving of its side one level down.
    A 1e-6 slack (as in torchvision) keeps sizes that are exact powers of two from rounding down a level.
    """
    if min_level > max_level:
        raise DetectorError(f"assign_fpn_levels: min_level ({min_level}) must not exceed max_level ({max_level})")
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    size = torch.sqrt(sides[:, 0] * sides[:, 1])
    level = torch.floor(canonical_level + torch.log2(size / canonical_size) + 1e-6)
    return level.clamp(min_level, max_level).to(torch.int64)


def _pyramid_levels(spatial_scales: list[float]) -> tuple[int, int]:
    """[1/2^a, 1/2^(a+1), ..., 1/2^b] -> (a, b); anything else is a user error."""
    levels = [-math.log2(scale) if scale > 0 else math.nan for scale in spatial_scales]
    first = round(levels[0]) if math.isfinite(levels[0]) else 0
    if any(not abs(level - (first + i)) < 1e-6 for i, level in enumerate(levels)):
        raise DetectorError(
            f"RoIPool: spatial_scales for several feature maps must be 1/2^k for consecutive k, finest first "
            f"(e.g. [0.25, 0.125, 0.0625, 0.03125]), got {spatial_scales}"
        )
    return first, first + len(levels) - 1


class RoIPool(nn.Module):
    """ROI pooling over one feature map or an FPN pyramid.

    output_size: (out_h, out_w) or an int; spatial_scales: 1 / stride of each feature map, finest first;
    mode and sampling_ratio: as in `roi_pool`. With several maps (strides 2^min_level..2^max_level) every box
    is pooled from the level `assign_fpn_levels` gives it.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scales: list[float],
        mode: str = "partition",
        sampling_ratio: int = 2,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise DetectorError(f"RoIPool: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(spatial_scales) == 0:
            raise DetectorError("RoIPool: spatial_scales must give one scale (1 / stride) per feature map")
        self.output_size = _pair(output_size)
        self.spatial_scales = [float(scale) for scale in spatial_scales]
        self.mode = mode
        self.sampling_ratio = sampling_ratio
        self.levels = _pyramid_levels(self.spatial_scales) if len(spatial_scales) > 1 else None

    def forward(self, features: list[torch.Tensor], boxes_per_image: list[torch.Tensor]) -> torch.Tensor:
        """features: per level (N, C, H_l, W_l); boxes_per_image: N tensors (R_i, 4) xyxy in input pixels.

        Returns (sum R_i, C, out_h, out_w), in the order of the concatenated boxes.
        """
        if len(features) != len(self.spatial_scales):
            raise DetectorError(
                f"RoIPool: got {len(features)} feature maps for {len(self.spatial_scales)} spatial_scales"
            )
        if len(boxes_per_image) != features[0].shape[0]:
            raise DetectorError(
                f"RoIPool: got boxes for {len(boxes_per_image)} images but features for {features[0].shape[0]}"
            )
        rois = _rois_from_boxes(boxes_per_image, features[0])
        pool = dict(output_size=self.output_size, mode=self.mode, sampling_ratio=self.sampling_ratio)
        if self.levels is None:
            return roi_pool(features[0], rois, spatial_scale=self.spatial_scales[0], **pool)
        min_level, max_level = self.levels
        level = assign_fpn_levels(rois[:, 1:], min_level, max_level) - min_level
        pooled = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for index, (feature_map, scale) in enumerate(zip(features, self.spatial_scales, strict=True)):
            selected = torch.nonzero(level == index).squeeze(1)
            pooled[selected] = roi_pool(feature_map, rois[selected], spatial_scale=scale, **pool)
        return pooled


def _rois_from_boxes(boxes_per_image: list[torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
    """N tensors (R_i, 4) xyxy -> (sum R_i, 5) [batch_index, x1, y1, x2, y2] float32 on reference's device."""
    rois = []
    for i, boxes in enumerate(boxes_per_image):
        boxes = boxes.to(reference.device, torch.float32)
        rois.append(torch.cat([torch.full_like(boxes[:, :1], float(i)), boxes], 1))  # traceable: no len()
    return torch.cat(rois) if rois else torch.zeros((0, 5), device=reference.device)
