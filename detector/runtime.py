"""How a trained model runs at inference: the backbone in PyTorch (channels_last on CPU) or in ONNX Runtime.

The backbone is most of the inference time at 640x640 on a CPU (docs/BENCHMARKS.md, speed work). Two measured
ways to run it faster, both exact up to float rounding:

- ``torch``: PyTorch with the backbone's weights and input in channels_last (NHWC) memory format, so oneDNN's
  convolutions skip their layout reorders (1.41x on the drone checkpoint, 2 CPU cores).
- ``onnx``: the backbone exported to ONNX (opset 17, dynamic batch, height and width) and run by ONNX Runtime's
  CPU provider (2.56x against the plain NCHW PyTorch backbone). The export takes a few seconds when the model is loaded; the proposals, ROI pooling and
  head stay in PyTorch.

``auto`` picks ``onnx`` on CPU and ``torch`` elsewhere (ONNX Runtime's CPU provider would copy CUDA tensors to the
host). The ONNX backbone is checked against the PyTorch one on a random batch of two 320x256 inputs when it is
built; if the export fails or the outputs differ, ``auto`` warns and keeps PyTorch, while an explicit ``onnx`` is
an error.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from typing import Any

import torch
from torch import nn

from detector.structures import DetectorError

RUNTIMES = ("auto", "torch", "onnx")
# largest |onnx - torch| accepted on the check input, relative to the largest |feature| (float32 rounding
# through ~50 layers is about 1e-5 of it)
ONNX_TOLERANCE = 1e-3
CHECK_SIZE = 320  # side of the random check input (a multiple of every backbone stride)


class ChannelsLastBackbone(nn.Module):
    """The backbone with NHWC weights fed NHWC images: (N, 3, H, W) -> [(N, C, H / s, W / s) per level]."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(images.contiguous(memory_format=torch.channels_last))


class OnnxBackbone(nn.Module):
    """The backbone as an ONNX Runtime session: (N, 3, H, W) -> [(N, C, H / s, W / s) per level], like Backbone."""

    def __init__(self, session: Any) -> None:  # an onnxruntime.InferenceSession (optional import)
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.session.run(None, {self.input_name: images.detach().cpu().contiguous().numpy()})
        return [torch.from_numpy(output) for output in outputs]


def export_onnx(backbone: nn.Module, example: torch.Tensor) -> bytes:
    """The backbone as an ONNX model (opset 17; batch, height and width dynamic), serialized."""
    with torch.no_grad():
        levels = len(backbone(example))
    outputs = [f"features_{level}" for level in range(levels)]
    axes = {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in ["images", *outputs]}
    # the TorchScript exporter: the dynamo one needs onnxscript, and torch < 2.5 has no `dynamo` argument
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(backbone, (example,), buffer, opset_version=17, input_names=["images"],
                          output_names=outputs, dynamic_axes=axes, **legacy)
    return buffer.getvalue()


def onnx_backbone(backbone: nn.Module, threads: int) -> OnnxBackbone:
    """Export `backbone` (in eval mode, on CPU) and open it in ONNX Runtime with `threads` intra-op threads
    (fixed here: a later torch.set_num_threads does not change them); raises DetectorError when onnxruntime is
    missing, the export or the session fails, or the outputs differ from PyTorch's."""
    try:
        import onnxruntime
    except ImportError as error:
        raise DetectorError("runtime 'onnx' needs the onnxruntime package (pip install onnxruntime); "
                            "or use --runtime torch") from error
    # a batch of 2 non-square images, so an export that fixed the batch size or the aspect ratio fails the check
    example = torch.rand(2, 3, CHECK_SIZE, CHECK_SIZE * 4 // 5, generator=torch.Generator().manual_seed(0))
    try:
        model_bytes = export_onnx(backbone, example)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        converted = OnnxBackbone(onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]))
        with torch.no_grad():
            expected, got = backbone(example), converted(example)
    except Exception as error:  # any exporter or ONNX Runtime failure means: this backbone cannot run in ONNX
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise DetectorError(f"runtime 'onnx': the backbone could not be exported to or run by ONNX Runtime "
                            f"({type(error).__name__}: {reason}); use --runtime torch") from error
    scale = max(float(e.abs().max()) for e in expected)
    shapes_match = [e.shape for e in expected] == [g.shape for g in got]
    error = max(float((e - g).abs().max()) for e, g in zip(expected, got, strict=True)) if shapes_match else math.inf
    if error > ONNX_TOLERANCE * max(scale, 1.0):
        raise DetectorError(f"runtime 'onnx': ONNX Runtime's backbone outputs differ from PyTorch's by {error:.2e}, "
                            f"more than the allowed {ONNX_TOLERANCE:.0e} x the largest feature ({scale:.1f}); "
                            "use --runtime torch")
    return converted


def prepare_for_inference(model: nn.Module, runtime: str, device: torch.device) -> str:
    """Swap `model.backbone` (eval mode, on `device`) for the runtime's version; returns the runtime used.

    After this the model is for inference only: its backbone is no longer the trainable module."""
    if runtime not in RUNTIMES:
        raise DetectorError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    wants_onnx = runtime == "onnx" or (runtime == "auto" and device.type == "cpu")
    if wants_onnx and device.type != "cpu":
        raise DetectorError(f"runtime 'onnx' runs the backbone on the CPU: use it with --device cpu (got {device}), "
                            "or --runtime torch")
    if wants_onnx:
        try:
            model.backbone = onnx_backbone(model.backbone.eval(), torch.get_num_threads())
            return "onnx"
        except DetectorError as error:
            if runtime == "onnx":
                raise
            warnings.warn(f"{error}; running the backbone in PyTorch instead", RuntimeWarning, stacklevel=3)
    if device.type == "cpu":
        model.backbone = ChannelsLastBackbone(model.backbone)
    return "torch"
