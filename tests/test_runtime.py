"""Inference runtimes: the ONNX Runtime and channels_last backbones give PyTorch's detections."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from detector import runtime
from detector.api import Detector
from detector.backbone import Backbone, build_backbone
from detector.checkpoint import checkpoint_config, load_checkpoint
from detector.data.images import list_images
from detector.checkpoint import load_detector
from detector.detector import FastRCNN
from detector.runtime import ChannelsLastBackbone, OnnxBackbone, prepare_for_inference
from detector.structures import Detections, DetectorError


def val_images(checkpoint: Path) -> list[Path]:
    """The tiny run's validation scenes (written beside its runs folder by the conftest fixture)."""
    return list_images(checkpoint.parent.parent.parent / "data" / "val")


def plain_model(checkpoint: Path, overrides: list[str]) -> FastRCNN:
    """The checkpoint's model as training left it: PyTorch backbone, contiguous (NCHW) weights."""
    return load_detector(checkpoint, overrides)[0]


def assert_same_detections(expected: Detections, got: Detections) -> None:
    """Every detection of one has a twin in the other: same label, IoU >= 0.99, score within 1e-3."""
    assert len(expected) > 0, "no detections to compare: the check would be vacuous"
    for first, second in ((expected, got), (got, expected)):
        iou = box_iou(first.boxes, second.boxes)
        same_label = first.labels[:, None] == second.labels[None, :]
        close_score = (first.scores[:, None] - second.scores[None, :]).abs() < 1e-3
        assert ((iou >= 0.99) & same_label & close_score).any(dim=1).all()


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_runtime_gives_pytorch_detections(tiny_checkpoint, name):
    overrides = ["model.score_thresh=0.2"]  # well above the near-ties of a barely trained head
    reference = plain_model(tiny_checkpoint, overrides)
    assert all(p.is_contiguous() for p in reference.backbone.parameters())  # NCHW: a different computation
    fast = Detector.load(tiny_checkpoint, device="cpu", overrides=overrides, runtime=name)
    assert fast.runtime == name
    assert isinstance(fast.model.backbone, OnnxBackbone if name == "onnx" else ChannelsLastBackbone)
    for path in val_images(tiny_checkpoint)[:2]:
        tensor, size = fast._to_tensor(path)
        assert_same_detections(reference.predict([tensor], [size])[0], fast.predict(path))


def test_detector_leaves_the_callers_model_trainable(tiny_checkpoint):
    model = plain_model(tiny_checkpoint, [])
    detector = Detector(model, detector_config(tiny_checkpoint), "cpu", runtime="torch")
    assert isinstance(model.backbone, Backbone) and all(p.is_contiguous() for p in model.backbone.parameters())
    assert isinstance(detector.model.backbone, ChannelsLastBackbone) and detector.model is not model


def test_auto_is_onnx_on_cpu(tiny_checkpoint):
    assert Detector.load(tiny_checkpoint, device="cpu").runtime == "onnx"


def detector_config(checkpoint: Path):
    return checkpoint_config(load_checkpoint(checkpoint), checkpoint)


@pytest.mark.parametrize("fpn", [False, True])
def test_onnx_backbone_takes_any_size_and_batch(fpn):
    torch.manual_seed(0)
    backbone = build_backbone(weights="none", fpn=fpn).eval()
    converted = runtime.onnx_backbone(backbone, threads=1)
    images = torch.rand(3, 3, 128, 192)  # not the export's size or batch
    with torch.no_grad():
        expected = backbone(images)
    got = converted(images)
    assert [g.shape for g in got] == [e.shape for e in expected] and len(got) == (3 if fpn else 1)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)


def test_unknown_runtime_is_one_clear_error(tiny_checkpoint):
    with pytest.raises(DetectorError, match="runtime must be one of auto, torch, onnx, got 'tensorrt'"):
        Detector.load(tiny_checkpoint, device="cpu", runtime="tensorrt")


def test_onnx_outputs_that_differ_are_refused_or_fall_back(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(runtime, "ONNX_TOLERANCE", -1.0)  # every difference, even 0, is now too large
    with pytest.raises(DetectorError, match="outputs differ from PyTorch's"):
        Detector.load(tiny_checkpoint, device="cpu", runtime="onnx")
    with pytest.warns(RuntimeWarning, match="running the backbone in PyTorch instead"):
        detector = Detector.load(tiny_checkpoint, device="cpu", runtime="auto")
    assert detector.runtime == "torch" and isinstance(detector.model.backbone, ChannelsLastBackbone)


def test_failed_export_is_one_clear_error(tiny_checkpoint, monkeypatch):
    def broken_export(backbone, example):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore lines")

    monkeypatch.setattr(runtime, "export_onnx", broken_export)
    with pytest.raises(DetectorError, match=r"could not be exported to or run by ONNX Runtime \(RuntimeError: Unsup"):
        Detector.load(tiny_checkpoint, device="cpu", runtime="onnx")


def test_failed_session_falls_back_under_auto(tiny_checkpoint, monkeypatch):
    import onnxruntime

    def broken_session(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : unsupported node")

    monkeypatch.setattr(onnxruntime, "InferenceSession", broken_session)
    expected = r"run by ONNX Runtime \(RuntimeError: \[ONNXRuntimeError\].*running the backbone in PyTorch"
    with pytest.warns(RuntimeWarning, match=expected):
        assert Detector.load(tiny_checkpoint, device="cpu").runtime == "torch"


def test_onnx_needs_the_cpu(tiny_checkpoint):
    model = plain_model(tiny_checkpoint, [])
    with pytest.raises(DetectorError, match="runtime 'onnx' runs the backbone on the CPU: use it with --device cpu"):
        prepare_for_inference(model, "onnx", torch.device("meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on a non-CPU device picks torch without trying ONNX
        assert prepare_for_inference(model, "auto", torch.device("meta")) == "torch"
