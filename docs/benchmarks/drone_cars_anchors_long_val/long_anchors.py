"""How well two anchor grids fit the drone data's long vehicles (docs/BENCHMARKS.md, issue 11, "anchors for long
vehicles"): per grid and block, the share of boxes with an anchor at shape-only IoU >= 0.7, the same for the boxes
whose long side is at least 200 px at 640 (buses and trucks labelled car), and their mean best IoU. Training boxes are
counted twice, once turned a quarter, as training with augment.rotate90 sees them. Train and val only: the test block
chooses nothing.

    python docs/benchmarks/drone_cars_anchors_long_val/long_anchors.py OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from detector.anchor_report import anchor_shapes, box_shapes, shape_iou
from detector.config import load_config
from detector.data.build import build_datasets

GRIDS = {
    "shipped": ([32, 44, 62, 74, 102], [0.22, 0.5, 0.98, 2.03]),
    "+140 px +ratio 4.5": ([32, 44, 62, 74, 102, 140], [0.22, 0.5, 0.98, 2.03, 4.5]),
}
LONG, IOU = 200, 0.7


def fit(boxes_wh: np.ndarray, sizes: list[float], ratios: list[float]) -> dict[str, float]:
    best = shape_iou(boxes_wh, anchor_shapes(sizes, ratios)).max(axis=1)
    long = boxes_wh.max(axis=1) >= LONG
    return {"boxes": len(best), "share at 0.7": round(float((best >= IOU).mean()), 4), "long boxes": int(long.sum()),
            "long at 0.7": int((best[long] >= IOU).sum()), "long mean best IoU": round(float(best[long].mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the JSON file to write")
    out = Path(parser.parse_args().out)
    train, val = build_datasets(load_config("configs/drone_cars.yaml", ["data.train_on_val=false"]))
    train_wh, val_wh = box_shapes(train, 640), box_shapes(val, 640)
    blocks = {"train, each box also turned": np.concatenate([train_wh, train_wh[:, ::-1]]), "val": val_wh}
    report = {grid: {block: fit(wh, *GRIDS[grid]) for block, wh in blocks.items()} for grid in GRIDS}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
