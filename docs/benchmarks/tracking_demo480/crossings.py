"""Which line crossings the demo checkpoint's tracks miss on the driver's-eye benchmark videos (docs/BENCHMARKS.md,
issue 13): the crossing events of the true trajectories against those of `detector track`'s counts.json.

    python docs/benchmarks/tracking_demo480/crossings.py   # from the repository root; runs/demo/train/best.pt

Renders the two driver's-eye videos of scripts/track_benchmark.py under work/ (ignored) and writes crossings.json.
"""
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import track_benchmark as tb
from detector.api import Detector
from detector.data.synthetic import render_video
from detector.track.run import run_tracking

HERE = Path(__file__).parent
detector = Detector.load("runs/demo/train/best.pt")
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
    report[name] = {"true": truth, "ours": ours, "true crossings with no event of ours within a frame": unmatched}
(HERE / "crossings.json").write_text(json.dumps(report, indent=1))
print(json.dumps({name: r["true crossings with no event of ours within a frame"] for name, r in report.items()}))
