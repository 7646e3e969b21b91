"""The command line: subcommands, one-sentence errors with non-zero exit codes, the documented numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import main

DETECTOR = str(Path(sys.executable).parent / "detector")
REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DETECTOR, *args], capture_output=True, text=True, timeout=600)


def assert_one_sentence_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "detect", "demo", "info", "convert", "data", "proposals"):
        assert command in result.stdout


@pytest.mark.slow
def test_kitti_stats_numbers(shared_data):
    result = run("data", "stats", str(shared_data / "kitti_tiny"), "--format", "kitti")
    assert result.returncode == 0, result.stderr
    assert "images: 75" in result.stdout
    car_row = next(line for line in result.stdout.splitlines() if line.strip().startswith("Car "))
    assert car_row.split()[1] == "209"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_drone_stats_numbers(shared_data, fmt):
    result = run("data", "stats", str(shared_data / "drone_cars"), "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert "images: 1055" in result.stdout and "boxes: 4828" in result.stdout


@pytest.mark.slow
def test_malformed_kitti_line_is_one_sentence(tmp_path, shared_data):
    root = tmp_path / "kitti"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    shutil.copy(shared_data / "kitti_tiny/training/image_2/000000.jpeg", root / "image_2" / "000000.jpeg")
    (root / "label_2" / "000000.txt").write_text("Car 0.00 0 1.0 10 20 30\n")
    result = run("data", "stats", str(root), "--format", "kitti")
    assert_one_sentence_error(result, "000000.txt:1")


@pytest.mark.slow
def test_wrong_format_option(tmp_path):
    assert_one_sentence_error(run("data", "stats", str(tmp_path), "--format", "pascal"), "pascal")


@pytest.mark.slow
def test_info_prints_receptive_fields():
    result = run("info", "model.weights=none", "--input-size", "320", "320")
    assert result.returncode == 0, result.stderr
    assert "receptive" in result.stdout.lower() or "RF" in result.stdout
    assert "GFLOP" in result.stdout


@pytest.mark.slow
def test_missing_checkpoint(tmp_path):
    assert_one_sentence_error(run("detect", str(tmp_path / "nope.pt"), str(tmp_path)), "checkpoint not found")


@pytest.mark.slow
def test_not_a_checkpoint(tmp_path):
    fake = tmp_path / "fake.pt"
    fake.write_text("definitely not a checkpoint")
    assert_one_sentence_error(run("eval", str(fake), str(tmp_path), "--format", "coco"), "not a detector checkpoint")


@pytest.mark.slow
def test_dataset_classes_do_not_match_checkpoint(tiny_checkpoint, shared_data):
    result = run("eval", str(tiny_checkpoint), str(shared_data / "kitti_tiny"), "--format", "kitti")
    assert_one_sentence_error(result, "does not match the classes of checkpoint")
    assert "it has no car (the dataset has Car, Cyclist, Misc, " in result.stderr


@pytest.mark.slow
def test_unreadable_video(tiny_checkpoint, tmp_path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 1000)
    assert_one_sentence_error(run("detect", str(tiny_checkpoint), str(video), "--out", str(tmp_path / "o")), "broken.mp4")


@pytest.mark.slow
def test_unwritable_output_folder(tiny_checkpoint, tmp_path, shared_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    image = shared_data / "kitti_tiny/training/image_2/000001.jpeg"
    assert_one_sentence_error(run("detect", str(tiny_checkpoint), str(image), "--out", str(blocker / "out")), str(blocker))


def test_in_process_main_returns_exit_code(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "missing"), "--format", "kitti"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_writes_metrics_and_pictures(tiny_checkpoint, tmp_path):
    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    out = tmp_path / "eval"
    result = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "AP50" in result.stdout and "val_roi_cls" in result.stdout
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["AP50"] <= 1.0 and "car" in metrics["per_class"]
    for name in ("detections.json", "pr_curves.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name


def test_eval_reads_the_dataset_once(tiny_checkpoint, tmp_path, monkeypatch):
    import detector.data.build as build

    reads = []
    real = build.read_dataset
    monkeypatch.setattr(build, "read_dataset", lambda *args, **kwargs: reads.append(args[0]) or real(*args, **kwargs))
    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    assert main(["eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(tmp_path / "e")]) == 0
    assert reads == [str(val)]  # the class check and the split come from one read


@pytest.mark.slow
def test_eval_with_the_onnx_runtime_gives_the_same_metrics(tiny_checkpoint, tmp_path):
    import json

    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    outputs = {}
    for runtime in ("torch", "onnx"):
        result = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(tmp_path / runtime),
                     "--runtime", runtime)
        assert result.returncode == 0, result.stderr
        assert f"backbone runtime: {runtime} on cpu" in result.stdout
        outputs[runtime] = (json.loads((tmp_path / runtime / "metrics.json").read_text()),
                            json.loads((tmp_path / runtime / "detections.json").read_text()))
    (torch_metrics, torch_detections), (onnx_metrics, onnx_detections) = outputs["torch"], outputs["onnx"]
    assert len(torch_detections) > 0 and abs(len(onnx_detections) - len(torch_detections)) <= 2
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert abs(onnx_metrics[key] - torch_metrics[key]) <= 0.01, key


@pytest.mark.slow
def test_detect_on_the_dashcam_clip(tiny_checkpoint, shared_data, tmp_path):
    import json

    import cv2

    out = tmp_path / "detect"
    video = shared_data / "videos" / "solidWhiteRight.mp4"
    result = run("detect", str(tiny_checkpoint), str(video), "--out", str(out), "--score-thresh", "0.3")
    assert result.returncode == 0, result.stderr
    written = next(out.glob("*.mp4"))
    capture = cv2.VideoCapture(str(written))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 221
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (960, 540)
    assert len(json.loads((out / "detections.json").read_text())["frames"]) == 221
    assert (out / "detections.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_detect_runtime_option(tiny_checkpoint, tmp_path, runtime):
    import json

    scene = next((tiny_checkpoint.parent.parent.parent / "data" / "val" / "images").iterdir())
    out = tmp_path / runtime
    result = run("detect", str(tiny_checkpoint), str(scene), "--out", str(out), "--runtime", runtime,
                 "--score-thresh", "0.2")
    assert result.returncode == 0, result.stderr
    assert f"backbone runtime: {runtime} on cpu" in result.stdout
    detections = json.loads((out / "detections.json").read_text())["images"][0]["detections"]
    assert detections, "nothing detected: the runtime check would be vacuous"


@pytest.mark.slow
def test_convert_kitti_to_coco_keeps_the_boxes(shared_data, tmp_path):
    result = run("convert", "--from", "kitti", "--to", "coco", str(shared_data / "kitti_tiny"), str(tmp_path / "coco"))
    assert result.returncode == 0, result.stderr
    stats = run("data", "stats", str(tmp_path / "coco"), "--format", "coco")
    assert "images: 75" in stats.stdout
    car_row = next(line for line in stats.stdout.splitlines() if line.strip().startswith("Car "))
    assert car_row.split()[1] == "209"
    again = run("convert", "--from", "kitti", "--to", "coco", str(shared_data / "kitti_tiny"), str(tmp_path / "coco"))
    assert_one_sentence_error(again, str(tmp_path / "coco"))


@pytest.mark.slow
def test_data_anchors_reports_coverage_and_a_pasteable_grid(shared_data, tmp_path):
    import json

    import yaml

    from detector.config import load_config
    from detector.data.build import build_datasets

    config_path, data = str(REPO / "configs" / "kitti_cars.yaml"), f"data.train_path={shared_data / 'kitti_tiny'}"
    out, plot = tmp_path / "report" / "anchors.json", tmp_path / "anchors.png"
    result = run("data", "anchors", "-c", config_path, "--out", str(out), "--plot", str(plot), data)
    assert result.returncode == 0, result.stderr
    assert "shape-only" in result.stdout and "IoU >= 0.7" in result.stdout
    report = json.loads(out.read_text())
    config = load_config(config_path, [data])
    train, _ = build_datasets(config)
    assert report["split"] == "train" and report["boxes"] == sum(len(r.boxes) for r in train.records) > 0
    assert report["current"]["anchor_sizes"] == config.model.anchor_sizes
    proposed, current = report["proposed"], report["current"]
    assert proposed["coverage"]["0.7"] >= current["coverage"]["0.7"]  # the search also starts from the config's grid
    assert proposed["anchors_per_location"] <= current["anchors_per_location"]
    snippet = yaml.safe_load("\n".join(line for line in result.stdout.splitlines() if line.startswith("  anchor_")))
    assert snippet == {"anchor_sizes": proposed["anchor_sizes"], "anchor_ratios": proposed["anchor_ratios"]}
    assert plot.stat().st_size > 0
    # with augment.rotate90 the training boxes count twice, once turned a quarter (w and h swapped)
    turned = run("data", "anchors", "-c", config_path, "--out", str(tmp_path / "turned.json"), data,
                 "augment.rotate90=1.0")
    assert turned.returncode == 0, turned.stderr
    assert "turned a quarter" in turned.stdout
    report_turned = json.loads((tmp_path / "turned.json").read_text())
    assert report_turned["rotate90"] and not report["rotate90"]
    assert report_turned["boxes"] == 2 * report["boxes"]


@pytest.mark.slow
def test_data_anchors_option_errors(tmp_path):
    config_path = str(REPO / "configs" / "kitti_cars.yaml")
    assert_one_sentence_error(run("data", "anchors", "-c", config_path, "--iou", "1.5"), "--iou")
    assert_one_sentence_error(run("data", "anchors", "-c", str(tmp_path / "none.yaml")), "none.yaml")


@pytest.mark.slow
def test_eval_with_tta_through_the_override(tiny_checkpoint, tmp_path):
    import json

    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    out = tmp_path / "tta"
    result = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(out), "eval.tta=true")
    assert result.returncode == 0, result.stderr
    assert "AP50" in result.stdout and "val_roi_cls" in result.stdout
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["AP50"] <= 1.0
    assert json.loads((out / "detections.json").read_text())
    bad = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(tmp_path / "bad"),
              "eval.tta=true", "eval.tta_sizes=[0]")
    assert_one_sentence_error(bad, "eval.tta_sizes")


@pytest.mark.slow
def test_eval_split_uses_the_checkpoint_config_blocks(tiny_checkpoint, tmp_path):
    import json

    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    assert_one_sentence_error(run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--split", "test"),
                              "data.test_filter")
    assert_one_sentence_error(run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--split", "test",
                                  "data.test_filter=^nothing"), "matches no image")
    out = tmp_path / "test"
    result = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--split", "test", "--out", str(out),
                 r"data.test_filter=^00000[01]\.")
    assert result.returncode == 0, result.stderr
    # the synthetic images 000000 and 000001 are COCO ids 1 and 2: nothing else was evaluated
    assert {d["image_id"] for d in json.loads((out / "detections.json").read_text())} <= {1, 2}
    assert "training figures" not in result.stdout
    # a final fit (data.train_on_val) trained on the val block: its val score says it is a training figure
    fit = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--split", "val", "--out",
              str(tmp_path / "fit"), r"data.val_filter=^00000[01]\.", "data.train_on_val=true")
    assert fit.returncode == 0, fit.stderr
    assert "these are training figures; --split test is its held-out score" in fit.stdout


def test_bad_cli_numbers_are_one_sentence(tiny_checkpoint, tmp_path, capsys):
    """--max-det -1 used to crash inside the detector; argparse now names the option and the range."""
    for option, value, expected in (("--max-det", "-1", "expected an integer of at least 1, got '-1'"),
                                    ("--score-thresh", "1.5", "expected a score in [0, 1], got '1.5'"),
                                    ("--score-thresh", "nan", "expected a score in [0, 1], got 'nan'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["detect", str(tiny_checkpoint), str(tmp_path), option, value])
        assert exit_info.value.code == 2 and f"argument {option}: {expected}" in capsys.readouterr().err


def test_a_data_error_in_a_loader_worker_is_one_sentence():
    """torch re-raises a worker's DetectorError as 'Caught DetectorError in DataLoader worker process 0. Original
    Traceback ...': the command line keeps the sentence."""
    import torch.utils.data

    from detector.cli import one_sentence
    from detector.structures import DetectorError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise DetectorError("cannot decode image x.jpg (corrupt or not an image)")

    with pytest.raises(DetectorError) as error:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(error.value)
    assert one_sentence(error.value) == "cannot decode image x.jpg (corrupt or not an image)"


@pytest.mark.slow
def test_data_show_refuses_to_overwrite(tmp_path, shared_data):
    out = tmp_path / "grid.png"
    out.write_bytes(b"mine")
    result = run("data", "show", str(shared_data / "kitti_tiny"), "--format", "kitti", "--out", str(out))
    assert_one_sentence_error(result, f"--out {out} already exists")
    assert out.read_bytes() == b"mine"


@pytest.mark.slow
def test_overrides_after_options_and_scientific_floats(tiny_checkpoint, tmp_path):
    val = tiny_checkpoint.parent.parent.parent / "data" / "val"
    result = run("eval", str(tiny_checkpoint), str(val), "--format", "coco", "--out", str(tmp_path / "e"),
                 "data.max_size=256", "eval.score_thresh=1e-3")
    assert result.returncode == 0, result.stderr
