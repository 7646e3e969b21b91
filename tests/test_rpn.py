"""RPN: head layout vs anchors, target assignment, losses (incl. empty images and ignore regions),
proposal filtering, and a short training run that must learn one box."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder
from detector.rpn import RPN, RPNHead, flatten_head_outputs
from detector.structures import ImageBatch, Targets


class FixedHead(nn.Module):
    """Stands in for RPNHead: returns given per-level (N, A, H, W) logits and (N, A*4, H, W) deltas."""

    def __init__(self, logits: torch.Tensor, deltas: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.deltas = nn.Parameter(deltas.clone())

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [self.logits], [self.deltas]


def make_batch(height: int, width: int, image_sizes: list[tuple[int, int]]) -> ImageBatch:
    return ImageBatch(torch.zeros(len(image_sizes), 3, height, width), image_sizes, image_sizes)


def empty_targets(image_size: tuple[int, int], ignore: torch.Tensor | None = None) -> Targets:
    ignore = torch.zeros((0, 4)) if ignore is None else ignore
    return Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), image_size, ignore)


def test_head_shapes_and_initialization() -> None:
    head = RPNHead(in_channels=16, num_anchors=3)
    logits, deltas = head([torch.randn(2, 16, 8, 10), torch.randn(2, 16, 4, 5)])
    assert [tuple(t.shape) for t in logits] == [(2, 3, 8, 10), (2, 3, 4, 5)]
    assert [tuple(t.shape) for t in deltas] == [(2, 12, 8, 10), (2, 12, 4, 5)]
    for layer in (head.conv, head.objectness, head.deltas):
        assert float(layer.bias.detach().abs().max()) == 0.0
        assert 0.005 < float(layer.weight.detach().std()) < 0.015


def test_flattened_head_output_follows_anchor_order() -> None:
    """Lay out every anchor's coordinates the way a conv head emits deltas; flattening must give the anchors."""
    stride, height, width = 8, 3, 4
    generator = AnchorGenerator((16.0, 32.0), (0.5, 1.0, 2.0), [stride])
    (anchors,) = generator([torch.zeros(1, 1, height, width)])
    base = generator([torch.zeros(1, 1, 1, 1)])[0] - stride / 2  # (A, 4) anchors centred on (0, 0)
    num_anchors = len(base)
    centres_x = (torch.arange(width) + 0.5) * stride
    centres_y = (torch.arange(height) + 0.5) * stride
    layout = torch.zeros(1, num_anchors * 4, height, width)
    for a in range(num_anchors):
        for c in range(4):
            centre = centres_x[None, :] if c % 2 == 0 else centres_y[:, None]
            layout[0, a * 4 + c] = base[a, c] + centre
    # Logits carry their (y, x, a) position as 100 y + 10 x + a.
    logits = (100 * torch.arange(height)[:, None, None] + 10 * torch.arange(width)[None, :, None]
              + torch.arange(num_anchors)[None, None, :]).permute(2, 0, 1)[None].float()  # (1, A, H, W)
    flat_logits, flat_deltas = flatten_head_outputs([logits], [layout])
    assert flat_logits.shape == (1, height * width * num_anchors)
    assert flat_deltas.shape == (1, height * width * num_anchors, 4)
    torch.testing.assert_close(flat_deltas[0], anchors)
    assert flat_logits[0, :8].tolist() == [0, 1, 2, 3, 4, 5, 10, 11]  # a fastest, then x, then y
    assert flat_logits[0, -1].item() == 100 * 2 + 10 * 3 + 5


def test_top_proposal_comes_from_the_highest_scoring_anchor() -> None:
    """End to end through RPN.forward: the cell and anchor the head scores highest give the top proposal."""
    generator = AnchorGenerator((16.0,), (0.5, 1.0, 2.0), [8])
    logits = torch.zeros(1, 3, 4, 6)
    logits[0, 2, 1, 3] = 5.0  # anchor a=2 (tall, 11.3 x 22.6) at cell y=1, x=3: centre (28, 12)
    deltas = torch.zeros(1, 12, 4, 6)
    deltas[0, 2 * 4 + 0, 1, 3] = 0.5  # shift right by half the anchor width
    rpn = RPN(FixedHead(logits, deltas), generator, min_size=0.0).eval()
    proposals, losses = rpn(make_batch(32, 48, [(32, 48)]), [torch.zeros(1, 1, 4, 6)])
    assert losses == {}
    half_w, half_h = 8 / math.sqrt(2), 8 * math.sqrt(2)
    cx = 28 + half_w  # 28 + 0.5 * (2 * half_w)
    expected = torch.tensor([cx - half_w, 12 - half_h, cx + half_w, 12 + half_h]).clamp(min=0)
    torch.testing.assert_close(proposals[0][0], expected)


def test_assign_targets_by_hand() -> None:
    rpn = RPN(RPNHead(1, 1), AnchorGenerator((10.0,), (1.0,), [8]))
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 -> positive
            [5.0, 0.0, 15.0, 10.0],  # IoU 50 / 150 = 0.33 -> between 0.3 and 0.7: ignored
            [20.0, 20.0, 30.0, 30.0],  # IoU 0 -> negative
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 -> positive
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    labels, matched = rpn.assign_targets_per_image(anchors, Targets(gt, torch.tensor([1]), (40, 40)))
    assert labels.tolist() == [1, -1, 0, 1]
    torch.testing.assert_close(matched, torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 10, 10]]))


def test_ignore_regions_exclude_non_positive_anchors() -> None:
    rpn = RPN(RPNHead(1, 1), AnchorGenerator((10.0,), (1.0,), [8]))
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # positive and inside the region: stays positive
            [20.0, 0.0, 30.0, 10.0],  # negative, fully inside the region -> ignored
            [26.0, 0.0, 36.0, 10.0],  # negative, 40% inside the region -> still negative
            [50.0, 50.0, 60.0, 60.0],  # negative, outside
        ]
    )
    ignore = torch.tensor([[0.0, 0.0, 30.0, 10.0]])
    targets = Targets(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]), (64, 64), ignore)
    labels, _ = rpn.assign_targets_per_image(anchors, targets)
    assert labels.tolist() == [1, -1, 0, 0]


def test_ignored_anchors_are_never_sampled_into_the_loss() -> None:
    """Logits: 10 inside the ignore region, 0 elsewhere. If any ignored anchor were sampled as a
    negative, its BCE of ~10 would lift the mean above log(2)."""
    generator = AnchorGenerator((8.0,), (1.0,), [8])
    logits = torch.zeros(1, 1, 4, 4)
    logits[0, 0, :, :2] = 10.0  # the left half of the image, x < 16
    rpn = RPN(FixedHead(logits, torch.zeros(1, 4, 4, 4)), generator, batch_per_image=1000).train()
    targets = [empty_targets((32, 32), ignore=torch.tensor([[0.0, 0.0, 16.0, 32.0]]))]
    _, losses = rpn(make_batch(32, 32, [(32, 32)]), [torch.zeros(1, 1, 4, 4)], targets)
    torch.testing.assert_close(losses["rpn_objectness"], torch.tensor(math.log(2.0)))
    assert losses["rpn_box"].item() == 0.0
    # Without the ignore region the 8 confident anchors are negatives: mean of 8 * ~10 and 8 * log 2.
    _, losses = rpn(make_batch(32, 32, [(32, 32)]), [torch.zeros(1, 1, 4, 4)], [empty_targets((32, 32))])
    expected = (8 * torch.nn.functional.softplus(torch.tensor(10.0)) + 8 * math.log(2.0)) / 16
    torch.testing.assert_close(losses["rpn_objectness"], expected)


def test_image_without_boxes_gives_zero_box_loss() -> None:
    torch.manual_seed(0)
    generator = AnchorGenerator((16.0, 32.0), (0.5, 1.0, 2.0), [8])
    rpn = RPN(RPNHead(4, generator.num_anchors_per_location), generator, batch_per_image=32).train()
    _, losses = rpn(make_batch(32, 32, [(32, 32)]), [torch.randn(1, 4, 4, 4)], [empty_targets((32, 32))])
    assert losses["rpn_box"].item() == 0.0
    assert math.isfinite(losses["rpn_objectness"].item()) and losses["rpn_objectness"].item() > 0
    (losses["rpn_box"] + losses["rpn_objectness"]).backward()
    grads = [p.grad for p in rpn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(rpn.head.deltas.weight.grad.abs().max()) == 0.0  # no positives: nothing pulls the deltas


def test_mixed_batch_with_tiny_fixtures_has_finite_losses(tiny_targets: list[Targets]) -> None:
    torch.manual_seed(0)
    generator = AnchorGenerator((16.0, 32.0), (0.5, 1.0, 2.0), [16])
    rpn = RPN(RPNHead(4, generator.num_anchors_per_location), generator).train()
    proposals, losses = rpn(make_batch(64, 96, [(64, 96), (64, 96)]), [torch.randn(2, 4, 4, 6)], tiny_targets)
    assert set(losses) == {"rpn_objectness", "rpn_box"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["rpn_box"].item() > 0  # the first image has a box, so some anchor is positive
    assert len(proposals) == 2 and all(not p.requires_grad for p in proposals)


def test_eval_proposals_are_capped_and_inside_the_image() -> None:
    torch.manual_seed(0)
    generator = AnchorGenerator((16.0, 32.0, 64.0), (0.5, 1.0, 2.0), [8])
    rpn = RPN(RPNHead(4, generator.num_anchors_per_location), generator, post_nms_top_n=(40, 10), nms_thresh=0.9)
    with torch.no_grad():  # large random deltas so that many boxes leave the image and need clipping
        nn.init.normal_(rpn.head.deltas.weight, std=1.0)
    features = [torch.randn(2, 4, 8, 8)]
    batch = make_batch(64, 64, [(50, 60), (64, 40)])  # smaller than the padded 64 x 64 input
    rpn.eval()
    proposals, losses = rpn(batch, features)
    assert losses == {}
    for boxes, (height, width) in zip(proposals, batch.image_sizes):
        assert len(boxes) == 10
        assert float(boxes[:, 0::2].min()) >= 0 and float(boxes[:, 0::2].max()) <= width
        assert float(boxes[:, 1::2].min()) >= 0 and float(boxes[:, 1::2].max()) <= height
        assert bool(((boxes[:, 2:] - boxes[:, :2]) >= 1.0).all())  # min_size
    rpn.train()
    train_proposals, _ = rpn(batch, features)
    assert [len(p) for p in train_proposals] == [40, 40]


def test_filter_proposals_keeps_top_n_per_level_and_suppresses_duplicates() -> None:
    rpn = RPN(RPNHead(1, 1), AnchorGenerator((8.0, 16.0), (1.0,), [8, 16]), pre_nms_top_n=(2, 2),
              post_nms_top_n=(10, 10), nms_thresh=0.5).eval()
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # level 0, logit 3
            [1.0, 0.0, 11.0, 10.0],  # level 0, logit 2: IoU 0.82 with the first -> suppressed
            [40.0, 40.0, 50.0, 50.0],  # level 0, logit 1: third best of its level -> cut before NMS
            [0.0, 0.0, 10.0, 10.0],  # level 1, logit -5: same box as the first, but other level -> kept
            [20.0, 20.0, 20.5, 30.0],  # level 1, logit 9: 0.5 wide, below min_size 1 -> removed
        ]
    )
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0, 9.0]])
    proposals, scores = rpn.filter_proposals(logits, torch.zeros(1, 5, 4), anchors, torch.tensor([0, 0, 0, 1, 1]), [(64, 64)])
    torch.testing.assert_close(proposals[0], anchors[[0, 3]])
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([3.0, -5.0])))


def test_training_the_rpn_alone_learns_one_box() -> None:
    torch.manual_seed(0)
    generator = AnchorGenerator((16.0, 32.0), (0.5, 1.0, 2.0), [8])
    rpn = RPN(RPNHead(8, generator.num_anchors_per_location), generator, batch_per_image=64,
              box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)))
    features = [torch.randn(1, 8, 8, 8)]
    batch = make_batch(64, 64, [(64, 64)])
    gt = torch.tensor([[12.0, 20.0, 44.0, 40.0]])
    targets = [Targets(gt, torch.tensor([1]), (64, 64))]
    optimizer = torch.optim.SGD(rpn.parameters(), lr=0.1, momentum=0.9)
    rpn.train()
    history = []
    for _ in range(50):
        _, losses = rpn(batch, features, targets)
        total = losses["rpn_objectness"] + losses["rpn_box"]
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5
    rpn.eval()
    proposals, _ = rpn(batch, features)
    assert box_iou(proposals[0][:1], gt).item() >= 0.7


def test_targets_must_match_the_batch() -> None:
    generator = AnchorGenerator((16.0,), (1.0,), [8])
    rpn = RPN(RPNHead(4, 1), generator)
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        rpn(make_batch(32, 32, [(32, 32)]), [torch.zeros(1, 4, 4, 4)], [empty_targets((32, 32))] * 2)
