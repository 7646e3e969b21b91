"""Cascade R-CNN (Cai and Vasconcelos, 2018): a sequence of box-head stages at rising IoU thresholds.

Stage t matches its input boxes to ground truth at ``stage_ious[t]`` (gt boxes added, balanced sampling, ignore
regions honoured as in the single-stage head), classifies them and regresses one class-agnostic box per ROI.
Its decoded, detached boxes are the next stage's input, so each stage trains on the better-localized
distribution the previous one produces (gt boxes a stage added are dropped before the next one, which adds
them again, as in mmdetection). Each stage has its own box coder, the deltas of later stages being smaller:
(10, 10, 5, 5) times the stage number, i.e. (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15) as in the paper
and Detectron2.

Losses: ``roi_cls`` and ``roi_box`` for stage 1, ``roi_cls_stage2``, ``roi_box_stage2``, ... after it, stage t
weighted 0.5^(t-1) (1, 0.5, 0.25: the paper's and mmdetection's stage weights; Detectron2 instead weights every
stage 1 and scales the gradient into the shared features by 1/3), so the backbone sees a total weight of 1.75.
Inference: the boxes run through the stages; the last stage's input boxes are scored by every stage's classifier
(the mean of their softmax scores: the paper's ensemble) and regressed by the last stage, then the
single-stage postprocess (score threshold, per-class NMS, per-image cap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detector.boxes import BoxCoder, clip_boxes, nondegenerate
from detector.matching import BalancedSampler, Matcher
from detector.roi_heads import BOX_LOSS_WEIGHTS, Predictor, fast_rcnn_losses, label_and_sample, select_detections
from detector.roi_pool import RoIPool
from detector.structures import Targets

__all__ = ["CascadeRoIHeads", "stage_box_coder_weights"]


def stage_box_coder_weights(stage: int) -> tuple[float, float, float, float]:
    """Box coder weights of stage ``stage`` (0-based): (10, 10, 5, 5) * (stage + 1)."""
    return (10.0 * (stage + 1), 10.0 * (stage + 1), 5.0 * (stage + 1), 5.0 * (stage + 1))


class CascadeRoIHeads(nn.Module):
    """One (box head, class-agnostic predictor) pair per stage over one shared pooler.

    Same call contract as `detector.roi_heads.RoIHeads`: ``forward(features, proposals_per_image, image_sizes,
    targets)`` -> (per-image {boxes (D, 4) xyxy input pixels, scores (D,), labels (D,) in 1..K}, or [] when
    training; loss dict).
    """

    def __init__(
        self,
        pooler: RoIPool,
        box_heads: list[nn.Module],
        predictors: list[Predictor],
        num_classes: int,
        stage_ious: list[float],
        batch_per_image: int = 256,
        positive_fraction: float = 0.25,
        box_loss: str = "smooth_l1",
        box_loss_weight: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        if not len(box_heads) == len(predictors) == len(stage_ious) >= 1:
            raise ValueError(
                f"CascadeRoIHeads: expected one box head and predictor per stage IoU, got {len(box_heads)} heads, "
                f"{len(predictors)} predictors and {len(stage_ious)} IoUs"
            )
        if box_loss not in BOX_LOSS_WEIGHTS:
            raise ValueError(
                f"CascadeRoIHeads: box_loss must be one of {', '.join(BOX_LOSS_WEIGHTS)}, got {box_loss!r}"
            )
        self.pooler = pooler
        self.box_heads = nn.ModuleList(box_heads)
        self.predictors = nn.ModuleList(predictors)
        self.num_classes = num_classes
        self.stage_ious = list(stage_ious)
        self.matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in stage_ious]
        self.sampler = BalancedSampler(batch_per_image, positive_fraction)
        self.box_coders = [BoxCoder(stage_box_coder_weights(t)) for t in range(len(stage_ious))]
        self.stage_loss_weights = [0.5**t for t in range(len(stage_ious))]
        self.box_loss = box_loss
        self.box_loss_weight = box_loss_weight or BOX_LOSS_WEIGHTS[box_loss]
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    @property
    def num_stages(self) -> int:
        return len(self.stage_ious)

    def forward(
        self,
        features: list[torch.Tensor],
        proposals_per_image: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Targets] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Returns (per-image {boxes, scores, labels} in input pixels, or [] when training; loss dict)."""
        losses = self.compute_losses(features, proposals_per_image, image_sizes, targets) if targets is not None else {}
        if self.training and targets is not None:
            return [], losses
        return self.detect(features, proposals_per_image, image_sizes), losses

    def stage_predictions(
        self, stage: int, features: list[torch.Tensor], boxes_per_image: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage ``stage`` on boxes (B_i, 4) per image: class logits (sum B_i, K+1), deltas (sum B_i, 4)."""
        return self.predictors[stage](self.box_heads[stage](self.pooler(features, boxes_per_image)))

    def compute_losses(
        self,
        features: list[torch.Tensor],
        proposals_per_image: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Targets],
    ) -> dict[str, torch.Tensor]:
        """{roi_cls, roi_box, roi_cls_stage2, roi_box_stage2, ...}, each stage on the previous stage's boxes."""
        losses: dict[str, torch.Tensor] = {}
        boxes_per_image = [p.detach() for p in proposals_per_image]
        for stage in range(self.num_stages):
            per_image = [label_and_sample(boxes, target, self.matchers[stage], self.sampler, self.box_coders[stage])
                         for boxes, target in zip(boxes_per_image, targets)]
            sampled, labels, deltas, from_gt = (list(column) for column in zip(*per_image))
            cls_logits, pred_deltas = self.stage_predictions(stage, features, sampled)
            roi_cls, roi_box = fast_rcnn_losses(
                cls_logits, pred_deltas, torch.cat(labels), torch.cat(deltas), torch.cat(sampled),
                self.box_coders[stage], self.box_loss, self.box_loss_weight,
            )
            suffix = "" if stage == 0 else f"_stage{stage + 1}"
            losses[f"roi_cls{suffix}"] = self.stage_loss_weights[stage] * roi_cls
            losses[f"roi_box{suffix}"] = self.stage_loss_weights[stage] * roi_box
            if stage + 1 < self.num_stages:
                boxes_per_image = self._next_stage_boxes(stage, pred_deltas, sampled, from_gt, image_sizes)
        return losses

    @torch.no_grad()
    def _next_stage_boxes(
        self,
        stage: int,
        pred_deltas: torch.Tensor,
        sampled: list[torch.Tensor],
        from_gt: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Training: the stage's decoded boxes of its sampled ROIs, clipped, without the added gt boxes (the next
        stage adds them again) and without empty boxes (which cannot be encoded against)."""
        decoded = self.box_coders[stage].decode(pred_deltas.detach().float(), torch.cat(sampled).float())
        boxes_per_image = []
        for boxes, is_gt, size in zip(decoded.split([len(s) for s in sampled]), from_gt, image_sizes):
            boxes = clip_boxes(boxes[~is_gt], size)
            boxes_per_image.append(boxes[nondegenerate(boxes)])
        return boxes_per_image

    @torch.no_grad()
    def detect(
        self,
        features: list[torch.Tensor],
        proposals_per_image: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Run the proposals through every stage; score the last stage's input boxes with the mean of all stages'
        softmax scores, take the last stage's regressed boxes, then postprocess."""
        counts = [len(p) for p in proposals_per_image]
        boxes = torch.cat(proposals_per_image).float()  # (R, 4): one box per ROI through the whole cascade
        for stage in range(self.num_stages - 1):
            _, pred_deltas = self.stage_predictions(stage, features, list(boxes.split(counts)))
            decoded = self.box_coders[stage].decode(pred_deltas.float(), boxes)
            boxes = torch.cat([clip_boxes(b, size) for b, size in zip(decoded.split(counts), image_sizes)])
        pooled = self.pooler(features, list(boxes.split(counts)))
        scores = torch.zeros((len(boxes), self.num_classes + 1), device=boxes.device)
        for stage in range(self.num_stages):
            cls_logits, pred_deltas = self.predictors[stage](self.box_heads[stage](pooled))
            scores += F.softmax(cls_logits.float(), dim=1) / self.num_stages
            if stage == self.num_stages - 1:
                final = self.box_coders[stage].decode(pred_deltas.float(), boxes)
        # (R, 4) -> (R, K, 4): the class-agnostic box serves every class
        final = final[:, None, :].expand(-1, self.num_classes, -1)
        return select_detections(scores, final, counts, image_sizes,
                                 self.score_thresh, self.nms_thresh, self.detections_per_image)
