"""What each `detector` subcommand does: thin glue from parsed arguments to the package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from detector.config import Config, apply_overrides, load_config
from detector.runs import json_safe
from detector.errors import DetectorError
from detector.slicing import DEFAULT_OVERLAP

if TYPE_CHECKING:
    from detector.structures import Dataset


def run_train(args: argparse.Namespace) -> int:
    from detector.checkpoint import checkpoint_config, load_checkpoint
    from detector.engine import Trainer

    if args.resume:
        if args.config:
            raise DetectorError("--resume takes the config stored in the checkpoint; drop -c (overrides such as train.epochs=N are allowed)")
        config = apply_overrides(checkpoint_config(load_checkpoint(args.resume), args.resume), args.overrides)
    else:
        config = load_config(args.config, args.overrides)
    trainer = Trainer(config, resume=Path(args.resume) if args.resume else None)
    print(f"run folder: {trainer.run_dir}")
    run_dir = trainer.fit()
    print(f"done: {run_dir} (last.pt, best.pt, metrics.jsonl, curves.png)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_detector
    from detector.data.build import filter_records
    from detector.data.stats import report_datasets
    from detector.distributed import resolve_device
    from detector.engine import evaluate
    from detector.runs import new_run_dir, prepare_out_dir
    from detector.runtime import prepare_for_inference

    slicing = slicing_options(args)
    corruptions = corruption_options(args, slicing)
    model, config = load_detector(args.checkpoint, [*args.overrides, f"data.format={args.format}"])
    device = resolve_device(config.train.device)
    model.to(device)
    if slicing:  # every image predicted tile by tile through the API (detector.slicing), which prepares the model
        from detector.api import Detector

        detector = Detector(model, config, device, args.runtime, copy_model=False)
        runtime = detector.runtime
    else:
        runtime = prepare_for_inference(model, args.runtime, device)
    dataset = read_dataset_for_checkpoint(config, args.dataset, args.checkpoint)
    if args.split:
        key = f"data.{args.split}_filter"
        pattern = getattr(config.data, f"{args.split}_filter")
        if not pattern:
            raise DetectorError(f"--split {args.split}: the checkpoint's config has no {key}; pass it as an override")
        dataset = filter_records(dataset, pattern, True, key)
        if not dataset.records:
            raise DetectorError(f"--split {args.split}: {key} '{pattern}' matches no image of {args.dataset}")
        if args.split == "val" and config.data.train_on_val:
            print("note: this checkpoint trained on the validation block too (data.train_on_val, the final fit): "
                  "these are training figures; --split test is its held-out score", flush=True)
    if args.filter:
        dataset = filter_records(dataset, args.filter, True, "--filter")
        if not dataset.records:
            raise DetectorError(f"--filter '{args.filter}' matches no image of {args.dataset}")
    out = prepare_out_dir(args.out) if args.out else new_run_dir("runs/eval", Path(args.checkpoint).parent.name)
    report_datasets({"eval": dataset}, out)
    if slicing:
        from detector.slicing import evaluate_sliced

        output = evaluate_sliced(detector, dataset, **slicing)
    else:
        output = evaluate(model, dataset, config, device)
    result = output.result
    print(f"backbone runtime: {runtime} on {device}")
    print(result.table())
    for key, value in output.losses.items():
        print(f"{key}: {value:.4f}")
    output.save(out, config)
    metrics = {**result.metrics, "per_class": result.per_class, **output.losses}
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    print(f"wrote {out}/metrics.json, detections.json, ground_truth.json, pr_curves.png, confusion_matrix.png")
    if corruptions:
        score_corruptions(model, dataset, config, device, corruptions, result.metrics, out)
    return 0


def corruption_options(args: argparse.Namespace, slicing: dict) -> list[tuple[str, int]]:
    """(name, severity) pairs of --corrupt, checked before the model loads; [] without it."""
    if not args.corrupt:
        return []
    if slicing:
        raise DetectorError("--corrupt and --slice cannot be combined: score corruptions on whole images")
    from detector.robustness import parse_corruptions

    return parse_corruptions(args.corrupt)


def score_corruptions(model, dataset: "Dataset", config: Config, device, corruptions: list[tuple[str, int]],
                      clean: dict, out: Path) -> None:
    """AP and AP50 under each corruption, mPC and rPC against the clean figures (split into the corruptions trained
    on and the held-out ones for a model trained with augment.weather): robustness.json / .md in ``out``."""
    from detector.engine import evaluate
    from detector.robustness import markdown_table, score_corruptions, summarize, trained_corruptions

    scores = score_corruptions(lambda wrap: evaluate(model, dataset, config, device, with_loss=False, progress=False,
                                                     wrap_transform=wrap).result.metrics, corruptions)
    summary = summarize(clean, scores, trained_corruptions(config.augment))

    def rpc_text(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = []
    for metric in ("AP", "AP50"):
        lines += [f"{metric} under corruption (clean {clean[metric]:.3f}; mPC {summary[f'mPC_{metric}']:.3f}, "
                  f"rPC {rpc_text(summary[f'rPC_{metric}'])}):", "",
                  markdown_table({k: f[metric] for k, f in scores.items()}), ""]
    for group in ("seen", "held_out"):
        if group in summary:
            lines.append(f"- {group.replace('_', '-')} corruptions ({', '.join(summary[group]['names'])}): "
                         f"mPC {summary[group]['mPC_AP']:.3f}, rPC {rpc_text(summary[group]['rPC_AP'])}")
    (out / "robustness.json").write_text(json.dumps(json_safe(summary), indent=2))
    (out / "robustness.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}/robustness.json and robustness.md")


def slicing_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of detector.slicing from --slice, --overlap, --slice-merge, --no-full-frame; {} without
    --slice (the other three then have nothing to act on: one sentence)."""
    if args.slice is None:
        given = [name for name, value in (("--overlap", args.overlap), ("--slice-merge", args.slice_merge),
                                          ("--no-full-frame", args.no_full_frame or None)) if value is not None]
        if given:
            raise DetectorError(f"{', '.join(given)} only apply to sliced inference: add --slice SIZE or --slice auto")
        return {}
    return {"size": args.slice, "overlap": DEFAULT_OVERLAP if args.overlap is None else args.overlap,
            "merge": args.slice_merge or "nms", "full_frame": not args.no_full_frame}


def describe_slicing(slicing: dict) -> str:
    """The line `detect` and `track` print for the options of `slicing_options`."""
    return (f"sliced inference: tiles of {slicing['size']} px, overlap {slicing['overlap']}, merge {slicing['merge']}, "
            f"full-frame pass {'on' if slicing['full_frame'] else 'off'}")


def read_dataset_for_checkpoint(config: Config, path: str, checkpoint: str) -> Dataset:
    """Read a dataset (once) with the checkpoint's classes; classes it lacks are named with both sides."""
    from detector.data.build import read_split
    from detector.errors import UnknownClassError

    try:
        return read_split(config.data, path, list(config.model.class_names))
    except UnknownClassError as error:
        if error.option != "classes":  # a class map or ignore class of the config, not the model's classes
            raise
        missing = ", ".join(n for n in config.model.class_names if n not in error.available)
        raise DetectorError(
            f"dataset {path} does not match the classes of checkpoint {checkpoint}: it has no {missing} "
            f"(the dataset has {', '.join(error.available) or 'no classes'})"
        ) from None


def run_export(args: argparse.Namespace) -> int:
    from detector.export import OPSET, export_onnx

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    written = export_onnx(args.checkpoint, out, args.overrides, check=not args.no_check)
    checked = "" if args.no_check else ", checked against PyTorch on two image sizes"
    print(f"wrote {written} (ONNX opset {OPSET}, {written.stat().st_size / 2**20:.1f} MiB{checked})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from detector.serve.settings import run

    return run(args)


def run_detect(args: argparse.Namespace) -> int:
    from detector.video import run_detection

    slicing = slicing_options(args)
    if args.checkpoint.endswith(".onnx"):  # the exported graph in ONNX Runtime: no torch imported
        from detector.export import OnnxDetector

        if args.device not in ("auto", "cpu") or args.runtime not in ("auto", "onnx"):
            raise DetectorError("an exported .onnx model runs on the CPU in ONNX Runtime: drop --device and --runtime")
        detector, batch_size = OnnxDetector(args.checkpoint), args.batch_size or 1
        print(f"runtime: ONNX Runtime, the whole graph ({args.checkpoint})")
    else:
        from detector.api import Detector

        detector = Detector.load(args.checkpoint, device=args.device, runtime=args.runtime)
        print(f"backbone runtime: {detector.runtime} on {detector.device}")
        batch_size = args.batch_size or (8 if detector.device.type == "cuda" else 1)
    if slicing:  # frames one at a time, their tiles batch_size at a time
        from detector.slicing import SlicedPredictor

        detector, batch_size = SlicedPredictor(detector, **slicing, batch_size=batch_size), 1
        print(describe_slicing(slicing))
    summary = run_detection(
        detector, args.source, out_dir=Path(args.out) if args.out else None, classes=args.classes,
        score_thresh=args.score_thresh, max_det=args.max_det, batch_size=batch_size, show=args.show,
    )
    print(summary.describe())
    return 0


def run_track(args: argparse.Namespace) -> int:
    from detector.api import Detector
    from detector.track.run import check_track_options

    check_track_options(args.line, args.zone, args.homography)  # one sentence before the model is loaded
    slicing = slicing_options(args)
    detector = Detector.load(args.checkpoint, device=args.device, runtime=args.runtime, overrides=args.overrides)
    print(f"backbone runtime: {detector.runtime} on {detector.device}")
    batch_size = args.batch_size or (8 if detector.device.type == "cuda" else 1)
    if slicing:
        print(describe_slicing(slicing))
        slicing["slice"] = slicing.pop("size")  # Detector.track names the tile size `slice`
    summary = detector.track(args.source, args.out, args.line, args.zone, args.homography, args.classes, batch_size,
                             **slicing)
    print(summary.describe())
    return 0


def run_eval_track(args: argparse.Namespace) -> int:
    from detector.track.metrics import count_errors, evaluate_tracks
    from detector.track.mot import read_ground_truth, read_mot

    truth, ignore = read_ground_truth(args.ground_truth)
    if args.min_height < 0:
        raise DetectorError(f"--min-height must be >= 0 pixels, got {args.min_height}")
    metrics = evaluate_tracks(truth, read_mot(args.predicted), ignore, min_height=args.min_height)
    if args.counts:
        metrics["count errors"] = count_errors(*args.counts)
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.out:
        if Path(args.out).exists():
            raise DetectorError(f"--out {args.out} already exists; choose a new file name (nothing is overwritten)")
        Path(args.out).write_text(json.dumps(json_safe(metrics), indent=2))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from detector.demo import run_demo as demo

    demo(Path(args.out), args.overrides)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from detector.detector import build_detector
    from detector.info import describe_detector

    config = load_config(args.config, args.overrides)
    model = build_detector(config, pretrained=False)  # shapes and counts do not depend on the weights
    heads = {"proposals": model.proposal_source, "roi_heads": model.roi_heads}
    print(describe_detector(model.backbone, heads, tuple(args.input_size)))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from detector.data.readers import read_dataset
    from detector.data.stats import report_datasets
    from detector.data.writers import write_dataset

    dataset = read_dataset(args.src, args.src_format, names_file=args.names_file, image_root=args.image_root)
    out = write_dataset(dataset, Path(args.dst), args.dst_format, link=args.link)
    report_datasets({"source": dataset})
    print(f"wrote {len(dataset.records)} images in {args.dst_format} format to {out}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    from detector.data.readers import read_dataset

    if args.data_command == "anchors":
        return run_data_anchors(args)
    dataset = read_dataset(args.path, args.format, names_file=args.names_file, image_root=args.image_root)
    if args.data_command == "stats":
        from detector.data.stats import count_converted_images, dataset_stats, format_stats

        count_converted_images(dataset)
        print(format_stats(dataset_stats(dataset)))
        return 0
    from detector.data.stats import report_datasets
    from detector.visualize import show_dataset

    if Path(args.out).exists():
        raise DetectorError(f"--out {args.out} already exists; choose a new file name (nothing is overwritten)")
    report_datasets({"data": dataset})
    config = load_config(args.config) if args.config else Config()
    augment = config.augment if args.augment else None
    out = show_dataset(dataset, Path(args.out), augment, config.data.max_size, num=args.num, seed=args.seed)
    print(f"wrote {out}")
    return 0


def run_data_anchors(args: argparse.Namespace) -> int:
    import numpy

    from detector.anchor_report import anchor_report, box_shapes, format_report, plot_anchor_report
    from detector.data.build import build_datasets

    if not 0.0 < args.iou <= 1.0:
        raise DetectorError(f"--iou must be in (0, 1], got {args.iou}")
    config = load_config(args.config, args.overrides)
    train, val = build_datasets(config)
    split = train if args.split == "train" else val
    boxes_wh = box_shapes(split, config.data.max_size)
    if not len(boxes_wh):
        raise DetectorError(f"the {args.split} split of {args.config} has no boxes to fit anchors to")
    # training with augment.rotate90 sees every box turned a quarter too: fit the anchors to both
    turned = args.split == "train" and config.augment.enabled and config.augment.rotate90 > 0
    if turned:
        boxes_wh = numpy.concatenate([boxes_wh, boxes_wh[:, ::-1]])
    model = config.model
    report = anchor_report(boxes_wh, model.anchor_sizes, model.anchor_ratios, args.iou, model.fpn)
    report = {"config": args.config, "split": args.split, "images": len(split.records),
              "max_size": config.data.max_size, "rotate90": turned, **report}
    title = (f"anchor report: {args.config}, {args.split} split, {len(split.records)} images, boxes resized with their "
             f"images to a longest side of data.max_size = {config.data.max_size} px"
             + (", each also turned a quarter (augment.rotate90)" if turned else ""))
    print(format_report(report, title))
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if not path:
            continue
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if option == "--out":
                Path(path).write_text(json.dumps(json_safe(report), indent=2))
            else:
                plot_anchor_report(boxes_wh, report, Path(path))
        except OSError as error:
            raise DetectorError(f"{option} {path} cannot be written ({error.strerror or error})") from None
        print(f"wrote {path}")
    return 0


def run_proposals(args: argparse.Namespace) -> int:
    from detector.data.images import load_image
    from detector.data.proposals_file import write_proposals_file
    from detector.data.readers import read_dataset
    from detector.proposals import compute_proposals

    dataset = read_dataset(args.dataset, args.format)
    proposals = compute_proposals(dataset, load_image, mode=args.mode, max_proposals=args.max)
    write_proposals_file(Path(args.out), proposals)
    print(f"wrote proposals for {len(proposals)} images to {args.out}")
    return 0

