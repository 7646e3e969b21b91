"""What can this node understand? Receptive fields, strides, parameters and FLOPs, layer by layer.

A unit of a feature map only sees part of the image: its receptive field (RF). Walking the network in execution
order, every convolution or pooling with kernel k, stride s and dilation d maps the field of its input
(size ``rf_in``, jump ``jump_in`` = input pixels between neighbouring units) to

    rf_out = rf_in + (k - 1) * d * jump_in        jump_out = jump_in * s

(the theoretical RF: the input square that can influence the unit at all; padding does not change it).
Networks branch (residual adds, concatenations, squeeze-excitation gates), so the field is carried by every
tensor rather than by a layer list: forward hooks on conv/pool modules apply the formula to their input's field,
and a ``TorchFunctionMode`` gives the output of every other op the largest field among its inputs, so a
residual shortcut never shrinks the RF. A global reduction (a 1x1 mean, flatten, a linear layer) sees the whole
input: its RF is reported as "all". When such a global tensor meets a spatial map again (an SE gate rescaling
channels) the map's own, local RF is kept: the gate reweights channels but carries no position.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts as 2 FLOPs and only
matmuls and convolutions are counted (BN, activations and adds are comparatively free).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "LayerInfo", "ModelReport", "StageInfo", "backbone_stage", "count_flops", "describe", "describe_detector",
    "format_report", "format_table", "stage_summary",
]

Pair = tuple[float, float]  # (height, width) axis values; inf = the whole input
_GLOBAL: Pair = (math.inf, math.inf)
_FIELD = "_detector_info_field"  # attribute carrying (rf, jump) on traced tensors
_CONV = (nn.Conv2d,)  # timm's Conv2dSame included: "same" padding changes the border, not the field
_POOL = (nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE_POOL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pair(value) -> Pair:
    return (value, value) if isinstance(value, (int, float)) else (value[0], value[-1])


def _fmt_pair(pair: Pair | None) -> str:
    if pair is None:
        return "-"
    if math.isinf(pair[0]):
        return "all"
    return f"{pair[0]:g}" if pair[0] == pair[1] else f"{pair[0]:g}x{pair[1]:g}"


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _fmt_mflops(flops: int | None) -> str:
    return "-" if flops is None else f"{flops / 1e6:.1f}"


@dataclass
class LayerInfo:
    """One executed layer. ``stride``: input pixels between neighbouring output units (the jump);
    ``receptive_field``: theoretical RF in input pixels; both (height, width), inf = whole input, None = not traced.
    ``flops`` are the layer's own (children excluded)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    stride: Pair | None
    receptive_field: Pair | None
    trainable_params: int
    frozen_params: int
    flops: int
    is_bn: bool
    bn_frozen: bool

    HEADERS: ClassVar[tuple[str, ...]] = (
        "layer", "type", "output", "stride", "RF", "trainable", "frozen", "MFLOPs", "BN",
    )

    def cells(self) -> list[str]:
        bn = ("frozen" if self.bn_frozen else "train") if self.is_bn else ""
        shape = "x".join(str(d) for d in self.output_shape)
        return [self.name, self.type, shape, _fmt_pair(self.stride), _fmt_pair(self.receptive_field),
                _fmt_int(self.trainable_params), _fmt_int(self.frozen_params), _fmt_mflops(self.flops), bn]


@dataclass
class StageInfo:
    """A group of layers (a backbone stage, a head, or the total). None fields print as "-" (not applicable)."""

    name: str
    output_shape: tuple[int, ...] | None
    stride: Pair | None
    receptive_field: Pair | None
    trainable_params: int
    frozen_params: int
    flops: int | None
    bn_count: int
    bn_frozen: int

    HEADERS: ClassVar[tuple[str, ...]] = (
        "stage", "output", "stride", "RF", "trainable", "frozen", "MFLOPs", "BN (frozen)",
    )

    def cells(self) -> list[str]:
        shape = "-" if self.output_shape is None else "x".join(str(d) for d in self.output_shape)
        return [self.name, shape, _fmt_pair(self.stride), _fmt_pair(self.receptive_field),
                _fmt_int(self.trainable_params), _fmt_int(self.frozen_params), _fmt_mflops(self.flops),
                f"{self.bn_count} ({self.bn_frozen})"]


def _field(tensor: Tensor) -> tuple[Pair, Pair] | None:
    return getattr(tensor, _FIELD, None)


def _combine(inputs: list[Tensor], output: Tensor, keeps_size: bool) -> tuple[Pair, Pair]:
    """Field of a non-conv op's output: the largest RF among its spatial inputs, jump rescaled by the size change."""
    spatial = [t for t in inputs if t.dim() == 4 and not math.isinf(_field(t)[0][0])]
    if output.dim() != 4 or not spatial:
        return _GLOBAL, _GLOBAL
    widest = max(spatial, key=lambda t: _field(t)[0][0] * _field(t)[0][1])
    if output.shape[-2:] == (1, 1) and widest.shape[-2:] != (1, 1):
        return _GLOBAL, _GLOBAL  # a global mean/max with keepdim
    rf = tuple(max(_field(t)[0][axis] for t in spatial) for axis in (0, 1))
    jump = _field(widest)[1]
    if not keeps_size:  # interpolation and strided slicing change the jump by the size ratio
        jump = tuple(jump[a] * widest.shape[2 + a] / output.shape[2 + a] for a in (0, 1))
    return rf, jump


class _FieldPropagation(TorchFunctionMode):
    """Gives every tensor computed from a traced tensor a field (conv/pool hooks then refine theirs)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor) and _field(t) is not None]
        if inputs:
            keeps_size = "pad" in getattr(func, "__name__", "")  # padding adds border, not resolution
            for tensor in tree_flatten(output)[0]:
                if isinstance(tensor, Tensor):
                    setattr(tensor, _FIELD, _combine(inputs, tensor, keeps_size))
        return output


def _window_field(module: nn.Module, x: Tensor, output: Tensor) -> tuple[Pair, Pair] | None:
    """Field after a sliding window (conv or pool): rf + (k - 1) * d * jump, jump * s."""
    field = _field(x)
    if field is None or math.isinf(field[0][0]):
        return field
    if isinstance(module, _ADAPTIVE_POOL):
        if output.shape[-2:] == (1, 1):
            return _GLOBAL, _GLOBAL
        # an adaptive pool is a window of about in/out pixels moved by in//out
        kernel = tuple(math.ceil(x.shape[2 + a] / output.shape[2 + a]) for a in (0, 1))
        stride, dilation = tuple(x.shape[2 + a] // output.shape[2 + a] for a in (0, 1)), (1, 1)
    else:
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        dilation = _pair(getattr(module, "dilation", 1))
    (rf, jump) = field
    rf_out = tuple(rf[a] + (kernel[a] - 1) * dilation[a] * jump[a] for a in (0, 1))
    return rf_out, tuple(jump[a] * stride[a] for a in (0, 1))


def _is_bn(module: nn.Module) -> bool:
    # by name too: timm's own frozen BN classes do not derive from torch's
    bn_types = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)
    return isinstance(module, bn_types) or "BatchNorm" in type(module).__name__


def _param_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameters owned directly by ``module``; a frozen BN's affine buffers count as frozen."""
    trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters(recurse=False) if not p.requires_grad)
    if _is_bn(module) and not any(True for _ in module.parameters(recurse=False)):
        frozen += sum(b.numel() for n, b in module.named_buffers(recurse=False) if n in ("weight", "bias"))
    return trainable, frozen


def _is_layer(module: nn.Module) -> bool:
    """A row of the table: a leaf module, or one owning tensors itself (timm's BatchNormAct2d); never Identity."""
    if isinstance(module, nn.Identity):
        return False
    owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    return owns or not any(True for _ in module.children())


class _Tracer:
    """Forward pre/post hooks that record one LayerInfo per layer call, in execution order."""

    def __init__(self, model: nn.Module, was_training: Mapping[nn.Module, bool], counter: FlopCounterMode) -> None:
        self.slots: list[LayerInfo | None] = []  # a slot is taken when a layer starts: execution order
        self.counter = counter
        self.was_training = was_training
        self.stack: list[list[int]] = []  # per open layer: [slot, flops at start, flops of nested layers]
        self.seen: set[int] = set()
        self.handles = []
        for name, module in model.named_modules():
            if _is_layer(module):
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._exit_hook(name or type(module).__name__)))

    @property
    def rows(self) -> list[LayerInfo]:
        return [row for row in self.slots if row is not None]

    def _enter(self, module: nn.Module, inputs) -> None:
        self.stack.append([len(self.slots), self.counter.get_total_flops(), 0])
        self.slots.append(None)

    def _exit_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, output) -> None:
            slot, start, nested = self.stack.pop()
            total = self.counter.get_total_flops() - start
            if self.stack:
                self.stack[-1][2] += total
            if isinstance(module, _CONV + _POOL + _ADAPTIVE_POOL) and isinstance(output, Tensor) and inputs:
                setattr(output, _FIELD, _window_field(module, inputs[0], output))
            self.slots[slot] = self._row(name, module, output, total - nested)

        return hook

    def _row(self, name: str, module: nn.Module, output, flops: int) -> LayerInfo:
        tensor = next((t for t in tree_flatten(output)[0] if isinstance(t, Tensor)), None)
        field = None if tensor is None else _field(tensor)
        first_call = id(module) not in self.seen  # a reused module (ResNet's relu) owns its parameters once
        self.seen.add(id(module))
        trainable, frozen = _param_counts(module) if first_call else (0, 0)
        is_bn = _is_bn(module)
        params_fixed = not any(p.requires_grad for p in module.parameters(recurse=False))
        bn_frozen = is_bn and ("Frozen" in type(module).__name__ or (params_fixed and not self.was_training[module]))
        return LayerInfo(
            name, type(module).__name__, tuple(tensor.shape) if tensor is not None else (),
            None if field is None else field[1], None if field is None else field[0],
            trainable, frozen, flops, is_bn, bn_frozen,
        )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _trace(model: nn.Module, example_input: Tensor) -> tuple[list[LayerInfo], int]:
    """Run ``model`` once in eval mode without gradients; returns the rows and the total FLOPs."""
    was_training = {module: module.training for module in model.modules()}
    model.eval()  # no BN statistics change while we look
    counter = FlopCounterMode(display=False)
    tracer = _Tracer(model, was_training, counter)
    try:
        with torch.no_grad(), counter, _FieldPropagation():
            x = example_input.clone()
            setattr(x, _FIELD, ((1, 1), (1, 1)))  # an input pixel sees itself
            model(x)
    finally:
        tracer.remove()
        for module, mode in was_training.items():
            module.training = mode
    return tracer.rows, counter.get_total_flops()


def describe(model: nn.Module, example_input: Tensor) -> list[LayerInfo]:
    """One LayerInfo per executed layer of ``model`` on ``example_input`` (N, C, H, W), in execution order.

    The model runs once in eval mode without gradients; its train/eval modes are restored afterwards.
    """
    return _trace(model, example_input)[0]


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """Total FLOPs (multiply-add = 2) of one forward pass on ``example_input`` (N, C, H, W)."""
    return _trace(model, example_input)[1]


def _max_pair(pairs: Sequence[Pair | None]) -> Pair | None:
    """Per-axis maximum of the local (finite) pairs; "all" only when every known pair is global."""
    known = [p for p in pairs if p is not None]
    local = [p for p in known if not math.isinf(p[0])] or known
    return tuple(max(p[a] for p in local) for a in (0, 1)) if local else None


def _summarize(name: str, rows: Sequence[LayerInfo], shape: tuple[int, ...] | None, stride: Pair | None) -> StageInfo:
    return StageInfo(
        name, shape, stride, _max_pair([r.receptive_field for r in rows]),
        sum(r.trainable_params for r in rows), sum(r.frozen_params for r in rows), sum(r.flops for r in rows),
        sum(r.is_bn for r in rows), sum(r.bn_frozen for r in rows),
    )


def stage_summary(rows: Sequence[LayerInfo], stage_of: Callable[[str], str | None]) -> list[StageInfo]:
    """Group layer rows by ``stage_of(row.name)`` (None = leave out) in order of first appearance.

    Each stage reports its last layer's output shape and stride, its largest RF, summed parameters, FLOPs and
    BN layers; a final "total" row sums all grouped rows (largest stride and RF, no single output shape).
    """
    groups: dict[str, list[LayerInfo]] = {}
    for row in rows:
        stage = stage_of(row.name)
        if stage is not None:
            groups.setdefault(stage, []).append(row)
    stages = [_summarize(name, group, group[-1].output_shape, group[-1].stride) for name, group in groups.items()]
    grouped = [row for group in groups.values() for row in group]
    total = _summarize("total", grouped, None, _max_pair([row.stride for row in grouped]))
    return stages + [total]


def backbone_stage(name: str) -> str:
    """Stage of a layer named relative to a ``detector.backbone.Backbone``: "stages.layer3.0.conv1" -> "layer3",
    "fpn.inner_blocks.0.0" -> "fpn"."""
    parts = name.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 1 else parts[0]


def _module_info(name: str, module: nn.Module) -> StageInfo:
    """Parameters and BN layers of a whole module whose RF is not defined (a head on ROIs or proposals)."""
    modules = list(module.modules())
    counts = [_param_counts(m) for m in modules]
    bns = [m for m in modules if _is_bn(m)]
    frozen_bns = sum("Frozen" in type(m).__name__ or not any(p.requires_grad for p in m.parameters()) for m in bns)
    trainable, frozen = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return StageInfo(name, None, None, None, trainable, frozen, None, len(bns), frozen_bns)


@dataclass
class ModelReport:
    """Everything ``detector info`` prints: per-layer rows of the backbone, per-stage rows (backbone stages,
    then one row per head, then "total") and the backbone's FLOPs at ``input_size`` (height, width)."""

    input_size: tuple[int, int]
    layers: list[LayerInfo]
    stages: list[StageInfo]
    backbone_flops: int

    def __str__(self) -> str:
        return format_report(self)


def describe_detector(
    backbone: nn.Module,
    heads: Mapping[str, nn.Module] | None = None,
    input_size: tuple[int, int] = (320, 320),
    stage_of: Callable[[str], str | None] = backbone_stage,
) -> ModelReport:
    """Trace ``backbone`` on one zero image (1, 3, H, W) and count the parameters of ``heads`` (e.g.
    ``{"proposals": det.proposal_source, "roi_heads": det.roi_heads}``): they work on boxes, so their RF is "-"."""
    parameter = next(iter(backbone.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    rows, flops = _trace(backbone, torch.zeros(1, 3, *input_size, device=device))
    stages = stage_summary(rows, stage_of)[:-1] + [_module_info(n, m) for n, m in (heads or {}).items()]
    spatial = [s for s in stages if s.stride is not None]
    total = StageInfo(
        "total", None, _max_pair([s.stride for s in spatial]), _max_pair([s.receptive_field for s in spatial]),
        sum(s.trainable_params for s in stages), sum(s.frozen_params for s in stages), flops,
        sum(s.bn_count for s in stages), sum(s.bn_frozen for s in stages),
    )
    return ModelReport(tuple(input_size), rows, stages + [total], flops)


def format_table(rows: Sequence[LayerInfo] | Sequence[StageInfo]) -> str:
    """An aligned plain-text table of LayerInfo or StageInfo rows: names left-aligned, numbers right-aligned."""
    if not rows:
        return ""
    table = [list(rows[0].HEADERS)] + [row.cells() for row in rows]
    widths = [max(len(line[col]) for line in table) for col in range(len(table[0]))]
    text_columns = 2 if isinstance(rows[0], LayerInfo) else 1  # name (and type) columns
    lines = []
    for line in table:
        cells = [
            cell.ljust(width) if col < text_columns else cell.rjust(width)
            for col, (cell, width) in enumerate(zip(line, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: ModelReport, layers: bool = True) -> str:
    """The ``detector info`` text: the per-layer table (optional), the per-stage table and the FLOPs."""
    height, width = report.input_size
    parts = [f"input 1x3x{height}x{width}; stride and RF in input pixels (RF 'all' = whole image, '-' = n/a)"]
    if layers:
        parts += ["", format_table(report.layers)]
    parts += ["", format_table(report.stages), ""]
    parts.append(
        f"backbone: {report.backbone_flops / 1e9:.3f} GFLOPs at {height}x{width} (multiply-add = 2 FLOPs; "
        "heads not counted: their cost depends on the number of proposals)"
    )
    return "\n".join(parts)
