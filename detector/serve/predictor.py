"""What the service needs from a model, how it loads one, and how it turns one image's detections into JSON.

The service is duck-typed over its model: `detector.api.Detector` (a ``.pt`` checkpoint, needs torch) and
`detector.export.OnnxDetector` (an ``.onnx`` file, torch-free) both satisfy `Predictor`. Nothing here imports
torch: detections may hold CPU tensors or numpy arrays, and both go through ``np.asarray``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from detector.errors import DetectorError

__all__ = ["DetectionsLike", "Predictor", "Selection", "load_predictor", "select"]


class DetectionsLike(Protocol):
    """One image's detections: boxes (D, 4) xyxy in the image's pixels, scores (D,), labels (D,) in 1..K."""

    boxes: Any
    scores: Any
    labels: Any

    def __len__(self) -> int: ...

    def to_list(self) -> list[dict]: ...


class Predictor(Protocol):
    """A model the service can run: class names, and detections for a batch of (H, W, 3) uint8 RGB images."""

    class_names: list[str]

    def predict_batch(self, images: list[np.ndarray], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> list[DetectionsLike]: ...


def load_predictor(path: str | Path) -> Predictor:
    """The predictor for a checkpoint (``.pt``, through `detector.api.Detector`, which imports torch) or an exported
    model (``.onnx``, through the torch-free `detector.export.OnnxDetector`)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"cannot serve {path}: no such file (expected a .pt checkpoint or an .onnx export)")
    try:
        if path.suffix.lower() == ".onnx":
            from detector.export import OnnxDetector

            return OnnxDetector(path)
        from detector.api import Detector

        return Detector.load(path)
    except DetectorError:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt file or a version mismatch: one sentence, no traceback
        raise DetectorError(f"cannot load the model {path}: {type(error).__name__}: {error}") from None


@dataclass
class Selection:
    """The detections of one image that a request asked for, as numpy arrays.

    boxes: (D, 4) float64 xyxy in the image's pixels; scores: (D,) float64; labels: (D,) int64 in 1..K.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict]:
        """JSON-ready: ``{"box", "score", "label", "class"}`` per detection. Scores are not rounded, so a client
        that filters them by a threshold keeps exactly what ``score_thresh`` keeps on the server."""
        names = self.class_names
        return [
            {"box": [round(v, 2) for v in box], "score": score, "label": label,
             "class": names[label - 1] if 1 <= label <= len(names) else str(label)}
            for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())
        ]


def select(detections: DetectionsLike, class_names: Sequence[str], score_thresh: float | None = None,
           classes: Sequence[str] | None = None, max_det: int | None = None) -> Selection:
    """The detections with score >= ``score_thresh``, of the named ``classes``, at most ``max_det`` of the best.

    The model runs every request of a micro-batch without filters, so each request's own options apply here.
    Scores are compared in float64, as the JSON carries them (a float32 comparison could disagree at the edge).
    """
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)  # (D, 4), also when D == 0
    scores = np.asarray(detections.scores, dtype=np.float32).astype(np.float64).reshape(-1)
    labels = np.asarray(detections.labels, dtype=np.int64).reshape(-1)
    keep = np.ones(len(scores), dtype=bool)
    if score_thresh is not None:
        keep &= scores >= score_thresh
    if classes:
        wanted = [list(class_names).index(name) + 1 for name in classes]
        keep &= np.isin(labels, wanted)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-scores[order], kind="stable")]  # best first, so max_det keeps the best
    if max_det is not None:
        order = order[:max_det]
    return Selection(boxes[order], scores[order], labels[order], list(class_names))


def unknown_classes(classes: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """The names in ``classes`` that the model does not know, sorted."""
    return sorted(set(classes) - set(class_names))
