"""Recall by true box height of the demo checkpoint on the driver's-eye tuning videos, whole frame at data.max_size
against sliced inference (tiles upscaled to data.max_size, so far cars are seen larger), every 20th frame, score >= 0.5,
IoU >= 0.5; false positives are boxes that match no true box at IoU 0.5.

    python docs/benchmarks/tracking_tuning/slice_recall.py 240,320   # after tune.py rendered work/driver_*/video.mp4

Writes slice_recall.json beside this file.
"""
import json, sys, time
from pathlib import Path

import cv2
import numpy as np

from detector.api import Detector
from detector.slicing import predict_sliced
from detector.track.bytetrack import iou_matrix

HERE = Path(__file__).parent
BINS, NAMES = [0, 15, 25, 40, 10_000], ["<15", "15-25", "25-40", ">40"]
det = Detector.load("runs/demo/train/best.pt")
settings = [("whole frame", None), *[(f"slice {s}", int(s)) for s in sys.argv[1].split(",")]]
report = {"checkpoint": "runs/demo/train/best.pt", "max_size": det.config.data.max_size, "overlap": 0.3, "videos": {}}
for video in ("driver_a", "driver_b"):
    side = json.loads((HERE / "work" / video / "video.json").read_text())
    capture, frames = cv2.VideoCapture(str(HERE / "work" / video / "video.mp4")), []
    while (grabbed := capture.read())[0]:
        frames.append(cv2.cvtColor(grabbed[1], cv2.COLOR_BGR2RGB))
    picked = range(0, len(frames), 20)
    for name, size in settings:
        total, found, false_pos, started = np.zeros(4), np.zeros(4), 0, time.perf_counter()
        for i in picked:
            d = det.predict(frames[i], score_thresh=0.5) if size is None else \
                predict_sliced(det, frames[i], size, 0.3, score_thresh=0.5)
            boxes = np.asarray(d.boxes, np.float64).reshape(-1, 4)
            truth = np.array(side["frames"][i]["boxes"], np.float64).reshape(-1, 4)
            iou = iou_matrix(truth, boxes) if len(truth) and len(boxes) else np.zeros((len(truth), len(boxes)))
            best = iou.max(1) if len(boxes) else np.zeros(len(truth))
            false_pos += int((iou.max(0) < 0.5).sum()) if len(truth) else len(boxes)
            for height, hit in zip(truth[:, 3] - truth[:, 1], best):
                k = np.searchsorted(BINS, height, side="right") - 1
                total[k] += 1
                found[k] += hit >= 0.5
        row = {"recall": {n: round(f / t, 3) if t else None for n, f, t in zip(NAMES, found, total)},
               "true_boxes": dict(zip(NAMES, total.astype(int).tolist())), "false_positives": false_pos,
               "ms_per_frame": round((time.perf_counter() - started) / len(picked) * 1000, 1)}
        report["videos"].setdefault(video, {})[name] = row
        print(video, name, row, flush=True)
(HERE / "slice_recall.json").write_text(json.dumps(report, indent=1))
