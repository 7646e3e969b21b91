"""Sliced inference (SAHI-style) for frames much larger than the model's input.

A detector resizes every image to ``data.max_size`` (say 640): a 4K drone frame shrinks 6x and its 20-40 px cars
vanish. Here the frame is cut into overlapping tiles at native resolution (`tile_grid`), the tiles run through
``detector.predict_batch`` in batches (a tile of ``size = max_size`` is then seen at its own pixels), their boxes are
shifted back to the frame, an optional full-frame pass adds the cars larger than a tile, and the boxes of all passes
are merged (`merge_detections`). Boxes are ``(N, 4)`` float32 ``x1, y1, x2, y2`` in pixels throughout; tiles are
``(x1, y1, x2, y2)`` int pixel rectangles of the frame.

Defaults, chosen on 1920x1920 mosaics of the drone validation tiles (docs/BENCHMARKS.md): ``merge="nms"`` matching
by IoS (intersection over the smaller box) at ``thresh=0.5`` and ``overlap=0.3`` (`DEFAULT_OVERLAP`). AP 0.742
against the per-tile 0.763; NMS matching by IoU as torchvision's batched_nms scored 0.739 (0.729 at overlap 0.2),
and NMM, SAHI's default, 0.685. The points below describe both merges:

- A car cut by a tile border is seen as a partial box by one tile and as a whole (or another partial) box by its
  neighbour. The partial box lies *inside* the whole one, so their IoU is small (a car cut at a third: IoU 0.33) and
  NMS at IoU 0.5 keeps both: one car, two detections. Intersection over the smaller box (IoS) is 1 for a box inside
  another, so matching by IoS joins them.
- Non-maximum merging (NMM) replaces the kept box by the enclosing box of itself and the partial boxes matched to it,
  so two partial views of a car larger than the tile overlap rebuild the whole car.
- Boxes touching an inner tile border (within `CUT_MARGIN` px of a tile edge that is not a frame edge) are treated as
  possibly cut: they are visited last (a whole box of the same car, from a neighbouring tile, becomes the kept box
  and absorbs them) and only they widen a kept box. A matched whole box is suppressed, not united: uniting two whole
  boxes of one car only adds up both localization errors (SAHI unites every match; ``kinds=None`` does that). A cut box
  that matches nothing is kept: it is the only evidence of its car.
- Full-frame boxes (the optional pass at ``data.max_size``, for cars larger than a tile) rank between whole tile
  boxes and cut ones: they are coarser than the tiles' native-resolution boxes of the same car, but whole.
- Boxes of one pass are never matched with each other: the model's own NMS already decided between them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from detector.data.images import as_rgb_array  # torch-free: the ONNX predictor slices too
from detector.errors import DetectorError

__all__ = ["DEFAULT_OVERLAP", "MIN_SLICE", "SlicedPredictor", "merge_detections", "predict_sliced", "resolve_slice",
           "tile_grid"]

MIN_SLICE = 64  # below this a tile holds less context than one anchor stride pyramid needs
MAX_OVERLAP = 0.9  # at 0.9 the tile stride is a tenth of a tile: 100x the passes, never worth it
CUT_MARGIN = 2.0  # px: a box edge this close to an inner tile edge may belong to a car the tile cut
AUTO_FACTOR = 2  # slice="auto" slices frames whose longest side exceeds this many times data.max_size
MERGE_MODES = ("nmm", "nms")
MATCH_METRICS = ("ios", "iou")
DEFAULT_MATCH = {"nmm": "ios", "nms": "ios"}  # match=None: intersection over the smaller box (module docstring)
DEFAULT_OVERLAP = 0.3  # of a tile: 192 px at 640, more than the longest drone car (180 px): each car whole in a tile
COMPLETE, FULL_FRAME, PARTIAL = 0, 1, 2  # box kinds, in the order the merge visits them

Tile = tuple[int, int, int, int]


def check_slicing(size: int, overlap: float) -> None:
    """One sentence for a slice size under `MIN_SLICE` px or an overlap outside [0, `MAX_OVERLAP`)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SLICE:
        raise DetectorError(f"slice size must be an integer of at least {MIN_SLICE} pixels (or 'auto'), got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < MAX_OVERLAP:
        raise DetectorError(f"slice overlap must be a fraction of the tile in [0, {MAX_OVERLAP}), got {overlap!r}")


def resolve_slice(size: int | str | None, height: int, width: int, max_size: int) -> int | None:
    """The tile size for a (height, width) frame: ``None`` -> None (no slicing); ``"auto"`` -> ``max_size`` when the
    longest side exceeds ``AUTO_FACTOR * max_size`` (the tiles are then seen at native resolution), else None."""
    if size is None:
        return None
    if size == "auto":
        return max_size if max(height, width) > AUTO_FACTOR * max_size else None
    if isinstance(size, str):
        raise DetectorError(f"slice must be a tile size in pixels or 'auto', got {size!r}")
    return size


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    count = math.ceil((length - size) / stride) + 1
    return [min(i * stride, length - size) for i in range(count)]  # the last one shifted back to end at the border


def tile_grid(height: int, width: int, size: int, overlap: float) -> list[Tile]:
    """Row-major ``(x1, y1, x2, y2)`` tiles covering a (height, width) frame at native resolution.

    Adjacent tiles overlap by ``round(overlap * size)`` px; the last row and column are shifted back to end at the
    frame's border (they overlap their neighbour more), never padded past it. Along a side no longer than ``size``
    the tile spans the whole side, so a frame that fits in one tile gives one tile: the frame itself.
    """
    check_slicing(size, overlap)
    stride = size - int(round(overlap * size))
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def _overlaps(box: np.ndarray, others: np.ndarray, match: str) -> np.ndarray:
    """IoU or IoS (intersection over the smaller area) of one (4,) box with (M, 4) boxes -> (M,)."""
    wh = np.clip(np.minimum(box[2:], others[:, 2:]) - np.maximum(box[:2], others[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    denominator = np.minimum(area, areas) if match == "ios" else area + areas - inter
    return inter / np.maximum(denominator, 1e-9)


def check_merge(mode: str, match: str | None, thresh: float) -> str:
    """The match metric to use (None: `DEFAULT_MATCH` of the mode); one sentence for an unknown option."""
    if mode not in MERGE_MODES:
        raise DetectorError(f"slice merge must be one of {', '.join(MERGE_MODES)}, got {mode!r}")
    match = DEFAULT_MATCH[mode] if match is None else match
    if match not in MATCH_METRICS:
        raise DetectorError(f"slice match metric must be one of {', '.join(MATCH_METRICS)}, got {match!r}")
    if not 0.0 <= thresh <= 1.0:
        raise DetectorError(f"slice merge threshold must be in [0, 1], got {thresh!r}")
    return match


def merge_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thresh: float = 0.5,
                     mode: str = "nmm", match: str | None = None, groups: np.ndarray | None = None,
                     kinds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy class-wise NMS or NMM of the detections of several passes, in numpy (torch-free; IoS is not in
    torchvision). boxes (D, 4) float32 xyxy, scores (D,), labels (D,) -> the kept (boxes, scores, labels), highest
    score first.

    Boxes are visited by (kind, -score); each unvisited box of the same label (and another group, when ``groups``
    (D,) is given) whose ``match`` overlap (None: IoS, `DEFAULT_MATCH`) with the visited box exceeds ``thresh`` is
    matched to it and leaves. ``nms`` keeps the visited box as is (``match="iou"`` without groups is torchvision's
    batched_nms).
    ``nmm`` widens it to the enclosing box of itself and its matched ``PARTIAL`` boxes, with the highest score of them
    all. ``kinds`` (D,) holds `COMPLETE`, `FULL_FRAME` or `PARTIAL`; None: every box may be partial (SAHI's NMM).
    """
    match = check_merge(mode, match, thresh)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores, labels = np.asarray(scores, np.float32).reshape(-1), np.asarray(labels, np.int64).reshape(-1)
    kinds = np.full(len(boxes), PARTIAL) if kinds is None else np.asarray(kinds).reshape(-1)
    alive = np.ones(len(boxes), bool)
    kept_boxes, kept_scores, kept_labels = [], [], []
    for i in np.lexsort((-scores, kinds)):  # the last key sorts first: kind, then score, descending
        if not alive[i]:
            continue
        alive[i] = False
        candidates = alive & (labels == labels[i])
        if groups is not None:
            candidates &= groups != groups[i]
        candidates = np.flatnonzero(candidates)
        matched = candidates[_overlaps(boxes[i], boxes[candidates], match) > thresh]
        alive[matched] = False
        box, score = boxes[i], scores[i]
        if mode == "nmm" and len(matched):
            pieces = np.concatenate([box[None], boxes[matched[kinds[matched] == PARTIAL]]])
            box = np.concatenate([pieces[:, :2].min(0), pieces[:, 2:].max(0)])
            score = max(score, scores[matched].max())
        kept_boxes.append(box), kept_scores.append(score), kept_labels.append(labels[i])
    order = np.argsort(-np.asarray(kept_scores, np.float32), kind="stable")
    return (np.asarray(kept_boxes, np.float32).reshape(-1, 4)[order], np.asarray(kept_scores, np.float32)[order],
            np.asarray(kept_labels, np.int64)[order])


def cut_by_tile(boxes: np.ndarray, tile: Tile, height: int, width: int, margin: float = CUT_MARGIN) -> np.ndarray:
    """(D,) bool: boxes (D, 4) in frame pixels that touch an edge of ``tile`` which is not an edge of the frame."""
    x1, y1, x2, y2 = tile
    return ((x1 > 0) & (boxes[:, 0] <= x1 + margin)) | ((y1 > 0) & (boxes[:, 1] <= y1 + margin)) | \
        ((x2 < width) & (boxes[:, 2] >= x2 - margin)) | ((y2 < height) & (boxes[:, 3] >= y2 - margin))


def _model_max_size(detector: Any) -> int:
    """data.max_size of a `Detector` (its config) or an `OnnxDetector` (its metadata)."""
    return int(getattr(detector, "max_size", None) or detector.config.data.max_size)


def _default_batch_size(detector: Any) -> int:
    """8 tiles per call on CUDA; 1 on CPU, where batching measured slower (as `detector detect`)."""
    return 8 if getattr(getattr(detector, "device", None), "type", "cpu") == "cuda" else 1


def _like(example: Any, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Any:
    """Detections of the detector's own type: numpy `ArrayDetections` for the ONNX predictor, torch `Detections`."""
    if isinstance(example.boxes, np.ndarray):
        return type(example)(boxes, scores, labels, list(example.class_names))
    import torch

    from detector.structures import Detections

    return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                      list(example.class_names))


def predict_sliced(detector: Any, image: Any, size: int | str, overlap: float = DEFAULT_OVERLAP, merge: str = "nms",
                   match: str | None = None, thresh: float = 0.5, full_frame: bool = True,
                   batch_size: int | None = None,
                   score_thresh: float | None = None, classes: Sequence[str] | None = None,
                   max_det: int | None = None, **predict_options: Any) -> Any:
    """Detections of one frame (path or (H, W, 3) uint8 RGB) predicted tile by tile; boxes (D, 4) xyxy in frame px.

    ``detector`` is a `detector.api.Detector` (-> `Detections`) or a `detector.export.OnnxDetector` (->
    `ArrayDetections`): anything with ``predict_batch(images, score_thresh=, classes=, max_det=)``. ``size``: tile
    side in px (``data.max_size`` for native resolution) or ``"auto"`` (`resolve_slice`). The tiles (and, with
    ``full_frame``, the whole frame, last) go ``batch_size`` at a time (default: 8 on CUDA, 1 on CPU) with
    ``score_thresh``, ``classes`` and ``predict_options`` (e.g. ``tta=True``); their boxes are merged (module
    docstring) and cut to the best ``max_det``. A frame that fits in one tile is predicted once, unchanged.
    """
    check_slicing(MIN_SLICE if size == "auto" else size, overlap)
    match = check_merge(merge, match, thresh)
    image = as_rgb_array(image)
    height, width = image.shape[:2]
    tile_size = resolve_slice(size, height, width, _model_max_size(detector))
    tiles = tile_grid(height, width, tile_size, overlap) if tile_size is not None else [(0, 0, width, height)]
    options = {"score_thresh": score_thresh, "classes": classes, **predict_options}
    if len(tiles) == 1:
        return detector.predict_batch([image], max_det=max_det, **options)[0]
    views = [np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in tiles] + ([image] if full_frame else [])
    step = batch_size or _default_batch_size(detector)
    found = [d for start in range(0, len(views), step)
             for d in detector.predict_batch(views[start:start + step], **options)]
    boxes, scores, labels, groups, kinds = [], [], [], [], []
    for group, (detections, (x1, y1, x2, y2)) in enumerate(zip(found, [*tiles, (0, 0, width, height)])):
        shifted = np.asarray(detections.boxes, np.float32).reshape(-1, 4) + np.array([x1, y1, x1, y1], np.float32)
        if group < len(tiles):
            kind = np.where(cut_by_tile(shifted, (x1, y1, x2, y2), height, width), PARTIAL, COMPLETE)
        else:
            kind = np.full(len(shifted), FULL_FRAME)
        boxes.append(shifted), scores.append(np.asarray(detections.scores, np.float32).reshape(-1))
        labels.append(np.asarray(detections.labels, np.int64).reshape(-1))
        groups.append(np.full(len(shifted), group)), kinds.append(kind)
    merged = merge_detections(np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels), thresh, merge,
                              match, np.concatenate(groups), np.concatenate(kinds))
    if max_det is not None:
        merged = tuple(array[:max_det] for array in merged)
    return _like(found[0], *merged)


class SlicedPredictor:
    """A detector whose ``predict_batch`` slices every frame (`predict_sliced`): what `detector.video.run_detection`
    and ``predict_frames`` take, for `Detector` and `OnnxDetector` alike (`detector detect --slice`)."""

    def __init__(self, detector: Any, size: int | str, overlap: float = DEFAULT_OVERLAP, merge: str = "nms",
                 full_frame: bool = True, batch_size: int | None = None) -> None:
        check_slicing(MIN_SLICE if size == "auto" else size, overlap)
        check_merge(merge, None, 0.5)
        self.detector, self.size, self.overlap, self.merge = detector, size, overlap, merge
        self.full_frame, self.batch_size = full_frame, batch_size
        self.class_names: list[str] = list(detector.class_names)

    def predict_batch(self, images: Sequence[Any], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> list[Any]:
        """Per frame, its sliced detections (boxes (D, 4) xyxy in that frame's pixels)."""
        return [predict_sliced(self.detector, image, self.size, self.overlap, self.merge, full_frame=self.full_frame,
                               batch_size=self.batch_size, score_thresh=score_thresh, classes=classes, max_det=max_det)
                for image in images]


def evaluate_sliced(detector: Any, dataset: Any, size: int | str, overlap: float = DEFAULT_OVERLAP, merge: str = "nms",
                    full_frame: bool = True, progress: bool = True) -> Any:
    """`detector.engine.evaluate` for sliced inference (`detector eval --slice`): every image of ``dataset`` predicted
    by `predict_sliced` with a `Detector`, kept down to ``eval.score_thresh`` as `evaluate` does; an `EvalOutput`
    without losses. Boxes are compared in original image pixels."""
    from tqdm import tqdm

    from detector.data.images import load_image
    from detector.engine import EvalOutput
    from detector.evaluation import COCOEvaluator

    check_slicing(MIN_SLICE if size == "auto" else size, overlap)
    evaluator = COCOEvaluator(list(detector.config.model.class_names), dataset.category_ids)
    heads = detector.model.roi_heads
    deploy_thresh, heads.score_thresh = heads.score_thresh, detector.config.eval.score_thresh
    try:
        for record in tqdm(dataset.records, desc="eval (sliced)", unit="image", disable=not progress, leave=False):
            found = predict_sliced(detector, load_image(record.image_path), size, overlap, merge, full_frame=full_frame)
            evaluator.process([record.image_id], [record.targets()], [found])
    finally:
        heads.score_thresh = deploy_thresh
    return EvalOutput(evaluator.evaluate(), evaluator, {})
