"""Benchmark: ROI pooling forward + backward, ours against torchvision's C++ kernels.

Two workloads (``--mode``):
- ``partition``: the partition mode against torchvision's roi_pool. 512 ROIs on a (2, 256, 50, 80) feature map
  (stride 16, i.e. 800 x 1280 input images), 7x7 output.
- ``align``: the separable RoIAlign that CPU training uses (`roi_align_separable`) against torchvision's
  roi_align (aligned, sampling ratio 2). A drone training batch: 4 images at 640 x 640, Lite0's stride-16 map
  (4, 112, 40, 40), 256 ROIs per image, 7x7 output.
ROI widths and heights are uniform in 2..40 feature cells (at most the map), placed uniformly inside the image,
fixed seed. The two implementations run interleaved (A, B, A, B, ...) so load from other processes hits both
alike; the median of the timed runs is reported, after warmup. CUDA figures are added when a GPU is available.

    .venv/bin/python scripts/bench_roi_pool.py [--mode partition|align] [--threads 2] [--repeats 15] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

from detector.roi_pool import roi_align_separable, roi_pool

STRIDE = 16
OUTPUT_SIZE = (7, 7)
WORKLOADS = {  # mode -> (N, C, H, W) map and number of ROIs
    "partition": ((2, 256, 50, 80), 512),
    "align": ((4, 112, 40, 40), 1024),
}


def make_inputs(map_shape: tuple[int, int, int, int], num_rois: int, seed: int,
                device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (N, C, H, W) float32 and rois (R, 5) [batch_index, x1, y1, x2, y2] in input pixels."""
    generator = torch.Generator().manual_seed(seed)
    num_images, _, height, width = map_shape
    features = torch.randn(map_shape, generator=generator)
    largest = min(40, height, width)
    sizes = torch.randint(2, largest + 1, (num_rois, 2), generator=generator).float() * STRIDE  # (R, 2) w, h in pixels
    room = torch.tensor([width * STRIDE, height * STRIDE]) - sizes  # free space left of / above each box
    top_left = torch.rand(num_rois, 2, generator=generator) * room
    batch = torch.randint(0, num_images, (num_rois, 1), generator=generator).float()
    rois = torch.cat([batch, top_left, top_left + sizes], dim=1)
    return features.to(device), rois.to(device)


def time_interleaved(
    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]], features: torch.Tensor, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of forward + backward per method and run, runs of the methods interleaved."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for step in range(warmup + repeats):
        for name, pool in methods.items():
            leaf = features.detach().requires_grad_()
            if leaf.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            pool(leaf).sum().backward()
            if leaf.is_cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def report(device: str, seconds: dict[str, list[float]]) -> dict[str, float]:
    """Print the medians and the ratio of the first method to the second; returns the figures in ms."""
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    for name, runs in seconds.items():
        median, fastest = medians[name] * 1e3, min(runs) * 1e3
        print(f"{device:5s} {name:12s} forward+backward median {median:8.2f} ms  (min {fastest:.2f} ms)")
    ours, theirs = list(medians)
    ratio = medians[ours] / medians[theirs]
    print(f"{device:5s} ratio {ours} / {theirs} (medians): {ratio:.2f}x")
    return {**{f"{name}_median_ms": round(value * 1e3, 2) for name, value in medians.items()}, "ratio": round(ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(WORKLOADS), default="partition", help="which pooling to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--rois", type=int, default=0, help="number of ROIs (default: the workload's)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per method first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file (refuses to overwrite)")
    args = parser.parse_args()
    if args.json is not None and args.json.exists():
        sys.exit(f"error: --json {args.json} exists; choose a new file")
    torch.set_num_threads(args.threads)
    map_shape, num_rois = WORKLOADS[args.mode]
    num_rois = args.rois or num_rois
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}")
    print(f"{args.mode}: {num_rois} ROIs on a {map_shape} map, output {OUTPUT_SIZE}, {args.threads} CPU threads")
    # Other processes change CPU figures a lot (OpenMP threads spin-wait for each other when cores are
    # oversubscribed; torchvision's CPU kernels are single-threaded and do not wait): print the context.
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    figures = {}
    for device in devices:
        features, rois = make_inputs(map_shape, num_rois, args.seed, device)
        if args.mode == "partition":
            methods = {
                "partition": lambda f, rois=rois: roi_pool(f, rois, OUTPUT_SIZE, 1 / STRIDE, mode="partition"),
                "torchvision": lambda f, rois=rois: torchvision.ops.roi_pool(f, rois, OUTPUT_SIZE, 1 / STRIDE),
            }
        else:
            methods = {
                "separable": lambda f, rois=rois: roi_align_separable(f, rois, OUTPUT_SIZE, 1 / STRIDE, 2),
                "torchvision": lambda f, rois=rois: torchvision.ops.roi_align(f, rois, OUTPUT_SIZE, 1 / STRIDE, 2,
                                                                              aligned=True),
            }
        figures[device] = report(device, time_interleaved(methods, features, args.repeats, args.warmup))
    if args.json is not None:
        write_json(args.json, {
            "command": " ".join(["python", "scripts/bench_roi_pool.py", *sys.argv[1:]]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version()},
            "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg()},
            "workload": {"mode": args.mode, "map_shape": map_shape, "rois": num_rois, "output_size": OUTPUT_SIZE,
                         "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed},
            "figures": figures,
        })
        print(f"wrote {args.json}")


def write_json(path: Path, figures: dict) -> None:
    """Write ``figures`` to ``path``, or exit with one sentence naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as error:
        sys.exit(f"error: --json {path}: cannot write it ({error.strerror})")


if __name__ == "__main__":
    main()
