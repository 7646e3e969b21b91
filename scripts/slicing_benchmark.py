"""Sliced inference on mosaics of real drone tiles: how much of the per-tile accuracy survives a frame 3x larger.

    python scripts/slicing_benchmark.py --checkpoint runs/drone_cars/best.pt --config configs/drone_cars.yaml \
        --split val --out docs/benchmarks/slicing

The split's 640x640 tiles (names ``<scene>_<n>``; the ``Drone2_(n)`` video frames are another size and left out)
are placed 3x3 into 1920x1920 mosaics (detector.data.mosaic: boxes shifted exactly), and every row is scored by
the project's COCO evaluator against the same mosaic ground truth, detections kept down to ``eval.score_thresh``:
- ``per tile (upper bound)``: each source tile predicted on its own at the checkpoint's data.max_size, shifted in;
- ``full frame @ M``: the mosaic shrunk to the checkpoint's data.max_size M (what `detect` did before slicing);
- ``full frame @ 1920``: the mosaic at its own size (data.max_size overridden; a model trained at M sees 3x bigger
  inputs than it was trained on, and memory and time grow with the pixels);
- ``sliced nms|nmm [+ full frame]``: detector.slicing with tiles of M px (native resolution), ``--overlap`` (default
  detector.slicing.DEFAULT_OVERLAP) and its default matching (intersection over the smaller box); ``sliced nms, IoU
  matching``: classic NMS (torchvision's), for comparison.
Seconds per mosaic are wall time of the predictions alone (one warm-up mosaic first). Writes results.json (command,
machine, versions, date, all figures) and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.api import Detector  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.data.build import filter_records, read_split  # noqa: E402
from detector.data.mosaic import Mosaic, build_mosaic, mosaic_groups, square_tiles  # noqa: E402
from detector.errors import DetectorError  # noqa: E402
from detector.evaluation import COCOEvaluator  # noqa: E402
from detector.slicing import DEFAULT_OVERLAP, predict_sliced  # noqa: E402
from detector.structures import Detections  # noqa: E402


def load_mosaics(config_path: str, split: str, rows: int, cols: int, limit: int) -> tuple[list[Mosaic], list[str]]:
    """The split's square drone tiles, rows x cols per mosaic (the remainder left out); and the class names."""
    config = load_config(config_path)
    pattern = getattr(config.data, f"{split}_filter")
    if not pattern:
        raise DetectorError(f"--split {split}: {config_path} has no data.{split}_filter")
    dataset = read_split(config.data, config.data.train_path, list(config.model.class_names))
    tiles = square_tiles(filter_records(dataset, pattern, True, f"data.{split}_filter").records)
    groups = mosaic_groups(tiles, rows, cols)[:limit or None]
    if not groups:
        raise DetectorError(f"--split {split}: {len(tiles)} square tiles, fewer than one {rows}x{cols} mosaic")
    return [build_mosaic(group, rows, cols) for group in groups], list(dataset.class_names)


def load_detector(checkpoint: str, overrides: list[str], device: str, runtime: str) -> Detector:
    """A Detector keeping the low-score tail mAP needs (eval.score_thresh), as `detector eval` does."""
    detector = Detector.load(checkpoint, device=device, overrides=overrides, runtime=runtime)
    detector.model.roi_heads.score_thresh = detector.config.eval.score_thresh
    return detector


def per_tile(detector: Detector, mosaic: Mosaic) -> Detections:
    """Each source tile predicted on its own, boxes shifted by the tile's offset into the mosaic."""
    tiles = [mosaic.image[y:y + r.height, x:x + r.width] for (x, y), r in zip(mosaic.offsets, mosaic.records)]
    found = [detector.predict(np.ascontiguousarray(tile)) for tile in tiles]
    shifts = [torch.tensor([x, y, x, y], dtype=torch.float32) for x, y in mosaic.offsets]
    return Detections(torch.cat([d.boxes + s for d, s in zip(found, shifts)]), torch.cat([d.scores for d in found]),
                      torch.cat([d.labels for d in found]), detector.class_names)


def methods(small: Detector, big: Detector, overlap: float, batch_size: int) -> dict[str, Callable]:
    size, side = small.config.data.max_size, big.config.data.max_size
    rows: dict[str, Callable] = {
        "per tile (upper bound)": lambda m: per_tile(small, m),
        f"full frame @ {size}": lambda m: small.predict(m.image),
        f"full frame @ {side}": lambda m: big.predict(m.image),
    }
    for merge in ("nms", "nmm"):
        for full in (False, True):
            name = f"sliced {size} {merge}" + (" + full frame" if full else "")
            rows[name] = (lambda merge, full: lambda m: predict_sliced(
                small, m.image, size, overlap, merge, full_frame=full, batch_size=batch_size))(merge, full)
    rows[f"sliced {size} nms, IoU matching"] = lambda m: predict_sliced(
        small, m.image, size, overlap, "nms", match="iou", full_frame=False, batch_size=batch_size)
    return rows


def score(predict: Callable, mosaics: list[Mosaic], class_names: list[str]) -> dict:
    evaluator, seconds, detections = COCOEvaluator(class_names), [], 0
    for index, mosaic in enumerate(mosaics):
        started = time.perf_counter()
        found = predict(mosaic)
        seconds.append(time.perf_counter() - started)
        detections += len(found)
        evaluator.process([index + 1], [mosaic.targets()], [found.to("cpu")])
    metrics = evaluator.evaluate().metrics
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"], "APs": metrics["APs"],
            "seconds_per_mosaic": float(np.mean(seconds)), "detections_per_mosaic": detections / len(mosaics)}


def markdown(report: dict) -> str:
    lines = [f"# Sliced inference on {report['mosaics']} {report['mosaic_size']} mosaics ({report['split']} split)", "",
             f"`{report['command']}`", "", f"{report['date']}, {report['machine']['platform']}, "
             f"device {report['machine']['device']}", "",
             "| method | AP | AP50 | AP75 | APs | s / mosaic | detections / mosaic |", "|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AP75']:.3f} | {row['APs']:.3f} | "
                     f"{row['seconds_per_mosaic']:.2f} | {row['detections_per_mosaic']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", required=True, help="the dataset config: data.train_path and the split filters")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--cols", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="at most this many mosaics (0: all; a smoke test: 2)")
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--batch-size", type=int, default=0, help="tiles per model call (0: 8 on CUDA, 1 on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value", help="checkpoint overrides")
    parser.add_argument("--out", default="docs/benchmarks/slicing")
    args = parser.parse_args()
    try:
        mosaics, class_names = load_mosaics(args.config, args.split, args.rows, args.cols, args.limit)
        small = load_detector(args.checkpoint, args.set, args.device, args.runtime)
        if small.class_names != class_names:
            raise DetectorError(f"checkpoint classes {small.class_names} differ from {args.config}'s {class_names}")
        side = max(mosaics[0].image.shape[:2])
        big = load_detector(args.checkpoint, [*args.set, f"data.max_size={side}"], args.device, args.runtime)
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = {}
    for name, predict in methods(small, big, args.overlap, args.batch_size or None).items():
        predict(mosaics[0])  # warm-up
        rows[name] = score(predict, mosaics, class_names)
        print(f"{name:32s} AP {rows[name]['AP']:.3f}  AP50 {rows[name]['AP50']:.3f}  AP75 {rows[name]['AP75']:.3f}  "
              f"{rows[name]['seconds_per_mosaic']:.2f} s/mosaic", flush=True)
    height, width = mosaics[0].image.shape[:2]
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": str(small.device),
                    "runtime": small.runtime, "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if small.device.type == "cuda" else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": __import__("torchvision").__version__, "numpy": np.__version__},
        "checkpoint": args.checkpoint, "config": args.config, "split": args.split,
        "mosaics": len(mosaics), "mosaic_size": f"{width}x{height}", "tiles_per_mosaic": args.rows * args.cols,
        "gt_boxes": int(sum(len(m.boxes) for m in mosaics)), "max_size": small.config.data.max_size,
        "slice": {"size": small.config.data.max_size, "overlap": args.overlap},
        "tiles": [[r.image_path.name for r in m.records] for m in mosaics], "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    print(f"wrote {out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
