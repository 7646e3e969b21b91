"""scripts/bench_gpu.py: the GPU benchmark's logic, run end to end on the CPU with a tiny synthetic config."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SCRIPTS, script_module

DEMO_CONFIG = str(SCRIPTS.parent / "configs" / "demo.yaml")
TINY = ["--set", "data.max_size=96", "--set", "augment.sizes=[]", "--set", "model.weights=none",
        "--set", "model.anchor_sizes=[16,32]", "--set", "train.batch_size=2", "--set", "train.epochs=4",
        "--set", "train.warmup_iters=2", "--max-images", "8", "--budget-min", "2", "--num-workers", "0",
        "--calls", "3", "--warmup", "1", "--batch", "2"]


@pytest.fixture(scope="module")
def bench_gpu():
    with script_module("bench_gpu") as module:
        yield module


@pytest.mark.slow
def test_trains_and_times_ours_and_the_peer(bench_gpu, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the runs folder is relative to the working directory
    out = tmp_path / "out"
    code = bench_gpu.main(["--config", DEMO_CONFIG, "--device", "cpu", "--rows", "ours,peer", "--out", str(out), *TINY])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert set(rows) == {"ours", "peer"}
    for row in rows.values():
        # 8 images in batches of 2 for 4 epochs: 16 steps, of which 4 epoch starts and 5 warm-up steps are not timed
        assert row["iterations"] == 16 and row["steps_timed"] == 7
        assert row["train_images_per_s"] == pytest.approx(2 / row["train_s_per_iter"])
        assert row["calls"] == 3 and row["infer_fps"] == pytest.approx(1000 / row["infer_ms_per_image"])
        assert row["infer_images_per_s_batch2"] > 0 and 0 <= row["AP"] <= 1
        assert row["train_gpu_peak_mib"] is None  # no GPU figure is made up on a CPU
    table = (out / "results.md").read_text()
    ratio = next(line for line in table.splitlines() if line.startswith("| **ours / peer**")).split(" | ")
    assert float(ratio[1]) == pytest.approx(rows["ours"]["train_images_per_s"] / rows["peer"]["train_images_per_s"],
                                            abs=0.006)
    assert "infer images/s (batch 2)" in table


def test_a_failing_row_is_reported_and_fails_the_run(bench_gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    # the peer uses one stride-16 map, so an FPN config cannot build it
    code = bench_gpu.main(["--config", DEMO_CONFIG, "--device", "cpu", "--rows", "peer", "--out", str(out),
                           "--set", "model.fpn=true", *TINY])
    assert code == 1
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["name"] == "peer" and "model.fpn" in row["note"] and row["note"].startswith("failed: DetectorError")
    assert "model.fpn" in (out / "results.md").read_text()


def test_rejects_unknown_rows_and_a_missing_gpu(bench_gpu, capsys):
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--config", DEMO_CONFIG, "--rows", "ours,fpn"])
    assert "--rows has unknown entries ['fpn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--config", DEMO_CONFIG, "--max-images", "-1"])
    assert "--max-images must be non-negative, got -1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench_gpu.main(["--config", DEMO_CONFIG, "--device", "cuda"]) == 2
        assert "--device is 'cuda' but CUDA is not available" in capsys.readouterr().err
