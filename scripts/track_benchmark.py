"""Benchmark: tracking and counting against ground truth (issue 13's targets), and tracking FPS against detect FPS.

    python scripts/track_benchmark.py --checkpoint runs/demo/train/best.pt --out docs/benchmarks/tracking
    python scripts/track_benchmark.py --rows truth --out /tmp/tracking  # the tracker alone: no checkpoint needed

Rows, on synthetic videos whose cars keep their identities (detector.data.synthetic.render_video; seeds the tests
do not use): a driver's-eye and a top-down video, and the same two scenes with stop-and-go traffic and brief full
occlusions (a parked car behind a passing van; a bridge):
- ``ground truth`` (``--rows truth``): the true boxes fed to the tracker as detections: what the tracker alone loses;
- ``ours`` (``--rows ours``): the checkpoint's detections (the demo checkpoint, trained on the same renderer).
Each row reports MOTA, IDF1, HOTA, ID switches (and how many of them came across a gap in the car's ground truth,
the ones a full occlusion may explain), fragmentations (detector.track.metrics) and the line counts against the true
counts: a horizontal line at 65% of the frame height, counted on the true trajectories with the same counter. The FPS
row (``--rows fps``) runs `detect` and `track` on the real dash-cam clip in one process, alternating.
Writes results.json and results.md to ``--out`` (which must be new or empty).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detector.api import Detector
from detector.config import Config, TrackConfig, apply_overrides
from detector.data.synthetic import render_video
from detector.runs import json_safe, prepare_out_dir
from detector.structures import Detections, DetectorError
from detector.track.counting import CountEvent, LineCounter, bottom_centre
from detector.track.metrics import direction_count_error, evaluate_tracks, line_count_error
from detector.track.mot import MotBox, read_mot
from detector.track.run import run_tracking
from detector.video import run_detection

VIDEOS = {
    "driver": dict(view="driver", seed=9101, size=(320, 480)),
    "topdown": dict(view="topdown", seed=9202, size=(480, 480)),
    "driver, stop-and-go + occlusions": dict(view="driver", seed=9101, size=(320, 480), stop_and_go=True,
                                             occlusions=True),
    "topdown, stop-and-go + occlusions": dict(view="topdown", seed=9202, size=(480, 480), stop_and_go=True,
                                              occlusions=True),
}
ROWS = ("truth", "ours", "fps")


class TruthAsDetections:
    """A FramePredictor that returns each frame's true boxes (score 0.95): frames arrive in order, none skipped."""

    def __init__(self, frames: list[dict], class_names: list[str]) -> None:
        self.frames, self.class_names, self.next = frames, class_names, 0

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None) -> list[Detections]:
        out = []
        for _ in images:
            boxes = torch.tensor(self.frames[self.next]["boxes"], dtype=torch.float32).reshape(-1, 4)
            out.append(Detections(boxes, torch.full((len(boxes),), 0.95), torch.ones(len(boxes), dtype=torch.int64),
                                  self.class_names))
            self.next += 1
        return out


def truth_of(sidecar: dict) -> list[MotBox]:
    return [MotBox(frame["index"] + 1, int(track_id) + 1, tuple(box)) for frame in sidecar["frames"]  # ids from 1
            for box, track_id in zip(frame["boxes"], frame["track_ids"])]


def ignore_of(sidecar: dict) -> list[MotBox]:
    """The renderer's ignore regions (cars too hidden to ask for) per frame, for `evaluate_tracks`."""
    return [MotBox(frame["index"] + 1, 0, tuple(box), 0.0) for frame in sidecar["frames"] for box in frame["ignore"]]


def true_crossings(sidecar: dict, line: tuple[str, tuple, tuple]) -> tuple[LineCounter, list[CountEvent]]:
    """The counter of ``line`` fed the true trajectories (the same rule as the tracker's), and its crossing events
    (``track_id`` is the renderer's id)."""
    counter, events = LineCounter(*line), []
    for frame in sidecar["frames"]:
        entries = [(int(i), "car", bottom_centre(np.array(box))) for box, i in zip(frame["boxes"], frame["track_ids"])]
        events += counter.update(frame["index"], frame["index"] / sidecar["fps"], entries)
    return counter, events


def true_counts(sidecar: dict, line: tuple[str, tuple, tuple]) -> dict[str, int]:
    """Crossings of ``line`` by the true trajectories, counted by the same rule as the tracker's counter."""
    counter, _ = true_crossings(sidecar, line)
    return {"left": counter.total("left"), "right": counter.total("right")}


def video_folder(work: Path, name: str) -> Path:
    """The folder of one benchmark video (a VIDEOS name) under ``work``."""
    return work / name.replace(", ", "_").replace(" + ", "_").replace(" ", "_")


def track_row(predictor, video: Path, sidecar: dict, line_text: str, line: tuple, work: Path,
              config: TrackConfig, min_height: float = 0.0) -> dict:
    summary = run_tracking(predictor, str(video), work, lines=[line_text], config=config, batch_size=4)
    predicted = read_mot(summary.mot_path)
    metrics = evaluate_tracks(truth_of(sidecar), predicted, ignore_of(sidecar))
    if min_height:
        metrics["min_height"] = {"px": min_height, **evaluate_tracks(truth_of(sidecar), predicted, ignore_of(sidecar),
                                                                     min_height=min_height)}
    truth = true_counts(sidecar, line)
    got = summary.counts["lines"][line[0]]
    error = line_count_error((got["left"], got["right"]), (truth["left"], truth["right"]))
    metrics.update({"counts": {"left": got["left"], "right": got["right"]}, "true_counts": truth,
                    "count_error": error["total_relative"],
                    "tracker_ms_per_frame": 1000 * summary.tracker_seconds / max(summary.frames, 1),
                    "model_ms_per_frame": 1000 * summary.model_seconds / max(summary.frames, 1)})
    return metrics


def fps_row(detector: Detector, clip: Path, work: Path, repeats: int) -> dict:
    detect, track = [], []
    for index in range(repeats):  # alternate, so load from other processes hits both alike
        started = time.perf_counter()
        summary = run_detection(detector, str(clip), out_dir=work / f"detect{index}", batch_size=1)
        detect.append(summary.frames / (time.perf_counter() - started))
        started = time.perf_counter()
        summary = run_tracking(detector, str(clip), work / f"track{index}", lines=["0,400,960,400:near"], batch_size=1)
        track.append(summary.frames / (time.perf_counter() - started))
    return {"detect_fps": float(np.median(detect)), "track_fps": float(np.median(track)),
            "ratio": float(np.median(track) / np.median(detect)), "repeats": repeats}


def parse_rows(text: str) -> list[str]:
    rows = [row.strip() for row in text.split(",") if row.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown or not rows:
        raise DetectorError(f"--rows {text!r}: expected a comma-separated subset of {', '.join(ROWS)}")
    return rows


def tracking_rows(rows: list[str], detector: Detector | None, frames: int, work: Path,
                  config: TrackConfig, min_height: float = 0.0) -> dict[str, dict]:
    """The ``truth`` and ``ours`` rows of every video in VIDEOS, tracked with ``config``; with ``min_height``, each
    row also scored by KITTI's rule (cars under that many pixels tall ignored)."""
    results: dict[str, dict] = {}
    for name, spec in VIDEOS.items():
        folder = video_folder(work, name)
        video = render_video(folder / "video.mp4", num_frames=frames, **spec)
        sidecar = json.loads(video.with_suffix(".json").read_text())
        height, width = spec["size"]
        line = ("gate", (0.0, 0.65 * height), (float(width), 0.65 * height))
        line_text = f"0,{0.65 * height},{width},{0.65 * height}:gate"
        if "truth" in rows:
            truth = TruthAsDetections(sidecar["frames"], detector.class_names if detector else ["car"])
            results[f"{name}: ground truth"] = track_row(truth, video, sidecar, line_text, line, folder / "truth",
                                                         config, min_height)
        if "ours" in rows:
            results[f"{name}: ours"] = track_row(detector, video, sidecar, line_text, line, folder / "ours", config,
                                                 min_height)
    return results


def results_table(rows: dict[str, dict]) -> list[str]:
    lines = ["| row | MOTA | IDF1 | HOTA | ID switches (across a gap) | fragmentations | counts (left/right) | true | "
             "count error, total | by direction |", "|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for name, row in rows.items():
        if "MOTA" in row:
            got, true = row["counts"], row["true_counts"]
            # computed from the counts, so results.json files written before this column get it too
            by_direction = direction_count_error((got["left"], got["right"]), (true["left"], true["right"]))
            lines.append(f"| {name} | {row['MOTA']:.3f} | {row['IDF1']:.3f} | {row['HOTA']:.3f} | "
                         f"{row['ID switches']:.0f} ({row['ID switches across a gap']:.0f}) | "
                         f"{row['fragmentations']:.0f} | {got['left']}/{got['right']} | "
                         f"{true['left']}/{true['right']} | "
                         f"{100 * row['count_error']:+.1f}% | {100 * by_direction:.1f}% |")
    scored = {name: row["min_height"] for name, row in rows.items() if "min_height" in row}
    if scored:
        px = next(iter(scored.values()))["px"]
        lines += ["", f"Scored as KITTI's tracking benchmark: true cars under {px:g} px tall ignored (--min-height):",
                  "", "| row | MOTA | IDF1 | HOTA | ID switches | cars scored | misses | false positives |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {m['MOTA']:.3f} | {m['IDF1']:.3f} | {m['HOTA']:.3f} | {m['ID switches']:.0f} | "
                  f"{m['ground-truth boxes']:.0f} | {m['misses']:.0f} | {m['false positives']:.0f} |"
                  for name, m in scored.items()]
    if "dash-cam FPS" in rows:
        fps = rows["dash-cam FPS"]
        lines += ["", f"Dash-cam clip: detect {fps['detect_fps']:.1f} FPS, track {fps['track_fps']:.1f} FPS "
                      f"(ratio {fps['ratio']:.2f}), median of {fps['repeats']} alternating runs."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="our checkpoint (the demo's: runs/demo/train/best.pt); needed by the "
                                             "ours and fps rows")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)} (default all)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--clip", default="../shared/data/videos/solidWhiteRight.mp4")
    parser.add_argument("--fps-repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="checkpoint overrides, e.g. track.high_thresh=0.4 or data.max_size=480")
    parser.add_argument("--min-height", type=float, default=0.0, metavar="PX",
                        help="also score every row as KITTI's tracking benchmark does (25): true cars under PX pixels "
                             "tall ignored (default 0: only every car)")
    args = parser.parse_args(argv)
    try:
        if args.min_height < 0:
            raise DetectorError(f"--min-height must be >= 0 pixels, got {args.min_height}")
        rows_wanted = parse_rows(args.rows)
        if not args.checkpoint and {"ours", "fps"} & set(rows_wanted):
            raise DetectorError(f"--rows {args.rows} needs --checkpoint (only the truth rows run without a model)")
        if "fps" in rows_wanted and not Path(args.clip).is_file():
            raise DetectorError(f"--clip {args.clip}: no such video (the fps row times detect and track on it)")
        out = prepare_out_dir(args.out)
        detector = Detector.load(args.checkpoint, overrides=args.set) if args.checkpoint else None
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            track = (detector.config if detector else apply_overrides(Config(), args.set)).track
            rows = tracking_rows(rows_wanted, detector, args.frames, work, track, args.min_height)
            if "fps" in rows_wanted:
                rows["dash-cam FPS"] = fps_row(detector, Path(args.clip), work, args.fps_repeats)
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    environment = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")}
    command = "python scripts/track_benchmark.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    (out / "results.json").write_text(json.dumps(json_safe({"rows": rows, "command": command,
                                                            "environment": environment}), indent=2))
    lines = results_table(rows)
    (out / "results.md").write_text("\n".join(["# Tracking benchmark", "", *lines, "", "Command:", "", f"    {command}",
                                               ""]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
