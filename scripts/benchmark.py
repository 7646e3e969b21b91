"""Real-data benchmark: our Fast R-CNN against torchvision's FasterRCNN (scripts/peer.py), plus ablations of ours.

    python scripts/benchmark.py --config configs/drone_cars.yaml --budget-min 45 --rows ours,peer,ablations \
        --out docs/benchmarks/drone
    python scripts/benchmark.py --config configs/drone_cars.yaml --budget-min 1 --rows ours,peer --max-images 40 \
        --out runs/bench/smoke                                                   # a few-minute smoke run

Every row trains from the same config on the same split, input size, backbone and wall-clock budget
(``train.time_budget_min``: training stops at the config's epoch count or when the budget is used up, whichever comes
first, the learning rate annealing with whichever is further along; validation only runs once, at the end, so the
budget is spent on training alone). configs/drone_cars.yaml sizes ours to end on its epochs (about 38 of the 45
minutes on 2 cores), so `detector train` repeats it; the peer uses the whole budget. Then every row is measured the
same way:

- accuracy: COCO AP, AP50, AP75, APs/m/l from `detector.evaluation.COCOEvaluator` on the validation split;
- train s/iter: mean seconds per optimizer step (data loading included), leaving out the first step of every
  epoch (loader start-up, checkpointing) and the first ``WARMUP_STEPS`` steps;
- inference: median ms per image at batch 1 with ``torch.set_num_threads(2)`` over at least ``TIMED_IMAGES``
  validation images after ``WARMUP_IMAGES`` untimed ones, and the peak resident memory of that process while it
  predicts (the peak is reset after loading, so ours' ONNX export is not counted). It runs in
  a fresh (spawned) process holding only that model, so the figure is not the training process's peak. Ours runs
  as `Detector` runs it on a CPU (the backbone in ONNX Runtime, detector/runtime.py) and is timed again with the
  PyTorch backbone (channels_last); the peer is torchvision's model as shipped (PyTorch).

Rows (``--rows``, comma separated, groups or row names): ``ours``, ``peer``, ``ablations`` (all of these groups:
``roi_pool``, ``proposals``, ``frozen_bn``, ``augment``, ``weights``, and issue 11's ``labels`` (rotation refit,
crop-cut objects), ``cascade``, ``sampling`` (repeat-factor sampling of long boxes), ``mosaic`` (four images'
windows in one), ``box_loss``, ``head``, ``backbone``, ``input_size``, ``tta``, and issue 15's ``weather``: robust
training, whose corruption figures scripts/robustness.py measures on the row's weights). ``--seeds 0,1`` adds a
``ours seed=1`` / ``peer seed=1`` row per extra seed and reports mean and spread. ``--split test`` scores every row
on the test split instead of validation: run it once, for the final table, after every choice was made on val.
A ``tta`` row re-scores the weights of the row trained like it (inference-only options), it does not train. A row whose resolved config equals a row
already measured here (e.g. ``frozen_bn=true`` is ``ours`` for drone_cars) reuses its figures. Results merge into
``--out``/results.json by row name, so groups can be run separately; results.md is rewritten from all of them. A row
already in results.json with the same resolved config, split and budget is kept, not trained again, so a benchmark
that was interrupted (or ``--seeds 0`` followed later by ``--seeds 0,1``) resumes where it stopped; ``--rerun``
measures every selected row again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision

# scripts/ is on sys.path when this file runs as a script, so its sibling imports by name
from peer import evaluate_peer, like_for_like, peer_from_config, predict_peer, train_peer

from detector.api import Detector
from detector.config import Config, apply_overrides, config_from_dict, load_config
from detector.data.build import build_datasets, build_split
from detector.data.dataset import image_to_tensor
from detector.data.images import load_image
from detector.data.transforms import build_transform
from detector.checkpoint import load_detector
from detector.engine import Trainer, evaluate
from detector.runs import json_safe, new_run_dir, read_metrics
from detector.structures import Dataset, DetectorError

WARMUP_STEPS = 5  # first optimizer steps left out of s/iter: allocator and thread-pool warm-up
WARMUP_IMAGES = 3  # untimed inference calls before timing
TIMED_IMAGES = 20  # timed inference calls (the median is reported)
INFERENCE_THREADS = 2
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RUNS_DIR = "runs/bench"


@dataclass(frozen=True)
class Row:
    """One line of the table: which model, which group, and the config overrides that make it."""

    name: str
    kind: str  # ours | peer
    group: str
    overrides: tuple[str, ...] = ()
    needs_ximgproc: bool = False
    # Inference-only options (e.g. test-time augmentation): the row re-scores the weights of the row trained
    # with `overrides` under these extra overrides instead of training again.
    eval_overrides: tuple[str, ...] = ()


def _ablation_rows() -> list[Row]:
    rows = [
        Row(f"roi={mode} {r}x{c}", "ours", "roi_pool", (f"model.roi_pool_mode={mode}", f"model.roi_output_size=[{r},{c}]"))
        for mode in ("partition", "torchvision", "align") for r, c in ((2, 3), (7, 7))
    ]
    rows += [Row("proposals=selective_search", "ours", "proposals", ("model.proposals=selective_search",), True),
             Row("proposals=rpn", "ours", "proposals", ("model.proposals=rpn",))]
    rows += [Row(f"frozen_bn={v}", "ours", "frozen_bn", (f"model.frozen_bn={v}",)) for v in ("true", "false")]
    rows += [Row(f"augment={v}", "ours", "augment", (f"augment.enabled={v}",)) for v in ("true", "false")]
    rows += [Row(f"weights={v}", "ours", "weights", (f"model.weights={v}",)) for v in ("imagenet", "none")]
    # issue 11: labels that augmentation changes, and localization
    rows += [Row(f"rotate_method={v}", "ours", "labels", (f"augment.rotate_method={v}",))
             for v in ("rounded", "ellipse", "largest_box")]
    rows += [Row(f"cut_objects={v}", "ours", "labels", (f"augment.cut_objects={v}",)) for v in ("ignore", "drop")]
    rows += [Row("anchors=32-256 x 0.33-3", "ours", "labels", ("model.anchor_sizes=[32,64,128,256]",
                                                              "model.anchor_ratios=[0.33,0.5,1.0,2.0,3.0]"))]
    rows += [Row("rotate90=1.0", "ours", "labels", ("augment.rotate90=1.0",))]
    rows += [Row("anchors +140 px +ratio 4.5", "ours", "labels", ("model.anchor_sizes=[32,44,62,74,102,140]",
                                                                  "model.anchor_ratios=[0.22,0.5,0.98,2.03,4.5]"))]
    rows += [Row("cascade=0.5/0.6/0.7", "ours", "cascade", ("model.cascade_ious=[0.5,0.6,0.7]",))]
    rows += [Row("repeat long>=200 t=0.2", "ours", "sampling", ("train.repeat_threshold=0.2",
                                                               "train.repeat_long_side=200"))]
    rows += [Row("mosaic=0.5", "ours", "mosaic", ("augment.mosaic=0.5",))]
    rows += [Row(f"box_loss={v}", "ours", "box_loss", (f"model.box_loss={v}",))
             for v in ("smooth_l1", "l1", "giou", "diou", "ciou")]
    rows += [Row("head=c4", "ours", "head", ("model.head=c4",)),
             Row("head_dim=1024 roi_batch=512", "ours", "head", ("model.head_dim=1024", "model.roi_batch_per_image=512"))]
    rows += [Row(f"backbone={v}", "ours", "backbone", (f"model.backbone={v}",))
             for v in ("efficientnet_lite1", "efficientnet_lite2")]
    rows += [Row(f"max_size={v}", "ours", "input_size", (f"data.max_size={v}",)) for v in (800, 960)]
    rows += [Row("multi-scale 512-768", "ours", "input_size", ("augment.sizes=[512,576,640,704,768]",))]
    rows += [Row("tta=flip+1.25x wbf", "ours", "tta", (), eval_overrides=("eval.tta=true",))]
    # issue 15: robust training (weather and sensor corruptions as augmentation; score it with scripts/robustness.py)
    rows += [Row("weather=0.5", "ours", "weather", ("augment.weather=0.5",)),
             Row("weather=0.25 severity<=3", "ours", "weather", ("augment.weather=0.25",
                                                                 "augment.weather_max_severity=3"))]
    return rows


ROWS = [Row("ours", "ours", "ours"), Row("peer", "peer", "peer"), *_ablation_rows()]


def seed_rows(rows: list[Row], seeds: list[int]) -> list[Row]:
    """After each ``ours`` / ``peer`` row, one copy per extra seed (``ours seed=1`` trains with train.seed=1)."""
    out = []
    for row in rows:
        out.append(row)
        if row.group in ("ours", "peer"):
            out += [Row(f"{row.name} seed={seed}", row.kind, row.group, (*row.overrides, f"train.seed={seed}"))
                    for seed in seeds if seed != 0]
    return out


def seed_suffix(name: str, base: str) -> str | None:
    """The seed part of a row name made by `seed_rows` ("" for ``base`` itself, " seed=1" for ``base seed=1``), or
    None when the row is not one of ``base``'s seeds."""
    if name == base or name.startswith(f"{base} seed="):
        return name[len(base):]
    return None


def select_rows(spec: str) -> list[Row]:
    """``"ours,peer,ablations"`` -> rows in table order; a group name selects all its rows."""
    wanted = {part.strip() for part in spec.split(",") if part.strip()}
    known = {row.name for row in ROWS} | {row.group for row in ROWS} | {"ablations"}
    unknown = sorted(wanted - known)
    if unknown or not wanted:
        groups = sorted({row.group for row in ROWS} | {"ablations"})
        raise DetectorError(f"--rows has unknown entries {unknown}; expected row names or groups: {', '.join(groups)}")
    ablation = {"ablations"} & wanted
    return [r for r in ROWS if r.name in wanted or r.group in wanted or (ablation and r.kind == "ours" and r.group != "ours")]


def _evenly_spaced(dataset: Dataset, count: int) -> list[str]:
    """File names of ``count`` records spread over the whole split (so every block of the split is represented)."""
    indices = np.unique(np.linspace(0, len(dataset.records) - 1, num=min(count, len(dataset.records))).round().astype(int))
    return [dataset.records[i].image_path.name for i in indices]


def limit_images(config: Config, max_images: int) -> None:
    """Restrict both splits to at most ``max_images`` images each, by exact file-name filters in the config
    (so the Trainer, the peer and the saved config.yaml all see the same subsets)."""
    if config.data.format == "synthetic":
        config.data.synthetic_train_images = min(config.data.synthetic_train_images, max_images)
        config.data.synthetic_val_images = min(config.data.synthetic_val_images, max_images)
        return
    if not config.data.val_filter:
        raise DetectorError("--max-images needs a config whose validation split is chosen by data.val_filter")
    train, val = build_split(config, "train"), build_split(config, "val")  # the blocks, whatever trains
    exact = lambda names: "^(" + "|".join(re.escape(name) for name in names) + ")$"
    config.data.val_filter = exact(_evenly_spaced(val, max_images))
    config.data.train_filter = exact(_evenly_spaced(train, max_images))


def row_config(args: argparse.Namespace, row: Row) -> Config:
    """The base config + ``--set`` overrides + the row's overrides + the benchmark's budget and run folder."""
    config = load_config(args.config, [*args.set, *row.overrides])
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", f"{Path(args.config).stem}-{row.name}").strip("-")
    fixed = [f"train.time_budget_min={args.budget_min}", "train.eval_every=0", f"train.output_dir={RUNS_DIR}",
             f"train.name={slug}", f"train.snapshot_every_min={getattr(args, 'curve_every_min', 0.0)}"]
    config = apply_overrides(config, fixed)
    if args.max_images:
        limit_images(config, args.max_images)
    return config


def config_key(kind: str, config: Config) -> str:
    """Identity of a training run: the model kind and every option that differs from its default, without the run
    folder name, the tracker's options and, while eval.tta is off, the TTA's own options (they change no figure
    here). Options left at their default are left out, so an option added later (off by default) keeps the rows
    measured before it."""
    values, defaults = config.to_dict(), Config().to_dict()
    unused = {"name", *(() if config.eval.tta else (k for k in values["eval"] if k.startswith("tta_")))}
    changed = {section: {name: value for name, value in options.items()
                         if name not in unused and value != defaults[section].get(name)}
               for section, options in values.items() if section != "track"}
    return hashlib.sha1(json.dumps([kind, changed], sort_keys=True).encode()).hexdigest()[:16]


def mean_step_seconds(per_epoch: list[list[float]], warmup: int = WARMUP_STEPS) -> tuple[float | None, int]:
    """Mean of the step times without each epoch's first step and the first ``warmup`` steps; (mean, steps used)."""
    steady = [s for epoch in per_epoch for s in epoch[1:]]
    steady = steady[warmup:] if len(steady) > warmup else steady
    return (statistics.fmean(steady) if steady else None), len(steady)


class StepClock:
    """Optimizer post-step hook recording the seconds between steps of a `Trainer`, per epoch."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.per_epoch, self.epoch = trainer, [], -1
        self.last = time.perf_counter()
        trainer.optimizer.register_step_post_hook(self)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        now = time.perf_counter()
        if self.trainer.epoch != self.epoch:
            self.per_epoch.append([])
            self.epoch = self.trainer.epoch
        self.per_epoch[-1].append(now - self.last)
        self.last = now


def train_ours(config: Config) -> dict[str, Any]:
    """Train ours with the engine; accuracy is the Trainer's own end-of-training validation."""
    trainer = Trainer(config)
    clock = StepClock(trainer)
    started = time.monotonic()
    run_dir = trainer.fit()
    train_seconds = time.monotonic() - started
    scored = [row for row in read_metrics(run_dir / "metrics.jsonl") if "AP" in row]
    if not scored:
        raise DetectorError(f"{run_dir}/metrics.jsonl has no validation row; the run did not finish its evaluation")
    weights = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    return _training_summary(scored[-1], clock.per_epoch, train_seconds, run_dir, weights)


def train_and_score_peer(config: Config, budget_min: float) -> dict[str, Any]:
    """Train the peer on the same data and budget and score it with the same evaluator."""
    datasets = build_datasets(config)
    run_dir = new_run_dir(config.train.output_dir, config.train.name)
    run = train_peer(config, budget_min, datasets, snapshot_dir=run_dir)
    metrics = evaluate_peer(run.model, datasets[1], config).result.metrics
    config.save(run_dir / "config.yaml")
    torch.save(run.model.state_dict(), run_dir / "peer.pt")
    return _training_summary(metrics, run.iteration_seconds, run.train_seconds, run_dir, run_dir / "peer.pt")


def _training_summary(metrics: dict, per_epoch: list[list[float]], seconds: float, run_dir: Path,
                      weights: Path) -> dict[str, Any]:
    step_seconds, steps_timed = mean_step_seconds(per_epoch)
    return {
        **{name: metrics.get(name) for name in METRICS},
        "train_s_per_iter": step_seconds, "steps_timed": steps_timed,
        "iterations": sum(len(epoch) for epoch in per_epoch), "epochs": len(per_epoch),
        "train_seconds": round(seconds, 1), "run_dir": str(run_dir), "weights": str(weights),
    }


def reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so loading (ours: the ONNX export) is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak includes loading


def peak_rss_mib() -> tuple[float, str]:
    """This process's peak resident memory in MiB and where it was read.

    /proc/self/status VmHWM comes first: getrusage's ru_maxrss survives exec, so a spawned child would report
    its parent's (the training process's) peak instead of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"


def _load_model(kind: str, config: Config, weights: str, runtime: str) -> tuple[Any, str]:
    """A ``predict(images, original_sizes)`` for the trained model and the runtime it uses: ours runs its
    backbone in `runtime` (detector.runtime), as `Detector` and `detector detect` do; the peer is torchvision's
    model as shipped (PyTorch), or with ``runtime="onnx"`` set to infer like ours (`peer.like_for_like`)."""
    if kind == "peer":
        model = load_peer(config, weights, like_ours=runtime == "onnx")
        names = list(config.model.class_names)
        return (lambda images, sizes: predict_peer(model, images, sizes, names)), "onnx" if runtime == "onnx" else "torch"
    model, _ = load_detector(weights)
    detector = Detector(model, config, "cpu", runtime, copy_model=False)
    return detector.model.predict, detector.runtime


def measure_inference(kind: str, config_values: dict, weights: str, image_paths: list[str],
                      runtime: str) -> dict[str, Any]:
    """Batch-1 CPU latency and peak memory of one trained model; runs in its own spawned process."""
    torch.set_num_threads(INFERENCE_THREADS)
    config = config_from_dict(config_values)
    predict, runtime_used = _load_model(kind, config, weights, runtime)
    reset_peak_rss()
    transform = build_transform(None, config.data.max_size, train=False)
    empty_boxes, empty_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    inputs = []
    for path in image_paths:
        image = load_image(path)
        resized = transform(image, empty_boxes, empty_labels, empty_boxes).image
        inputs.append((image_to_tensor(resized), image.shape[:2]))
    timings = []
    for call in range(WARMUP_IMAGES + max(TIMED_IMAGES, len(inputs))):
        tensor, original = inputs[call % len(inputs)]
        started = time.perf_counter()
        predict([tensor], [original])
        if call >= WARMUP_IMAGES:
            timings.append((time.perf_counter() - started) * 1000)
    rss, source = peak_rss_mib()
    height, width = inputs[0][0].shape[-2:]
    return {"infer_ms_per_image": statistics.median(timings), "images_timed": len(timings), "runtime": runtime_used,
            "input_size": f"{width}x{height}", "peak_rss_mib": round(rss, 1), "rss_source": source}


def measure_in_child(kind: str, config: Config, weights: str, image_paths: list[str],
                     runtime: str = "auto") -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_inference, (kind, config.to_dict(), weights, image_paths, runtime))


def load_peer(config: Config, weights: str, like_ours: bool = False) -> Any:
    """The trained peer in eval mode on the CPU: as shipped, or (``like_ours``) inferring as ours does."""
    model = peer_from_config(config, pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return like_for_like(model, config, torch.get_num_threads()) if like_ours else model


SNAPSHOT = re.compile(r"snapshot_(\d+\.\d+)min\.pt$")


def accuracy_curve(kind: str, config: Config, summary: dict[str, Any]) -> list[list[float]]:
    """[[training minutes, AP, AP50, AP75], ...] on the validation split: every snapshot the run saved
    (train.snapshot_every_min) and the final weights at the end of training."""
    snapshots = sorted((float(m.group(1)), path) for path in Path(summary["run_dir"]).glob("snapshot_*min.pt")
                       if (m := SNAPSHOT.search(path.name)))
    curve = []
    for minutes, path in snapshots:
        scored = score(kind, config, str(path), "val")
        curve.append([round(minutes, 2), scored["AP"], scored["AP50"], scored["AP75"]])
        print(f"  curve: {minutes:.1f} min -> AP {scored['AP']:.3f}", flush=True)
    curve.append([round(summary["train_seconds"] / 60, 2), summary.get("val_AP", summary["AP"]),
                  summary.get("val_AP50", summary["AP50"]), summary.get("val_AP75", summary["AP75"])])
    return curve


def minutes_to_reach(curve: list[list[float]], target: float) -> float | None:
    """The first training minute at which the curve reaches AP ``target`` (linear between points), or None."""
    previous = (0.0, 0.0)
    for minutes, ap, *_ in curve:
        if ap is not None and ap >= target:
            m0, a0 = previous
            return round(m0 + (minutes - m0) * (target - a0) / (ap - a0) if ap > a0 else minutes, 1)
        previous = (minutes, ap or 0.0)
    return None


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """AP on the validation split against minutes of CPU training, one line per row with a curve."""
    with_curves = [r for r in rows if r.get("curve")]
    if not with_curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for row in with_curves:
        minutes = [0.0] + [point[0] for point in row["curve"]]
        aps = [0.0] + [point[1] for point in row["curve"]]
        axes.plot(minutes, aps, marker="o", markersize=3, label=row["name"])
    axes.set_xlabel("minutes of CPU training (2 cores)")
    axes.set_ylabel("COCO AP, validation split")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def score(kind: str, config: Config, weights: str, split: str, like_ours: bool = False) -> dict[str, Any]:
    """COCO metrics of trained weights on one split of ``config`` (with its eval options, e.g. eval.tta), and the
    seconds per image the evaluation took (loading and COCO bookkeeping included)."""
    dataset = build_split(config, split)
    started = time.monotonic()
    if kind == "peer":
        metrics = evaluate_peer(load_peer(config, weights, like_ours), dataset, config).result.metrics
    else:
        model, _ = load_detector(weights)
        metrics = evaluate(model, dataset, config, torch.device("cpu"), with_loss=False).result.metrics
    seconds = (time.monotonic() - started) / max(len(dataset.records), 1)
    return {**{m: metrics.get(m) for m in METRICS}, "split": split, "eval_s_per_image": round(seconds, 3)}


def run_row(row: Row, config: Config, budget_min: float, split: str = "val") -> dict[str, Any]:
    """Train, evaluate (on ``split``) and time one row."""
    print(f"\n=== {row.name}: {' '.join(row.overrides) or 'the config as is'} ===", flush=True)
    summary = train_and_score_peer(config, budget_min) if row.kind == "peer" else train_ours(config)
    summary["split"] = "val"
    if config.data.train_on_val:
        summary["note"] = "trained on train + val (data.train_on_val): its val figures are training figures"
    if split != "val":  # the validation figures stay in the row as val_*; the headline is the reported split
        summary.update({f"val_{m}": summary.get(m) for m in METRICS})
        summary.update(score(row.kind, config, summary["weights"], split))
    if config.train.snapshot_every_min > 0:
        summary["curve"] = accuracy_curve(row.kind, config, summary)
    _, val = build_datasets(config)
    paths = [str(record.image_path) for record in val.records[:TIMED_IMAGES]]
    summary.update(measure_in_child(row.kind, config, summary["weights"], paths))
    if row.kind == "ours":  # the default runtime on CPU is ONNX Runtime; PyTorch's time too, for comparison
        torch_only = measure_in_child(row.kind, config, summary["weights"], paths, runtime="torch")
        summary["infer_ms_per_image_torch"] = torch_only["infer_ms_per_image"]
    else:  # the peer is torchvision's model as shipped: PyTorch throughout; then once more inferring like ours
        summary["infer_ms_per_image_torch"] = summary["infer_ms_per_image"]
        same = measure_in_child(row.kind, config, summary["weights"], paths, runtime="onnx")
        summary["like_for_like"] = {**score(row.kind, config, summary["weights"], split, like_ours=True),
                                    "infer_ms_per_image": same["infer_ms_per_image"], "runtime": "onnx",
                                    "rpn_post_nms_top_n_test": config.model.rpn_post_nms_top_n_test}
    return summary


def _fmt(value: Any, digits: int) -> str:
    """A table cell; undefined COCO metrics (NaN, e.g. APl without large objects) read n/a."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


COLUMNS = [(m, m, 3) for m in METRICS] + [
    ("train s/iter", "train_s_per_iter", 2), ("iters", "iterations", 0), ("infer ms/img", "infer_ms_per_image", 1),
    ("infer ms/img, PyTorch backbone", "infer_ms_per_image_torch", 1), ("peak RSS MiB", "peak_rss_mib", 0),
    ("eval s/img", "eval_s_per_image", 2),
]


def curve_summary(rows: list[dict[str, Any]]) -> list[str]:
    """The AP-against-time answer, one line per seed of ours: the minutes of training it needed to reach the final
    validation AP of the peer with the same seed (the peer's first seed when that one did not run)."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for name, ours in by_name.items():
        suffix = seed_suffix(name, "ours")
        if suffix is None or not ours.get("curve"):
            continue
        peer_name = next((n for n in (f"peer{suffix}", "peer") if by_name.get(n, {}).get("curve")), None)
        if peer_name is None:
            continue
        peer_minutes, target = by_name[peer_name]["curve"][-1][:2]
        ours_minutes, ours_end = ours["curve"][-1][:2]
        reached = minutes_to_reach(ours["curve"], target)
        verdict = (f"reaches it after {reached} minutes of training" if reached is not None
                   else f"does not reach it in its {ours_minutes:.1f} minutes (it ends at {ours_end:.3f})")
        lines.append(f"- {name}, against the final validation AP of {peer_name} ({target:.3f} after "
                     f"{peer_minutes:.1f} min): {verdict}.")
    if not lines:
        return []
    return ["AP against training minutes (curves.png; snapshots scored after training):", "", *lines, ""]


def seed_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Mean and spread (sample standard deviation; min-max) of AP / AP50 / AP75 over the seeds of ours and peer."""
    lines = []
    for name in ("ours", "peer"):
        runs = [r for r in rows if seed_suffix(r["name"], name) is not None and r.get("AP") is not None]
        if len(runs) < 2:
            continue
        cells = []
        for metric in ("AP", "AP50", "AP75"):
            values = [r[metric] for r in runs]
            cells.append(f"{metric} {statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} "
                         f"({min(values):.3f}-{max(values):.3f})")
        lines.append(f"- {name}, {len(runs)} seeds: " + "; ".join(cells))
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: one line per row, then ours / peer ratios when both were measured."""
    lines = ["| row | " + " | ".join(c[0] for c in COLUMNS) + " | notes |", "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        cells = [row["name"]] + [_fmt(row.get(key), digits) for _, key, digits in COLUMNS] + [row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
        if row.get("like_for_like"):  # the same trained peer, inferring as ours does
            same = {**row, **row["like_for_like"], "infer_ms_per_image_torch": None}
            note = (f"{row['name']}'s weights, {same['rpn_post_nms_top_n_test']} test proposals and the backbone in "
                    "ONNX Runtime, as ours")
            cells = [f"{row['name']}, like-for-like inference"] + [_fmt(same.get(key), digits) for _, key, digits in COLUMNS]
            lines.append("| " + " | ".join(cells + [note]) + " |")
    by_name = {row["name"]: row for row in rows}
    ours, peer = by_name.get("ours", {}), by_name.get("peer", {})
    if ours.get("AP") is not None and peer.get("AP") is not None:
        ratios = [_fmt(ours[k] / peer[k] if ours.get(k) is not None and peer.get(k) else None, 2) for _, k, _ in COLUMNS]
        lines.append("| **ours / peer** | " + " | ".join(ratios) + " | ratio |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": multiprocessing.cpu_count(), "inference_threads": INFERENCE_THREADS}


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Write results.json and results.md under ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    order = {row.name: index for index, row in enumerate(ROWS)}
    rows = sorted(results["rows"].values(), key=lambda r: order.get(r["name"], len(order)))
    budgets = sorted({str(r.get("budget_min")) for r in rows if "budget_min" in r})
    splits = sorted({r.get("split", "val") for r in rows})
    seeds = seed_summary(rows)
    markdown = "\n".join([
        f"# Benchmark: {results['config']}", "",
        (f"Wall-clock training budget per row: {', '.join(budgets)} min; a row trains to its config's epoch count or "
         "to the budget, whichever comes first (see the commands). Same split, input size, backbone and budget "
         f"for every row; AP on the {' and '.join(splits)} split; inference at batch 1 on CPU with "
         f"{INFERENCE_THREADS} threads (median); peak RSS of a process holding only that model."), "",
        format_table(rows), "", *(["Over the seeds:", "", *seeds, ""] if seeds else []),
        *curve_summary(rows), "Commands:", "",
        *[f"    {command}" for command in results["commands"]], "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in results["environment"].items()), "",
    ])
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    (out / "results.md").write_text(markdown)
    plot_rows(rows, out / "results.png")
    plot_curves(rows, out / "curves.png")
    return markdown


def plot_rows(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """A bar chart of AP and AP50 per measured row (rows copied from a twin are left out); None if none has AP."""
    measured = [r for r in rows if r.get("AP") is not None and not str(r.get("note", "")).startswith("same config")]
    if not measured:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in measured][::-1]  # top to bottom in table order
    positions = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    for offset, metric, color in ((0.2, "AP50", "#9ecae1"), (-0.2, "AP", "#3182bd")):
        values = [r[metric] if r.get(metric) is not None else 0.0 for r in measured][::-1]
        bars = axes.barh(positions + offset, values, height=0.4, color=color, label=metric)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    axes.set_yticks(positions, names, fontsize=8)
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("COCO metric on the validation split")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _load_results(out: Path, config_path: str) -> dict[str, Any]:
    path = out / "results.json"
    if path.is_file():
        results = json.loads(path.read_text())
        if results.get("config") == config_path:
            return results
    return {"config": config_path, "rows": {}, "commands": []}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark ours against torchvision's FasterRCNN, and ablations.")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/drone_cars.yaml")
    parser.add_argument("--budget-min", type=float, default=45.0, help="wall-clock training minutes per row")
    parser.add_argument("--rows", default="ours,peer", help="comma-separated groups or row names (see module doc)")
    parser.add_argument("--out", default=None, help="results folder (default docs/benchmarks/<config name>)")
    parser.add_argument("--max-images", type=int, default=0, help="cap each split at this many images (smoke runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="the split every row is scored on: val (every choice) or test (the final table, once)")
    parser.add_argument("--curve-every-min", type=float, default=0.0,
                        help="snapshot every N training minutes and score the snapshots on val: AP-against-time curves")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds of the ours and peer rows")
    parser.add_argument("--rerun", action="store_true",
                        help="measure rows again even when --out already holds them with the same config, split and "
                             "budget (by default those are kept, so an interrupted benchmark resumes where it stopped)")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.budget_min <= 0 or args.max_images < 0:
        parser.error("--budget-min must be positive and --max-images non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}", flush=True)
    try:
        rows = seed_rows(select_rows(args.rows), args.seeds)
        out = Path(args.out or f"docs/benchmarks/{Path(args.config).stem}")
        results = _load_results(out, args.config)
        results["commands"] = [*results["commands"], command]
        results["environment"] = environment()
        for row in rows:
            results["rows"][row.name] = _measure_or_reuse(row, args, results["rows"])
            write_report(out, results)  # after every row, so a long benchmark keeps what it finished
        markdown = write_report(out, results)
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n" + markdown)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _measure_or_reuse(row: Row, args: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Measure a row, or copy the figures of another row with the same resolved config and budget."""
    base = {"name": row.name, "kind": row.kind, "overrides": list(row.overrides), "budget_min": args.budget_min,
            "max_images": args.max_images}
    if row.needs_ximgproc and getattr(cv2, "ximgproc", None) is None:
        return {**base, "note": "skipped: cv2.ximgproc is missing (OpenCV contrib; `make selective-search`)"}
    base["split"] = args.split
    config = row_config(args, row)
    if config.data.train_on_val and (args.split == "val" or args.curve_every_min > 0):
        raise DetectorError(f"row '{row.name}' trains on the validation split (data.train_on_val), so validation "
                            "figures would be training figures: score it with --split test and no --curve-every-min")
    key = config_key(row.kind, config)
    kept = done.get(row.name)
    if not args.rerun and kept and kept.get("key") == key and "AP" in kept and kept.get("split", "val") == args.split \
            and kept.get("budget_min") == args.budget_min and kept.get("max_images") == args.max_images:
        print(f"\n=== {row.name}: kept from {args.out or 'the results folder'} (same config, split and budget; "
              "--rerun measures it again) ===", flush=True)
        return kept
    if row.eval_overrides:
        return {**base, **rescore(row, config, key, args, done)}
    twin = next((r for name, r in done.items() if name != row.name and r.get("key") == key and "AP" in r
                 and r.get("split", "val") == args.split and not r.get("eval_overrides")), None)
    if twin is not None:
        copied = {k: v for k, v in twin.items() if k not in base and k != "note"}
        return {**copied, **base, "key": key, "note": f"same config as {twin['name']}"}
    return {**base, "key": key, **run_row(row, config, args.budget_min, args.split)}


def rescore(row: Row, config: Config, key: str, args: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """An inference-only row: the weights of the row trained with the same config, scored with the row's
    eval overrides; its cost is the evaluation's seconds per image beside the twin's."""
    twin = next((r for r in done.values() if r.get("key") == key and r.get("weights") and not r.get("eval_overrides")),
                None)
    if twin is None or not Path(twin["weights"]).is_file():
        raise DetectorError(f"row '{row.name}' re-scores a trained row: run the row with the same training config "
                            "first (e.g. --rows ours,tta)")
    print(f"\n=== {row.name}: {' '.join(row.eval_overrides)} on the weights of {twin['name']} ===", flush=True)
    plain = score(row.kind, config, twin["weights"], args.split)
    scored = score(row.kind, apply_overrides(config, list(row.eval_overrides)), twin["weights"], args.split)
    return {**scored, "key": key, "eval_overrides": list(row.eval_overrides), "weights": twin["weights"],
            "eval_s_per_image_plain": plain["eval_s_per_image"],
            "note": f"weights of {twin['name']}; plain eval here AP {plain['AP']:.3f}"}


if __name__ == "__main__":
    sys.exit(main())
