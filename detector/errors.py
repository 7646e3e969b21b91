"""The exceptions users see. Importing them costs nothing: the torch-free parts of the package (the ONNX predictor,
the HTTP service on an exported model, the command line's entry, video I/O and drawing) raise them too."""

from __future__ import annotations

from pathlib import Path


class DetectorError(Exception):
    """A user-facing failure: its message is one sentence naming the file, field or option."""


class UnknownClassError(DetectorError):
    """A class asked for (model.class_names, a class map, ...) that the dataset does not have."""

    def __init__(self, name: str, option: str, available: list[str]) -> None:
        super().__init__(f"class {name!r} in {option} does not exist in the data; available: "
                         f"{', '.join(available) or 'none'}")
        self.name, self.option, self.available = name, option, list(available)


class StopRequested(Exception):
    """Raised inside the training loop after SIGINT/SIGTERM, once a resumable checkpoint is saved."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum}; resumable checkpoint saved to {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint
