"""Test-time augmentation (TTA): predict each image at several sizes, also mirrored and turned, and fuse the views'
boxes.

A view is one (size, mirrored, quarter turns) triple. Each size is a longest side: the image is resized from the
original by the evaluation transform (`build_transform(None, size)`), so a view is exactly what the model sees with
``data.max_size: size``. A mirrored view predicts the horizontally flipped image and flips its boxes back; a turned
view predicts the image turned k quarter turns counter-clockwise (`torch.rot90`, after the mirroring) and turns its
boxes back (`rot90_boxes`). Turns suit images seen from above, where a street runs at any heading (a model trained
with `augment.rotate90`); on driver's-eye images a turned view is a view the model never saw. The model's `predict`
maps every view's boxes to original image pixels (of the turned image, for a turned view), where the views are fused
per class:

- ``wbf``, weighted box fusion (Solovyev, Wang and Gabruseva, "Weighted boxes fusion", 2021): boxes are taken in
  decreasing score; each joins the cluster whose fused box it overlaps most if that IoU is at least ``iou``, else
  starts a cluster. A cluster's box is the score-weighted mean of its members' coordinates, and its score is the
  sum of its members' scores over the number of views (a box found by every view keeps its mean score, a box
  found by one view of four keeps a quarter); over its member count instead in the rare case a cluster has more
  members than there are views, so that scores stay at most 1.
- ``nms``: per-class NMS at ``iou`` over the union of the views.

Each view is one more pass of the whole model: two sizes with mirroring cost four plain predictions and more
(the larger size costs more than the plain one); turns multiply the views again (turns 0 and 1 with mirroring: four
views per size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from detector.config import Config
from detector.data.dataset import image_to_tensor
from detector.data.transforms import build_transform
from detector.detector import FastRCNN
from detector.structures import Detections, DetectorError

__all__ = ["TestTimeAugmentation", "build_tta", "flip_boxes", "rot90_boxes", "weighted_box_fusion"]

FUSIONS = ("wbf", "nms")


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """(N, 4) xyxy boxes of an image ``width`` pixels wide -> the same boxes in the mirrored image."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def rot90_boxes(boxes: torch.Tensor, height: float, width: float, turns: int) -> torch.Tensor:
    """(N, 4) xyxy boxes of an image ``height`` x ``width`` -> the same boxes in that image turned ``turns`` quarter
    turns counter-clockwise, as ``torch.rot90(image, turns, dims=(-2, -1))`` turns a (..., H, W) tensor.

    One turn maps the point (x, y) to (y, width - x) in the turned image, which is ``width`` tall and ``height`` wide;
    the boxes of a turned image come back with ``rot90_boxes(boxes, width, height, 4 - turns)`` (sizes swapped when
    ``turns`` is odd)."""
    for _ in range(turns % 4):
        boxes = torch.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], dim=1)
        height, width = width, height
    return boxes


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box with (M, 4) xyxy boxes -> (M,)."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    areas = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(areas - inter, np.finfo(np.float64).tiny)


def _fuse_one_class(boxes: np.ndarray, scores: np.ndarray, num_views: int, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """WBF of one class's (N, 4) boxes and (N,) scores (float64) -> fused (C, 4) boxes and (C,) scores."""
    order = np.argsort(-scores, kind="stable")
    weighted_sum = np.zeros((len(boxes), 4))  # per cluster: sum of score * box
    score_sum = np.zeros(len(boxes))
    members = np.zeros(len(boxes), np.int64)
    fused = np.zeros((len(boxes), 4))  # per cluster: weighted_sum / score_sum
    clusters = 0
    for index in order:
        box, score = boxes[index], scores[index]
        target = clusters
        if clusters:
            overlaps = _box_iou(box, fused[:clusters])
            best = int(overlaps.argmax())
            target = best if overlaps[best] >= iou else clusters
        if target == clusters:
            clusters += 1
        weighted_sum[target] += score * box
        score_sum[target] += score
        members[target] += 1
        # float64: for a lone box (x * s) / s gives x back exactly, so one view fuses to itself
        fused[target] = weighted_sum[target] / score_sum[target]
    fused_scores = score_sum[:clusters] / np.maximum(members[:clusters], num_views)
    return fused[:clusters], fused_scores


def weighted_box_fusion(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_views: int,
                        iou: float = 0.55) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted box fusion (module docstring) of the views' detections, per class.

    boxes: (N, 4) xyxy, scores: (N,), labels: (N,), all views' detections together, in one image's pixels.
    Returns fused (C, 4) float32 boxes, (C,) float32 scores and (C,) int64 labels, on the CPU, by decreasing
    score."""
    boxes_np = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    scores_np = scores.detach().cpu().double().numpy().reshape(-1)
    labels_np = labels.detach().cpu().numpy().reshape(-1)
    out_boxes, out_scores, out_labels = [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)]
    for label in np.unique(labels_np):
        selected = labels_np == label
        fused, fused_scores = _fuse_one_class(boxes_np[selected], scores_np[selected], num_views, iou)
        out_boxes.append(fused)
        out_scores.append(fused_scores)
        out_labels.append(np.full(len(fused), label, np.int64))
    fused_scores = np.concatenate(out_scores)
    order = np.argsort(-fused_scores, kind="stable")
    return (torch.from_numpy(np.concatenate(out_boxes)[order]).float(), torch.from_numpy(fused_scores[order]).float(),
            torch.from_numpy(np.concatenate(out_labels)[order]))


class TestTimeAugmentation:
    """Predict at each of ``sizes`` (longest sides, pixels), also mirrored with ``hflip``, each of those turned by
    each of ``turns`` (quarter turns counter-clockwise, 0-3; 0 is the unturned view), and fuse per class with
    ``fusion`` (wbf | nms) at IoU ``iou``; at most ``max_det`` detections per image, by decreasing score."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, sizes: Sequence[int], hflip: bool = True, fusion: str = "wbf", iou: float = 0.55,
                 max_det: int = 100, turns: Sequence[int] = (0,)) -> None:
        if (not sizes or min(sizes) < 1 or fusion not in FUSIONS or not 0.0 < iou <= 1.0 or max_det < 1
                or not turns or not set(turns) <= {0, 1, 2, 3}):
            raise ValueError(f"TestTimeAugmentation: invalid sizes {sizes}, fusion {fusion}, iou {iou}, "
                             f"max_det {max_det} or turns {turns}")
        self.sizes = tuple(dict.fromkeys(int(size) for size in sizes))  # repeats would only repeat a view
        self.flips = (False, True) if hflip else (False,)
        self.turns = tuple(dict.fromkeys(int(turn) for turn in turns))
        self.fusion, self.iou, self.max_det = fusion, iou, max_det
        self._transforms = [build_transform(None, size, train=False) for size in self.sizes]

    @property
    def num_views(self) -> int:
        return len(self.sizes) * len(self.flips) * len(self.turns)

    def resize(self, image: np.ndarray) -> list[torch.Tensor]:
        """(H, W, 3) uint8 RGB -> per size, the (3, h, w) float input in [0, 1] the evaluation transform makes."""
        empty_boxes, empty_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        return [image_to_tensor(transform(image, empty_boxes, empty_labels).image) for transform in self._transforms]

    def predict_arrays(self, model: FastRCNN, images: Sequence[np.ndarray]) -> list[Detections]:
        """Fused detections of (H, W, 3) uint8 RGB images, boxes in their pixels."""
        per_image = [self.resize(image) for image in images]  # [image][size]
        images_per_size = [[views[s] for views in per_image] for s in range(len(self.sizes))]
        return self.predict(model, images_per_size, [(image.shape[0], image.shape[1]) for image in images])

    def predict(self, model: FastRCNN, images_per_size: Sequence[list[torch.Tensor]],
                original_sizes: list[tuple[int, int]],
                proposals_per_size: Sequence[list[torch.Tensor] | None] | None = None) -> list[Detections]:
        """Fused detections per image, boxes in original pixels, on the CPU.

        images_per_size[s][i]: image i resized so its longest side is ``sizes[s]``, (3, h, w) in [0, 1] (as
        `resize` or a `DetectionDataset` with that size's evaluation transform gives it); original_sizes[i]:
        its (H, W); proposals_per_size[s][i]: optional precomputed proposals (P, 4) xyxy in that view's pixels."""
        if len(images_per_size) != len(self.sizes):
            raise ValueError(f"TestTimeAugmentation.predict: {len(images_per_size)} image lists for sizes {self.sizes}")
        views_per_image: list[list[Detections]] = [[] for _ in original_sizes]
        for s, images in enumerate(images_per_size):
            proposals = proposals_per_size[s] if proposals_per_size is not None else None
            for flipped in self.flips:
                for turns in self.turns:
                    detections = self._predict_view(model, images, original_sizes, proposals, flipped, turns)
                    for views, found in zip(views_per_image, detections):
                        views.append(found)
        return [self.fuse(views) for views in views_per_image]

    @staticmethod
    def _predict_view(model: FastRCNN, images: list[torch.Tensor], original_sizes: list[tuple[int, int]],
                      proposals: list[torch.Tensor] | None, flipped: bool, turns: int) -> list[Detections]:
        """One view's detections of ``images`` (mirrored, then turned), boxes mapped back to original pixels."""
        inputs, view_proposals, view_sizes = list(images), proposals, list(original_sizes)
        if flipped:
            inputs = [image.flip(-1) for image in inputs]  # (3, h, w): mirror the width axis
            if view_proposals is not None:
                view_proposals = [flip_boxes(p, image.shape[-1]) for p, image in zip(view_proposals, images)]
        if turns:
            if view_proposals is not None:
                view_proposals = [rot90_boxes(p, image.shape[-2], image.shape[-1], turns)
                                  for p, image in zip(view_proposals, images)]
            inputs = [torch.rot90(image, turns, dims=(-2, -1)) for image in inputs]
            view_sizes = [(width, height) if turns % 2 else (height, width) for height, width in original_sizes]
        mapped = []
        for found, (height, width), (view_height, view_width) in zip(
                model.predict(inputs, view_sizes, view_proposals), original_sizes, view_sizes):
            found = found.to("cpu")
            boxes = found.boxes
            if turns:  # back from the turned image's pixels
                boxes = rot90_boxes(boxes, view_height, view_width, 4 - turns)
            if flipped:
                boxes = flip_boxes(boxes, width)
            mapped.append(Detections(boxes, found.scores, found.labels, found.class_names))
        return mapped

    def fuse(self, views: list[Detections]) -> Detections:
        """One image's detections of every view (boxes in the same pixels) -> fused detections (module doc)."""
        boxes = torch.cat([view.boxes for view in views]).float()
        scores = torch.cat([view.scores for view in views]).float()
        labels = torch.cat([view.labels for view in views])
        if self.fusion == "nms":
            keep = batched_nms(boxes, scores, labels, self.iou)  # by decreasing score
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        else:
            boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, len(views), self.iou)
        keep = torch.arange(min(len(scores), self.max_det))
        return Detections(boxes[keep], scores[keep], labels[keep], views[0].class_names if views else [])


def build_tta(config: Config) -> TestTimeAugmentation:
    """The TTA of a config: eval.tta_sizes (empty = data.max_size and 1.25x it), eval.tta_hflip, eval.tta_turns
    (empty = [0]; their range is checked when the config is read), eval.tta_fusion, eval.tta_iou, and
    model.detections_per_image detections per image."""
    sizes = list(config.eval.tta_sizes) or [config.data.max_size, round(1.25 * config.data.max_size)]
    if min(sizes) < 1:
        raise DetectorError(f"config key 'eval.tta_sizes' must list longest image sides of at least 1 pixel, "
                            f"got {sizes}")
    if not 0.0 < config.eval.tta_iou <= 1.0:
        raise DetectorError(f"config key 'eval.tta_iou' must be in (0, 1], got {config.eval.tta_iou}")
    if config.eval.tta_fusion not in FUSIONS:
        raise DetectorError(f"config key 'eval.tta_fusion' is '{config.eval.tta_fusion}'; expected wbf or nms")
    if config.model.detections_per_image < 1:
        raise DetectorError("config key 'model.detections_per_image' must be at least 1")
    return TestTimeAugmentation(sizes, config.eval.tta_hflip, config.eval.tta_fusion, config.eval.tta_iou,
                                config.model.detections_per_image, config.eval.tta_turns or [0])
