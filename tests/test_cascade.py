"""Cascade R-CNN heads: stage losses and weights, zero-box and fully ignored images, stage-to-stage boxes,
inference, and an overfit run of the whole cascade detector on one synthetic image."""

from __future__ import annotations

import pytest
import torch

from detector.boxes import box_iou
from detector.cascade import CascadeRoIHeads, stage_box_coder_weights
from detector.config import load_config
from detector.detector import build_detector
from detector.roi_heads import BOX_LOSS_WEIGHTS, FCHead, Predictor, RoIHeads
from detector.roi_pool import RoIPool
from detector.structures import DetectorError, Targets

CASCADE = "model.cascade_ious=[0.5,0.6,0.7]"
SMALL = ["model.weights=none", "model.head_dim=64", "model.rpn_post_nms_top_n_train=64", "model.roi_batch_per_image=32"]
STAGE_KEYS = {"roi_cls", "roi_box", "roi_cls_stage2", "roi_box_stage2", "roi_cls_stage3", "roi_box_stage3"}


def _tiny_cascade(box_loss: str = "smooth_l1", ious: tuple[float, ...] = (0.5, 0.6, 0.7)) -> CascadeRoIHeads:
    torch.manual_seed(0)
    heads = [FCHead(8, (2, 2), 16) for _ in ious]
    predictors = [Predictor(16, 1, class_agnostic=True) for _ in ious]
    return CascadeRoIHeads(RoIPool((2, 2), [1 / 8], "align"), heads, predictors, 1, list(ious),
                           batch_per_image=16, box_loss=box_loss)


PROPOSALS = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [10.0, 10.0, 60.0, 50.0], [40.0, 8.0, 90.0, 60.0],
                           [14.0, 10.0, 56.0, 52.0]])]


def test_stage_coders_and_loss_weights() -> None:
    cascade = _tiny_cascade()
    assert [c.weights for c in cascade.box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert stage_box_coder_weights(0) == (10.0, 10.0, 5.0, 5.0)
    assert cascade.stage_loss_weights == [1.0, 0.5, 0.25]
    assert [m.high_threshold for m in cascade.matchers] == [0.5, 0.6, 0.7]
    assert cascade.box_loss_weight == BOX_LOSS_WEIGHTS["smooth_l1"]


def test_stage_losses_are_weighted_stage_losses() -> None:
    """With every ROI sampled, stage 1's losses equal a single-stage head's with the same head and agnostic deltas."""
    cascade = _tiny_cascade().train()
    features = [torch.randn(1, 8, 8, 12)]
    target = Targets(torch.tensor([[12.0, 8.0, 58.0, 50.0]]), torch.tensor([1]), (64, 96))
    torch.manual_seed(3)
    _, losses = cascade(features, PROPOSALS, [(64, 96)], [target])
    assert set(losses) == STAGE_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    single = RoIHeads(cascade.pooler, cascade.box_heads[0], cascade.predictors[0], 1, batch_per_image=16)
    torch.manual_seed(3)
    _, expected = single(features, PROPOSALS, [(64, 96)], [target])
    assert losses["roi_cls"].item() == pytest.approx(expected["roi_cls"].item())
    assert losses["roi_box"].item() == pytest.approx(expected["roi_box"].item())


@pytest.mark.parametrize("kind", list(BOX_LOSS_WEIGHTS))
def test_image_without_boxes_gives_zero_box_loss_in_every_stage(kind: str) -> None:
    cascade = _tiny_cascade(kind).train()
    features = [torch.randn(1, 8, 8, 12, requires_grad=True)]
    empty = Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), (64, 96))
    _, losses = cascade(features, PROPOSALS, [(64, 96)], [empty])
    assert set(losses) == STAGE_KEYS
    for key in ("roi_box", "roi_box_stage2", "roi_box_stage3"):
        assert losses[key].item() == 0.0, key
    for key in ("roi_cls", "roi_cls_stage2", "roi_cls_stage3"):
        assert losses[key].item() > 0, key
    sum(losses.values()).backward()
    for predictor in cascade.predictors:
        assert predictor.box_deltas.weight.grad is not None
        assert predictor.box_deltas.weight.grad.abs().sum().item() == 0.0
    assert features[0].grad is not None


def test_ignored_everywhere_trains_nothing_in_any_stage() -> None:
    """An image without boxes whose ignore region covers it: no stage samples a ROI, every loss is exactly 0."""
    cascade = _tiny_cascade().train()
    features = [torch.randn(1, 8, 8, 12, requires_grad=True)]
    ignored = Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), (64, 96),
                      ignore=torch.tensor([[0.0, 0.0, 96.0, 64.0]]))
    _, losses = cascade(features, PROPOSALS, [(64, 96)], [ignored])
    assert {k: v.item() for k, v in losses.items()} == dict.fromkeys(STAGE_KEYS, 0.0)
    sum(losses.values()).backward()


def test_next_stage_boxes_drop_gt_and_empty_boxes_and_clip() -> None:
    cascade = _tiny_cascade()
    sampled = [torch.tensor([[10.0, 10.0, 20.0, 20.0], [90.0, 10.0, 100.0, 20.0], [100.0, 0.0, 110.0, 10.0],
                             [12.0, 8.0, 58.0, 50.0]])]
    from_gt = [torch.tensor([False, False, False, True])]
    deltas = torch.zeros(4, 4)
    deltas[0, 0] = 10.0 * 0.5  # stage 1 coder: half a width to the right
    boxes = cascade._next_stage_boxes(0, deltas, sampled, from_gt, [(64, 96)])
    # the gt box goes (the next stage adds it again); (100, 0, 110, 10) is clipped to nothing and goes
    assert boxes[0].tolist() == [[15.0, 10.0, 25.0, 20.0], [90.0, 10.0, 96.0, 20.0]]


def test_inference_scores_average_stages_and_boxes_come_from_the_last_stage() -> None:
    """Zeroed predictors: stage 1 moves every box right by half its width (coder (10, 10, 5, 5)), stage 2 by a
    quarter of the new width (coder (20, 20, 10, 10)); scores: stage 1 says 0.5, stage 2 says ~0.88 on average."""
    cascade = _tiny_cascade(ious=(0.5, 0.6)).eval()
    for predictor in cascade.predictors:
        for p in predictor.parameters():
            torch.nn.init.zeros_(p)
    cascade.predictors[0].box_deltas.bias.data[0] = 10.0 * 0.5
    cascade.predictors[1].box_deltas.bias.data[0] = 20.0 * 0.25
    cascade.predictors[1].cls_logits.bias.data[1] = 2.0  # softmax([0, 2])[1] = 0.8808
    cascade.score_thresh = 0.0
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 50.0]])]
    (result,), losses = cascade([torch.randn(1, 8, 8, 12)], proposals, [(64, 96)])
    assert losses == {}
    assert result["boxes"].tolist() == [[pytest.approx(v) for v in (25.0, 10.0, 45.0, 50.0)]]
    expected = (0.5 + torch.softmax(torch.tensor([0.0, 2.0]), 0)[1].item()) / 2
    assert result["scores"].tolist() == [pytest.approx(expected)]
    assert result["labels"].tolist() == [1]


def test_empty_cascade_keeps_the_single_stage_model(tiny_images) -> None:
    """cascade_ious=[] builds today's model: the same state-dict keys and the same outputs for the same seed."""
    torch.manual_seed(0)
    default = build_detector(load_config(None, SMALL)).eval()
    torch.manual_seed(0)
    explicit = build_detector(load_config(None, [*SMALL, "model.cascade_ious=[]"])).eval()
    assert isinstance(explicit.roi_heads, RoIHeads)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert "roi_heads.predictor.box_deltas.weight" in default.state_dict()
    for a, b in zip(default.predict(list(tiny_images)), explicit.predict(list(tiny_images)), strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    torch.manual_seed(0)
    cascade = build_detector(load_config(None, [*SMALL, CASCADE]))
    keys = set(cascade.state_dict())
    assert {"roi_heads.box_heads.2.fc1.weight", "roi_heads.predictors.2.box_deltas.weight"} <= keys
    assert cascade.roi_heads.predictors[0].box_deltas.out_features == 4  # class-agnostic


def test_bad_cascade_iou_fails_clearly() -> None:
    with pytest.raises(DetectorError, match="model.cascade_ious"):
        build_detector(load_config(None, [*SMALL, "model.cascade_ious=[0.5,1.5]"]))


def test_cascade_detector_zero_box_image(tiny_images, tiny_targets) -> None:
    torch.manual_seed(0)
    model = build_detector(load_config(None, [*SMALL, CASCADE])).train()
    losses = model([tiny_images[1]], [tiny_targets[1]])
    assert set(losses) == STAGE_KEYS | {"rpn_objectness", "rpn_box"}
    for key in ("rpn_box", "roi_box", "roi_box_stage2", "roi_box_stage3"):
        assert losses[key].item() == 0.0, key
    sum(losses.values()).backward()


def test_cascade_detector_overfits_one_image(tiny_images, tiny_targets) -> None:
    """60 steps on the conftest image (backbone frozen): the loss falls 5x and the box is found at IoU > 0.7."""
    torch.manual_seed(0)
    model = build_detector(load_config(None, [
        CASCADE, "model.freeze_stages=6", "model.anchor_sizes=[16,32,64]", "model.head_dim=64",
        "model.rpn_post_nms_top_n_train=64", "model.roi_batch_per_image=32",
    ])).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0)
    history = []
    for _ in range(60):
        losses = model([tiny_images[0]], [tiny_targets[0]])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    total = [sum(row.values()) for row in history]
    final = sum(total[-10:]) / 10  # ROI sampling is random each step: average out its noise
    assert final < total[0] / 5, (total[0], final)
    for key in ("roi_cls", "roi_cls_stage2", "roi_cls_stage3"):
        assert sum(row[key] for row in history[-10:]) / 10 < history[0][key] / 5, key
    model.eval()
    (detections,) = model.predict([tiny_images[0]])
    assert len(detections) > 0
    assert box_iou(tiny_targets[0].boxes, detections.boxes[:1]).item() > 0.7
