"""Which line crossings the demo checkpoint's tracks miss on the driver's-eye benchmark videos (docs/BENCHMARKS.md,
issue 13): the crossing events of the true trajectories against those of `detector track`'s counts.json.

    python docs/benchmarks/tracking_demo480/crossings.py [CHECKPOINT [OUT_JSON]]   # from the repository root

CHECKPOINT defaults to runs/demo/train/best.pt, OUT_JSON to crossings.json beside this script. Renders the two
driver's-eye videos of scripts/track_benchmark.py under work/ (ignored). Besides the true crossings that no event of
ours matches within a frame (missed), it lists our events that match no true crossing in their direction (extra).
"""
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import track_benchmark as tb
from detector.api import Detector
from detector.data.synthetic import render_video
from detector.track.run import run_tracking

HERE = Path(__file__).parent
checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/demo/train/best.pt"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "crossings.json"
detector = Detector.load(checkpoint)
report = {}
for name in ("driver", "driver, stop-and-go + occlusions"):
    spec = tb.VIDEOS[name]
    folder = tb.video_folder(HERE / "work", name)
    shutil.rmtree(folder / "ours", ignore_errors=True)
    video = render_video(folder / "video.mp4", num_frames=300, **spec)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    height, width = spec["size"]
    line = ("gate", (0.0, 0.65 * height), (float(width), 0.65 * height))
    truth = [{"frame": e.frame, "true_id": e.track_id, "direction": e.direction}
             for e in tb.true_crossings(sidecar, line)[1]]
    run_tracking(detector, str(video), folder / "ours", lines=[f"0,{0.65 * height},{width},{0.65 * height}:gate"],
                 config=detector.config.track, batch_size=4)
    counts = json.loads((folder / "ours" / "counts.json").read_text())
    ours = [{"frame": e["frame"], "track_id": e["track_id"], "direction": e["direction"]} for e in counts["events"]]
    unmatched = [t for t in truth if not any(abs(o["frame"] - t["frame"]) <= 1 for o in ours)]
    extra = [o for o in ours
             if not any(abs(o["frame"] - t["frame"]) <= 1 and o["direction"] == t["direction"] for t in truth)]
    report[name] = {"checkpoint": checkpoint, "true": truth, "ours": ours,
                    "true crossings with no event of ours within a frame": unmatched,
                    "events of ours with no true crossing in their direction within a frame": extra}
out.write_text(json.dumps(report, indent=1))
print(json.dumps({name: {"missed": r["true crossings with no event of ours within a frame"],
                         "extra": r["events of ours with no true crossing in their direction within a frame"]}
                  for name, r in report.items()}))
