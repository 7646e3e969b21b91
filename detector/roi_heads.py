"""Stage 4: the box head on pooled ROI features: classify each proposal and refine its box.

Training: ground-truth boxes join the proposals, proposals are matched to ground truth
(IoU >= fg_iou is foreground, the rest background, ignore regions neither) and a balanced sample
feeds a (K+1)-way cross-entropy and a class-specific box-regression loss (smooth L1 or L1 on the
deltas, or an IoU loss on the decoded boxes).
Inference: decode, clip, score threshold, per-class NMS and a per-image cap.
Box heads: `FCHead` (Fast R-CNN's two fc layers), `ConvHead`, and `C4Head` (the backbone's own last stage).
The small functions below (`label_and_sample`, `fast_rcnn_losses`, `select_detections`) are shared with
`detector.cascade`.

Shapes:
    N: images in the batch            K: foreground classes (labels 1..K; 0 is background, `BACKGROUND`)
    P_i: proposals of image i          S_i: ROIs sampled from image i for the losses (gt boxes included)
    R: ROIs of the batch (sum P_i at inference, sum S_i in training)
    C, h, w: channels and the pooled grid (rows x cols) of each ROI's features; D: the box head's output width
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import (
    batched_nms,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from detector.boxes import BoxCoder, box_iou, clip_boxes, nondegenerate
from detector.matching import BalancedSampler, Matcher, ignored_by_regions
from detector.roi_pool import RoIPool
from detector.structures import BACKGROUND, Targets

__all__ = [
    "BOX_LOSS_WEIGHTS",
    "C4Head",
    "ConvHead",
    "FCHead",
    "Predictor",
    "RoIHeads",
    "box_regression_loss",
    "fast_rcnn_losses",
    "label_and_sample",
    "select_detections",
    "select_image_detections",
]

# Default multiplier of each box loss (model.box_loss_weight=0), on the box coder's (10, 10, 5, 5) deltas.
# Measured: 3,869 foreground ROIs jittered around boxes 20-200 px wide (IoU 0.5-1, mean 0.70); the mean
# per-ROI L2 norm of d(loss)/d(pred_deltas) with the prediction at 0 / 0.5 / 0.9 of the way to the target:
#   smooth_l1 (beta 1/9): 1.93 / 1.85 / 1.24     l1: 2.00 / 2.00 / 2.00
#   giou: 0.205 / 0.238 / 0.273    diou and ciou: 0.191 / 0.230 / 0.272
# The IoU losses see a delta only through the decoded box, divided by the coder's weights, hence ~9x smaller
# gradients; weight 10 brings them to 1.9-2.7, smooth L1's scale (mmdetection's GIoU weight with its
# equivalent (0.1, 0.1, 0.2, 0.2) coder, same normalization by the sampled ROIs).
BOX_LOSS_WEIGHTS = {"smooth_l1": 1.0, "l1": 1.0, "giou": 10.0, "diou": 10.0, "ciou": 10.0}
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


class FCHead(nn.Module):
    """Flatten -> fc -> ReLU -> fc -> ReLU: (R, C, h, w) -> (R, dim), the original Fast R-CNN head."""

    def __init__(self, in_channels: int, output_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * output_size[0] * output_size[1], dim)
        self.fc2 = nn.Linear(dim, dim)
        self.out_dim = dim

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))


class ConvHead(nn.Module):
    """Two 3x3 conv + BN-free ReLU layers at the pooled resolution, then one fc: (R, C, h, w) -> (R, dim)."""

    def __init__(self, in_channels: int, output_size: tuple[int, int], dim: int, conv_dim: int = 128) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, conv_dim, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(conv_dim, conv_dim, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(conv_dim * output_size[0] * output_size[1], dim)
        self.out_dim = dim

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(pooled).flatten(1)))


class C4Head(nn.Module):
    """The backbone's pretrained last (stride-32) stage on the pooled features, then global average pooling
    (Detectron2's Res5ROIHeads): (R, C, 2h, 2w) -> stage -> (R, out_dim, h, w) -> (R, out_dim).

    ``stage`` is a copy of the backbone's stride-32 stage (ImageNet weights), whose stride 2 halves the grid
    pooled at twice the output size; ``out_dim`` is its output channel count."""

    def __init__(self, stage: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.stage = stage
        self.out_dim = out_dim

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.stage(pooled).mean(dim=(2, 3))


class Predictor(nn.Module):
    """(R, dim) -> class logits (R, K+1) and deltas: class-specific (R, 4K) for the K foreground classes,
    or one class-agnostic box (R, 4) with ``class_agnostic`` (Cascade R-CNN's stages)."""

    def __init__(self, dim: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.cls_logits = nn.Linear(dim, num_classes + 1)
        self.box_deltas = nn.Linear(dim, 4 if class_agnostic else num_classes * 4)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.cls_logits.bias)
        nn.init.zeros_(self.box_deltas.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_logits(x), self.box_deltas(x)


@torch.no_grad()
def label_and_sample(
    proposals: torch.Tensor, target: Targets, matcher: Matcher, sampler: BalancedSampler, box_coder: BoxCoder
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: add its gt boxes to the (P, 4) xyxy proposals, match, sample.

    Returns the sampled boxes (S, 4), their labels (S,) in 0..K, regression targets (S, 4) encoded by
    ``box_coder`` (zeros for background) and (S,) bool: the sampled box is one of the added gt boxes.
    Background proposals lying mostly inside an ignore region are never sampled.
    """
    gt_boxes, gt_labels = target.boxes.to(proposals), target.labels.to(proposals.device)
    proposals = torch.cat([proposals.detach(), gt_boxes])
    if len(gt_boxes):
        matched = matcher(box_iou(gt_boxes, proposals))
    else:
        matched = torch.full((len(proposals),), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=proposals.device)
    # sampler labels: 1 foreground, 0 background, -1 not sampled (between thresholds, or background inside an
    # ignore region)
    sample_labels = (matched >= 0).long()
    if len(target.ignore):
        inside = ignored_by_regions(proposals, target.ignore.to(proposals))
        sample_labels[(matched < 0) & inside] = -1
    sample_labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
    positive, negative = sampler(sample_labels)
    keep = positive | negative
    fg = positive[keep]
    labels = torch.zeros(int(keep.sum()), dtype=torch.int64, device=proposals.device)
    deltas = torch.zeros((int(keep.sum()), 4), device=proposals.device)
    if len(gt_boxes):
        fg_matched = matched[keep][fg]
        labels[fg] = gt_labels[fg_matched]
        deltas[fg] = box_coder.encode(gt_boxes[fg_matched], proposals[keep][fg])
    from_gt = torch.arange(len(proposals), device=proposals.device)[keep] >= len(proposals) - len(gt_boxes)
    return proposals[keep], labels, deltas, from_gt


def box_regression_loss(
    kind: str, pred_deltas: torch.Tensor, gt_deltas: torch.Tensor, proposals: torch.Tensor, box_coder: BoxCoder
) -> torch.Tensor:
    """Summed (not normalized, not weighted) box loss of F foreground ROIs.

    pred_deltas, gt_deltas: (F, 4) encoded by ``box_coder`` relative to ``proposals`` (F, 4) xyxy.
    smooth_l1 (beta 1/9, Detectron2's) and l1 compare deltas; giou, diou and ciou (torchvision) compare the
    decoded xyxy boxes. F == 0 gives 0.
    """
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred_deltas, gt_deltas, beta=1.0 / 9, reduction="sum")
    if kind == "l1":
        return F.l1_loss(pred_deltas, gt_deltas, reduction="sum")
    if len(pred_deltas) == 0:  # no foreground ROI (BoxCoder.decode cannot reshape an empty batch)
        return pred_deltas.sum()
    pred_boxes = box_coder.decode(pred_deltas, proposals)
    gt_boxes = box_coder.decode(gt_deltas, proposals)
    return _IOU_LOSSES[kind](pred_boxes, gt_boxes, reduction="sum")


def fast_rcnn_losses(
    cls_logits: torch.Tensor,
    pred_deltas: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_deltas: torch.Tensor,
    proposals: torch.Tensor,
    box_coder: BoxCoder,
    box_loss: str,
    box_loss_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(classification, box) losses of R sampled ROIs: cross-entropy over all of them, and ``box_loss_weight``
    times the box loss over the foreground ones, normalized by R (so an image without boxes gives exactly 0).

    cls_logits (R, K+1); pred_deltas (R, 4K) class-specific or (R, 4) class-agnostic; gt_labels (R,) in 0..K;
    gt_deltas (R, 4); proposals (R, 4) xyxy.
    """
    if len(gt_labels):
        cls_loss = F.cross_entropy(cls_logits.float(), gt_labels)
    else:  # no ROI at all: a mean over nothing would be NaN
        cls_loss = 0.0 * cls_logits.sum()
    fg = torch.nonzero(gt_labels > BACKGROUND).squeeze(1)
    # (R, 4K) -> (R, K, 4) (or (R, 1, 4) class-agnostic): pick each foreground ROI's deltas for its gt class
    per_class = pred_deltas.reshape(len(pred_deltas), pred_deltas.shape[1] // 4, 4)
    column = gt_labels[fg] - 1 if per_class.shape[1] > 1 else torch.zeros_like(fg)
    fg_pred_deltas = per_class[fg, column].float()
    box_loss_sum = box_regression_loss(box_loss, fg_pred_deltas, gt_deltas[fg], proposals[fg], box_coder)
    # keeps the graph connected (and the value exactly 0) when there is no foreground ROI
    box_loss_value = box_loss_weight * (box_loss_sum / max(len(gt_labels), 1)) + 0.0 * pred_deltas.sum()
    return cls_loss, box_loss_value


@torch.no_grad()
def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    counts: list[int],
    image_sizes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
) -> list[dict[str, torch.Tensor]]:
    """Clip, threshold, per-class NMS and cap. scores (R, K+1) after softmax; boxes (R, K, 4) xyxy, one per
    foreground class; ``counts`` ROIs per image. Per image {boxes (D, 4), scores (D,), labels (D,) in 1..K}."""
    return [select_image_detections(image_scores, image_boxes, size, score_thresh, nms_thresh, detections_per_image)
            for image_scores, image_boxes, size in zip(scores.split(counts), boxes.split(counts), image_sizes)]


def select_image_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int] | tuple[torch.Tensor, torch.Tensor],
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
) -> dict[str, torch.Tensor]:
    """`select_detections` for one image: scores (R, K+1), boxes (R, K, 4). Traceable (detector.export_graph):
    no size is read into a Python number."""
    # (R, K, 4) -> (R*K, 4), class-major within each ROI
    boxes = clip_boxes(boxes, image_size).reshape(-1, 4)
    foreground = scores[:, 1:]
    labels = torch.arange(1, foreground.shape[1] + 1, device=boxes.device).expand_as(foreground).reshape(-1)
    scores = foreground.reshape(-1)
    keep = (scores > score_thresh) & nondegenerate(boxes)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class RoIHeads(nn.Module):
    """Pools proposals, runs the box head, and owns its target assignment, loss and postprocessing.

    ``box_loss``: smooth_l1 | l1 | giou | diou | ciou; ``box_loss_weight`` 0 = `BOX_LOSS_WEIGHTS`' default.
    """

    def __init__(
        self,
        pooler: RoIPool,
        box_head: nn.Module,
        predictor: Predictor,
        num_classes: int,
        fg_iou: float = 0.5,
        batch_per_image: int = 256,
        positive_fraction: float = 0.25,
        box_loss: str = "smooth_l1",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        box_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if box_loss not in BOX_LOSS_WEIGHTS:
            raise ValueError(f"RoIHeads: box_loss must be one of {', '.join(BOX_LOSS_WEIGHTS)}, got {box_loss!r}")
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.num_classes = num_classes
        self.matcher = Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_per_image, positive_fraction)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.box_loss = box_loss
        self.box_loss_weight = box_loss_weight or BOX_LOSS_WEIGHTS[box_loss]
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    def forward(
        self,
        features: list[torch.Tensor],
        proposals_per_image: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Targets] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Returns (per-image {boxes, scores, labels} in input pixels, or [] when training; loss dict)."""
        if targets is None:
            cls_logits, pred_deltas = self.predictor(self.box_head(self.pooler(features, proposals_per_image)))
            return self.postprocess(cls_logits, pred_deltas, proposals_per_image, image_sizes), {}
        sampled, gt_labels, gt_deltas = self.sample_proposals(proposals_per_image, targets)
        if self.training:
            cls_logits, pred_deltas = self.predictor(self.box_head(self.pooler(features, sampled)))
            return [], self.compute_loss(cls_logits, pred_deltas, gt_labels, gt_deltas, torch.cat(sampled))
        # validation: the sampled ROIs (losses) and all proposals (detections) pooled and run through the head at once
        both = [torch.cat([s, p]) for s, p in zip(sampled, proposals_per_image)]
        cls_logits, pred_deltas = self.predictor(self.box_head(self.pooler(features, both)))
        is_sampled = torch.cat([torch.arange(len(b)) < len(s) for s, b in zip(sampled, both)]).to(cls_logits.device)
        losses = self.compute_loss(cls_logits[is_sampled], pred_deltas[is_sampled], gt_labels, gt_deltas,
                                   torch.cat(sampled))
        results = self.postprocess(cls_logits[~is_sampled], pred_deltas[~is_sampled], proposals_per_image, image_sizes)
        return results, losses

    @torch.no_grad()
    def sample_proposals(
        self, proposals_per_image: list[torch.Tensor], targets: list[Targets]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Adds gt boxes to the proposals, matches and samples them.

        Returns sampled proposals per image (S_i, 4), their labels (sum S_i,) in 0..K and
        regression targets (sum S_i, 4) (zeros for background).
        """
        per_image = [label_and_sample(p, t, self.matcher, self.sampler, self.box_coder)
                     for p, t in zip(proposals_per_image, targets)]
        sampled, labels, deltas, _ = zip(*per_image)
        return list(sampled), torch.cat(labels), torch.cat(deltas)

    def compute_loss(
        self,
        cls_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_deltas: torch.Tensor,
        proposals: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """roi_cls: cross-entropy over all sampled ROIs; roi_box: the weighted box loss over foreground ROIs,
        normalized by the number of sampled ROIs (so an image without boxes gives exactly 0)."""
        roi_cls, roi_box = fast_rcnn_losses(cls_logits, pred_deltas, gt_labels, gt_deltas, proposals,
                                            self.box_coder, self.box_loss, self.box_loss_weight)
        return {"roi_cls": roi_cls, "roi_box": roi_box}

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        proposals_per_image: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Decode, clip, threshold, per-class NMS and cap: per image {boxes (D,4), scores (D,), labels (D,)}."""
        scores = F.softmax(cls_logits.float(), dim=1)
        boxes = self.box_coder.decode(pred_deltas.float(), torch.cat(proposals_per_image).float())
        # (R, 4K) -> (R, K, 4); a class-agnostic (R, 4) box serves every class
        boxes = boxes.reshape(len(boxes), pred_deltas.shape[1] // 4, 4).expand(-1, self.num_classes, -1)
        counts = [len(p) for p in proposals_per_image]
        return select_detections(scores, boxes, counts, image_sizes,
                                 self.score_thresh, self.nms_thresh, self.detections_per_image)
