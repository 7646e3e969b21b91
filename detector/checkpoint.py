"""Self-describing checkpoints, written atomically and loaded without running code.

A checkpoint holds the model weights, the resolved config, the class names and the versions of the
packages that made it (plus optimizer/scheduler/RNG state for resuming). It is written to a temporary
file and renamed, so an interrupted write never corrupts the previous checkpoint, and it is read with
``torch.load(..., weights_only=True)``: loading a checkpoint never executes code.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torchvision

from detector.config import Config, apply_overrides, config_from_dict
from detector.structures import DetectorError

if TYPE_CHECKING:
    from detector.detector import FastRCNN

FORMAT = "detector-checkpoint-v1"


def package_versions() -> dict[str, str]:
    import detector

    return {
        "detector": str(getattr(detector, "__version__", "0")),
        "torch": str(torch.__version__),  # TorchVersion is not a weights-only-safe type
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], config: Config, **extra: Any) -> None:
    """Atomically write a checkpoint: a temporary file in the same folder, then `os.replace`."""
    path = Path(path)
    payload = {
        **extra,
        "format": FORMAT,
        "model": model_state,
        "config": config.to_dict(),
        "class_names": list(config.model.class_names),
        "versions": package_versions(),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise DetectorError(f"cannot write checkpoint {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as tmp:
            torch.save(payload, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        _fsync_folder(path.parent)  # make the rename itself durable
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise DetectorError(f"cannot write checkpoint {path} ({error}); the previous checkpoint is intact") from None
        raise


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the file itself is already synced
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise DetectorError(f"{path} is not a detector checkpoint (cannot be read: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise DetectorError(f"{path} is not a detector checkpoint (expected format '{FORMAT}')")
    return payload


def checkpoint_config(payload: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """The config stored in a checkpoint."""
    try:
        return config_from_dict(payload["config"])
    except DetectorError as error:
        raise DetectorError(f"{path} holds a config this version cannot read ({error})") from None


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights; a missing, unexpected or differently shaped weight (another architecture or class set)
    becomes one sentence naming the checkpoint."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)[:120])
        raise DetectorError(f"checkpoint {path} was made for a different architecture or class set ({first})") from None
    problems = [*result.missing_keys, *result.unexpected_keys]
    if problems:
        raise DetectorError(
            f"checkpoint {path} was made for a different architecture ({len(problems)} mismatched weights, e.g. '{problems[0]}')"
        )


def load_detector(checkpoint: str | Path, overrides: Sequence[str] = ()) -> tuple["FastRCNN", Config]:
    """The trained model of a checkpoint written by `detector train` (weights only: no code in it runs), in eval
    mode on the CPU, and its config with ``overrides`` (``section.key=value``, e.g. model.score_thresh) applied."""
    payload = load_checkpoint(checkpoint)
    config = apply_overrides(checkpoint_config(payload, checkpoint), overrides)
    from detector.detector import build_detector  # checkpoints sit above the model: the model never imports them

    model = build_detector(config, pretrained=False)
    load_model_state(model, payload["model"], checkpoint)
    return model.eval(), config
