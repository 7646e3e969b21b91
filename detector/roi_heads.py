"""Stage 4: the box head on pooled ROI features: classify each proposal and refine its box.

Training: ground-truth boxes join the proposals, proposals are matched to ground truth
(IoU >= fg_iou is foreground, the rest background, ignore regions neither) and a balanced sample
feeds a (K+1)-way cross-entropy and a class-specific box-regression loss.
Inference: decode, clip, score threshold, per-class NMS and a per-image cap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

from detector.boxes import BoxCoder, box_iou, clip_boxes, nondegenerate
from detector.matching import BalancedSampler, Matcher, ignored_by_regions
from detector.roi_pool import RoIPool
from detector.structures import BACKGROUND, Targets


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


class Predictor(nn.Module):
    """(R, dim) -> class logits (R, K+1) and class-specific deltas (R, 4K) for the K foreground classes."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_logits = nn.Linear(dim, num_classes + 1)
        self.box_deltas = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.cls_logits.bias)
        nn.init.zeros_(self.box_deltas.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_logits(x), self.box_deltas(x)


class RoIHeads(nn.Module):
    """Pools proposals, runs the box head, and owns its target assignment, loss and postprocessing."""

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
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.num_classes = num_classes
        self.matcher = Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_per_image, positive_fraction)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.box_loss = box_loss
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
        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            sampled, gt_labels, gt_deltas = self.sample_proposals(proposals_per_image, targets)
            cls_logits, pred_deltas = self.predictor(self.box_head(self.pooler(features, sampled)))
            losses = self.compute_loss(cls_logits, pred_deltas, gt_labels, gt_deltas, torch.cat(sampled))
            if self.training:
                return [], losses
        cls_logits, pred_deltas = self.predictor(self.box_head(self.pooler(features, proposals_per_image)))
        return self.postprocess(cls_logits, pred_deltas, proposals_per_image, image_sizes), losses

    @torch.no_grad()
    def sample_proposals(
        self, proposals_per_image: list[torch.Tensor], targets: list[Targets]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Adds gt boxes to the proposals, matches and samples them.

        Returns sampled proposals per image (S_i, 4), their labels (sum S_i,) in 0..K and
        regression targets (sum S_i, 4) (zeros for background).
        """
        sampled, labels, deltas = [], [], []
        for proposals, target in zip(proposals_per_image, targets):
            gt_boxes, gt_labels = target.boxes.to(proposals), target.labels.to(proposals.device)
            proposals = torch.cat([proposals.detach(), gt_boxes])
            if len(gt_boxes):
                matched = self.matcher(box_iou(gt_boxes, proposals))
            else:
                matched = torch.full((len(proposals),), Matcher.BACKGROUND, dtype=torch.int64, device=proposals.device)
            # 1 foreground, 0 background, -1 neither (between thresholds, or background inside an ignore region)
            sample_labels = (matched >= 0).long()
            if len(target.ignore):
                inside = ignored_by_regions(proposals, target.ignore.to(proposals))
                sample_labels[(matched < 0) & inside] = -1
            sample_labels[matched == Matcher.IGNORE] = -1
            positive, negative = self.sampler(sample_labels)
            keep = positive | negative
            fg = positive[keep]
            image_labels = torch.zeros(int(keep.sum()), dtype=torch.int64, device=proposals.device)
            image_deltas = torch.zeros((int(keep.sum()), 4), device=proposals.device)
            if len(gt_boxes):
                fg_matched = matched[keep][fg]
                image_labels[fg] = gt_labels[fg_matched]
                image_deltas[fg] = self.box_coder.encode(gt_boxes[fg_matched], proposals[keep][fg])
            sampled.append(proposals[keep])
            labels.append(image_labels)
            deltas.append(image_deltas)
        return sampled, torch.cat(labels), torch.cat(deltas)

    def compute_loss(
        self,
        cls_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_deltas: torch.Tensor,
        proposals: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """roi_cls: cross-entropy over all sampled ROIs; roi_box: the box loss over foreground ROIs,
        normalized by the number of sampled ROIs (so an image without boxes gives exactly 0)."""
        roi_cls = F.cross_entropy(cls_logits.float(), gt_labels)
        fg = torch.nonzero(gt_labels > BACKGROUND).squeeze(1)
        # (R, 4K) -> (R, K, 4): pick each foreground ROI's deltas for its gt class
        fg_pred_deltas = pred_deltas.reshape(len(pred_deltas), -1, 4)[fg, gt_labels[fg] - 1].float()
        if self.box_loss == "giou":
            pred_boxes = self.box_coder.decode(fg_pred_deltas, proposals[fg])
            gt_boxes = self.box_coder.decode(gt_deltas[fg], proposals[fg])
            roi_box = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum")
        else:
            roi_box = F.smooth_l1_loss(fg_pred_deltas, gt_deltas[fg], beta=1.0 / 9, reduction="sum")
        # keeps the graph connected (and the value exactly 0) when there is no foreground ROI
        roi_box = roi_box / max(len(gt_labels), 1) + 0.0 * pred_deltas.sum()
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
        scores_all = F.softmax(cls_logits.float(), dim=1)
        boxes_all = self.box_coder.decode(pred_deltas.float(), torch.cat(proposals_per_image).float())
        results = []
        counts = [len(p) for p in proposals_per_image]
        for scores, boxes, size in zip(scores_all.split(counts), boxes_all.split(counts), image_sizes):
            # (R, 4K) -> (R, K, 4) -> (R*K, 4), class-major within each ROI
            boxes = clip_boxes(boxes.reshape(len(boxes), -1, 4), size).reshape(-1, 4)
            labels = torch.arange(1, self.num_classes + 1, device=boxes.device).repeat(len(scores))
            scores = scores[:, 1:].reshape(-1)
            keep = (scores > self.score_thresh) & nondegenerate(boxes)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
