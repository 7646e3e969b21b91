"""Anchor generation: the reference boxes the RPN scores and regresses.

Every feature-map cell ``(y, x)`` of a level with stride ``s`` carries ``A`` anchors centred on
``((x + 0.5) * s, (y + 0.5) * s)`` in input pixels, i.e. on the centre of the ``s x s`` input patch
the cell summarizes (not on its top-left corner, which would shift every anchor by ``s / 2``).
Anchors are ``(T, 4)`` xyxy in input pixels and are not clipped to the image: the RPN regresses
partly-outside anchors back inside, and proposals are clipped after decoding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AnchorGenerator"]

# Feature maps of a few distinct input sizes are cached; beyond that, the oldest entry is dropped
# so variable-size inputs (e.g. multi-scale training) cannot grow the cache without bound.
_MAX_CACHED_GRIDS = 32


def cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> torch.Tensor:
    """(A, 4) xyxy anchors centred on (0, 0), A = len(sizes) * len(ratios), size-major.

    Anchor ``a = size_index * len(ratios) + ratio_index`` has area ``size**2`` and
    ``height / width == ratio``: ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)``.
    Computed in float64 so the float32 anchors are exact to rounding.
    """
    size = torch.tensor(sizes, dtype=torch.float64)[:, None]
    ratio_sqrt = torch.tensor(ratios, dtype=torch.float64).sqrt()[None, :]
    half_w = (size / ratio_sqrt / 2).reshape(-1)  # (S, R) -> (S*R,)
    half_h = (size * ratio_sqrt / 2).reshape(-1)  # (S, R) -> (S*R,)
    return torch.stack([-half_w, -half_h, half_w, half_h], dim=1)


def grid_anchors(base: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """(H*W*A, 4) xyxy anchors of one level, ordered (y, x, a) like the RPN head's flattened output.

    base: (A, 4) cell anchors centred on (0, 0); centres are ``((x + 0.5) * stride, (y + 0.5) * stride)``.
    """
    centres_x = (torch.arange(width, dtype=base.dtype, device=base.device) + 0.5) * stride
    centres_y = (torch.arange(height, dtype=base.dtype, device=base.device) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(centres_y, centres_x, indexing="ij")  # (H, W) each, y-major
    grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)  # (H, W) -> (H*W,)
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=1)  # (H*W, 4)
    # (H*W, 1, 4) + (1, A, 4) -> (H*W, A, 4) -> (H*W*A, 4): the anchor index varies fastest.
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for every cell of every feature level.

    sizes: anchor side lengths in input pixels (area = size**2); ratios: height / width;
    strides: input pixels per feature cell, one per level, fine to coarse.
    With one level every size is used at that level (A = len(sizes) * len(ratios)); with several
    levels there must be one size per level, FPN style (A = len(ratios)). Anything else is a
    ValueError, since silently reusing or dropping sizes would change what the detector can find.
    """

    def __init__(self, sizes: tuple[float, ...], ratios: tuple[float, ...], strides: list[int]) -> None:
        super().__init__()
        sizes, ratios, strides = tuple(sizes), tuple(ratios), list(strides)
        _check_positive(sizes, "anchor sizes")
        _check_positive(ratios, "anchor ratios")
        _check_positive(strides, "feature strides")
        if len(strides) > 1 and len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: with {len(strides)} feature levels (strides {strides}) expected one anchor "
                f"size per level, got {len(sizes)} sizes {sizes}"
            )
        self.sizes = sizes
        self.ratios = ratios
        self.strides = strides
        sizes_per_level = [sizes] if len(strides) == 1 else [(size,) for size in sizes]
        self._base_per_level = [cell_anchors(level_sizes, ratios) for level_sizes in sizes_per_level]
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors per feature cell, the same at every level."""
        return len(self._base_per_level[0])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: per level (N, C, H_l, W_l) -> per level (H_l*W_l*A, 4) xyxy anchors in input pixels.

        Ordered (y, x, a) to match ``(N, A*4, H, W) -> (N, H*W*A, 4)`` in the RPN. The dtype follows
        the features, except that half precision is promoted to float32: fp16 cannot represent
        pixel coordinates of a large image to sub-pixel precision.
        """
        if len(features) != len(self.strides):
            raise ValueError(
                f"AnchorGenerator: built for {len(self.strides)} feature levels (strides {self.strides}), "
                f"got {len(features)} feature maps"
            )
        return [
            self._level_anchors(level, feature.shape[-2], feature.shape[-1], feature.device, feature.dtype)
            for level, feature in enumerate(features)
        ]

    def traced(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """As `forward` in float32, but computed afresh from each level's (possibly traced) size, never cached: for
        an exported graph, whose feature sizes are symbolic (the cache keys on Python ints)."""
        return [grid_anchors(base, f.shape[-2], f.shape[-1], stride).float()
                for base, f, stride in zip(self._base_per_level, features, self.strides)]

    def _level_anchors(
        self, level: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
            dtype = torch.float32
        key = (level, height, width, str(device), dtype)
        if key not in self._cache:
            base = self._base_per_level[level]
            # Shifts are added in float64 and rounded once, so float32 anchors far from the origin stay exact.
            anchors = grid_anchors(base, height, width, self.strides[level]).to(device=device, dtype=dtype)
            if len(self._cache) >= _MAX_CACHED_GRIDS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = anchors
        return self._cache[key]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, ratios={self.ratios}, strides={self.strides}"


def _check_positive(values: tuple | list, name: str) -> None:
    if len(values) == 0 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"AnchorGenerator: {name} must be a non-empty list of positive numbers, got {values}")
