"""Test-time augmentation with quarter turns on the drone config: choose on val, then score the choice on test once.

    python docs/benchmarks/drone_cars_tta_turns/tta_turns.py VAL_CKPT TEST_CKPT [TEST_CKPT ...]

VAL_CKPT: weights trained on the train block alone with augment.rotate90 (the 480-step val row of
docs/benchmarks/drone_cars_rot90_val). TEST_CKPT: the final fits of configs/drone_cars.yaml (one per seed).

The rule, fixed before any view was scored, is RULE below. Each evaluation runs `detector eval` as a user would and is
timed whole (seconds per image, with model loading, the validation-loss pass and the plots). Writes summary.json beside
this script; evaluation folders go to runs/eval/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATASET = "../shared/data/drone_cars"
VARIANTS = {  # name -> eval overrides; each view is one more pass of the model
    "plain": ["eval.tta=false"],
    "flip+1.25x": ["eval.tta=true"],  # sizes 640 and 800, each also mirrored: 4 views
    "flip+turn": ["eval.tta=true", "eval.tta_sizes=[640]", "eval.tta_turns=[0,1]"],  # 4 views
    "flip+turn+1.25x": ["eval.tta=true", "eval.tta_turns=[0,1]"],  # 8 views
}
BASELINE, MARGIN = "flip+1.25x", 0.005
RULE = ("every TTA variant is scored on the val block with VAL_CKPT; the one with the highest AP is chosen, but a "
        "turned variant replaces flip+1.25x (what eval.tta gave before turns existed) only if it leads it by more than "
        "0.005 AP; the chosen variant alone is then scored on the test block with each TEST_CKPT (seed 0, seed 1)")
IMAGES = {"val": 157, "test": 111}


def _cpu() -> str:
    """The processor's model name (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def score(checkpoint: str, split: str, variant: str, out: Path) -> dict:
    """Run `detector eval` on one split with one variant; its metrics and seconds per image."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if (out / "metrics.json").is_file():  # scored by an earlier, interrupted run
        metrics = json.loads((out / "metrics.json").read_text())
        return {"metrics": {k: metrics[k] for k in keys}, "seconds_per_image": None, "reused": str(out)}
    command = [str(Path(sys.executable).parent / "detector"), "eval", checkpoint, DATASET, "--format", "yolo",
               "--split", split, "--out", str(out), *VARIANTS[variant]]
    start = time.perf_counter()
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"tta_turns.py: `detector eval` of {checkpoint} on {split} with {variant} failed (its message "
                         f"is above); summary.json keeps the variants scored so far")
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": {k: metrics[k] for k in keys},
            "seconds_per_image": round(seconds / IMAGES[split], 3), "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_checkpoint")
    parser.add_argument("test_checkpoints", nargs="+")
    args = parser.parse_args()
    summary = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rule": RULE,
               "environment": {"machine": _cpu(), "cores": os.cpu_count(),
                               "python": platform.python_version(), "torch": torch.__version__,
                               "threads": torch.get_num_threads()},
               "val_checkpoint": args.val_checkpoint, "val": {}, "test": {}}
    path = HERE / "summary.json"
    for variant in VARIANTS:
        summary["val"][variant] = score(args.val_checkpoint, "val", variant, Path(f"runs/eval/tta_turns_val_{variant}"))
        path.write_text(json.dumps(summary, indent=2))
    best = max((v for v in VARIANTS if v != "plain"), key=lambda v: summary["val"][v]["metrics"]["AP"])
    if best != BASELINE and summary["val"][best]["metrics"]["AP"] - summary["val"][BASELINE]["metrics"]["AP"] <= MARGIN:
        best = BASELINE
    summary["chosen"] = best
    for seed, checkpoint in enumerate(args.test_checkpoints):
        summary["test"][f"seed {seed}"] = {"checkpoint": checkpoint, **score(
            checkpoint, "test", best, Path(f"runs/eval/tta_turns_test_seed{seed}_{best}"))}
        path.write_text(json.dumps(summary, indent=2))
    summary["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("chosen", "test")}, indent=2))


if __name__ == "__main__":
    main()
