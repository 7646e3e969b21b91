"""`detector track` end to end: outputs that agree with each other, counts on a scripted clip, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from detector.cli import main
from detector.structures import Detections
from detector.track.mot import read_mot
from detector.track.run import run_tracking

WIDTH, HEIGHT, FRAMES = 160, 120, 30


def _clip(path: Path) -> Path:
    """Frame k is a flat grey of 5 + 8k, so a fake detector can tell which frame it sees."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (WIDTH, HEIGHT))
    for k in range(FRAMES):
        writer.write(np.full((HEIGHT, WIDTH, 3), 5 + 8 * k, np.uint8))
    writer.release()
    return path


class ScriptedCars:
    """Car A drives down the frame (y from 4 to 120, 4 px per frame); car B is parked; a ghost at score 0.05
    (below track.low_thresh) must never become a track."""

    class_names = ["car", "truck"]

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
        out = []
        for image in images:
            k = round((float(image.mean()) - 5) / 8)
            boxes = [[60.0, 4 * k - 10, 90, 4 * k + 4], [120, 20, 150, 40], [5, 5, 15, 15]]
            scores = [0.9, 0.8, 0.05]
            keep = [i for i, s in enumerate(scores) if score_thresh is None or s >= score_thresh]
            out.append(Detections(torch.tensor([boxes[i] for i in keep]), torch.tensor([scores[i] for i in keep]),
                                  torch.tensor([1, 2, 1])[keep], self.class_names))
        return out


def _outputs_agree(out: Path, video: str) -> dict:
    """The JSON, CSV, MOT file, counts and video in one run folder describe the same tracks; returns the JSON."""
    payload = json.loads((out / "tracks.json").read_text())
    json_rows = [(f["frame"], t["track_id"], t["class"], *t["box"]) for f in payload["frames"] for t in f["tracks"]]
    with (out / "tracks.csv").open() as handle:
        csv_rows = [(int(r["frame"]), int(r["track_id"]), r["class"], *(float(r[k]) for k in ("x1", "y1", "x2", "y2")))
                    for r in csv.DictReader(handle)]
    assert csv_rows == json_rows
    mot = read_mot(out / "tracks_mot.txt")
    assert sorted((b.frame - 1, b.track_id) for b in mot) == sorted((r[0], r[1]) for r in json_rows)
    by_key = {(r[0], r[1]): r[3:] for r in json_rows}
    assert all(np.allclose(by_key[(b.frame - 1, b.track_id)], b.box, atol=0.01) for b in mot)
    counts = json.loads((out / "counts.json").read_text())
    tracks_at = {(f["frame"], t["track_id"]) for f in payload["frames"] for t in f["tracks"]}
    assert all((e["frame"], e["track_id"]) in tracks_at for e in counts["events"])
    for name, line in counts["lines"].items():
        crossings = [e for e in counts["events"] if e["name"] == name and e["kind"] == "cross"]
        assert line["total"] == len(crossings) == line["left"] + line["right"]
    with av.open(str(out / video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(payload["frames"])
    return payload


def test_scripted_clip_counts_and_outputs_agree(tmp_path):
    clip = _clip(tmp_path / "road.avi")
    summary = run_tracking(ScriptedCars(), str(clip), tmp_path / "out", lines=["0,60,160,60:gate"],
                           zones=["100,10,159,10,159,50,100,50:parking"], batch_size=4)
    payload = _outputs_agree(summary.out_dir, summary.annotated.name)
    ids = {t["track_id"] for f in payload["frames"] for t in f["tracks"]}
    assert ids == {1, 2} and summary.tracks == 2  # the ghost below low_thresh never becomes a track
    gate = summary.counts["lines"]["gate"]
    assert (gate["left"], gate["right"]) == (0, 1) and gate["per_class"] == {"left": {}, "right": {"car": 1}}
    parking = summary.counts["zones"]["parking"]
    assert (parking["entries"], parking["exits"], parking["max_occupancy"]) == (1, 0, 1)
    assert parking["dwell_s"] == {"2": pytest.approx(FRAMES / 10)}
    assert summary.tracker_seconds < summary.seconds


@pytest.mark.slow
def test_track_command_on_the_dashcam_clip(tiny_checkpoint, shared_data, tmp_path, capsys):
    clip = shared_data / "videos" / "solidWhiteRight.mp4"
    out = tmp_path / "track"
    assert main(["track", str(tiny_checkpoint), str(clip), "--line", "0,400,960,400:near", "--out", str(out)]) == 0
    assert "line near:" in capsys.readouterr().out
    for name in ("solidWhiteRight.mp4", "tracks.json", "tracks.csv", "counts.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tracks_mot.txt").is_file()  # the tiny synthetic-trained checkpoint may find no real car
    assert len(_outputs_agree(out, "solidWhiteRight.mp4")["frames"]) == 221


@pytest.mark.parametrize("option, value, message", [
    ("--line", "0,10,20", "expected x1,y1,x2,y2 (4 numbers), got 3"),
    ("--line", "0,10,2000,10:far", "'line far' has the point (2000, 10) outside the 160x120 frame"),
    ("--zone", "0,0,10,10", "zone 'zone1' has 2 points; a polygon needs at least 3"),
    ("--zone", "0,0,10,10,10,0,0,10", "zone 'zone1' crosses itself"),
    ("--line", "a,b,c,d", "expected comma-separated pixel coordinates"),
    ("--overlap", "0.5", "--overlap only apply to sliced inference: add --slice SIZE"),
])
def test_bad_lines_and_zones_are_one_sentence(tiny_checkpoint, tmp_path, capsys, option, value, message):
    clip = _clip(tmp_path / "road.avi")
    args = ["track", str(tiny_checkpoint), str(clip), option, value, "--out", str(tmp_path / "o"), "--runtime", "torch"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_track_slices_every_frame_into_tiles(tiny_checkpoint, tmp_path, monkeypatch):
    """`track --slice 64 --overlap 0.2` feeds the model 3x3 tiles of 64x64 px per 160x120 frame (x from 0, 51, 96; y
    from 0, 51, 56) plus the whole frame, and its outputs agree; a tile as large as the frame leaves the tracks exactly
    as without --slice."""
    from detector.api import Detector

    seen = []
    predict_batch = Detector.predict_batch

    def recording(self, images, *args, **kwargs):
        seen.extend(np.asarray(image).shape[:2] for image in images)
        return predict_batch(self, images, *args, **kwargs)

    monkeypatch.setattr(Detector, "predict_batch", recording)
    clip = _clip(tmp_path / "road.avi")
    common = ["track", str(tiny_checkpoint), str(clip), "--runtime", "torch"]
    assert main([*common, "--slice", "64", "--overlap", "0.2", "--out", str(tmp_path / "tiles")]) == 0
    assert seen.count((64, 64)) == 9 * FRAMES and seen.count((HEIGHT, WIDTH)) == FRAMES and len(seen) == 10 * FRAMES
    _outputs_agree(tmp_path / "tiles", "road.mp4")
    seen.clear()
    assert main([*common, "--slice", "1024", "--out", str(tmp_path / "one_tile")]) == 0
    assert seen == [(HEIGHT, WIDTH)] * FRAMES
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    frames = {name: json.loads((tmp_path / name / "tracks.json").read_text())["frames"] for name in ("one_tile", "whole")}
    assert frames["one_tile"] == frames["whole"] and len(frames["whole"]) == FRAMES


@pytest.mark.parametrize("content, message", [
    ({"image": [[0, 0], [10, 0], [10, 10]], "ground": [[0, 0], [1, 0], [1, 1]]}, "expected four or more image points"),
    ({"image": [[0, 0], [1, 1], [2, 2], [3, 3]], "ground": [[0, 0], [1, 1], [2, 2], [3, 3]]}, "no invertible homography"),
    ({"image": "x"}, "expected {"),
])
def test_bad_homography_files_are_one_sentence(tiny_checkpoint, tmp_path, capsys, content, message):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(content))
    clip = _clip(tmp_path / "road.avi")
    assert main(["track", str(tiny_checkpoint), str(clip), "--homography", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_speed_from_a_homography(tmp_path):
    """Car A moves 4 px per frame at 10 fps; with 0.1 m per pixel that is 0.4 m per frame = 4 m/s = 14.4 km/h."""
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"image": [[0, 0], [160, 0], [160, 120], [0, 120]],
                                "ground": [[0, 0], [16, 0], [16, 12], [0, 12]]}))
    clip = _clip(tmp_path / "road.avi")
    summary = run_tracking(ScriptedCars(), str(clip), tmp_path / "out", homography=path)
    speeds = [t["speed_kmh"] for f in json.loads(summary.json_path.read_text())["frames"][10:] for t in f["tracks"]
              if t["track_id"] == 1]
    assert speeds and all(s == pytest.approx(14.4, rel=0.05) for s in speeds)
    parked = [t["speed_kmh"] for f in json.loads(summary.json_path.read_text())["frames"][10:] for t in f["tracks"]
              if t["track_id"] == 2]
    assert all(s == pytest.approx(0.0, abs=0.5) for s in parked)


def test_eval_track_command(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("".join(f"{f},1,0,0,10,10,1,1,1\n" for f in range(1, 5)))
    pred = tmp_path / "pred.txt"
    pred.write_text("".join(f"{f},{1 if f <= 2 else 2},0,0,10,10,0.9,-1,-1,-1\n" for f in range(1, 5)))
    assert main(["eval-track", str(pred), str(gt)]) == 0
    out = capsys.readouterr().out
    assert "HOTA: 0.7071" in out and "ID switches: 1" in out
    gt.write_text(gt.read_text() + "1,-1,30,0,10,10,0,-1,-1\n")  # flag 0: an ignore region in frame 1
    pred.write_text(pred.read_text() + "1,3,30,0,10,10,0.8,-1,-1,-1\n")  # a prediction there counts neither way
    assert main(["eval-track", str(pred), str(gt)]) == 0
    assert "false positives: 0.0" in capsys.readouterr().out
    gt.write_text(gt.read_text() + "2,4,50,0,8,8,1,1,1\n")  # an 8-px car in frame 2, missed
    assert main(["eval-track", str(pred), str(gt)]) == 0
    assert "misses: 1.0" in capsys.readouterr().out
    assert main(["eval-track", str(pred), str(gt), "--min-height", "9"]) == 0  # KITTI's rule: too small to ask for
    out = capsys.readouterr().out
    assert "misses: 0.0" in out and "ground-truth boxes: 4.0" in out
    assert main(["eval-track", str(pred), str(gt), "--min-height", "-1"]) == 2
    assert "--min-height must be >= 0 pixels, got -1.0" in capsys.readouterr().err
    pred.write_text("1,1,0,0,10\n")
    assert main(["eval-track", str(pred), str(gt)]) == 2
    assert "pred.txt:1: expected at least 7 comma-separated fields" in capsys.readouterr().err
