"""`detector export`: the whole detector as one ONNX graph, equal to PyTorch, run without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_run_overrides
from detector.api import Detector
from detector.cli import main
from detector.config import load_config
from detector.data.images import list_images, load_image
from detector.data.synthetic import render_scene
from detector.data.transforms import build_transform
from detector.engine import Trainer
from detector.export import OnnxDetector, export_onnx, resize_longest
from detector.export_graph import MATCH_IOU, SCORE_TOLERANCE, match_detections
from detector.structures import DetectorError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cascade_fpn_checkpoint(tmp_path_factory) -> Path:
    """A tiny model with an FPN (three levels, multi-level RoIAlign) and a three-stage cascade head."""
    root = tmp_path_factory.mktemp("cascade_fpn")
    overrides = tiny_run_overrides(root, **{"model.fpn": "true", "model.anchor_sizes": "[32,64,128]",
                                            "model.cascade_ious": "[0.5,0.6,0.7]", "model.score_thresh": 0.01})
    return Trainer(load_config(None, overrides), progress=False).fit() / "best.pt"


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, cascade_fpn_checkpoint, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{variant: (checkpoint, exported .onnx)}; the export's own check (two other image sizes) runs too."""
    out = tmp_path_factory.mktemp("onnx")
    pairs = {"fc": tiny_checkpoint, "cascade_fpn": cascade_fpn_checkpoint}
    return {name: (ckpt, export_onnx(ckpt, out / f"{name}.onnx")) for name, ckpt in pairs.items()}


def real_images(shared_data: Path | None) -> list[np.ndarray]:
    """KITTI and drone validation images (wide 1242x375 and square 640x640 sources)."""
    if shared_data is None:
        return []
    kitti = [p for p in list_images(shared_data / "kitti_tiny", recursive=True) if p.stem in ("000041", "000047", "000055")]
    drone = [p for p in list_images(shared_data / "drone_cars" / "images") if p.name.startswith("6_")][:3]
    assert len(kitti) == 3 and len(drone) == 3
    return [load_image(p) for p in kitti + drone]


def synthetic_images() -> list[np.ndarray]:
    return [render_scene(np.random.default_rng(seed), (h, w)).image for seed, (h, w) in enumerate([(120, 200), (230, 90)])]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fc", "cascade_fpn"])
def test_exported_graph_gives_pytorch_detections(variant, exported, shared_data):
    checkpoint, onnx_path = exported[variant]
    reference = Detector.load(checkpoint, runtime="torch")
    onnx = OnnxDetector(onnx_path)
    images = synthetic_images() + real_images(shared_data)
    matched = total = 0
    for image in images:
        expected, got = reference.predict(image), onnx.predict(image)
        triples = ([expected.boxes.numpy(), expected.scores.numpy(), expected.labels.numpy()],
                   [got.boxes, got.scores, got.labels])
        assert match_detections(*triples) == ""  # every detection above score 0.3 has a partner
        assert len(got) == pytest.approx(len(expected), abs=2)
        from torchvision.ops import box_iou

        overlap = box_iou(expected.boxes, torch.as_tensor(got.boxes)).numpy()
        for i in range(len(expected)):
            close = (overlap[i] >= MATCH_IOU) & (np.abs(got.scores - float(expected.scores[i])) <= SCORE_TOLERANCE)
            matched += bool(close.any())
        total += len(expected)
    assert total > 20, "the images gave too few detections to compare"
    assert matched / total >= 0.97  # low-score near-ties may resolve differently after float rounding


def test_onnx_model_metadata_and_no_overwrite(exported, tmp_path):
    checkpoint, onnx_path = exported["fc"]
    detector = OnnxDetector(onnx_path)
    assert detector.class_names == ["car"] and detector.max_size == 160 and detector.metadata["opset"] == 17
    with pytest.raises(DetectorError, match="already exists"):
        export_onnx(checkpoint, onnx_path)


def test_predictor_filters_like_detector(exported):
    _, onnx_path = exported["fc"]
    detector = OnnxDetector(onnx_path)
    image = synthetic_images()[0]
    everything = detector.predict(image)
    assert len(everything) > 3
    threshold = float(np.median(everything.scores))
    assert (detector.predict(image, score_thresh=threshold).scores >= threshold).all()
    assert len(detector.predict(image, max_det=2)) == 2
    assert len(detector.predict(image, classes=["car"])) == len(everything)
    with pytest.raises(DetectorError, match="does not know"):
        detector.predict(image, classes=["truck"])
    assert [len(d) for d in detector.predict([image, image])] == [len(everything)] * 2
    rows = everything.to_list()
    assert rows[0]["class"] == "car" and len(rows[0]["box"]) == 4


@pytest.mark.parametrize("size", [(375, 1242), (640, 640), (101, 37), (160, 90)])
def test_resize_matches_the_eval_transform(size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    empty = np.zeros((0, 4), np.float32)
    expected = build_transform(None, 160, train=False)(image, empty, np.zeros((0,), np.int64), empty).image
    np.testing.assert_array_equal(resize_longest(image, 160), expected)


def test_onnx_predictor_and_detect_run_without_torch(exported, tmp_path, shared_data):
    _, onnx_path = exported["fc"]
    script = f"""
import sys
import numpy as np
from detector.export import OnnxDetector
found = OnnxDetector({str(onnx_path)!r}).predict(np.full((90, 120, 3), 128, np.uint8))
from detector.cli import main
code = main(["detect", {str(onnx_path)!r}, {str(tmp_path / 'frame.png')!r}, "--out", {str(tmp_path / 'out')!r},
             "--score-thresh", "0.01"])
assert code == 0, code
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("torch-free", len(found))
"""
    from detector.visualize import save_image

    save_image(tmp_path / "frame.png", synthetic_images()[0])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch-free" in result.stdout
    payload = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert payload["images"][0]["detections"], "the exported model found nothing at score 0.01"


def test_export_cli_and_errors(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_checkpoint), "--out", str(out), "--no-check"]) == 0
    assert out.is_file() and "opset 17" in capsys.readouterr().out
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    # a checkpoint whose ROI pooling ONNX cannot express is refused in one sentence
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "p.onnx"), "model.roi_pool_mode=partition"]) != 0
    assert "roi_pool_mode" in capsys.readouterr().err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match="could not be loaded"):
        OnnxDetector(garbage)
    with pytest.raises(DetectorError, match="does not exist"):
        OnnxDetector(tmp_path / "missing.onnx")
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert os.environ.get("CI") is None or out.stat().st_size > 1000
