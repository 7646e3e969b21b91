"""Shared fixtures: tiny synthetic images and targets, and the real data in ../shared/data."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.structures import Targets

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# torch's process-wide settings at start-up. A test that trains in-process (the Trainer sets the thread count and
# deterministic mode, as a CLI run should) would otherwise change the numerics of every test after it: a 200-step
# overfit test lands elsewhere on one thread than on two. Recorded at import, before any session fixture trains.
TORCH_DEFAULTS = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                  torch.is_deterministic_algorithms_warn_only_enabled())


@pytest.fixture(autouse=True)
def torch_global_state():
    """After each test, torch's thread count and deterministic mode are back at their start-up values."""
    yield
    threads, deterministic, warn_only = TORCH_DEFAULTS
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


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


def tiny_run_overrides(root: Path, **extra: object) -> list[str]:
    """Config overrides for a training run that takes seconds: a few tiny synthetic images, random weights."""
    values = {
        "data.format": "synthetic",
        "data.train_path": str(root / "data" / "train"),
        "data.val_path": str(root / "data" / "val"),
        "data.synthetic_train_images": 8,
        "data.synthetic_val_images": 4,
        "data.synthetic_size": "[128,160]",
        "data.max_size": 160,
        "data.num_workers": 0,
        "model.weights": "none",
        "model.rpn_pre_nms_top_n_train": 200,
        "model.rpn_post_nms_top_n_train": 64,
        "model.rpn_post_nms_top_n_test": 32,
        "model.roi_batch_per_image": 32,
        "model.head_dim": 64,
        "train.output_dir": str(root / "runs"),
        "train.name": "tiny",
        "train.epochs": 1,
        "train.batch_size": 2,
        "train.warmup_iters": 2,
        "train.eval_every": 0,
        "train.log_every": 1,
        "train.threads": 1,
        "train.deterministic": "true",
        "train.channels_last": "true",  # as the shipped configs train (resume and DDP tests run with it)
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a one-epoch run on tiny synthetic scenes (shared by the CLI and API tests)."""
    from detector.config import load_config
    from detector.engine import Trainer

    root = tmp_path_factory.mktemp("tiny_run")
    run_dir = Trainer(load_config(None, tiny_run_overrides(root)), progress=False).fit()
    return run_dir / "best.pt"


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@contextlib.contextmanager
def script_module(name: str, module_name: str | None = None):
    """scripts/<name>.py loaded as a module (scripts/ is not a package), with scripts/ on sys.path while it is in
    use, since the scripts import their siblings (peer) by name as they do when run from scripts/. The module is
    registered in sys.modules (dataclasses look their module up there) under ``module_name`` (default ``name``)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(module_name or name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name or name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))
