"""Benchmark: CPU inference speed of the detector, one before/after pair per speed-up.

    .venv/bin/python scripts/bench_inference.py --checkpoint runs/bench/drone_cars-ours/best.pt
    .venv/bin/python scripts/bench_inference.py -c configs/demo.yaml --size 320 --repeats 2 --video-frames 30 \
        --out /tmp/inference.json                                                      # a few-minute smoke run

Groups (``--only``): proposals (RPN test-time post/pre_nms_top_n), stages (a Cascade R-CNN checkpoint run with its
first 1, 2, ... stages, in the product's runtime: what the cascade costs over a single-stage head), channels_last
(NHWC backbone), threads, compile (torch.compile of the backbone), onnx (the backbone in ONNX Runtime), batch (1 vs 4
images per call) and video (``run_detection``: end-to-end FPS against model-only FPS). Figures are median ms per image
of ``--repeats`` ``FastRCNN.predict`` calls after ``--warmup`` ones, batch 1 unless said, on drone images
(``--images``) resized to ``--size`` (smooth noise if absent). A group's variants take turns call by call (A, B, A, B,
...) so load from other processes hits them alike; speedups are against the group's first row. With ``-c`` the weights
are random: speed depends on them only through the proposals and detections they keep (the proposals rows count them).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detector.api import Detector
from detector.config import Config, load_config
from detector.data.images import list_images, load_image
from detector.data.transforms import build_transform
from detector.cascade import CascadeRoIHeads
from detector.checkpoint import load_detector
from detector.detector import FastRCNN, build_detector
from detector.runs import json_safe
from detector.runtime import ChannelsLastBackbone, onnx_backbone
from detector.structures import DetectorError
from detector.video import run_detection

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the read-only data beside the repo
GROUPS = ("proposals", "stages", "channels_last", "threads", "compile", "onnx", "batch", "video")
# compile runs last: a compile that runs over --compile-timeout cannot be stopped and keeps a core busy
RUN_ORDER = ("proposals", "stages", "channels_last", "threads", "onnx", "batch", "video", "compile")
BATCH = 4  # images loaded, and images per call in the batch group
ONNX_TOLERANCE = 1e-3  # ONNX Runtime's features must match the torch backbone's within this (abs and rel)
VIDEO_FPS_GOAL = 0.9  # end-to-end / model-only FPS: decoding, drawing and writing should hide behind the model
# OpenMP reads OMP_WAIT_POLICY once, when it starts, so the policy cannot be switched inside one process
OMP_NOTE = ("note: waiting OpenMP threads spin (OMP_WAIT_POLICY ACTIVE, the usual default) and take the core from busy "
            "ones on a shared machine; the policy is read once at start-up, so for passive waiting run\n  "
            "OMP_WAIT_POLICY=PASSIVE {command} --only threads --out <another.json>")


@dataclass
class Row:
    """One line of the table. ms: per image (video: per frame, end to end); speedup: group baseline / this."""

    group: str
    variant: str
    ms: float | None
    speedup: float | None
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Setup:
    """What the groups measure: the eager model and BATCH preprocessed (3, h, w) float images in [0, 1]."""

    model: FastRCNN
    config: Config
    images: list[torch.Tensor]
    sizes: list[tuple[int, int]]  # original (height, width) of each image, for rescaling boxes
    args: argparse.Namespace


def int_list(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="trained checkpoint to time")
    source.add_argument("-c", "--config", help="YAML config; the model gets random weights (pretrained=False)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--size", type=int, default=640, help="longest image side in pixels (data.max_size)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--proposals", type=int_list, default=[1000, 300, 150, 50],
                        help="test-time post_nms_top_n values, comma separated, the first is the baseline")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                        help="stages group: how the backbone runs (detector.runtime; auto: ONNX Runtime on CPU)")
    parser.add_argument("--stage-proposals", type=int_list, default=[],
                        help="stages group: also the whole cascade with model.rpn_post_nms_top_n_test at these values")
    parser.add_argument("--images", default=str(SHARED_DATA / "drone_cars" / "images"), help="real images folder")
    parser.add_argument("--video", default=str(SHARED_DATA / "videos" / "solidWhiteRight.mp4"), help="video clip")
    parser.add_argument("--video-frames", type=int, default=0, help="only the first N frames of --video (0: all)")
    parser.add_argument("--compile-timeout", type=float, default=120.0, help="seconds torch.compile may take")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups from {','.join(GROUPS)}")
    parser.add_argument("--seed", type=int, default=0, help="for random weights and synthetic images")
    parser.add_argument("--out", default="docs/benchmarks/inference.json", help="JSON file for the results")
    args = parser.parse_args()
    args.groups = [group.strip() for group in args.only.split(",") if group.strip()]
    if unknown := sorted(set(args.groups) - set(GROUPS)):
        parser.error(f"--only names unknown groups {unknown}; expected some of {', '.join(GROUPS)}")
    for name in ("size", "threads", "repeats", "proposals", "stage_proposals"):
        if min(np.atleast_1d(getattr(args, name)), default=1) < 1:
            parser.error(f"--{name.replace('_', '-')} expects positive integers, got {getattr(args, name)}")
    return args


def load_model(args: argparse.Namespace) -> tuple[FastRCNN, Config, str]:
    """The eval-mode model, its config (data.max_size = --size) and a one-line description."""
    overrides = [f"data.max_size={args.size}", *args.set]
    if args.checkpoint:
        model, config = load_detector(args.checkpoint, overrides)
        return model, config, f"trained checkpoint {args.checkpoint}"
    config = load_config(args.config, overrides)
    return build_detector(config, pretrained=False).eval(), config, f"{args.config or 'default config'}, random weights"


def load_images(args: argparse.Namespace) -> tuple[list[torch.Tensor], list[tuple[int, int]], str]:
    """BATCH (3, h, w) float images in [0, 1], longest side --size, their original sizes and a description."""
    folder = Path(args.images)
    paths = list_images(folder)[:BATCH] if folder.is_dir() else []
    if len(paths) < BATCH:  # smooth noise (16 px blobs), not white noise: activations resemble a real image's
        generator = torch.Generator().manual_seed(args.seed)
        coarse = torch.rand(BATCH, 3, max(args.size * 9 // 256, 1), max(args.size // 16, 1), generator=generator)
        images = F.interpolate(coarse, size=(args.size * 9 // 16, args.size), mode="bicubic").clamp(0, 1)
        size = tuple(images.shape[-2:])
        return list(images), [size] * BATCH, f"{BATCH} smooth-noise images of {size[0]}x{size[1]}"
    transform = build_transform(None, args.size, train=False)  # the resize Detector.predict applies
    arrays, empty = [load_image(path) for path in paths], np.zeros((0, 4), np.float32)
    resized = [transform(array, empty, np.zeros((0,), np.int64), empty).image for array in arrays]
    tensors = [torch.from_numpy(np.ascontiguousarray(r)).permute(2, 0, 1).float().div_(255) for r in resized]
    height, width = resized[0].shape[:2]
    return tensors, [a.shape[:2] for a in arrays], f"{BATCH} images from {folder} resized to {height}x{width}"


def predict_fn(model: FastRCNN, setup: Setup, first: int = 0, count: int = 1) -> Callable[[], object]:
    """One ``predict`` call on images[first : first + count]."""
    images, sizes = setup.images[first:first + count], setup.sizes[first:first + count]
    return lambda: model.predict(images, sizes)


def time_interleaved(variants: dict[str, Callable[[], object]], setup: Setup) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns call by call."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(setup.args.warmup + setup.args.repeats):
        for name, run in variants.items():
            torch.set_num_threads(setup.args.threads)  # a variant may change it; each call starts from --threads
            start = time.perf_counter()
            run()
            if step >= setup.args.warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(runs) for name, runs in seconds.items()}


def rows_from(group: str, medians: dict[str, float], per_call: int = 1, notes: dict | None = None) -> list[Row]:
    """Median seconds per call -> rows of ms per image, speedups against the first variant."""
    baseline, notes = next(iter(medians.values())), notes or {}
    return [Row(group, name, 1e3 * s / per_call, baseline / s, notes.get(name, "")) for name, s in medians.items()]


def with_backbone(model: FastRCNN, wrap: Callable[[nn.Module], nn.Module]) -> FastRCNN:
    """A copy of the model whose backbone is ``wrap(copy of the backbone)``; the original stays eager."""
    variant = copy.deepcopy(model)
    variant.backbone = wrap(variant.backbone)
    return variant


def against_eager(setup: Setup, group: str, names: tuple[str, str], variant: FastRCNN, note: str = "") -> list[Row]:
    """The eager model (baseline) and ``variant``, timed in turns."""
    medians = time_interleaved({names[0]: predict_fn(setup.model, setup), names[1]: predict_fn(variant, setup)}, setup)
    return rows_from(group, medians, notes={names[1]: note})


def count_proposals(setup: Setup) -> int:
    """How many proposals the RPN really passes on for the first image (NMS may leave fewer than top_n)."""
    counts: list[int] = []
    hook = setup.model.proposal_source.register_forward_hook(lambda _m, _i, out: counts.append(len(out[0][0])))
    try:
        predict_fn(setup.model, setup)()
    finally:
        hook.remove()
    return counts[0]


def bench_proposals(setup: Setup) -> list[Row]:
    """post_nms_top_n at test time; pre_nms_top_n (per level) keeps the config's test pre/post ratio."""
    rpn = setup.model.proposal_source
    if not hasattr(rpn, "post_nms_top_n"):
        return [Row("proposals", "-", None, None, "model.proposals is not rpn: no RPN to tune")]
    (pre_train, pre_test), (post_train, post_test) = original = rpn.pre_nms_top_n, rpn.post_nms_top_n
    run = predict_fn(setup.model, setup)

    def with_top_n(pre: int, post: int) -> Callable[[], object]:
        def call() -> object:  # the variants share one model, so each call sets its own (train, test) pairs
            rpn.pre_nms_top_n, rpn.post_nms_top_n = (pre_train, pre), (post_train, post)
            return run()
        return call

    variants, notes = {}, {}
    try:
        for post in setup.args.proposals:
            pre = max(post, round(post * pre_test / post_test))
            name = f"post_nms {post}, pre_nms {pre}"
            variants[name] = with_top_n(pre, post)
            variants[name]()  # sets the pair for count_proposals
            mark = " (the config's setting)" if (pre, post) == (pre_test, post_test) else ""
            notes[name] = f"{count_proposals(setup)} proposals used{mark}"
        return rows_from("proposals", time_interleaved(variants, setup), notes=notes)
    finally:
        rpn.pre_nms_top_n, rpn.post_nms_top_n = original


def first_stages(model: FastRCNN, count: int) -> FastRCNN:
    """A copy of a Cascade R-CNN model that runs only its first ``count`` stages (1: a single-stage head's work on the
    same proposals: one pooling, one box head, no refinement)."""
    variant = copy.deepcopy(model)
    heads = variant.roi_heads
    for name in ("box_heads", "predictors", "stage_ious", "box_coders", "matchers", "stage_loss_weights"):
        setattr(heads, name, getattr(heads, name)[:count])  # every per-stage list, so the cut model is whole
    return variant


def bench_stages(setup: Setup) -> list[Row]:
    """The cascade with its first 1, 2, ... stages, each in the product's runtime (`Detector`: ONNX Runtime backbone
    on CPU, or --runtime); the first row, one stage, is what the single-stage head of the same model would cost. With
    --stage-proposals, the whole cascade again with fewer test proposals."""
    heads = setup.model.roi_heads
    if not isinstance(heads, CascadeRoIHeads):
        return [Row("stages", "-", None, None, "single-stage head (model.cascade_ious is empty): no cascade to time")]
    variants, notes = {}, {}
    for count in range(1, heads.num_stages + 1):
        detector = Detector(first_stages(setup.model, count), setup.config, "cpu", setup.args.runtime)
        name = f"{count} of {heads.num_stages} stages"
        variants[name] = predict_fn(detector.model, setup)
        whole = " (the checkpoint as it runs)" if count == heads.num_stages else ""
        notes[name] = f"{detector.runtime} backbone{whole}"
    post_train, post_test = setup.model.proposal_source.post_nms_top_n
    for post in setup.args.stage_proposals:  # model.rpn_post_nms_top_n_test alone: pre_nms_top_n stays the config's
        detector = Detector(setup.model, setup.config, "cpu", setup.args.runtime)
        detector.model.proposal_source.post_nms_top_n = (post_train, post)
        name = f"{heads.num_stages} of {heads.num_stages} stages, {post} proposals"
        variants[name] = predict_fn(detector.model, setup)
        notes[name] = f"{detector.runtime} backbone, the config's {post_test} proposals cut to {post}"
    rows = rows_from("stages", time_interleaved(variants, setup), notes=notes)
    for row in rows[1:]:
        row.note += f"; {1 / row.speedup:.2f}x the one-stage time"
    return rows


def bench_channels_last(setup: Setup) -> list[Row]:
    nhwc = with_backbone(setup.model, ChannelsLastBackbone)
    return against_eager(setup, "channels_last", ("contiguous (NCHW)", "channels_last (NHWC)"), nhwc)


def bench_threads(setup: Setup) -> list[Row]:
    """--threads against 1 intra-op thread (2 when --threads is 1), under this process's OpenMP wait policy."""
    other = 1 if setup.args.threads != 1 else 2
    run = predict_fn(setup.model, setup)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    names = [f"{n} thread{'s' * (n > 1)}, OMP_WAIT_POLICY {policy}" for n in (setup.args.threads, other)]
    variants = {names[0]: run, names[1]: lambda: (torch.set_num_threads(other), run())}
    return rows_from("threads", time_interleaved(variants, setup))


def first_call_within(run: Callable[[], object], timeout: float) -> tuple[float, str | None]:
    """Seconds of the first call (where torch.compile compiles), and why it failed or ran over ``timeout``.

    It runs in a daemon thread because a compile cannot be interrupted: one that runs over keeps running."""
    outcome: dict = {}

    def target() -> None:
        start = time.perf_counter()
        try:
            run()
            outcome["seconds"] = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - any compiler failure means: skip the row
            outcome["error"] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:150]}"

    thread = threading.Thread(target=target, name="bench-compile", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return timeout, f"compiling took more than {timeout:.0f} s"
    return outcome.get("seconds", 0.0), outcome.get("error")


def bench_compile(setup: Setup) -> list[Row]:
    compiled = with_backbone(setup.model, torch.compile)
    seconds, problem = first_call_within(predict_fn(compiled, setup), setup.args.compile_timeout)
    if problem:
        return [Row("compile", "torch.compile(backbone)", None, None, f"skipped: {problem}")]
    return against_eager(setup, "compile", ("eager", "torch.compile(backbone)"), compiled,
                         f"first call (compiling) {seconds:.1f} s")


def bench_onnx(setup: Setup) -> list[Row]:
    example = setup.model.preprocess(setup.images[:1]).images  # (1, 3, H, W) normalized and padded
    try:
        converted = onnx_backbone(setup.model.backbone, setup.args.threads)
    except DetectorError as error:  # export, session or the load-time check failed: a row, not the whole run
        return [Row("onnx", "onnxruntime backbone", None, None, f"skipped: {error}")]
    with torch.no_grad():
        expected, got = setup.model.backbone(example), converted(example)
    pairs = list(zip(expected, got, strict=True))  # one map per level from both
    error = max(float((e - g).abs().max()) for e, g in pairs)
    found = f"max |diff| {error:.1e} (largest |feature| {max(float(e.abs().max()) for e in expected):.1f})"
    if not all(torch.allclose(e, g, rtol=ONNX_TOLERANCE, atol=ONNX_TOLERANCE) for e, g in pairs):
        return [Row("onnx", "onnxruntime backbone", None, None, f"skipped: outputs differ from torch, {found}")]
    ort_model = with_backbone(setup.model, lambda _: converted)
    names = ("torch backbone", "onnxruntime backbone")
    return against_eager(setup, "onnx", names, ort_model, f"onnxruntime {onnxruntime.__version__}, {found}")


def bench_batch(setup: Setup) -> list[Row]:
    one_by_one = [predict_fn(setup.model, setup, first=i) for i in range(BATCH)]
    medians = time_interleaved({f"batch 1 ({BATCH} calls)": lambda: [run() for run in one_by_one],
                                f"batch {BATCH} (1 call)": predict_fn(setup.model, setup, count=BATCH)}, setup)
    return rows_from("batch", medians, per_call=BATCH)


def write_clip(source: Path, frames: int, path: Path) -> Path:
    """The first ``frames`` frames of ``source`` re-encoded (mp4v) into ``path``, for a shorter video run."""
    capture, writer = cv2.VideoCapture(str(source)), None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    for _ in range(frames):
        ok, frame = capture.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
    capture.release()
    if writer is None:
        raise DetectorError(f"--video {source} has no readable frame")
    writer.release()
    return path


def bench_video(setup: Setup) -> list[Row]:
    """run_detection end to end (decode, model, draw, write mp4/JSON/CSV) against its model-only time."""
    video, rows = Path(setup.args.video), []
    if not video.is_file():
        return [Row("video", "-", None, None, f"skipped: --video {video} not found")]
    detector = Detector(setup.model, setup.config, "cpu")  # the product's runtime (auto), on a copy of the model
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(video, setup.args.video_frames, Path(tmp) / video.name) if setup.args.video_frames else video
        for batch_size in (1, BATCH):
            torch.set_num_threads(setup.args.threads)
            done = run_detection(detector, clip, Path(tmp) / f"out-{batch_size}", batch_size=batch_size)
            ratio = done.fps / done.model_fps if done.model_fps else 0.0
            note = (f"{detector.runtime} backbone, {done.frames} frames: {done.fps:.1f} FPS end to end, {done.model_fps:.1f} FPS model only, ratio "
                    f"{ratio:.2f} (goal >= {VIDEO_FPS_GOAL}: {'met' if ratio >= VIDEO_FPS_GOAL else 'not met'})")
            ms, extra = 1e3 / done.fps, {"frames": done.frames, "fps": done.fps, "model_fps": done.model_fps}
            speedup = rows[0].ms / ms if rows else 1.0
            rows.append(Row("video", f"run_detection batch {batch_size}", ms, speedup, note, {**extra, "ratio": ratio}))
    return rows


def machine_info() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if Path("/usr/bin/lscpu").exists() else ""
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lscpu.splitlines())}
    return {
        "cpu": fields.get("Model name", platform.processor() or "unknown"),
        "cores": f"{fields.get('Socket(s)', '?')} socket(s) x {fields.get('Core(s) per socket', '?')} core(s), "
                 f"{fields.get('Thread(s) per core', '?')} thread(s) per core, {os.cpu_count()} CPUs",
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
    }


def markdown_table(rows: list[Row]) -> str:
    lines = ["| group | variant | ms / image | speedup | note |", "|---|---|---:|---:|---|"]
    for row in rows:
        ms = f"{row.ms:.1f}" if row.ms is not None else "-"
        speedup = f"{row.speedup:.2f}x" if row.speedup is not None else "-"
        lines.append(f"| {row.group} | {row.variant} | {ms} | {speedup} | {row.note} |")
    return "\n".join(lines)


BENCHES: dict[str, Callable[[Setup], list[Row]]] = {
    "proposals": bench_proposals, "stages": bench_stages, "channels_last": bench_channels_last,
    "threads": bench_threads,
    "compile": bench_compile, "onnx": bench_onnx, "batch": bench_batch, "video": bench_video,
}


def run_groups(setup: Setup) -> list[Row]:
    """The selected groups in RUN_ORDER, rows in GROUPS order; a failing group becomes one row, the rest still run."""
    rows: list[Row] = []
    for group in (g for g in RUN_ORDER if g in setup.args.groups):
        print(f"... {group}", file=sys.stderr, flush=True)
        try:
            rows += BENCHES[group](setup)
        except DetectorError:
            raise
        except Exception as error:  # noqa: BLE001 - an optional backend failing must not lose the other groups
            rows.append(Row(group, "-", None, None, f"failed: {type(error).__name__}: {str(error).strip()[:150]}"))
    return sorted(rows, key=lambda row: GROUPS.index(row.group))  # stable: rows keep their order within a group


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)  # the random weights of -c
    torch.set_num_threads(args.threads)
    info = machine_info()
    model, config, model_text = load_model(args)
    images, sizes, images_text = load_images(args)
    print(f"command: {info['command']}\ndate: {info['date']}\nmachine: {info['cpu']}, {info['cores']}, "
          f"load average {info['load_average']}, OMP_WAIT_POLICY {info['omp_wait_policy']}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in info["versions"].items()))
    print(f"model: {model_text} ({config.model.backbone}, fpn={config.model.fpn}); input: {images_text}")
    print(f"median ms/image of {args.repeats} calls after {args.warmup} warmup calls, {args.threads} threads")
    if not args.checkpoint:
        print("note: random weights; speed depends on weights only through the proposals and detections they keep")
    rows = run_groups(Setup(model, config, images, sizes, args))
    table = markdown_table(rows)
    print("\n" + table)
    if "threads" in args.groups and info["omp_wait_policy"].upper() != "PASSIVE":
        print("\n" + OMP_NOTE.format(command=info["command"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "model": model_text, "input": images_text, "args": vars(args),
               "rows": [asdict(row) for row in rows], "markdown": table}
    out.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    try:
        main()
    except DetectorError as error:
        sys.exit(f"error: {error}")
