"""The skeleton: preprocess -> backbone -> proposals -> roi_pool -> box head -> postprocess.

`FastRCNN.forward(images, targets)` returns a dict of stage-named losses; `FastRCNN.predict(images)`
returns `list[Detections]` in original image coordinates. Geometry (resizing, augmentation) happens in
the data transforms: the model only normalizes, pads to a stride multiple and rescales boxes back.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from detector.anchors import AnchorGenerator
from detector.backbone import Backbone, build_backbone
from detector.cascade import CascadeRoIHeads
from detector.config import Config, ModelConfig
from detector.proposals import FileProposals, SelectiveSearchProposals
from detector.roi_heads import C4Head, ConvHead, FCHead, Predictor, RoIHeads
from detector.roi_pool import RoIPool
from detector.rpn import RPN, RPNHead
from detector.structures import Detections, DetectorError, ImageBatch, Targets


class FastRCNN(nn.Module):
    """A Fast R-CNN detector whose proposals come from an RPN, selective search or a file."""

    def __init__(
        self,
        backbone: Backbone,
        proposal_source: nn.Module,
        roi_heads: RoIHeads | CascadeRoIHeads,
        class_names: list[str],
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_source = proposal_source
        self.roi_heads = roi_heads
        self.class_names = list(class_names)
        self.size_divisible = size_divisible
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(
        self,
        images: list[torch.Tensor],
        original_sizes: list[tuple[int, int]] | None = None,
        proposals: list[torch.Tensor] | None = None,
    ) -> ImageBatch:
        """Normalize (3, h, w) images in [0, 1] and zero-pad them into one (N, 3, H, W) batch,
        H and W the largest sizes rounded up to a multiple of `size_divisible`."""
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        height = math.ceil(max(h for h, _ in sizes) / self.size_divisible) * self.size_divisible
        width = math.ceil(max(w for _, w in sizes) / self.size_divisible) * self.size_divisible
        batch = torch.stack([
            F.pad((image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std,
                  (0, width - w, 0, height - h))
            for image, (h, w) in zip(images, sizes)
        ])
        if proposals is not None:
            proposals = [p.to(self.device, torch.float32) for p in proposals]
        return ImageBatch(batch, sizes, list(original_sizes or sizes), proposals)

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[Targets],
        proposals: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for a batch: {rpn_objectness, rpn_box (RPN only), roi_cls, roi_box}.

        images: list of (3, h, w) float in [0, 1]; targets: per image, boxes in the same pixels."""
        batch = self.preprocess(images, proposals=proposals)
        return self._heads(batch, self.backbone(batch.images), targets)[1]

    def _heads(self, batch: ImageBatch, features: list[torch.Tensor], targets: list[Targets] | None
               ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Proposals then ROI heads, each run once: (per-image results in input pixels, [] when training; the
        losses, {} without targets)."""
        targets = [t.to(self.device) for t in targets] if targets is not None else None
        proposals_per_image, proposal_losses = self.proposal_source(batch, features, targets)
        results, roi_losses = self.roi_heads(features, proposals_per_image, batch.image_sizes, targets)
        return results, {**proposal_losses, **roi_losses}

    @torch.no_grad()
    def predict(
        self,
        images: list[torch.Tensor],
        original_sizes: list[tuple[int, int]] | None = None,
        proposals: list[torch.Tensor] | None = None,
    ) -> list[Detections]:
        """Detections per image, boxes in original image pixels ((3, h, w) inputs were resized from
        `original_sizes`, default: not resized)."""
        batch = self.preprocess(images, original_sizes, proposals)
        return self.postprocess(self._heads(batch, self.backbone(batch.images), None)[0], batch)

    @torch.no_grad()
    def predict_with_losses(
        self,
        images: list[torch.Tensor],
        targets: list[Targets],
        original_sizes: list[tuple[int, int]] | None = None,
        proposals: list[torch.Tensor] | None = None,
    ) -> tuple[list[Detections], dict[str, torch.Tensor]]:
        """`predict` and `forward`'s losses (targets in the input pixels), for validation: one pass of the backbone
        and of the proposal stage; the ROI heads give detections and losses from one call (in eval mode)."""
        if self.training:
            raise RuntimeError("predict_with_losses is for evaluation: call model.eval() first")
        batch = self.preprocess(images, original_sizes, proposals)
        results, losses = self._heads(batch, self.backbone(batch.images), targets)
        return self.postprocess(results, batch), losses

    def postprocess(self, results: list[dict[str, torch.Tensor]], batch: ImageBatch) -> list[Detections]:
        """Rescale boxes from input pixels to original image pixels."""
        detections = []
        for result, (h, w), (orig_h, orig_w) in zip(results, batch.image_sizes, batch.original_sizes):
            scale = torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h], device=result["boxes"].device)
            detections.append(Detections(result["boxes"] * scale, result["scores"], result["labels"], self.class_names))
        return detections


def build_proposal_source(config: Config, backbone: Backbone) -> nn.Module:
    """The proposal stage chosen by `model.proposals`."""
    model = config.model
    if model.proposals == "selective_search":
        return SelectiveSearchProposals(
            mode=model.selective_search_mode, max_proposals=model.selective_search_max,
            pixel_mean=backbone.pixel_mean, pixel_std=backbone.pixel_std,
        )
    if model.proposals == "file":
        return FileProposals(max_proposals=model.selective_search_max)
    try:
        anchors = AnchorGenerator(tuple(model.anchor_sizes), tuple(model.anchor_ratios), backbone.strides)
    except ValueError as error:
        raise DetectorError(
            f"config key 'model.anchor_sizes' does not fit the backbone's {len(backbone.strides)} feature level(s) "
            f"(strides {backbone.strides}): give one size per level, or any sizes for a single level ({error})"
        ) from None
    return RPN(
        RPNHead(backbone.out_channels, anchors.num_anchors_per_location),
        anchors,
        fg_iou=model.rpn_fg_iou,
        bg_iou=model.rpn_bg_iou,
        batch_per_image=model.rpn_batch_per_image,
        positive_fraction=model.rpn_positive_fraction,
        pre_nms_top_n=(model.rpn_pre_nms_top_n_train, model.rpn_pre_nms_top_n_test),
        post_nms_top_n=(model.rpn_post_nms_top_n_train, model.rpn_post_nms_top_n_test),
        nms_thresh=model.rpn_nms_thresh,
    )


@torch.no_grad()
def _output_channels(stage: nn.Module, in_channels: int) -> int:
    """Channels a stage outputs, from a dry run in eval mode (training modes restored)."""
    modes = [(m, m.training) for m in stage.modules()]
    channels = stage.eval()(torch.zeros(1, in_channels, 32, 32)).shape[1]
    for module, mode in modes:
        module.train(mode)
    return int(channels)


def build_c4_stage(model: ModelConfig, backbone: Backbone, pretrained: bool) -> tuple[nn.Module, int]:
    """A fresh copy of the backbone's stride-32 stage (the blocks after its stride-16 output) with its ImageNet
    weights, and its output channels, for `C4Head`."""
    if model.fpn:
        raise DetectorError("config key 'model.head' is 'c4', which runs the backbone's stride-32 stage on "
                            "stride-16 features and so needs model.fpn false (use head fc or conv with an FPN)")
    # fpn=True keeps every stage up to stride 32, with the same weights: take the stages after the stride-16 one
    full = build_backbone(model.backbone, weights=model.weights if pretrained else "none",
                          freeze_stages=0, frozen_bn=model.frozen_bn, fpn=True)
    names = list(full.stages)
    last = names[names.index(backbone.return_stages[-1]) + 1: names.index(full.return_stages[-1]) + 1]
    stage = nn.Sequential(*(full.stages[name] for name in last))
    if not any(p.numel() for p in stage.parameters()):
        raise DetectorError(f"config key 'model.head' is 'c4', but {model.backbone}'s stride-32 stage "
                            f"({', '.join(last)}) has no pretrained layers to reuse; use head fc or conv")
    return stage, _output_channels(stage, backbone.out_channels)


def build_roi_heads(model: ModelConfig, backbone: Backbone, pretrained: bool) -> RoIHeads | CascadeRoIHeads:
    """The box head(s) chosen by `model.head`, single-stage or, with `model.cascade_ious`, one per cascade stage."""
    num_stages = max(len(model.cascade_ious), 1)
    output_size = (model.roi_output_size[0], model.roi_output_size[1])
    if model.head == "c4":
        # pooled at twice the grid: the stage's stride 2 brings it back to output_size
        pool_size = (2 * output_size[0], 2 * output_size[1])
        stage, out_dim = build_c4_stage(model, backbone, pretrained)
        box_heads = [C4Head(copy.deepcopy(stage), out_dim) for _ in range(num_stages)]
    else:
        pool_size = output_size
        head_type = ConvHead if model.head == "conv" else FCHead
        box_heads = [head_type(backbone.out_channels, output_size, model.head_dim) for _ in range(num_stages)]
    pooler = RoIPool(pool_size, [1.0 / s for s in backbone.strides], model.roi_pool_mode, model.roi_sampling_ratio)
    num_classes = len(model.class_names)
    shared = dict(
        batch_per_image=model.roi_batch_per_image,
        positive_fraction=model.roi_positive_fraction,
        box_loss=model.box_loss,
        box_loss_weight=model.box_loss_weight,
        score_thresh=model.score_thresh,
        nms_thresh=model.nms_thresh,
        detections_per_image=model.detections_per_image,
    )
    if model.cascade_ious:
        predictors = [Predictor(head.out_dim, num_classes, class_agnostic=True) for head in box_heads]
        return CascadeRoIHeads(pooler, box_heads, predictors, num_classes, model.cascade_ious, **shared)
    predictor = Predictor(box_heads[0].out_dim, num_classes)
    return RoIHeads(pooler, box_heads[0], predictor, num_classes, fg_iou=model.roi_fg_iou, **shared)


def build_detector(config: Config, pretrained: bool = True) -> FastRCNN:
    """Map the config to constructors. `pretrained=False` skips loading ImageNet weights
    (used when a checkpoint will overwrite them anyway)."""
    model = config.model
    for iou in model.cascade_ious:  # before the slow part: config.validate does not know this key's range
        if not 0.0 < iou <= 1.0:
            raise DetectorError(f"config key 'model.cascade_ious' holds {iou}; every IoU must be in (0, 1]")
    backbone = build_backbone(
        model.backbone,
        weights=model.weights if pretrained else "none",
        freeze_stages=model.freeze_stages,
        frozen_bn=model.frozen_bn,
        fpn=model.fpn,
        fpn_channels=model.fpn_channels,
    )
    roi_heads = build_roi_heads(model, backbone, pretrained)
    size_divisible = max(32, max(backbone.strides))
    return FastRCNN(backbone, build_proposal_source(config, backbone), roi_heads, model.class_names, size_divisible)
