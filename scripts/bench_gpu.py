"""GPU benchmark: training images/s and inference FPS of ours and the peer (torchvision's FasterRCNN) on one GPU.

    python scripts/bench_gpu.py --config configs/drone_cars.yaml --budget-min 1.2 --out runs/bench_gpu
    python scripts/bench_gpu.py --config configs/drone_cars.yaml --device cpu --budget-min 0.2 --max-images 8 \
        --out /tmp/bench_gpu                                              # a smoke run of the script on a CPU

The rows are those of scripts/benchmark.py (same config, split, backbone, training code and evaluator), trained
on ``--device`` for ``--budget-min`` minutes each: `ours`, `peer` and `ours bf16` (ours with
``train.amp=bf16``; the peer's training loop has no autocast). Measured per row:

- train images/s: batch size / mean seconds per optimizer step (data loading included; the first step of every
  epoch and the first `benchmark.WARMUP_STEPS` steps left out), and the peak GPU memory while training;
- inference: median ms per image at batch 1 over ``--calls`` calls after ``--warmup`` untimed ones, 640x640
  validation images already decoded and resized on the host, the copy to the GPU and the device work included
  (the clock stops after `torch.cuda.synchronize`), as FPS; then images/s at batch ``--batch``;
- AP on the validation split after that short training (a sanity check that training worked, not an accuracy
  result: the accuracy benchmark is the CPU one, with its 45-minute budget).

Ours runs as `Detector` runs it on a GPU (the PyTorch backbone); the peer is torchvision's model as shipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

# scripts/ is on sys.path when this file runs as a script, so its siblings import by name
from benchmark import Row, train_and_score_peer, train_ours
from benchmark import row_config as benchmark_row_config
from peer import peer_from_config, predict_peer

from detector.api import Detector
from detector.config import Config
from detector.data.build import build_datasets
from detector.data.dataset import image_to_tensor
from detector.data.images import load_image
from detector.data.transforms import build_transform
from detector.checkpoint import load_detector
from detector.runs import json_safe
from detector.structures import Detections, DetectorError

ROWS = {"ours": ("ours", ()), "peer": ("peer", ()), "ours bf16": ("ours", ("train.amp=bf16",))}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def row_config(args: argparse.Namespace, name: str, overrides: tuple[str, ...]) -> Config:
    """scripts/benchmark.py's row config (budget, run folder under runs/bench, --max-images) on ``--device``."""
    device = (f"train.device={args.device}", f"data.num_workers={args.num_workers}", "train.threads=0")
    return benchmark_row_config(args, Row(name, ROWS[name][0], "gpu", (*overrides, *device)))


def load_predict(kind: str, config: Config, weights: str,
                 device: torch.device) -> Callable[[list[torch.Tensor], list[tuple[int, int]]], list[Detections]]:
    """``predict(images, original_sizes)`` of a trained row on ``device``, as it runs for users."""
    if kind == "peer":
        model = peer_from_config(config, pretrained=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.to(device).eval()
        names = list(config.model.class_names)
        return lambda images, sizes: predict_peer(model, images, sizes, names)
    model, _ = load_detector(weights)
    return Detector(model, config, device, runtime="torch", copy_model=False).model.predict


def measure_inference(kind: str, config: Config, weights: str, paths: list[str], device: torch.device,
                      args: argparse.Namespace) -> dict[str, Any]:
    predict = load_predict(kind, config, weights, device)
    transform = build_transform(None, config.data.max_size, train=False)
    empty_boxes, empty_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    inputs = []
    for path in paths:
        image = load_image(path)
        inputs.append((image_to_tensor(transform(image, empty_boxes, empty_labels, empty_boxes).image), image.shape[:2]))
    gc.collect()  # the training row's Trainer (and its tensors) must not count in the inference peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_gpu_peak(device)
    timings = []
    with torch.inference_mode():
        for call in range(args.warmup + args.calls):
            tensor, original = inputs[call % len(inputs)]
            started = time.perf_counter()
            predict([tensor], [original])
            sync(device)
            if call >= args.warmup:
                timings.append((time.perf_counter() - started) * 1000)
        batches = [inputs[i % len(inputs)] for i in range(args.batch)]
        images, sizes = [b[0] for b in batches], [b[1] for b in batches]
        predict(images, sizes)
        sync(device)
        started, repeats = time.perf_counter(), max(1, args.calls // args.batch)
        for _ in range(repeats):
            predict(images, sizes)
        sync(device)
        batched = args.batch * repeats / (time.perf_counter() - started)
    median = statistics.median(timings)
    height, width = inputs[0][0].shape[-2:]
    return {"infer_ms_per_image": median, "infer_fps": 1000 / median, f"infer_images_per_s_batch{args.batch}": batched,
            "infer_gpu_peak_mib": gpu_peak_mib(device), "input_size": f"{width}x{height}", "calls": len(timings)}


def run_row(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    kind, overrides = ROWS[name]
    config = row_config(args, name, overrides)
    print(f"\n=== {name} on {device}: {' '.join(overrides) or 'the config as is'} ===", flush=True)
    reset_gpu_peak(device)
    summary = train_and_score_peer(config, args.budget_min) if kind == "peer" else train_ours(config)
    summary["train_gpu_peak_mib"] = gpu_peak_mib(device)
    if summary["train_s_per_iter"]:
        summary["train_images_per_s"] = config.train.batch_size / summary["train_s_per_iter"]
    _, val = build_datasets(config)
    paths = [str(record.image_path) for record in val.records[: max(args.batch, 8)]]
    summary.update(measure_inference(kind, config, summary["weights"], paths, device, args))
    return {"name": name, "kind": kind, "overrides": list(overrides), **summary}


COLUMNS = [("train images/s", "train_images_per_s", 1), ("train s/iter", "train_s_per_iter", 3),
           ("iters", "iterations", 0), ("train GPU MiB", "train_gpu_peak_mib", 0),
           ("infer ms/img (batch 1)", "infer_ms_per_image", 2), ("infer FPS (batch 1)", "infer_fps", 1),
           ("infer images/s (batch B)", "infer_images_per_s_batch", 1), ("infer GPU MiB", "infer_gpu_peak_mib", 0),
           ("AP (short run)", "AP", 3), ("AP50 (short run)", "AP50", 3)]


def format_table(rows: list[dict[str, Any]], batch: int) -> str:
    def cell(row: dict, key: str, digits: int) -> str:
        value = row.get(f"{key}{batch}" if key.endswith("_batch") else key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    header = [c[0].replace("batch B", f"batch {batch}") for c in COLUMNS]
    lines = ["| row | " + " | ".join(header) + " | notes |", "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([row["name"], *(cell(row, k, d) for _, k, d in COLUMNS), row.get("note", "")]) + " |")
    by_name = {row["name"]: row for row in rows}
    ours, peer = by_name.get("ours", {}), by_name.get("peer", {})
    if ours.get("train_images_per_s") and peer.get("train_images_per_s"):
        ratios = []
        for _, key, _ in COLUMNS:
            key = f"{key}{batch}" if key.endswith("_batch") else key
            a, b = ours.get(key), peer.get(key)
            ratios.append("n/a" if a is None or not b else f"{a / b:.2f}")
        lines.append("| **ours / peer** | " + " | ".join(ratios) + " | ratio |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU training images/s and inference FPS of ours and the peer.")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/drone_cars.yaml")
    parser.add_argument("--budget-min", type=float, default=1.2, help="wall-clock training minutes per row")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows from: {', '.join(ROWS)}")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (or cpu, to smoke-test the script)")
    parser.add_argument("--num-workers", type=int, default=8, help="data loader workers for training and eval")
    parser.add_argument("--calls", type=int, default=100, help="timed batch-1 inference calls per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inference calls first")
    parser.add_argument("--batch", type=int, default=8, help="images per call for the batched inference figure")
    parser.add_argument("--max-images", type=int, default=0, help="cap each split at this many images (smoke runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row")
    parser.add_argument("--out", default="runs/bench_gpu", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    unknown = [r for r in args.rows.split(",") if r.strip() not in ROWS]
    if unknown:
        parser.error(f"--rows has unknown entries {unknown}; expected some of: {', '.join(ROWS)}")
    for option, value, smallest in (("--budget-min", args.budget_min, 1e-9), ("--calls", args.calls, 1),
                                    ("--batch", args.batch, 1), ("--warmup", args.warmup, 0),
                                    ("--num-workers", args.num_workers, 0), ("--max-images", args.max_images, 0)):
        if value < smallest:
            parser.error(f"{option} must be {'positive' if smallest > 0 else 'non-negative'}, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/bench_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}", flush=True)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DetectorError(f"--device is '{args.device}' but CUDA is not available on this machine")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = {"command": command, "environment": environment(device), "budget_min": args.budget_min, "rows": []}
        for name in (r.strip() for r in args.rows.split(",")):
            try:
                results["rows"].append(run_row(name, args, device))
            except Exception as error:  # noqa: BLE001 - one failing row must not cost the others on a short lease
                traceback.print_exc()
                results["rows"].append({"name": name, "note": f"failed: {type(error).__name__}: {error}"})
            (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
        markdown = "\n".join([f"# GPU benchmark: {args.config}", "", format_table(results["rows"], args.batch), "",
                              f"Command: `{command}`", "",
                              "Environment: " + ", ".join(f"{k} {v}" for k, v in results["environment"].items())])
        (out / "results.md").write_text(markdown + "\n")
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n" + markdown)
    return 0 if all("note" not in row for row in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
