"""Benchmark: ROI pooling forward + backward, the partition mode against torchvision's C++ roi_pool kernel.

Workload: 512 ROIs on a (2, 256, 50, 80) feature map (stride 16, i.e. 800 x 1280 input images), 7x7 output.
ROI widths and heights are uniform in 2..40 feature cells (32..640 px at spatial_scale 1/16), placed
uniformly inside the image, fixed seed. The two implementations run interleaved (A, B, A, B, ...) so
load from other processes hits both alike; the median of the timed runs is reported, after warmup.
CUDA figures are added when a GPU is available.

    .venv/bin/python scripts/bench_roi_pool.py [--threads 2] [--repeats 15] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from detector.roi_pool import roi_pool

STRIDE = 16
MAP_SHAPE = (2, 256, 50, 80)  # (N, C, H, W)
OUTPUT_SIZE = (7, 7)


def make_inputs(num_rois: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (N, C, H, W) float32 and rois (R, 5) [batch_index, x1, y1, x2, y2] in input pixels."""
    generator = torch.Generator().manual_seed(seed)
    num_images, _, height, width = MAP_SHAPE
    features = torch.randn(MAP_SHAPE, generator=generator)
    sizes = torch.randint(2, 41, (num_rois, 2), generator=generator).float() * STRIDE  # (R, 2) w, h in pixels
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


def report(device: str, seconds: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    for name, runs in seconds.items():
        median, fastest = medians[name] * 1e3, min(runs) * 1e3
        print(f"{device:5s} {name:12s} forward+backward median {median:8.2f} ms  (min {fastest:.2f} ms)")
    print(f"{device:5s} ratio partition / torchvision (medians): {medians['partition'] / medians['torchvision']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--rois", type=int, default=512, help="number of ROIs")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per method first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}")
    print(f"{args.rois} ROIs on a {MAP_SHAPE} map, output {OUTPUT_SIZE}, {args.threads} CPU threads")
    # Other processes change CPU figures a lot (OpenMP threads spin-wait for each other when cores are
    # oversubscribed; torchvision's CPU kernel is single-threaded and does not wait): print the context.
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        features, rois = make_inputs(args.rois, args.seed, device)
        methods = {
            "partition": lambda f, rois=rois: roi_pool(f, rois, OUTPUT_SIZE, 1 / STRIDE, mode="partition"),
            "torchvision": lambda f, rois=rois: torchvision.ops.roi_pool(f, rois, OUTPUT_SIZE, 1 / STRIDE),
        }
        report(device, time_interleaved(methods, features, args.repeats, args.warmup))


if __name__ == "__main__":
    main()
