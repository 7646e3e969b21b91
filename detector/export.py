"""The whole detector as one ONNX graph, and a predictor that runs it without torch.

`export_onnx(checkpoint, out)` traces `InferenceGraph`: one (H, W, 3) uint8 RGB image, already resized to the
checkpoint's ``data.max_size`` -> normalization and zero padding to a stride multiple, backbone, RPN (anchors,
decoding, clipping, per-level top-n, NMS), RoIAlign, box head(s) (every cascade stage), per-class NMS and the cap
-> ``boxes`` (D, 4) float32 xyxy in that image's pixels, ``scores`` (D,) float32, ``labels`` (D,) int64 in 1..K.
Height and width are dynamic. The resize stays outside the graph (geometry lives in the data transforms, here
as in training): `OnnxDetector` resizes with OpenCV exactly as `build_transform` does and scales the boxes back.

Opset 17 with torch's TorchScript exporter: RoIAlign needs opset >= 16 for ``aligned=True`` (ONNX's
``coordinate_transformation_mode="half_pixel"``; opsets 10-15 cannot express it, pytorch/vision#3962); NMS is
ONNX's NonMaxSuppression (torchvision's symbolic, class offsets for per-class NMS). The graph is written for
tracing: sizes are read from tensors, never turned into Python numbers, so no shape is frozen at export.

`OnnxDetector` imports onnxruntime, numpy and OpenCV only: a service on an exported file ships without torch
(tests/test_export.py runs it in a fresh interpreter and checks that torch was never imported).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from detector.data.images import as_rgb_array  # torch-free: PIL and OpenCV
from detector.errors import DetectorError
from detector.results import DetectionsFormat

__all__ = ["OPSET", "ArrayDetections", "OnnxDetector", "export_onnx", "resize_longest"]

OPSET = 17
METADATA_KEY = "detector"  # the ONNX metadata entry holding class names, max_size and the export's settings


def resize_longest(image: np.ndarray, max_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image with its longest side ``max_size`` (aspect kept), as `build_transform`'s
    albumentations LongestMaxSize does it (bilinear, the other side rounded to the nearest pixel)."""
    height, width = image.shape[:2]
    scale = max_size / max(height, width)
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


@dataclass
class ArrayDetections(DetectionsFormat):
    """Detections of one image as numpy arrays (the torch-free twin of `detector.structures.Detections`).

    boxes: (D, 4) float32 xyxy in the image's pixels; scores: (D,) float32; labels: (D,) int64 in 1..K."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def to(self, device: Any) -> "ArrayDetections":  # the video writer moves detections to the CPU: they are
        return self

    def filter(self, keep: np.ndarray | slice) -> "ArrayDetections":
        return ArrayDetections(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names)


class OnnxDetector:
    """An exported detector run by ONNX Runtime: images in any size in, boxes in their pixels out; no torch.

        det = OnnxDetector("model.onnx")
        found = det.predict(rgb_array)          # ArrayDetections; predict_batch for a list
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DetectorError(f"ONNX model {self.path} does not exist")
        try:
            import onnxruntime
        except ImportError as error:
            raise DetectorError("running an exported model needs the onnxruntime package (pip install onnxruntime)") from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("DETECTOR_THREADS", 0)) or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # a truncated or foreign file: one sentence, not ONNX Runtime's traceback
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            raise DetectorError(f"ONNX model {self.path} could not be loaded by ONNX Runtime ({reason})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if metadata is None:
            raise DetectorError(f"ONNX model {self.path} was not written by `detector export` (no '{METADATA_KEY}' "
                                "metadata with its class names and input size)")
        self.metadata = json.loads(metadata)
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.max_size = int(self.metadata["max_size"])
        self.runtime = "onnx-graph"

    def predict(self, images: Any, score_thresh: float | None = None, classes: Sequence[str] | None = None,
                max_det: int | None = None) -> ArrayDetections | list[ArrayDetections]:
        """One image (path or (H, W, 3) uint8 RGB array) -> ArrayDetections; a list -> a list."""
        if isinstance(images, (str, Path, np.ndarray)):
            return self.predict_batch([images], score_thresh, classes, max_det)[0]
        return self.predict_batch(list(images), score_thresh, classes, max_det)

    def predict_batch(self, images: Sequence[Any], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> list[ArrayDetections]:
        """Detections for each image (the graph takes one image at a time), filtered like `Detector.predict_batch`."""
        wanted = self._class_labels(classes)
        results = []
        for image in images:
            image = as_rgb_array(image)
            resized = resize_longest(image, self.max_size)
            boxes, scores, labels = self.session.run(None, {"image": np.ascontiguousarray(resized)})
            scale = np.array([image.shape[1] / resized.shape[1], image.shape[0] / resized.shape[0]] * 2, np.float32)
            found = ArrayDetections(boxes * scale, scores, labels.astype(np.int64), self.class_names)
            keep = np.ones(len(found), bool)
            if score_thresh is not None:
                keep &= found.scores >= score_thresh
            if wanted is not None:
                keep &= np.isin(found.labels, wanted)
            found = found.filter(keep)
            results.append(found.filter(slice(0, max_det)) if max_det is not None else found)
        return results

    def _class_labels(self, classes: Sequence[str] | None) -> np.ndarray | None:
        if not classes:
            return None
        unknown = sorted(set(classes) - set(self.class_names))
        if unknown:
            raise DetectorError(f"--classes names {unknown} that this model does not know; it has {self.class_names}")
        return np.array([self.class_names.index(name) + 1 for name in classes])


def export_onnx(checkpoint: str | Path, out: str | Path, overrides: Sequence[str] = (), check: bool = True) -> Path:
    """Write the checkpoint's whole detector as one ONNX file at ``out`` (never overwriting one); with ``check``,
    run it in ONNX Runtime on two image sizes other than the traced one and compare with PyTorch."""
    from detector.export_graph import build_graph, trace_to_onnx, compare_on

    out = Path(out)
    if out.exists():
        raise DetectorError(f"{out} already exists; choose another --out or remove it")
    graph, config = build_graph(checkpoint, overrides)
    metadata = {"class_names": list(config.model.class_names), "max_size": int(config.data.max_size),
                "opset": OPSET, "checkpoint": str(checkpoint), "score_thresh": graph.score_thresh,
                "nms_thresh": graph.nms_thresh, "detections_per_image": graph.detections_per_image}
    model_bytes = trace_to_onnx(graph, config.data.max_size, {METADATA_KEY: json.dumps(metadata)})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(model_bytes)
    if check:
        try:
            compare_on(graph, partial, config.data.max_size)
        except DetectorError:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, out)  # atomic: a reader never sees half a model
    return out

