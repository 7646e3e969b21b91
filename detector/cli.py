"""The `detector` command line. Every user error ends as one sentence on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import sys
import warnings

EXIT_USER_ERROR = 2


def _number(kind: type, low: float, high: float | None = None, what: str = ""):
    """An argparse type: a ``kind`` number in [low, high], else one sentence naming the expected range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if not (value == value and value >= low and (high is None or value <= high)):  # value == value: not NaN
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}")
        return value
    return parse


_SCORE = _number(float, 0.0, 1.0, "a score in [0, 1]")
_COUNT = _number(int, 1, None, "an integer of at least 1")


def _slice_size(text: str) -> int | str:
    """--slice: 'auto' or a tile size of at least 64 px (detector.slicing.MIN_SLICE, not imported: it is torch-free
    but loads numpy and OpenCV, which `detector -h` does not need)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 64:
        raise argparse.ArgumentTypeError(f"expected a tile size of at least 64 pixels or 'auto', got {text!r}")
    return value


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 0.9:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a fraction of the tile in [0, 0.9), got {text!r}")
    return value


def _add_slicing(parser: argparse.ArgumentParser) -> None:
    """Sliced inference (detector.slicing) for frames much larger than data.max_size."""
    parser.add_argument("--slice", type=_slice_size, metavar="SIZE|auto",
                        help="predict tile by tile at native resolution, tiles of SIZE px (data.max_size: native); "
                             "auto: tiles of data.max_size for frames longer than twice it")
    parser.add_argument("--overlap", type=_overlap, default=None, help="tile overlap, a fraction of SIZE (default 0.3)")
    parser.add_argument("--slice-merge", choices=("nms", "nmm"), default=None,
                        help="merge across tiles: nms (default; boxes matched by intersection over the smaller box, "
                             "best on the drone mosaics) or nmm (SAHI's: joins the partial boxes of a car cut by a border)")
    parser.add_argument("--no-full-frame", action="store_true", help="skip the whole-frame pass (for large cars)")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`detector CMD -h` shows the usage) and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="detector", description="Fast R-CNN-style car detector.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a detector from a config into runs/<name>/")
    p.add_argument("-c", "--config", help="YAML config (defaults: the synthetic road scenes)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="resume from runs/<name>/last.pt (train.epochs=N may extend it)")
    _add_overrides(p)

    p = sub.add_parser("eval", help="COCO mAP, per-class AP, PR curves and confusion matrix of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("dataset", help="dataset folder or COCO json")
    p.add_argument("--format", required=True, help="coco | voc | yolo | kitti")
    p.add_argument("--out", help="output folder (default runs/eval/<name>)")
    p.add_argument("--filter", default="", help="only images whose file name matches this regular expression")
    p.add_argument("--split", choices=("val", "test"),
                   help="only the checkpoint config's validation or test block (data.val_filter / data.test_filter)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="torch",
                   help="how the backbone runs (as in detect): torch (the default, as training validates), onnx, auto")
    p.add_argument("--corrupt", metavar="NAME:SEVERITY[,...]|NAME|all",
                   help="also score under image corruptions (fog:3, night, all: every one at severities 1-5): "
                        "AP per corruption, mPC and rPC (detector/robustness.py)")
    _add_slicing(p)
    _add_overrides(p)

    p = sub.add_parser("export", help="the whole detector as one ONNX file (runs without torch: detect and serve take it)")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", help="output file (default: the checkpoint's path with .onnx); never overwritten")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the file in ONNX Runtime against PyTorch on two image sizes")
    _add_overrides(p)

    p = sub.add_parser("detect", help="detect cars in an image, folder, glob, video, webcam index or stream URL")
    p.add_argument("checkpoint", help="a checkpoint (.pt) or an exported model (.onnx: ONNX Runtime, no torch)")
    p.add_argument("source")
    p.add_argument("--out", help="output folder (default runs/detect/<name>)")
    p.add_argument("--classes", nargs="+", help="only these class names")
    p.add_argument("--score-thresh", type=_SCORE, default=0.5)
    p.add_argument("--max-det", type=_COUNT, default=100)
    p.add_argument("--batch-size", type=_number(int, 0, None, "an integer of at least 0 (0: automatic)"), default=0,
                   help="frames per model call (default: 1 on CPU, where batching measured slower; 8 on CUDA)")
    p.add_argument("--show", action="store_true", help="show a window when a display exists")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="how the backbone runs: onnx (ONNX Runtime, the default on CPU), torch (PyTorch, channels_last "
                        "on CPU; the default on CUDA)")
    _add_slicing(p)

    p = sub.add_parser("track", help="track and count cars in a video, stream or image sequence (ByteTrack)")
    p.add_argument("checkpoint")
    p.add_argument("source")
    p.add_argument("--out", help="output folder (default runs/track/<name>)")
    p.add_argument("--line", action="append", default=[], metavar="X1,Y1,X2,Y2[:NAME]",
                   help="count crossings of this segment (pixels; repeat for several lines)")
    p.add_argument("--zone", action="append", default=[], metavar="X1,Y1,...,XN,YN[:NAME]",
                   help="polygon whose occupancy, entries, exits and dwell times are reported (repeatable)")
    p.add_argument("--homography", metavar="FILE",
                   help='JSON {"image": [[x, y], ...], "ground": [[X, Y], ...]} (4+ points, metres): speeds in km/h')
    p.add_argument("--classes", nargs="+", help="only these class names")
    p.add_argument("--batch-size", type=_number(int, 0, None, "an integer of at least 0 (0: automatic)"), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto")
    _add_slicing(p)
    _add_overrides(p)

    p = sub.add_parser("serve", help="an HTTP service with a web page: POST images and videos, get boxes (FastAPI)")
    from detector.serve.settings import add_arguments  # argparse only: FastAPI and the model load when it runs

    add_arguments(p)

    p = sub.add_parser("eval-track", help="MOTA, IDF1, HOTA, ID switches of a MOTChallenge file against ground truth")
    p.add_argument("predicted", help="MOTChallenge txt written by `detector track` (tracks_mot.txt)")
    p.add_argument("ground_truth", help="MOTChallenge ground-truth txt (seventh field 0: an ignore region, where a "
                                        "prediction counts neither way)")
    p.add_argument("--counts", nargs=2, metavar=("PREDICTED_JSON", "TRUE_JSON"),
                   help="also compare line counts: counts.json of `detector track` against the true counts")
    p.add_argument("--min-height", type=float, default=0.0, metavar="PX",
                   help="score as KITTI's tracking benchmark (which uses 25): true cars under PX pixels tall are "
                        "ignore regions, and predicted boxes under PX that match no taller car are dropped "
                        "(default 0: every car counts)")
    p.add_argument("--out", help="also write the metrics as JSON to this file")

    p = sub.add_parser("demo", help="render synthetic roads, train, evaluate and detect, all offline (about 10 min on CPU)")
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    _add_overrides(p)

    p = sub.add_parser("info", help="per-layer table: output shape, stride, receptive field, parameters, GFLOPs")
    p.add_argument("-c", "--config")
    p.add_argument("--input-size", nargs=2, type=_number(int, 32, None, "a size of at least 32 pixels"),
                   default=[320, 320], metavar=("H", "W"))
    _add_overrides(p)

    p = sub.add_parser("convert", help="convert a dataset between formats")
    p.add_argument("--from", dest="src_format", required=True, help="kitti | voc | yolo | coco")
    p.add_argument("--to", dest="dst_format", required=True, help="coco | voc | yolo")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--names-file", help="YOLO class names file")
    p.add_argument("--image-root", help="COCO: the folder the JSON's file names are relative to (e.g. train2017/)")
    p.add_argument("--link", action="store_true",
                   help="hard-link the images instead of copying them (no extra space; editing one edits the other)")

    p = sub.add_parser("data", help="dataset tools: stats, show, anchors")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    q = data_sub.add_parser("stats", help="images, boxes per class, COCO size buckets, empty and dropped")
    q.add_argument("path")
    q.add_argument("--format", required=True)
    q.add_argument("--names-file")
    q.add_argument("--image-root", help="COCO: the folder the JSON's file names are relative to")
    q = data_sub.add_parser("show", help="draw a grid of samples with their boxes (after augmentation)")
    q.add_argument("path")
    q.add_argument("--format", required=True)
    q.add_argument("--augment", action="store_true")
    q.add_argument("--out", default="grid.png")
    q.add_argument("--num", type=_COUNT, default=16)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("-c", "--config", help="config whose augment and data.max_size sections are used")
    q.add_argument("--names-file")
    q.add_argument("--image-root", help="COCO: the folder the JSON's file names are relative to")
    q = data_sub.add_parser("anchors", help="how well the config's anchors fit its boxes, and a better sizes x ratios grid")
    q.add_argument("-c", "--config", required=True, help="config whose data (split, data.max_size) and anchors are used")
    q.add_argument("--split", choices=("train", "val"), default="train", help="the split whose boxes are measured")
    q.add_argument("--iou", type=_number(float, 0.0, 1.0, "an IoU in [0, 1]"), default=0.7,
                   help="shape-only IoU a box needs with an anchor to be covered")
    q.add_argument("--out", help="also write the report as JSON to this file")
    q.add_argument("--plot", metavar="PATH", help="also draw box width/height with the anchor shapes to this image")
    _add_overrides(q)

    p = sub.add_parser("proposals", help="compute selective-search proposals for a dataset into a JSON file")
    p.add_argument("dataset")
    p.add_argument("--format", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="fast", choices=["fast", "quality"])
    p.add_argument("--max", type=_COUNT, default=2000)

    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """Warnings on the command line read as one sentence, without the source line that raised them."""
    return f"warning: {message}\n"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``section.key=value`` overrides come after options too (`detector eval CKPT DATA --format coco
    eval.tta=true`): argparse takes a command's positionals in one run, so it leaves later ones over."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(arg.startswith("-") or "=" not in arg for arg in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def one_sentence(error: Exception) -> str:
    """The error's own sentence. A DetectorError raised in a DataLoader worker reaches the main process re-raised
    with the message "Caught DetectorError in DataLoader worker process 0. Original Traceback ...": keep its last
    line, without the exception's module path."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split("DetectorError: ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    warnings.formatwarning = _one_line_warning
    from detector.errors import DetectorError, StopRequested  # torch-free: detect and serve on an ONNX file need no torch

    try:
        from detector import commands

        return int(getattr(commands, f"run_{args.command.replace('-', '_')}")(args) or 0)
    except StopRequested as stop:
        print(f"{stop}; continue with `detector train --resume {stop.checkpoint}`", file=sys.stderr)
        return 128 + stop.signum
    except DetectorError as error:
        print(f"error: {one_sentence(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
