"""The record of a tuning run (docs/BENCHMARKS.md, issue 13): the demo checkpoint's tracking on four videos that are
not the benchmark's (scripts/track_benchmark.py uses seeds 9101 / 9202), at several data.max_size values.

    python docs/benchmarks/tracking_tuning/tune.py 320,400,480   # from the repository root; runs/demo/train/best.pt
    python docs/benchmarks/tracking_tuning/tune.py 320 runs/demo_cascade/train/best.pt   # another checkpoint
    python docs/benchmarks/tracking_tuning/tune.py 320,480 runs/demo_far/train/best.pt wide   # the thresholds too
    python docs/benchmarks/tracking_tuning/tune.py 480 runs/demo_nhwc/train/best.pt areas   # track.min_box_area
    python docs/benchmarks/tracking_tuning/tune.py 480 runs/demo_seed1/train/best.pt crossing   # track.line_min_frames

Detections are cached per video, checkpoint and size under work/ (ignored), then the tracker runs with each setting of
`grid` (with ``wide``: every track.high_thresh 0.5-0.8 and track.new_track_thresh 0.6-0.9 pair; with ``areas``:
track.min_box_area 0-2500 px^2 at configs/demo.yaml's high_thresh and new_track_thresh, 0.8; with ``crossing``:
track.line_min_frames 1-3 at configs/demo.yaml's thresholds and min_box_area, 900); each row gives per
video (MOTA, IDF1, counted minus true crossings, MOTA with cars under 25 px ignored, and, in rows written since
min_box_area, crossings counted wrong per direction: |left| + |right|).
Writes work/results_<sizes>[_<checkpoint folder>][_wide|_areas].json.
"""
import itertools, json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "scripts")
from detector.api import Detector
from detector.config import TrackConfig
from detector.data.synthetic import render_video
from detector.structures import Detections
from detector.track.run import run_tracking
from detector.track.metrics import evaluate_tracks
from detector.track.mot import read_mot
import track_benchmark as tb

VIDEOS = {"driver a": dict(view="driver", seed=9131, size=(320, 480)),
          "driver b": dict(view="driver", seed=9137, size=(320, 480), stop_and_go=True, occlusions=True),
          "topdown a": dict(view="topdown", seed=9241, size=(480, 480)),
          "topdown b": dict(view="topdown", seed=9247, size=(480, 480), stop_and_go=True, occlusions=True)}

class Cached:
    def __init__(self, dets, names): self.dets, self.class_names, self.next = dets, names, 0
    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
        out = []
        for _ in images:
            b, s, l = self.dets[self.next]; keep = s >= (score_thresh or 0)
            out.append(Detections(torch.from_numpy(b[keep]), torch.from_numpy(s[keep]), torch.from_numpy(l[keep]), self.class_names)); self.next += 1
        return out

work = Path("docs/benchmarks/tracking_tuning/work"); work.mkdir(exist_ok=True)
sizes = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 else [320, 480]
checkpoint = sys.argv[2] if len(sys.argv) > 2 else "runs/demo/train/best.pt"
tag = "" if checkpoint == "runs/demo/train/best.pt" else Path(checkpoint).parent.parent.name + "_"
cache = {}
for name, spec in VIDEOS.items():
    folder = work / name.replace(" ", "_")
    video = folder / "video.mp4"
    if not video.exists():
        render_video(video, num_frames=300, **spec)
    side = json.loads(video.with_suffix(".json").read_text())
    for size in sizes:
        path = folder / f"dets_{tag}{size}.npz"
        if not path.exists():
            det = Detector.load(checkpoint, overrides=[f"data.max_size={size}"])
            rec = Cached([], det.class_names)
            class Grab:
                class_names = det.class_names
                def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
                    out = det.predict_batch(images, score_thresh=0.05)
                    for d in out: rec.dets.append((d.boxes.numpy(), d.scores.numpy(), d.labels.numpy()))
                    return out
            t = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                run_tracking(Grab(), str(video), Path(tmp) / "o", batch_size=4, config=TrackConfig(low_thresh=0.05))
            np.savez(path, *[x for d in rec.dets for x in d])
            print(f"{name} @ {size}: detected in {time.time() - t:.0f} s", flush=True)
        arrays = np.load(path); flat = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        cache[(name, size)] = ([tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)], side, video)

mode = sys.argv[3] if len(sys.argv) > 3 else ""
wide = mode == "wide"
areas = mode == "areas"  # at configs/demo.yaml's thresholds (0.8 / 0.8), which the benchmark uses
crossing = mode == "crossing"  # at configs/demo.yaml's thresholds and min_box_area (900)
demo = areas or crossing
grid = {"high_thresh": [0.5, 0.6, 0.7, 0.8] if wide else [0.8] if demo else [0.5],
        "new_track_thresh": [0.6, 0.7, 0.8, 0.9] if wide else [0.8] if demo else [0.6], "low_thresh": [0.1],
        "min_box_area": [0, 100, 200, 300, 400, 625, 900, 1200, 1600, 2500] if areas else [900] if crossing else [0],
        "line_min_frames": [1, 2, 3] if crossing else [1]}
results = []
for size in sizes:
    for values in itertools.product(*grid.values()):
        cfg = TrackConfig(**dict(zip(grid, values)))
        if cfg.new_track_thresh < cfg.high_thresh: continue
        row = {"size": size, **dict(zip(grid, values))}
        for name in VIDEOS:
            dets, side, video = cache[(name, size)]
            h, w = side["height"], side["width"]
            line = ("gate", (0.0, 0.65 * h), (float(w), 0.65 * h)); text = f"0,{0.65 * h},{w},{0.65 * h}:gate"
            with tempfile.TemporaryDirectory() as tmp:
                summary = run_tracking(Cached(dets, ["car"]), str(video), Path(tmp) / "o", lines=[text], config=cfg, batch_size=4)
                m = evaluate_tracks(tb.truth_of(side), read_mot(summary.mot_path), tb.ignore_of(side))
                k = evaluate_tracks(tb.truth_of(side), read_mot(summary.mot_path), tb.ignore_of(side), min_height=25)
            truth = tb.true_counts(side, line); got = summary.counts["lines"]["gate"]
            row[name] = (round(m["MOTA"], 3), round(m["IDF1"], 3), got["total"] - truth["left"] - truth["right"],
                         round(k["MOTA"], 3), abs(got["left"] - truth["left"]) + abs(got["right"] - truth["right"]))
        print(row, flush=True); results.append(row)
out_name = f"results_{'_'.join(map(str, sizes))}{'_' + tag.rstrip('_') if tag else ''}{'_' + mode if mode else ''}.json"
json.dump(results, open(work / out_name, "w"), indent=1)
