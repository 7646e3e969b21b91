"""`detector demo`: the whole product offline in about ten minutes on a 2-core CPU.

Renders synthetic road scenes, trains a car detector from the ImageNet-initialized backbone, evaluates it
(mAP table, PR curves, confusion matrix), detects cars in a rendered video and, when present, in the real
dash-cam clip ../shared/data/videos/solidWhiteRight.mp4, and writes everything under runs/demo/ with
summary.json holding the metrics and output paths.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detector.config import load_config
from detector.runs import json_safe, new_run_dir
from detector.structures import DetectorError

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DASHCAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "solidWhiteRight.mp4"


def run_demo(out: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run the demo into `out` (or `out-2`, ... if it exists) and return the summary."""
    from detector.api import Detector
    from detector.data.synthetic import render_video
    from detector.engine import Trainer, evaluate
    from detector.video import run_detection

    started = time.monotonic()
    out = new_run_dir(out.parent, out.name)
    if not CONFIG.is_file():
        raise DetectorError(f"the demo config {CONFIG} is missing; run the demo from a clone of the repository")
    config = load_config(CONFIG, [
        f"data.train_path={out / 'data' / 'train'}", f"data.val_path={out / 'data' / 'val'}",
        f"train.output_dir={out}", "train.name=train", *overrides,
    ])
    print(f"[demo] writing to {out}")
    trainer = Trainer(config)
    run_dir = trainer.fit()
    detector = Detector.load(run_dir / "best.pt")
    output = evaluate(detector.model, trainer.val_set, config, detector.device, with_loss=False)
    result = output.result
    print(result.table())
    eval_paths = output.save(out / "eval", config)

    videos = {"synthetic": render_video(out / "data" / "synthetic_drive.mp4", seed=config.train.seed)}
    if DASHCAM.is_file():
        videos["dashcam"] = DASHCAM
    detections = {}
    for name, video in videos.items():
        summary = run_detection(detector, str(video), out_dir=out / f"detect_{name}", score_thresh=0.5, batch_size=1)
        print(f"[demo] {name}: {summary.describe()}")
        detections[name] = summary.to_dict()

    summary = {
        "metrics": result.metrics,
        "per_class": result.per_class,
        "train_run": str(run_dir),
        "checkpoint": str(run_dir / "best.pt"),
        "runtime": detector.runtime,
        "curves": str(run_dir / "curves.png"),
        "eval": eval_paths,
        "detect": detections,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"[demo] AP50 {result.metrics['AP50']:.3f}, AP {result.metrics['AP']:.3f} in {summary['seconds']:.0f} s; "
          f"summary: {out / 'summary.json'}")
    return summary
