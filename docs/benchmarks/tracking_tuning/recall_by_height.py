"""Recall of the demo checkpoint's detections (score >= 0.5) by true box height, on the tuning videos whose
detections tune.py cached (work/<video>/dets_320.npz): found at IoU >= 0.5, and at IoU >= 0.3 (found but loose).

    python docs/benchmarks/tracking_tuning/recall_by_height.py   # after tune.py 320; writes recall_by_height.json
"""
import json
from pathlib import Path

import numpy as np

from detector.track.bytetrack import iou_matrix

HERE = Path(__file__).parent
BINS, NAMES = [0, 15, 25, 40, 80, 10_000], ["<15", "15-25", "25-40", "40-80", ">80"]
report = {}
for video in ("driver_a", "driver_b", "topdown_a", "topdown_b"):
    side = json.loads((HERE / "work" / video / "video.json").read_text())
    arrays = np.load(HERE / "work" / video / "dets_320.npz")
    flat = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    total, found, loose = np.zeros(5), np.zeros(5), np.zeros(5)
    for frame, (boxes, scores) in zip(side["frames"], [(flat[i], flat[i + 1]) for i in range(0, len(flat), 3)]):
        truth = np.array(frame["boxes"], np.float64).reshape(-1, 4)
        kept = boxes[scores >= 0.5]
        best = iou_matrix(truth, kept).max(1) if len(truth) and len(kept) else np.zeros(len(truth))
        for height, iou in zip(truth[:, 3] - truth[:, 1], best):
            k = np.searchsorted(BINS, height, side="right") - 1
            total[k] += 1
            found[k] += iou >= 0.5
            loose[k] += iou >= 0.3
    report[video] = {name: {"boxes": int(t), "recall_iou50": round(f / t, 3) if t else None,
                            "recall_iou30": round(lo / t, 3) if t else None}
                     for name, t, f, lo in zip(NAMES, total, found, loose)}
(HERE / "recall_by_height.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
