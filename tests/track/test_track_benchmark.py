"""scripts/track_benchmark.py without a model: the ground-truth rows, their ignore regions and --set."""

from __future__ import annotations

import json

import pytest

from conftest import script_module


@pytest.fixture(scope="module")
def bench():
    with script_module("track_benchmark") as module:
        yield module


@pytest.mark.slow
def test_truth_rows_score_the_tracker_alone(bench, tmp_path, monkeypatch):
    """With the true boxes as detections, every video's row is near perfect and its count exact; --set reaches the
    tracker (track.* overrides without a checkpoint), and a bad key is one sentence with exit code 2."""
    seen = []
    original = bench.run_tracking
    monkeypatch.setattr(bench, "run_tracking", lambda *a, **k: seen.append(k["config"].max_lost) or original(*a, **k))
    assert bench.main(["--rows", "truth", "--frames", "40", "--set", "track.max_lost=12", "--min-height", "25",
                       "--out", str(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    assert set(rows) == {f"{name}: ground truth" for name in bench.VIDEOS} and seen == [12] * len(bench.VIDEOS)
    for row in rows.values():
        assert row["MOTA"] > 0.9 and row["IDF1"] > 0.9 and row["false positives"] == 0
        assert row["count_error"] == 0
        kitti = row["min_height"]  # the same tracks scored without the cars under 25 px
        assert kitti["px"] == 25 and kitti["MOTA"] > 0.9 and kitti["false positives"] == 0
        assert 0 < kitti["ground-truth boxes"] <= row["ground-truth boxes"]
    driver = rows["driver: ground truth"]  # far cars: the driver's view has many under 25 px
    assert driver["min_height"]["ground-truth boxes"] < driver["ground-truth boxes"]
    assert "true cars under 25 px tall ignored" in (tmp_path / "a" / "results.md").read_text()
    assert bench.main(["--rows", "truth", "--set", "track.max_lots=3", "--out", str(tmp_path / "b")]) == 2


def test_ignore_regions_come_from_the_sidecar(bench):
    sidecar = {"frames": [{"index": 0, "boxes": [], "track_ids": [], "ignore": [[1.0, 2.0, 3.0, 4.0]]},
                          {"index": 1, "boxes": [], "track_ids": [], "ignore": []}]}
    (region,) = bench.ignore_of(sidecar)
    assert region.frame == 1 and region.box == (1.0, 2.0, 3.0, 4.0) and region.score == 0.0


def test_the_fps_row_needs_its_clip(bench, tmp_path, capsys):
    assert bench.main(["--rows", "fps", "--checkpoint", "x.pt", "--clip", str(tmp_path / "none.mp4"),
                       "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--clip" in err and "no such video" in err


def test_min_height_must_not_be_negative(bench, tmp_path, capsys):
    assert bench.main(["--rows", "truth", "--min-height", "-5", "--out", str(tmp_path / "o")]) == 2
    assert "--min-height must be >= 0 pixels, got -5.0" in capsys.readouterr().err
