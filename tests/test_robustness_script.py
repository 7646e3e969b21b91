"""scripts/robustness.py end to end on tiny models: ours (a `detector train` checkpoint) and the peer (peer.pt with
its config.yaml), scored clean and under two corruptions; kept on a second run; bad --model refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import script_module


@pytest.fixture(scope="module")
def script():
    with script_module("robustness", "robustness_script") as module:
        yield module


@pytest.fixture(scope="module")
def peer_weights(script, tiny_checkpoint, tmp_path_factory) -> Path:
    """An untrained peer on the tiny run's config, saved as scripts/benchmark.py saves one."""
    from peer import peer_from_config

    from detector.checkpoint import load_detector

    _, config = load_detector(tiny_checkpoint)
    folder = tmp_path_factory.mktemp("peer")
    torch.manual_seed(0)
    torch.save(peer_from_config(config, pretrained=False).state_dict(), folder / "peer.pt")
    config.save(folder / "config.yaml")
    return folder / "peer.pt"


def test_scores_ours_and_the_peer_and_keeps_them(script, tiny_checkpoint, peer_weights, tmp_path, monkeypatch):
    out = tmp_path / "r"
    argv = ["--model", f"ours={tiny_checkpoint}", "--model", f"peer={peer_weights}", "--split", "val",
            "--corrupt", "fog:1,night:5", "--max-images", "2", "--out", str(out)]
    assert script.main(argv) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert list(report["models"]) == ["ours", "peer"]
    assert [report["models"][n]["kind"] for n in ("ours", "peer")] == ["ours", "peer"]
    for summary in report["models"].values():
        aps = [c["AP"] for c in summary["corruptions"]]
        assert [(c["name"], c["severity"]) for c in summary["corruptions"]] == [("fog", 1), ("night", 5)]
        assert summary["mPC_AP"] == pytest.approx(sum(aps) / 2)
        clean = summary["clean"]["AP"]
        assert summary["rPC_AP"] == (pytest.approx(summary["mPC_AP"] / clean) if clean > 0 else None)
        assert "held_out" not in summary  # neither was trained with augment.weather
    assert "| fog |" in (out / "robustness.md").read_text()
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def fail(*args, **kwargs):
        raise AssertionError("a model already scored with the same weights, split and corruptions was scored again")

    monkeypatch.setattr(script, "score_model", fail)
    assert script.main(argv) == 0  # both kept
    assert json.loads((out / "robustness.json").read_text())["models"] == report["models"]


def test_bad_model_specs_are_one_sentence(script, tmp_path, capsys):
    for spec, message in (("ours", "expected NAME=WEIGHTS"), (f"ours={tmp_path / 'none.pt'}", "not found")):
        assert script.main(["--model", spec, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert script.main(["--model", "x=y", "--corrupt", "fgo", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'fog'" in capsys.readouterr().err


def test_summary_splits_trained_on_and_held_out():
    from detector.robustness import summarize

    scores = {("fog", 1): {"AP": 0.4, "AP50": 0.8}, ("fog", 2): {"AP": 0.2, "AP50": 0.6},
              ("snow", 1): {"AP": 0.1, "AP50": 0.3}}
    summary = summarize({"AP": 0.5, "AP50": 1.0}, scores, trained_on=["fog", "rain"])
    # mPC: mean over corruptions of their severity means: fog 0.3, snow 0.1 -> 0.2
    assert summary["mPC_AP"] == pytest.approx(0.2) and summary["rPC_AP"] == pytest.approx(0.4)
    assert summary["seen"]["names"] == ["fog"] and summary["seen"]["rPC_AP"] == pytest.approx(0.6)
    assert summary["seen"]["mPC_AP"] == pytest.approx(0.3) and summary["seen"]["rPC_AP50"] == pytest.approx(0.7)
    assert summary["held_out"]["names"] == ["snow"] and summary["held_out"]["mPC_AP"] == pytest.approx(0.1)
    assert summarize({"AP": 0.0, "AP50": 0.0}, scores)["rPC_AP"] is None


def test_markdown_scores_every_model_over_the_robust_models_groups(script):
    """The trained-on / held-out rows use the robust model's training list for every model, so they compare."""
    def summary(fog: float, snow: float, trained_on=None) -> dict:
        corruptions = [{"name": "fog", "severity": 1, "AP": fog}, {"name": "snow", "severity": 1, "AP": snow}]
        return {"clean": {"AP": 0.5}, "corruptions": corruptions, "mPC_AP": (fog + snow) / 2,
                "rPC_AP": (fog + snow) / 1.0, "trained_on": trained_on}

    report = {"split": "val", "command": "c", "date": "d", "machine": {"platform": "p", "threads": 2},
              "versions": {"torch": "t", "albumentations": "a"},
              "models": {"plain": summary(0.2, 0.3), "robust": summary(0.4, 0.35, ["fog"])}}
    text = script.markdown(report)
    assert "| mPC / rPC, trained-on corruptions | 0.200 / 0.400 | 0.400 / 0.800 |" in text
    assert "| mPC / rPC, held-out corruptions | 0.300 / 0.600 | 0.350 / 0.700 |" in text
    assert "| fog | 0.200 | 0.400* |" in text


def test_an_interrupted_model_resumes_at_the_corruption_where_it_stopped(script, tiny_checkpoint, tmp_path,
                                                                          monkeypatch, capsys):
    """Clean and fog:1 are scored, then the run dies during night:5: robustness.partial.json holds the two figures,
    and the next run scores night:5 alone, writes the model to robustness.json and removes the partial file."""
    out = tmp_path / "r"
    argv = ["--model", f"ours={tiny_checkpoint}", "--split", "val", "--corrupt", "fog:1,night:5", "--max-images", "2",
            "--out", str(out)]
    real_scorer, calls = script.scorer, []

    def counting_scorer(*args, fail_at=None, **kwargs):
        run, config = real_scorer(*args, **kwargs)

        def counted(wrap):
            calls.append(wrap)
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt
            return run(wrap)
        return counted, config

    monkeypatch.setattr(script, "scorer", lambda *a, **k: counting_scorer(*a, fail_at=3, **k))
    with pytest.raises(KeyboardInterrupt):
        script.main(argv)
    partial = json.loads((out / script.PARTIAL).read_text())["ours"]
    assert partial["clean"]["AP"] >= 0 and [(c["name"], c["severity"]) for c in partial["scores"]] == [("fog", 1)]
    assert not (out / "robustness.json").exists()

    calls.clear()
    monkeypatch.setattr(script, "scorer", counting_scorer)
    assert script.main(argv) == 0
    assert len(calls) == 1  # night:5 only
    assert "resuming from" in capsys.readouterr().out
    summary = json.loads((out / "robustness.json").read_text())["models"]["ours"]
    assert [(c["name"], c["severity"]) for c in summary["corruptions"]] == [("fog", 1), ("night", 5)]
    assert summary["clean"] == partial["clean"] and summary["corruptions"][0]["AP"] == partial["scores"][0]["AP"]
    assert not (out / script.PARTIAL).exists()


def test_an_unreadable_partial_file_is_one_sentence(script, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / script.PARTIAL).write_text("{not json")
    argv = ["--model", f"ours={tiny_checkpoint}", "--split", "val", "--corrupt", "fog:1", "--max-images", "1",
            "--out", str(out)]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert "robustness.partial.json: cannot read the figures of an interrupted run" in err and "delete it" in err
