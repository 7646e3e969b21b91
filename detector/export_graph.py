"""The traceable inference graph that `detector.export` writes to ONNX, and its check against PyTorch.

`InferenceGraph` wraps a trained `FastRCNN` for one image and calls the model's own stages and their shared
functions (the RPN's `filter_proposals`, the pooler, the box heads, `select_image_detections`): the exported
file computes what `FastRCNN.predict` computes. Only the batching differs: the graph takes one image, and its
preprocessing reads the image size as a tensor so that height and width stay dynamic in the trace.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.boxes import clip_boxes
from detector.cascade import CascadeRoIHeads
from detector.checkpoint import load_detector
from detector.config import Config
from detector.detector import FastRCNN
from detector.rpn import RPN, anchor_levels, flatten_head_outputs
from detector.roi_heads import select_image_detections
from detector.structures import DetectorError, ImageBatch

__all__ = ["InferenceGraph", "build_graph", "compare_on", "trace_to_onnx"]

# Detections of the graph and of PyTorch match when their boxes overlap at IoU >= MATCH_IOU with the same label
# and scores within SCORE_TOLERANCE; unmatched ones are allowed only below UNMATCHED_SCORE (NMS on near-tied
# boxes may keep a different one of two after float rounding).
MATCH_IOU, SCORE_TOLERANCE, UNMATCHED_SCORE = 0.99, 1e-3, 0.3


class InferenceGraph(nn.Module):
    """(H, W, 3) uint8 RGB image -> boxes (D, 4) float32 xyxy in its pixels, scores (D,), labels (D,) int64 in 1..K."""

    def __init__(self, model: FastRCNN) -> None:
        super().__init__()
        if not isinstance(model.proposal_source, RPN):
            raise DetectorError("export needs a checkpoint whose proposals come from its RPN (model.proposals: rpn); "
                                "selective search and proposal files run outside any graph")
        if model.roi_heads.pooler.mode != "align":
            raise DetectorError(f"export supports model.roi_pool_mode 'align' (ONNX RoiAlign); this checkpoint uses "
                                f"'{model.roi_heads.pooler.mode}', which ONNX has no operator for")
        self.model = model.eval()
        heads = model.roi_heads
        self.score_thresh, self.nms_thresh = float(heads.score_thresh), float(heads.nms_thresh)
        self.detections_per_image = int(heads.detections_per_image)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        # (H, W, 3) uint8 -> (3, H, W) in [0, 1], as detector.data.dataset.image_to_tensor, then normalized
        pixels = (image.permute(2, 0, 1).float() / 255.0 - model.pixel_mean) / model.pixel_std
        height, width = pixels.shape[1], pixels.shape[2]  # 0-dim tensors while tracing: the graph stays dynamic
        stride = model.size_divisible
        padded = F.pad(pixels, (0, (stride - width % stride) % stride, 0, (stride - height % stride) % stride))
        features = model.backbone(padded[None])
        batch = ImageBatch(padded[None], [(height, width)], [(height, width)])
        proposals = self._proposals(batch, features)
        return self._detect(features, proposals, (height, width))

    def _proposals(self, batch: ImageBatch, features: list[torch.Tensor]) -> torch.Tensor:
        rpn: RPN = self.model.proposal_source
        objectness, deltas = flatten_head_outputs(*rpn.head(features))
        anchors_per_level = rpn.anchor_generator.traced(features)  # built in the graph from each level's size
        anchors = torch.cat(anchors_per_level)
        proposals, _ = rpn.filter_proposals(objectness, deltas, anchors, anchor_levels(anchors_per_level),
                                            batch.image_sizes)
        return proposals[0]

    def _detect(self, features: list[torch.Tensor], boxes: torch.Tensor, size: tuple
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads = self.model.roi_heads
        if isinstance(heads, CascadeRoIHeads):  # as CascadeRoIHeads.detect, for one image
            for stage in range(heads.num_stages - 1):
                _, deltas = heads.stage_predictions(stage, features, [boxes])
                boxes = clip_boxes(heads.box_coders[stage].decode(deltas.float(), boxes), size)
            pooled = heads.pooler(features, [boxes])
            scores = 0.0
            for stage in range(heads.num_stages):
                logits, deltas = heads.predictors[stage](heads.box_heads[stage](pooled))
                scores = scores + F.softmax(logits.float(), dim=1) / heads.num_stages
            per_class = heads.box_coders[-1].decode(deltas.float(), boxes)[:, None, :]
        else:  # as RoIHeads.postprocess, for one image
            logits, deltas = heads.predictor(heads.box_head(heads.pooler(features, [boxes])))
            scores = F.softmax(logits.float(), dim=1)
            # (R, 4K) -> (R, K, 4), or (R, 1, 4) for a class-agnostic box
            per_class = heads.box_coder.decode(deltas.float(), boxes).reshape(-1, deltas.shape[1] // 4, 4)
        per_class = per_class.expand(-1, heads.num_classes, -1)
        found = select_image_detections(scores, per_class, size, self.score_thresh, self.nms_thresh,
                                        self.detections_per_image)
        return found["boxes"], found["scores"], found["labels"]


def build_graph(checkpoint: str | Path, overrides: Sequence[str] = ()) -> tuple[InferenceGraph, Config]:
    """The checkpoint's model (CPU, eval) wrapped for export, and its config."""
    model, config = load_detector(checkpoint, overrides)
    return InferenceGraph(model), config


def example_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random (H, W, 3) uint8 image with some structure (smooth blobs), so the RPN proposes boxes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    import cv2

    return torch.from_numpy(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))


def trace_to_onnx(graph: InferenceGraph, max_size: int, metadata: dict[str, str]) -> bytes:
    """Trace ``graph`` on a max_size x (3/4 max_size) image and serialize it (opset 17, height and width dynamic)
    with ``metadata`` stored in the model's metadata_props."""
    import onnx

    from detector.export import OPSET

    example = example_image(max_size * 3 // 4, max_size)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it saw (checked by compare_on)
            torch.onnx.export(graph, (example,), buffer, opset_version=OPSET, input_names=["image"],
                              output_names=["boxes", "scores", "labels"],
                              dynamic_axes={"image": {0: "height", 1: "width"}, "boxes": {0: "detections"},
                                            "scores": {0: "detections"}, "labels": {0: "detections"}}, **legacy)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise DetectorError(f"the model could not be exported to ONNX ({type(error).__name__}: {reason})") from error
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def compare_on(graph: InferenceGraph, onnx_path: Path, max_size: int) -> None:
    """Run the exported file and the PyTorch graph on images of sizes other than the traced one; a DetectorError
    if the detections differ (`match_detections`)."""
    from detector.export import OnnxDetector

    session = OnnxDetector(onnx_path, threads=torch.get_num_threads()).session
    for seed, (height, width) in enumerate([(max_size, max_size * 2 // 3), (max_size // 2, max_size)]):
        image = example_image(height, width, seed + 1)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(image)]
        got = session.run(None, {"image": image.numpy()})
        problem = match_detections(expected, got)
        if problem:
            raise DetectorError(f"the exported model disagrees with PyTorch on a {height}x{width} image: {problem}")


def match_detections(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> str:
    """'' when every detection above UNMATCHED_SCORE on either side has a partner on the other with the same label,
    IoU >= MATCH_IOU and a score within SCORE_TOLERANCE; else what failed, in words. (boxes, scores, labels) each."""
    from torchvision.ops import box_iou

    for (boxes_a, scores_a, labels_a), (boxes_b, scores_b, labels_b), side in (
            (expected, got, "PyTorch"), (got, expected, "ONNX")):
        iou = box_iou(torch.as_tensor(boxes_a).reshape(-1, 4), torch.as_tensor(boxes_b).reshape(-1, 4)).numpy()
        for i in range(len(scores_a)):
            partners = (iou[i] >= MATCH_IOU) & (labels_b == labels_a[i]) & \
                       (np.abs(scores_b - scores_a[i]) <= SCORE_TOLERANCE)
            if not partners.any() and scores_a[i] >= UNMATCHED_SCORE:
                return (f"{side}'s detection {i} (label {int(labels_a[i])}, score {float(scores_a[i]):.4f}, box "
                        f"{np.round(boxes_a[i], 2).tolist()}) has no partner")
    return ""
