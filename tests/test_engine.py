"""Training engine: exact resume after SIGTERM, DDP with torchrun, checkpoint safety, non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_overrides
from detector.checkpoint import load_checkpoint, load_detector, save_checkpoint
from detector.config import load_config
from detector.engine import EpochSampler, Trainer
from detector.structures import DetectorError

VENV_BIN = Path(sys.executable).parent


def _train_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(VENV_BIN / "detector"), "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_epoch_sampler_shards_and_skips():
    sampler = EpochSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start=4)
    assert list(sampler) == full[4:]
    ranks = [EpochSampler(10, True, 3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(full)
    sampler.set_epoch(2)
    assert list(sampler) != full


@pytest.mark.slow
def test_resume_after_sigterm_is_exact(tmp_path):
    """2 epochs straight == 2 epochs stopped by SIGTERM during epoch 1, then resumed."""
    overrides = tiny_run_overrides(tmp_path, **{"train.epochs": 2})
    straight = _train_cli(overrides + ["train.name=straight"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    stopped = _train_cli(overrides + ["train.name=stopped"])
    metrics = tmp_path / "runs" / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    output = stopped.communicate(timeout=120)[0]
    assert stopped.returncode == 128 + signal.SIGTERM, output
    last = tmp_path / "runs" / "stopped" / "last.pt"
    state = load_checkpoint(last)
    assert (state["epoch"], state["batch_in_epoch"]) < (2, 0), "the stop must come before the run ends"
    assert "resume" in output

    resumed = _train_cli(["--resume", str(last)])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    expected = _weights(tmp_path / "runs" / "straight" / "last.pt")
    actual = _weights(last)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
def test_torchrun_two_ranks_stay_identical(tmp_path):
    overrides = tiny_run_overrides(tmp_path, **{"train.name": "ddp"})
    command = [str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "--master_port=29517", "-m", "detector.cli", "train", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = json.loads((tmp_path / "runs" / "ddp" / "ddp_ranks.json").read_text())
    assert ranks["world_size"] == 2
    assert len(set(ranks["digests"])) == 1
    assert (tmp_path / "runs" / "ddp" / "last.pt").exists()
    assert not (tmp_path / "runs" / "ddp-2").exists(), "only rank 0 creates the run folder"


def test_runs_never_overwrite_and_write_outputs(tmp_path, monkeypatch):
    """Two runs of one config get two folders with every output; torch's process-wide settings are the config's
    (1 thread, deterministic) while a run trains and the caller's (3 threads, not deterministic) after it."""
    config = load_config(None, tiny_run_overrides(tmp_path))
    torch.set_num_threads(3)
    torch.use_deterministic_algorithms(False)
    seen, original = [], Trainer.train_one_epoch
    monkeypatch.setattr(Trainer, "train_one_epoch", lambda self: seen.append(
        (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())) or original(self))
    first = Trainer(config, progress=False).fit()
    assert seen and set(seen) == {(1, True)}
    assert torch.get_num_threads() == 3 and not torch.are_deterministic_algorithms_enabled()
    second = Trainer(config, progress=False).fit()
    assert first.name == "tiny" and second.name == "tiny-2"
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "curves.png"):
        assert (first / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in first.iterdir())
    rows = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert any("AP50" in row for row in rows) and any("loss" in row for row in rows)
    assert load_config(first / "config.yaml") == config


def test_a_resumed_run_keeps_counting_its_time_budget(tmp_path):
    config = load_config(None, tiny_run_overrides(tmp_path, **{"train.epochs": 1, "train.time_budget_min": 10}))
    run = Trainer(config, progress=False).fit()
    payload = load_checkpoint(run / "last.pt")
    assert 0 < payload["train_seconds"] < 600
    payload["train_seconds"] = 540.0  # as if the interrupted run had used 9 of its 10 minutes
    torch.save(payload, run / "last.pt")
    resumed = Trainer(config, resume=run / "last.pt", progress=False)
    assert resumed.budget_fraction() == pytest.approx(0.9, abs=0.01)
    del payload["train_seconds"]  # a checkpoint written before the field existed starts the clock afresh
    torch.save(payload, run / "last.pt")
    assert Trainer(config, resume=run / "last.pt", progress=False).budget_fraction() < 0.01


def test_channels_last_training_is_the_same_maths(tmp_path):
    """train.channels_last stores every convolution weight in NHWC, and a training step on the same
    batch gives the same losses and gradients as the contiguous model, up to float rounding."""
    trainers = {}
    for layout in ("true", "false"):
        config = load_config(None, tiny_run_overrides(tmp_path / layout, **{"train.channels_last": layout}))
        trainers[layout] = Trainer(config, run_dir=tmp_path / layout, progress=False)
    convs = {layout: [p for p in t.model.parameters() if p.dim() == 4] for layout, t in trainers.items()}
    assert convs["true"] and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs["true"])
    assert all(p.is_contiguous() for p in convs["false"])  # 1x1 kernels have the same strides in both layouts:
    assert not all(p.is_contiguous() for p in convs["true"])  # the 3x3 ones tell them apart
    batch = next(iter(trainers["false"].loader))
    losses = {}
    for layout, trainer in trainers.items():
        torch.manual_seed(0)  # the same proposal and ROI sampling in both
        losses[layout] = trainer._forward_losses(batch)
        sum(losses[layout].values()).backward()
    assert losses["true"].keys() == losses["false"].keys()
    for key, value in losses["false"].items():
        assert float(losses["true"][key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    grads = {layout: [p.grad for p in params if p.grad is not None] for layout, params in convs.items()}
    assert len(grads["true"]) == len(grads["false"]) > 0
    assert all(g.is_contiguous(memory_format=torch.channels_last) for g in grads["true"])
    for nhwc, nchw in zip(grads["true"], grads["false"]):
        torch.testing.assert_close(nhwc, nchw, rtol=1e-3, atol=1e-6 * float(nchw.abs().max()))


@pytest.mark.slow
def test_snapshots_every_n_training_minutes_load_as_checkpoints(tmp_path, monkeypatch):
    """train.snapshot_every_min: one snapshot at each minute mark the training clock passes, named by the mark, so
    fast steps never overwrite one another (CI's machine once trained the tiny run within one 0.01-minute name)."""
    config = load_config(None, tiny_run_overrides(tmp_path, **{"train.epochs": 1, "train.snapshot_every_min": 0.01}))
    monkeypatch.setattr(Trainer, "train_seconds", lambda self: 0.75 * self.step)  # 0.75 s per optimizer step
    trainer = Trainer(config, progress=False)
    run = trainer.fit()
    snapshots = sorted(run.glob("snapshot_*min.pt"))
    minutes = [float(p.name[len("snapshot_"):-len("min.pt")]) for p in snapshots]
    # marks at 0.6 s steps: step s at 0.75*s seconds passes mark floor(1.25*s); step 4 crosses marks 4 and 5, saves 5
    expected = sorted({int(0.75 * step // 0.6) for step in range(1, trainer.step + 1)} - {0})
    assert trainer.step >= 4 and minutes == pytest.approx([0.01 * mark for mark in expected])
    model, _ = load_detector(snapshots[0])
    assert sum(p.numel() for p in model.parameters()) > 0
    plain = load_config(None, tiny_run_overrides(tmp_path / "plain", **{"train.epochs": 1}))
    assert not list(Trainer(plain, progress=False).fit().glob("snapshot_*"))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    config = load_config(None, tiny_run_overrides(tmp_path))
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(3)}, config, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(DetectorError, match="previous checkpoint is intact"):
        save_checkpoint(path, {"w": torch.zeros(3)}, config, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file is left behind"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = load_config(None, tiny_run_overrides(tmp_path, **{"train.epochs": 2}))
    trainer = Trainer(config, progress=False)
    trainer.train_one_epoch()
    trainer.epoch += 1
    trainer.batch_in_epoch = 0
    good = trainer.save("last.pt").read_bytes()
    original = trainer.ddp_model.forward

    def exploding(*args, **kwargs):
        losses = original(*args, **kwargs)
        return {**losses, "roi_cls": losses["roi_cls"] * float("nan")}

    monkeypatch.setattr(trainer.ddp_model, "forward", exploding)
    with pytest.raises(DetectorError, match="non-finite loss .*roi_cls"):
        trainer.fit()
    assert (trainer.run_dir / "last.pt").read_bytes() == good


def test_output_folder_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running with privileges that ignore folder permissions")
    with pytest.raises(DetectorError, match="not writable"):
        Trainer(load_config(None, tiny_run_overrides(tmp_path, **{"train.output_dir": str(locked)})), progress=False)


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DetectorError, match="cannot create the output folder"):
        Trainer(load_config(None, tiny_run_overrides(tmp_path, **{"train.output_dir": str(blocker / "runs")})), progress=False)


def test_training_with_proposals_from_a_file(tmp_path):
    """model.proposals=file: the file's boxes (original pixels) reach the box head through the transforms."""
    import numpy as np

    from detector.data.build import build_datasets
    from detector.data.proposals_file import write_proposals_file

    config = load_config(None, tiny_run_overrides(tmp_path))
    train, val = build_datasets(config)
    rng = np.random.default_rng(0)
    proposals = {}
    for record in train.records + val.records:
        jitter = rng.uniform(-3, 3, size=(len(record.boxes), 4)).astype(np.float32)
        background = np.array([[0, 0, 40, 40], [60, 20, 120, 90]], np.float32)
        proposals[record.image_path.name] = np.concatenate([record.boxes + jitter, background]).clip(0, 127)
    path = tmp_path / "proposals.json"
    write_proposals_file(path, proposals)
    config = load_config(None, tiny_run_overrides(tmp_path, **{"model.proposals": "file", "model.proposals_file": str(path),
                                                                "train.name": "file"}))
    run_dir = Trainer(config, progress=False).fit()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "rpn_objectness" not in rows[0] and rows[0]["roi_cls"] > 0
    assert any("AP" in row for row in rows)


def test_evaluation_keeps_detections_down_to_eval_score_thresh(tmp_path):
    """eval.score_thresh was never read: mAP saw only what model.score_thresh (meant for detect) let through."""
    from detector.data.build import build_datasets
    from detector.detector import build_detector
    from detector.engine import evaluate

    config = load_config(None, tiny_run_overrides(tmp_path, **{"model.score_thresh": 0.99, "eval.score_thresh": 0.0}))
    _, val = build_datasets(config)
    torch.manual_seed(0)
    model = build_detector(config, pretrained=False)
    output = evaluate(model, val, config, torch.device("cpu"), with_loss=False, progress=False)
    scores = [d["score"] for d in output.evaluator.results()]
    assert scores and min(scores) < 0.99  # an untrained model's scores sit near 1 / (K + 1)
    assert model.roi_heads.score_thresh == 0.99  # detect's threshold is back afterwards
    config.eval.score_thresh = 0.995
    output = evaluate(model, val, config, torch.device("cpu"), with_loss=False, progress=False)
    assert all(d["score"] > 0.995 for d in output.evaluator.results())


def test_resume_drops_the_log_rows_after_the_checkpoint_and_reads_a_cut_line(tmp_path):
    from detector.runs import MetricsLogger, plot_curves, read_metrics

    logger = MetricsLogger(tmp_path, resume_step=None)
    for step in (10, 20, 30):
        logger.log(step, loss=1.0 / step, lr=0.01)
    logger.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 40, "lo')  # killed while writing
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    assert plot_curves(tmp_path).is_file()
    resumed = MetricsLogger(tmp_path, resume_step=20)  # the checkpoint was written at step 20
    resumed.log(30, loss=0.5, lr=0.01)
    resumed.close()
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["loss"] == 0.5


def test_resume_from_best_with_ema_weights_is_refused(tmp_path):
    config = load_config(None, tiny_run_overrides(tmp_path, **{"train.ema": True}))
    run = Trainer(config, progress=False).fit()
    assert load_checkpoint(run / "best.pt")["weights"] == "ema" and load_checkpoint(run / "last.pt")["weights"] == "model"
    with pytest.raises(DetectorError, match=r"best.pt holds the EMA weights used for evaluation.*resume from .*last.pt"):
        Trainer(config, resume=run / "best.pt", progress=False)
