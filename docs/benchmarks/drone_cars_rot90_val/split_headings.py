"""Box shapes per block of configs/drone_cars.yaml, from the labels alone (no model): how many cars lie across the
frame (wider than 1.5x their height), along it (taller than 1.5x their width) or in between (turning, or at a
diagonal). Writes split_headings.json beside this file.

    python docs/benchmarks/drone_cars_rot90_val/split_headings.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DATA = ROOT / "../shared/data/drone_cars"


def main() -> None:
    config = yaml.safe_load((ROOT / "configs/drone_cars.yaml").read_text())["data"]
    shapes: dict[str, list[np.ndarray]] = {}
    for label in sorted((DATA / "labels").glob("*.txt")):
        name = label.stem + ".jpg"
        block = next((b for b in ("train", "val", "test") if re.match(config[f"{b}_filter"], name)), None)
        if block is None:
            continue  # the gaps between blocks
        part = "Drone2 frames" if name.startswith("Drone2") else "tiles"
        rows = [line.split()[3:5] for line in label.read_text().splitlines() if line.strip()]
        shapes.setdefault(f"{block}, {part}", []).append(np.array(rows, float).reshape(-1, 2))
    report = {}
    for key in sorted(shapes):
        wh = np.concatenate(shapes[key])
        ratio = wh[:, 0] / wh[:, 1]  # width over height (normalized by the same square tile side)
        report[key] = {"images": len(shapes[key]), "boxes": len(wh), "across": round(float((ratio > 1.5).mean()), 3),
                       "along": round(float((ratio < 1 / 1.5).mean()), 3),
                       "in_between": round(float(((ratio >= 1 / 1.5) & (ratio <= 1.5)).mean()), 3)}
        print(f"{key:22s} {report[key]}")
    (HERE / "split_headings.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
