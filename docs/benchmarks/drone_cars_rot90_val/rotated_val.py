"""The drone validation block seen at another heading: every val image turned a quarter (np.rot90, counter-clockwise)
with its YOLO labels, written to a folder outside the project, then each checkpoint scored on it with `detector eval`.

Seen from above a street can run at any heading, and the blocks differ in it: 71% of the Drone2 training boxes are
wider than tall, the val block's tiles 82%. A checkpoint that only knows the training block's headings scores lower
on the turned val block; one trained with `augment.rotate90` should score about the same on both. This is scored on
val only (every choice of issue 11 is made there).

    python docs/benchmarks/drone_cars_rot90_val/rotated_val.py /tmp/drone_val_rot90 OUT.json CHECKPOINT [CHECKPOINT ...]

With --turned-only first, only the turned block is scored (the plain val AP is then the benchmark row's own).

A YOLO box (cx, cy, w, h), normalized, turned a quarter counter-clockwise: (cy, 1 - cx, h, w).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "../shared/data/drone_cars"


def write_rotated(out: Path, pattern: str) -> int:
    """Turn every image whose name matches ``pattern`` (the config's val_filter) and its labels; -> image count."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    count = 0
    for image_path in sorted((DATA / "images").iterdir()):
        if not re.match(pattern, image_path.name):
            continue
        image = cv2.imread(str(image_path))
        cv2.imwrite(str(out / "images" / image_path.name), np.ascontiguousarray(np.rot90(image)),
                    [cv2.IMWRITE_JPEG_QUALITY, 100])
        lines = []
        label_path = DATA / "labels" / (image_path.stem + ".txt")
        for line in label_path.read_text().splitlines() if label_path.exists() else []:
            if line.strip():
                cls, cx, cy, w, h = line.split()[:5]
                cx, cy, w, h = map(float, (cx, cy, w, h))
                lines.append(f"{cls} {cy:.6f} {1 - cx:.6f} {h:.6f} {w:.6f}")
        (out / "labels" / label_path.name).write_text("\n".join(lines) + ("\n" if lines else ""))
        count += 1
    return count


def score(checkpoint: str, dataset: Path, eval_out: Path) -> dict:
    subprocess.run([str(Path(sys.executable).parent / "detector"), "eval", checkpoint, str(dataset), "--format", "yolo",
                    "--split", "val", "--out", str(eval_out), "data.train_on_val=false"], check=True, cwd=ROOT)
    metrics = json.loads((eval_out / "metrics.json").read_text())
    return {key: metrics[key] for key in ("AP", "AP50", "AP75")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turned-only", action="store_true", help="score the turned block only")
    parser.add_argument("folder", type=Path, help="where the turned block and the evaluations are written")
    parser.add_argument("out_json", type=Path, help="scores per checkpoint, kept across calls")
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    folder, out_json, checkpoints, turned_only = args.folder, args.out_json, args.checkpoints, args.turned_only
    config = yaml.safe_load((ROOT / "configs/drone_cars.yaml").read_text())
    pattern = config["data"]["val_filter"]
    print(f"{write_rotated(folder / 'data', pattern)} val images turned a quarter into {folder / 'data'}")
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    for checkpoint in checkpoints:
        if checkpoint in results:
            continue
        name = Path(checkpoint).parent.name
        results[checkpoint] = {"val_rot90": score(checkpoint, folder / "data", folder / f"eval-{name}-rot90")}
        if not turned_only:
            results[checkpoint]["val"] = score(checkpoint, DATA, folder / f"eval-{name}-val")
        print(checkpoint, results[checkpoint], flush=True)
        out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
