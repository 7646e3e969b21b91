"""Shared fixtures: tiny synthetic images and targets, and the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.structures import Targets

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ../shared/data: skipped when absent, but a failure when CI is set."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing but CI is set: the real-data tests must run in CI")
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """Two 64x96 RGB images in [0, 1]: a bright square on the first, nothing on the second."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 96, generator=generator) * 0.2
    images[0, :, 16:40, 20:60] = 0.9
    return images


@pytest.fixture
def tiny_targets() -> list[Targets]:
    """Targets for `tiny_images`: one box on the first image, zero boxes (a negative) on the second."""
    return [
        Targets(boxes=torch.tensor([[20.0, 16.0, 60.0, 40.0]]), labels=torch.tensor([1]), image_size=(64, 96)),
        Targets(boxes=torch.zeros((0, 4)), labels=torch.zeros((0,), dtype=torch.int64), image_size=(64, 96)),
    ]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
