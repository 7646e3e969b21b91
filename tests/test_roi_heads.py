"""ROI heads: hand-computed box losses, zero-box images, target assignment with ignore regions, and the c4 head."""

from __future__ import annotations

import math

import pytest
import torch

from detector.backbone import build_imagenet_classifier
from detector.boxes import BoxCoder
from detector.config import load_config
from detector.detector import build_detector
from detector.matching import BalancedSampler, Matcher
from detector.roi_heads import (
    BOX_LOSS_WEIGHTS,
    C4Head,
    FCHead,
    Predictor,
    RoIHeads,
    box_regression_loss,
    fast_rcnn_losses,
    label_and_sample,
)
from detector.roi_pool import RoIPool
from detector.structures import DetectorError, Targets

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))
PROPOSAL = [0.0, 0.0, 10.0, 10.0]  # the prediction too: every case predicts zero deltas


def _ciou_taller() -> float:
    """CIoU loss of (0, 0, 10, 10) vs (0, 0, 10, 20): 1 - IoU + d^2 / c^2 + alpha * v."""
    iou = 100 / 200
    distance = 25 / 500  # centres (5, 5) and (5, 10); enclosing box (0, 0, 10, 20): diagonal^2 = 100 + 400
    v = 4 / math.pi**2 * (math.atan(10 / 20) - math.atan(10 / 10)) ** 2
    return 1 - iou + distance + v / (1 - iou + v) * v


# (gt box, its deltas against PROPOSAL by hand, {loss: value of the summed loss for zero predicted deltas})
CASES = [
    # shifted 2 px right and down: dx = 10 * 2 / 10, dy likewise, same size.
    # IoU = 64 / (100 + 100 - 64) = 8/17; enclosing (0, 0, 12, 12) = 144 px; centres 2*sqrt(2) apart, diagonal^2 288
    ([2.0, 2.0, 12.0, 12.0], [2.0, 2.0, 0.0, 0.0], {
        "smooth_l1": 2 * (2 - 1 / 18),  # |x| - beta / 2 with beta = 1/9, twice
        "l1": 4.0,
        "giou": 1 - 8 / 17 + (144 - 136) / 144,
        "diou": 1 - 8 / 17 + 8 / 288,
        "ciou": 1 - 8 / 17 + 8 / 288,  # same aspect ratio: v = 0
    }),
    # twice as tall: dy = 10 * 5 / 10, dh = 5 * ln 2. Union = enclosing box = 200 px, IoU 1/2
    ([0.0, 0.0, 10.0, 20.0], [0.0, 5.0, 0.0, 5 * math.log(2)], {
        "smooth_l1": (5 - 1 / 18) + (5 * math.log(2) - 1 / 18),
        "l1": 5 + 5 * math.log(2),
        "giou": 0.5,
        "diou": 0.5 + 25 / 500,
        "ciou": _ciou_taller(),
    }),
]


@pytest.mark.parametrize("gt_box, gt_deltas, expected", CASES)
def test_box_losses_hand_computed(gt_box, gt_deltas, expected) -> None:
    proposals, gt = torch.tensor([PROPOSAL]), torch.tensor([gt_box])
    deltas = CODER.encode(gt, proposals)
    assert deltas[0].tolist() == pytest.approx(gt_deltas, abs=1e-5)
    for kind, value in expected.items():
        loss = box_regression_loss(kind, torch.zeros(1, 4), deltas, proposals, CODER)
        assert loss.item() == pytest.approx(value, rel=1e-5), kind


@pytest.mark.parametrize("kind", list(BOX_LOSS_WEIGHTS))
@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_fast_rcnn_losses_normalize_by_sampled_rois_and_weight(kind: str, weight: float) -> None:
    """One foreground and one background ROI, K = 2, the foreground of class 2: the box loss reads class 2's
    deltas (class 1's are wrong on purpose), is divided by the 2 sampled ROIs and multiplied by the weight."""
    gt_box, gt_deltas, expected = CASES[0]
    proposals = torch.tensor([PROPOSAL, [50.0, 50.0, 60.0, 60.0]])
    pred_deltas = torch.zeros(2, 8)
    pred_deltas[0, :4] = 9.0  # class 1's deltas: must be ignored
    cls_logits = torch.zeros(2, 3, requires_grad=True)
    roi_cls, roi_box = fast_rcnn_losses(
        cls_logits, pred_deltas.requires_grad_(), torch.tensor([2, 0]), torch.tensor([gt_deltas, [0.0] * 4]),
        proposals, CODER, kind, weight or BOX_LOSS_WEIGHTS[kind],
    )
    assert roi_cls.item() == pytest.approx(math.log(3))
    assert roi_box.item() == pytest.approx((weight or BOX_LOSS_WEIGHTS[kind]) * expected[kind] / 2, rel=1e-5)


def test_default_weights_match_smooth_l1_gradient_scale() -> None:
    """The chosen defaults: L1 as smooth L1, IoU losses 10x (their delta gradients are ~9x smaller, see roi_heads)."""
    assert BOX_LOSS_WEIGHTS == {"smooth_l1": 1.0, "l1": 1.0, "giou": 10.0, "diou": 10.0, "ciou": 10.0}
    proposals, gt = torch.tensor([PROPOSAL]), torch.tensor([[2.0, 2.0, 12.0, 12.0]])
    norms = {}
    for kind, weight in BOX_LOSS_WEIGHTS.items():
        pred = torch.zeros(1, 4, requires_grad=True)
        (weight * box_regression_loss(kind, pred, CODER.encode(gt, proposals), proposals, CODER)).backward()
        norms[kind] = pred.grad.norm().item()
    for kind in ("giou", "diou", "ciou"):
        assert 0.5 < norms[kind] / norms["smooth_l1"] < 2.0, norms


def _tiny_heads(box_loss: str, num_classes: int = 1) -> RoIHeads:
    torch.manual_seed(0)
    head = FCHead(8, (2, 2), 16)
    return RoIHeads(RoIPool((2, 2), [1 / 8], "align"), head, Predictor(16, num_classes), num_classes,
                    batch_per_image=16, box_loss=box_loss)


@pytest.mark.parametrize("kind", list(BOX_LOSS_WEIGHTS))
def test_image_without_boxes_gives_exactly_zero_box_loss(kind: str) -> None:
    heads = _tiny_heads(kind).train()
    features = [torch.randn(1, 8, 8, 12, requires_grad=True)]
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [10.0, 10.0, 60.0, 50.0], [40.0, 8.0, 90.0, 60.0]])]
    empty = Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), (64, 96))
    _, losses = heads(features, proposals, [(64, 96)], [empty])
    assert losses["roi_box"].item() == 0.0
    assert losses["roi_cls"].item() > 0
    sum(losses.values()).backward()  # the graph stays connected without foreground
    assert heads.predictor.box_deltas.weight.grad is not None
    assert heads.predictor.box_deltas.weight.grad.abs().sum().item() == 0.0
    with_box = Targets(torch.tensor([[12.0, 8.0, 58.0, 50.0]]), torch.tensor([1]), (64, 96))
    _, losses = heads(features, proposals, [(64, 96)], [with_box])
    assert torch.isfinite(losses["roi_box"]) and losses["roi_box"].item() > 0


def test_label_and_sample_honours_ignore_regions_and_marks_gt() -> None:
    """gt (0, 0, 10, 10); proposals at IoU 1, 0.8 (foreground at 0.5), 0.4 (background), one background box inside
    an ignore region (never sampled) and one far away (background); the gt box is appended and sampled."""
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 4.0],
        [100.0, 100.0, 110.0, 110.0], [200.0, 0.0, 210.0, 10.0],
    ])
    ignore = torch.tensor([[95.0, 95.0, 120.0, 120.0]])
    target = Targets(torch.tensor([PROPOSAL]), torch.tensor([1]), (240, 240), ignore=ignore)
    sampled, labels, deltas, from_gt = label_and_sample(
        proposals, target, Matcher(0.5, 0.5), BalancedSampler(256, 0.5), CODER
    )
    assert sampled.tolist() == [proposals[i].tolist() for i in (0, 1, 2, 4)] + [PROPOSAL]
    assert labels.tolist() == [1, 1, 0, 0, 1]
    assert from_gt.tolist() == [False, False, False, False, True]
    # (0, 0, 10, 8) -> (0, 0, 10, 10): centre 1 px lower on a height of 8, height 10/8 larger
    assert deltas[1].tolist() == pytest.approx([0.0, 10 * 1 / 8, 0.0, 5 * math.log(10 / 8)], abs=1e-5)
    assert deltas[[0, 2, 3, 4]].abs().sum().item() == 0.0


def test_class_agnostic_predictor_shapes() -> None:
    logits, deltas = Predictor(16, 3, class_agnostic=True)(torch.zeros(5, 16))
    assert logits.shape == (5, 4) and deltas.shape == (5, 4)
    assert Predictor(16, 3)(torch.zeros(5, 16))[1].shape == (5, 12)


def test_c4_head_reuses_pretrained_stage_predicts_and_trains(tiny_images, tiny_targets) -> None:
    """efficientnet_lite0: the head runs ImageNet's blocks5-6 on 14x14 pooled grids; a few steps lower the loss."""
    torch.manual_seed(0)
    model = build_detector(load_config(None, [
        "model.head=c4", "model.freeze_stages=6", "model.anchor_sizes=[16,32,64]", "model.roi_batch_per_image=8",
        "model.rpn_post_nms_top_n_train=32", "model.rpn_post_nms_top_n_test=8",
    ]))
    head = model.roi_heads.box_head
    assert isinstance(head, C4Head) and head.out_dim == 320
    assert model.roi_heads.pooler.output_size == (14, 14)
    imagenet = build_imagenet_classifier("efficientnet_lite0")
    expected = torch.nn.Sequential(imagenet.blocks[5], imagenet.blocks[6]).state_dict()
    copied = head.stage.state_dict()  # FrozenBatchNorm2d keeps BN's tensors under BN's names
    assert set(copied) == set(expected) - {k for k in expected if k.endswith("num_batches_tracked")}
    for key, value in copied.items():
        assert torch.equal(value, expected[key]), key
    assert head(torch.zeros(3, 112, 14, 14)).shape == (3, 320)

    model.eval()
    detections = model.predict(list(tiny_images))
    assert len(detections) == 2 and all(torch.isfinite(d.boxes).all() for d in detections)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0)
    history = []
    for _ in range(6):
        loss = sum(model([tiny_images[0]], [tiny_targets[0]]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history), history
    assert sum(history[-2:]) < 0.8 * sum(history[:2]), history


@pytest.mark.parametrize("overrides, match", [
    (["model.fpn=true"], "model.head.*model.fpn false"),
    (["model.backbone=vgg16"], "model.head.*vgg16"),
])
def test_c4_head_fails_clearly(overrides: list[str], match: str) -> None:
    with pytest.raises(DetectorError, match=match):
        build_detector(load_config(None, ["model.head=c4", "model.weights=none", *overrides]))


def test_box_coder_decodes_an_empty_batch():
    """No references (an image without proposals) decode to (0, 4*k), not a reshape error."""
    from detector.boxes import BoxCoder

    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    ref = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    gt = torch.tensor([[12.0, 18.0, 60.0, 44.0]])
    torch.testing.assert_close(coder.decode(coder.encode(gt, ref), ref), gt)
