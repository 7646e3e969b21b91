"""Benchmark: one training step (forward, backward, optimizer step), channels_last weights against contiguous.

Ours (``detector.engine.Trainer``) and the peer (torchvision's FasterRCNN, ``scripts/peer.py``) are each built twice
from the same config and seed, once with ``train.channels_last=true`` and once with ``false``, and all four step on
the same real batches, read once from the config's training data (augmented as in training). Their steps run
interleaved (A, B, C, D, A, ...), so load from other processes hits all alike; the median of the timed steps is
reported, after warmup. The data loader is not timed: this is the model's step, what the time budget buys.

    .venv/bin/python scripts/bench_train_step.py --config configs/drone_cars.yaml [--steps 12] [--json F]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import peer
from bench_inference import machine_info
from detector.config import Config, load_config
from detector.engine import Trainer
from detector.optim import build_optimizer, build_scheduler
from detector.structures import DetectorError

LAYOUTS = {"channels_last": "true", "contiguous": "false"}  # name -> train.channels_last


def peer_stepper(config: Config) -> Callable[[object], None]:
    """One training step of the peer as `peer.train_peer` takes it (the same model, optimizer and clipping)."""
    torch.manual_seed(config.train.seed)
    device = torch.device("cpu")
    model = peer.model_to_train(config, device).train()
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, 10_000)

    def step(batch: object) -> None:
        peer._step(model, batch, device, 1)
        peer._optimizer_step(model, optimizer, scheduler, config.train.clip_grad_norm)
    return step


def build_steppers(config_path: Path, overrides: list[str], root: Path) -> tuple[dict[str, Callable], Trainer]:
    """{"ours, <layout>" | "peer, <layout>": one training step} and a Trainer whose loader gives the batches."""
    steppers, trainers = {}, {}
    for layout, flag in LAYOUTS.items():
        config = load_config(config_path, [*overrides, f"train.channels_last={flag}", "data.num_workers=0",
                                           f"train.output_dir={root}", "train.device=cpu"])
        (root / layout).mkdir()
        trainers[layout] = Trainer(config, run_dir=root / layout, progress=False)
        steppers[f"ours, {layout}"] = trainers[layout].train_step
        steppers[f"peer, {layout}"] = peer_stepper(config)
    return steppers, trainers["contiguous"]


def time_steps(steppers: dict[str, Callable], batches: list, warmup: int) -> dict[str, list[float]]:
    """Seconds per training step for each variant, steps interleaved, the first ``warmup`` batches untimed."""
    seconds: dict[str, list[float]] = {name: [] for name in steppers}
    for index, batch in enumerate(batches):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(batch)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML config, e.g. configs/drone_cars.yaml")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per layout first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (train.threads)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both trainers")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file (refuses to overwrite)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit(f"error: --steps must be at least 1, --warmup at least 0 and --threads at least 1 (got "
                 f"{args.steps}, {args.warmup} and {args.threads})")
    if args.json is not None and args.json.exists():
        sys.exit(f"error: --json {args.json} exists; choose a new file")
    overrides = [*args.overrides, f"train.threads={args.threads}"]
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as root:
        try:
            steppers, trainer = build_steppers(args.config, overrides, Path(root))
        except DetectorError as error:
            sys.exit(f"error: {error}")
        # as many batches as asked for, going round the training set again if it is smaller
        batches = list(itertools.islice(itertools.chain.from_iterable(itertools.repeat(trainer.loader)),
                                        args.warmup + args.steps))
        print(f"{args.config}: {len(batches)} batches of {trainer.config.train.batch_size} images, "
              f"{args.threads} threads, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        seconds = time_steps(steppers, batches, args.warmup)
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    for name, runs in seconds.items():
        print(f"{name:24s} median {medians[name]:.3f} s per step (min {min(runs):.3f}, max {max(runs):.3f})")
    speedup = {model: round(medians[f"{model}, contiguous"] / medians[f"{model}, channels_last"], 3)
               for model in ("ours", "peer")}
    for model, ratio in speedup.items():
        print(f"{model}: channels_last takes {ratio:.2f}x the contiguous model's steps per second")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            **machine_info(),  # cpu, cores, load, versions, date, command: as scripts/bench_inference.py records them
            "threads": args.threads,
            "workload": {"config": str(args.config), "overrides": args.overrides, "steps": args.steps,
                         "warmup": args.warmup},
            "seconds": {name: [round(s, 4) for s in runs] for name, runs in seconds.items()},
            "median_s": {name: round(value, 4) for name, value in medians.items()},
            "speedup": speedup,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
