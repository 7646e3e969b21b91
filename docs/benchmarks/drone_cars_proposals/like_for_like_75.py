"""The peer inferring as ours does, at the shipped 75 test proposals (docs/BENCHMARKS.md, issue 11): the trained peers
of `drone_cars_test_rot90` (seeds 0 and 1) scored on the drone test split with ours' proposal counts, detections cap
and ONNX Runtime backbone (`peer.like_for_like`), and the batch-1 CPU time of those peers and of ours (seeds 0 and 1)
at 75 proposals, measured as `scripts/benchmark.py` measures its rows, in ROUNDS interleaved rounds (the median of
each model's rounds is its figure: one round alone swung 1.5x on this VM). Nothing is
chosen from it: ours' test figures at 75 were scored once already (`test_75_seed{0,1}_metrics.json`).

    python docs/benchmarks/drone_cars_proposals/like_for_like_75.py OUT.json [ROUNDS (default 3)]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from benchmark import TIMED_IMAGES, measure_in_child, score  # noqa: E402

from detector.config import load_config  # noqa: E402
from detector.data.build import build_datasets  # noqa: E402

MODELS = [  # (row, kind, weights): the 45-minute final fits with quarter turns, `drone_cars_test_rot90/results.json`
    ("ours, seed 0", "ours", "runs/bench/drone_cars-ours-6/best.pt"),
    ("peer like-for-like, seed 0", "peer", "runs/bench/drone_cars-peer-3/peer.pt"),
    ("ours, seed 1", "ours", "runs/bench/drone_cars-ours-seed-1-4/best.pt"),
    ("peer like-for-like, seed 1", "peer", "runs/bench/drone_cars-peer-seed-1-2/peer.pt"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the JSON file to write")
    parser.add_argument("rounds", nargs="?", type=int, default=3, help="interleaved timing rounds (default 3)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"ROUNDS must be at least 1, got {args.rounds}")
    config = load_config("configs/drone_cars.yaml", [])
    _, val = build_datasets(config)
    paths = [str(record.image_path) for record in val.records[:TIMED_IMAGES]]
    rows = {}
    for name, kind, weights in MODELS:
        if not Path(weights).is_file():
            raise SystemExit(f"like_for_like_75.py: {weights} is missing; it is written by the command of "
                             "docs/benchmarks/drone_cars_test_rot90")
        rows[name] = {"weights": weights, "rpn_post_nms_top_n_test": config.model.rpn_post_nms_top_n_test,
                      **(score(kind, config, weights, "test", like_ours=True) if kind == "peer" else {}),
                      "infer_ms_per_round": []}
    for _ in range(args.rounds):
        for name, kind, weights in MODELS:
            timing = measure_in_child(kind, config, weights, paths, runtime="onnx")
            rows[name]["infer_ms_per_round"].append(round(timing["infer_ms_per_image"], 1))
            rows[name].update({k: timing[k] for k in ("runtime", "input_size", "peak_rss_mib")})
            print(name, rows[name]["infer_ms_per_round"], flush=True)
    for row in rows.values():
        row["infer_ms_per_image"] = statistics.median(row["infer_ms_per_round"])
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
              platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
