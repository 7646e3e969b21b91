"""Stage 2: the region proposal network (Faster R-CNN).

A small head slides over every feature level and, for each of the A anchors of every cell, predicts
an objectness logit and box deltas. Training assigns anchors to gt boxes (``assign_targets_per_image``),
samples a balanced set and scores it (``compute_loss``); every forward also turns the predictions into
proposals (``filter_proposals``). Boxes are (P, 4) float32 xyxy in input pixels (the coordinates of
``ImageBatch.images``).

Shapes:
    N: images in the batch            A: anchors per feature-map cell (sizes x ratios per level)
    T: anchors of an image, over all levels (sum of H_l * W_l * A)
    M: ground-truth boxes of an image  P: proposals of an image (after NMS, <= post_nms_top_n)
    H_l, W_l: height and width of feature level l
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder, clip_boxes, nondegenerate
from detector.matching import BalancedSampler, Matcher, ignored_by_regions
from detector.structures import ImageBatch, Targets

__all__ = ["RPN", "RPNHead", "flatten_head_outputs"]

# An anchor more than half inside an ignore region (and not positive) is neither positive nor negative.
IGNORE_IOA_THRESHOLD = 0.5
# Smooth L1 switches from quadratic to linear at |x| = 1/9, as in Faster R-CNN's RPN.
SMOOTH_L1_BETA = 1.0 / 9.0


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and A*4 deltas; shared over levels.

    Weights start from N(0, 0.01) and zero bias, so initial deltas are ~0 (proposals start as the
    anchors) and objectness is ~0.5 everywhere.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0.0)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """features: per level (N, C, H, W) -> (objectness logits (N, A, H, W), deltas (N, A*4, H, W)) per level."""
        objectness_logits, pred_deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            objectness_logits.append(self.objectness(hidden))
            pred_deltas.append(self.deltas(hidden))
        return objectness_logits, pred_deltas


def flatten_head_outputs(
    objectness_logits: list[torch.Tensor], pred_deltas: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per level (N, A, H, W) logits and (N, A*4, H, W) deltas -> (N, T) logits and (N, T, 4) deltas.

    T = sum over levels of H*W*A, ordered (level, y, x, a) like ``AnchorGenerator``'s anchors.
    """
    flat_logits, flat_deltas = [], []
    for logits, deltas in zip(objectness_logits, pred_deltas):
        n, a, h, w = logits.shape
        # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
        flat_logits.append(logits.permute(0, 2, 3, 1).reshape(n, -1))
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
        flat_deltas.append(deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RPN(nn.Module):
    """Region proposal network: a proposal source with a learned head and its own loss.

    fg_iou / bg_iou: anchors with IoU >= fg_iou with a gt are positives, < bg_iou with every gt negatives
    (each gt's best anchors are positives too); batch_per_image anchors are sampled per image, at most
    positive_fraction of them positive. pre_nms_top_n (per level) and post_nms_top_n (per image) are
    (train, test) pairs picked by ``self.training``; proposals narrower or shorter than min_size pixels
    are dropped; nms_thresh is the IoU above which NMS suppresses a proposal (per level).
    """

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        fg_iou: float = 0.7,
        bg_iou: float = 0.3,
        batch_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (1000, 300),
        nms_thresh: float = 0.7,
        min_size: float = 1.0,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_per_image, positive_fraction)
        self.pre_nms_top_n = tuple(pre_nms_top_n)
        self.post_nms_top_n = tuple(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        # RPN deltas are unweighted: anchors are already close in scale to what they regress to.
        self.box_coder = box_coder if box_coder is not None else BoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(
        self, batch: ImageBatch, features: list[torch.Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals per image (P_i, 4) xyxy in input pixels (detached), and the loss dict.

        features: the backbone's maps, fine to coarse, (N, C, H_l, W_l). Losses
        {rpn_objectness, rpn_box} are computed whenever targets are given, empty otherwise.
        """
        if targets is not None and len(targets) != len(batch):
            raise ValueError(f"RPN: got {len(targets)} targets for a batch of {len(batch)} images")
        objectness_per_level, deltas_per_level = self.head(features)
        anchors_per_level = self.anchor_generator(features)
        anchors = torch.cat(anchors_per_level).float()  # (T, 4)
        objectness_logits, pred_deltas = flatten_head_outputs(objectness_per_level, deltas_per_level)
        proposals, _ = self.filter_proposals(
            objectness_logits.detach(), pred_deltas.detach(), anchors, anchor_levels(anchors_per_level), batch.image_sizes
        )
        if targets is None:
            return proposals, {}
        assigned = [self.assign_targets_per_image(anchors, target) for target in targets]
        gt_labels = torch.stack([image_labels for image_labels, _ in assigned])  # (N, T)
        matched_gt_boxes = torch.stack([boxes for _, boxes in assigned])  # (N, T, 4)
        return proposals, self.compute_loss(objectness_logits, pred_deltas, anchors, gt_labels, matched_gt_boxes)

    @torch.no_grad()
    def assign_targets_per_image(self, anchors: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """anchors: (T, 4) xyxy -> labels (T,) int64 (1 positive, 0 negative, -1 ignored) and
        matched gt boxes (T, 4) xyxy (the matched gt for positives, zeros elsewhere).

        Anchors between bg_iou and fg_iou, and non-positive anchors more than half inside an ignore
        region, are ignored. An image without boxes has only negatives (and ignored anchors).
        """
        gt_boxes = targets.boxes.to(anchors)
        matches = self.matcher(box_iou(gt_boxes, anchors))  # (T,)
        labels = (matches >= 0).to(torch.int64)
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
        labels[(labels != 1) & ignored_by_regions(anchors, targets.ignore.to(anchors), IGNORE_IOA_THRESHOLD)] = -1
        matched_gt_boxes = torch.zeros_like(anchors)
        positive = matches >= 0
        matched_gt_boxes[positive] = gt_boxes[matches[positive]]
        return labels, matched_gt_boxes

    def compute_loss(
        self,
        objectness_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        gt_labels: torch.Tensor,
        matched_gt_boxes: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Losses over a balanced sample of anchors from every image.

        objectness_logits: (N, T); pred_deltas: (N, T, 4); anchors: (T, 4) xyxy; gt_labels: (N, T) in {1, 0, -1};
        matched_gt_boxes: (N, T, 4) xyxy. rpn_objectness is the BCE-with-logits mean over sampled anchors;
        rpn_box the smooth L1 (beta 1/9) sum over positives divided by the number of sampled anchors, so it
        is exactly 0 (and still differentiable) for a batch without positives.
        """
        sampled = [self.sampler(image_labels) for image_labels in gt_labels]
        pos_mask = torch.stack([pos for pos, _ in sampled])  # (N, T)
        sampled_mask = pos_mask | torch.stack([neg for _, neg in sampled])  # (N, T)
        num_sampled = max(int(sampled_mask.sum()), 1)  # an image whose anchors are all ignored samples nothing
        objectness = F.binary_cross_entropy_with_logits(
            objectness_logits[sampled_mask].float(), pos_mask[sampled_mask].float(), reduction="sum"
        )
        positive_anchors = anchors.expand_as(matched_gt_boxes)[pos_mask]  # (P, 4)
        gt_deltas = self.box_coder.encode(matched_gt_boxes[pos_mask], positive_anchors)  # (P, 4)
        box = F.smooth_l1_loss(pred_deltas[pos_mask].float(), gt_deltas, beta=SMOOTH_L1_BETA, reduction="sum")
        return {"rpn_objectness": objectness / num_sampled, "rpn_box": box / num_sampled}

    @torch.no_grad()
    def filter_proposals(
        self,
        objectness_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        levels: torch.Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Decoded, clipped, size-filtered, top-N, NMS'd proposals per image.

        objectness_logits: (N, T); pred_deltas: (N, T, 4); anchors: (T, 4) xyxy; levels: (T,) int64 feature level
        of each anchor (`anchor_levels`); image_sizes: per image (height, width) before padding. Returns proposals
        (P_i, 4) xyxy inside their image and their objectness scores (P_i,) in [0, 1], sorted by decreasing score,
        P_i <= post_nms_top_n. Written for tracing too (detector.export_graph): sizes stay tensors.
        """
        mode = 0 if self.training else 1
        num_images, num_anchors = objectness_logits.shape
        # (N, T, 4) -> (N*T, 4) to decode every image against the shared anchors, -> (N, T, 4)
        decoded = self.box_coder.decode(pred_deltas.float().reshape(-1, 4), anchors.repeat(num_images, 1))
        decoded = decoded.reshape(num_images, num_anchors, 4)
        num_levels = len(self.anchor_generator.strides)
        proposals, scores = [], []
        for boxes, logits, image_size in zip(decoded, objectness_logits.float(), image_sizes):
            boxes = clip_boxes(boxes, image_size)
            keep = self._large_enough(boxes)
            keep = keep[_top_n_per_level(logits[keep], levels[keep], self.pre_nms_top_n[mode], num_levels)]
            keep = keep[batched_nms(boxes[keep], logits[keep], levels[keep], self.nms_thresh)]
            keep = keep[: self.post_nms_top_n[mode]]  # batched_nms sorts by decreasing score
            proposals.append(boxes[keep])
            scores.append(torch.sigmoid(logits[keep]))
        return proposals, scores

    def _large_enough(self, boxes: torch.Tensor) -> torch.Tensor:
        """Indices of (T, 4) xyxy boxes at least min_size wide and high (and never zero-area)."""
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        large = nondegenerate(boxes) & (widths >= self.min_size) & (heights >= self.min_size)
        return torch.nonzero(large & torch.isfinite(boxes).all(dim=1)).flatten()


def anchor_levels(anchors_per_level: list[torch.Tensor]) -> torch.Tensor:
    """Per level (T_l, 4) anchors -> (T,) int64: the level of each anchor of their concatenation."""
    return torch.cat([torch.full_like(anchors[:, 0], level, dtype=torch.int64)
                      for level, anchors in enumerate(anchors_per_level)])


def _top_n_per_level(scores: torch.Tensor, levels: torch.Tensor, top_n: int, num_levels: int) -> torch.Tensor:
    """Indices into (K,) scores of the top_n highest of each level (levels: (K,) ids in 0..num_levels-1).

    Per level rather than overall so the many fine-level anchors cannot crowd out the coarse levels
    that find large objects. A sort and a slice rather than topk(min(top_n, count)): the count of a level is
    data, and under tracing (ONNX export) it would be frozen at the traced image's.
    """
    kept = []
    for level in range(num_levels):
        in_level = torch.nonzero(levels == level).flatten()
        kept.append(in_level[scores[in_level].argsort(descending=True)[:top_n]])
    return torch.cat(kept)
