"""Receptive fields, strides, parameter counts and FLOPs, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from timm.layers import FrozenBatchNormAct2d
from torchvision.ops import FrozenBatchNorm2d

from detector.backbone import build_backbone
from detector.info import (
    backbone_stage,
    count_flops,
    describe,
    describe_detector,
    format_report,
    format_table,
    stage_summary,
)


def _last(model: nn.Module, size: int = 32, channels: int = 1):
    """(stride, RF) of the last layer row, one number per axis collapsed (all tests use square kernels)."""
    row = describe(model, torch.zeros(1, channels, size, size))[-1]
    return row.stride[0], row.receptive_field[0]


@pytest.mark.parametrize("depth, expected", [(1, 2), (2, 4), (3, 8)])
def test_stacked_2x2_stride_2_convolutions(depth: int, expected: int) -> None:
    """The lecture's example: each 2x2 stride-2 conv doubles both the RF and the stride."""
    model = nn.Sequential(*[nn.Conv2d(1, 1, 2, stride=2) for _ in range(depth)])
    assert _last(model) == (expected, expected)


@pytest.mark.parametrize(
    "layers, stride, rf",
    [
        ([nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)], 1, 5),  # 3 + 2 * 1
        ([nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 3, padding=1)], 2, 7),  # 3 + 2 * 2
        ([nn.Conv2d(1, 1, 3, dilation=2, padding=2)], 1, 5),  # (3 - 1) * 2 + 1
        ([nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, dilation=2)], 2, 11),  # 3 + 2 * 2 * 2
        ([nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2)], 2, 4),  # 3 + 1 * 1
        ([nn.Conv2d(1, 1, 2, stride=2), nn.Upsample(scale_factor=2.0)], 1, 2),  # upsampling halves the jump
    ],
)
def test_receptive_field_of_small_networks(layers: list[nn.Module], stride: int, rf: int) -> None:
    assert _last(nn.Sequential(*layers)) == (stride, rf)


class _Residual(nn.Module):
    """3x3 s2 -> 3x3 on the main path, 1x1 s2 on the shortcut, summed (shortcut first, to test the order)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.shortcut = nn.Conv2d(1, 1, 1, stride=2)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.shortcut(x) + self.conv2(self.relu(self.conv1(x))))


def test_residual_shortcut_does_not_shrink_the_field() -> None:
    rows = describe(_Residual(), torch.zeros(1, 1, 16, 16))
    by_name = {row.name: row for row in rows}
    assert by_name["shortcut"].receptive_field == (1, 1)
    assert by_name["conv2"].receptive_field == (7, 7)  # 3 + (3 - 1) * 2
    assert rows[-1].name == "relu" and rows[-1].receptive_field == (7, 7) and rows[-1].stride == (2, 2)
    assert [row.name for row in rows] == ["shortcut", "conv1", "relu", "conv2", "relu"]  # execution order


class _ConcatWithSqueezeExcite(nn.Module):
    """A 5x5 and a 1x1 branch concatenated, then a squeeze-excitation gate, then global pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, 2, 5, padding=2)
        self.narrow = nn.Conv2d(1, 2, 1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Conv2d(4, 4, 1)
        self.gated = nn.ReLU()  # its row shows the field of the gated map
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([self.narrow(x), self.wide(x)], dim=1)
        x = self.gated(x * self.excite(self.squeeze(x)).sigmoid())
        return self.fc(self.pool(x).flatten(1))


def test_concatenation_squeeze_excite_and_global_pooling() -> None:
    rows = {row.name: row for row in describe(_ConcatWithSqueezeExcite(), torch.zeros(1, 1, 8, 8))}
    assert rows["gated"].receptive_field == (5, 5)  # the gate keeps the concatenation's local field
    assert rows["gated"].stride == (1, 1) and rows["gated"].output_shape == (1, 4, 8, 8)
    assert rows["squeeze"].receptive_field == (math.inf, math.inf)
    assert rows["excite"].receptive_field == (math.inf, math.inf)
    assert rows["fc"].receptive_field == (math.inf, math.inf)
    assert "all" in format_table([rows["fc"]])


def test_shared_module_counts_its_parameters_once() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1)  # 9 weights + 1 bias
    rows = describe(nn.Sequential(conv, conv), torch.zeros(1, 1, 8, 8))
    assert [r.receptive_field for r in rows] == [(3, 3), (5, 5)]
    assert sum(r.trainable_params for r in rows) == 10


def _small_net() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, stride=2))
    model[0].requires_grad_(False)
    return model


def test_parameter_counts_trainable_and_frozen() -> None:
    model = _small_net()
    rows = describe(model, torch.zeros(1, 3, 12, 12))
    # conv0: 3*4*9 + 4 = 112 frozen; bn: 4 + 4 trainable; conv3: 4*2 + 2 = 10 trainable
    assert [(r.trainable_params, r.frozen_params) for r in rows] == [(0, 112), (8, 0), (0, 0), (10, 0)]
    assert [r.is_bn for r in rows] == [False, True, False, False]
    assert rows[1].bn_frozen is False

    model[1] = FrozenBatchNorm2d(4)  # affine buffers count as frozen parameters
    rows = describe(model, torch.zeros(1, 3, 12, 12))
    assert (rows[1].trainable_params, rows[1].frozen_params, rows[1].bn_frozen) == (0, 8, True)


def test_stage_summary_groups_rows_and_totals() -> None:
    rows = describe(_small_net(), torch.zeros(1, 3, 12, 12))
    stages = stage_summary(rows, lambda name: "first" if name in ("0", "1") else "second")
    first, second, total = stages
    assert (first.name, first.output_shape, first.receptive_field, first.trainable_params, first.frozen_params) == (
        "first", (1, 4, 10, 10), (3, 3), 8, 112,
    )
    assert (second.output_shape, second.stride, second.receptive_field) == ((1, 2, 5, 5), (2, 2), (3, 3))
    assert second.bn_count == 0
    assert (total.trainable_params, total.frozen_params, total.bn_count, total.bn_frozen) == (18, 112, 1, 0)


def test_flops_of_one_convolution() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 8 x 10 x 10 outputs, each 3 * 3 * 3 multiply-adds = 2 FLOPs each (the bias is not counted)
    assert count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * 8 * 10 * 10 * 27
    assert describe(conv, torch.zeros(2, 3, 10, 10))[0].flops == 2 * 2 * 8 * 10 * 10 * 27


def test_describe_leaves_batchnorm_and_modes_untouched() -> None:
    model = _small_net().train()
    describe(model, torch.rand(2, 3, 12, 12))
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, torch.zeros(4)) and int(model[1].num_batches_tracked) == 0


def test_efficientnet_lite0_backbone_receptive_field() -> None:
    """timm's tf_efficientnet_lite0 up to its stride-16 block group, RF by hand (rf += (k - 1) * jump; jump *= s):
    stem 3x3 s2: rf 3, jump 2; blocks0 dw3x3: 3 + 2*2 = 7;
    blocks1 (2 x dw3x3, first s2): 7 + 2*2 = 11 (jump 4), 11 + 2*4 = 19;
    blocks2 (2 x dw5x5, first s2): 19 + 4*4 = 35 (jump 8), 35 + 4*8 = 67;
    blocks3 (3 x dw3x3, first s2): 67 + 2*8 = 83 (jump 16), 83 + 2*16 = 115, 115 + 2*16 = 147;
    blocks4 (3 x dw5x5, s1): 147 + 4*16 = 211, 211 + 64 = 275, 275 + 64 = 339.
    The 1x1 expansion/projection convs, BN and ReLU6 leave it unchanged; lite0 has no SE and its residual
    shortcuts never shrink the field."""
    backbone = build_backbone(weights="none", freeze_stages=2)
    report = describe_detector(backbone, {"rpn": nn.Conv2d(112, 15, 1)}, input_size=(320, 320))
    assert report.layers[-1].stride == (16, 16) and report.layers[-1].receptive_field == (339, 339)
    stages = {s.name: s for s in report.stages}
    names = ("stem", "blocks0", "blocks1", "blocks2", "blocks3")
    assert [stages[n].receptive_field[0] for n in names] == [3, 7, 19, 67, 147]
    assert stages["stem"].trainable_params == 0 and stages["blocks0"].frozen_params == 288 + 512 + 96
    assert (stages["rpn"].trainable_params, stages["rpn"].receptive_field) == (112 * 15 + 15, None)
    total = stages["total"]
    assert total.trainable_params + total.frozen_params == sum(p.numel() for p in backbone.parameters()) + sum(
        m.weight.numel() * 2 for m in backbone.modules() if isinstance(m, (FrozenBatchNorm2d, FrozenBatchNormAct2d))
    ) + 112 * 15 + 15
    assert total.flops == report.backbone_flops > 0

    text = format_report(report)
    assert "rpn" in text and "339" in text and f"{report.backbone_flops / 1e9:.3f} GFLOPs" in text
    stage_lines = format_table(report.stages).splitlines()
    assert len({len(line) for line in stage_lines}) == 1  # aligned: every line as wide as the header
    assert stage_lines[-1].split()[:4] == ["total", "-", "16", "339"]
    assert backbone_stage("stages.blocks3.0.conv_dw") == "blocks3" and backbone_stage("fpn.layer_blocks.0") == "fpn"
