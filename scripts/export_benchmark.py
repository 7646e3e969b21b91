"""Latency of the exported ONNX graph against today's `Detector` runtimes, in one run, on the same images.

    python scripts/export_benchmark.py --checkpoint runs/bench/kitti_cars-cascade-0-5-0-6-0-7/best.pt \
        --set data.max_size=640 --images '../shared/data/drone_cars/images/6_*' --out docs/benchmarks/export

Rows (batch 1, CPU, the same thread count for every runtime, median over the images after a warm-up):
- ``onnx graph``: the whole detector exported by `detector export`, run by ONNX Runtime (`OnnxDetector`, no torch);
- ``Detector onnx``: the default `Detector` on CPU, ONNX Runtime backbone + PyTorch RPN and heads;
- ``Detector torch``: the PyTorch model (channels_last backbone);
- ``openvino graph``: the exported file compiled by OpenVINO, when the `openvino` package is installed.
Every runtime's detections are compared with PyTorch's (`match_detections`) and the share of matched boxes saved.
Writes results.json (command, machine, versions, date, figures) and results.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.api import Detector  # noqa: E402
from detector.data.images import load_image  # noqa: E402
from detector.export import OnnxDetector, export_onnx, resize_longest  # noqa: E402
from detector.export_graph import MATCH_IOU, match_detections  # noqa: E402


class OpenVinoDetector(OnnxDetector):
    """The exported graph compiled by OpenVINO's CPU plugin; resizing and scaling as `OnnxDetector`."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__(path, threads)
        import openvino

        core = openvino.Core()
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
        self.compiled = core.compile_model(str(path), "CPU")
        self.session = self  # OnnxDetector calls self.session.run(None, {"image": array})

    def run(self, _: object, feeds: dict) -> list[np.ndarray]:
        result = self.compiled(feeds)
        return [result[output] for output in self.compiled.outputs]


def as_arrays(found) -> list[np.ndarray]:
    return [np.asarray(found.boxes), np.asarray(found.scores), np.asarray(found.labels)]


def time_rows(runtimes: dict, images: list[np.ndarray], repeats: int) -> dict[str, dict]:
    """Median and p90 ms per image of each runtime, interleaved image by image so drifts of the machine hit all."""
    times = {name: [] for name in runtimes}
    for runtime in runtimes.values():  # warm-up: first-call allocations, oneDNN kernel selection
        runtime.predict(images[0])
    for _ in range(repeats):
        for image in images:
            for name, runtime in runtimes.items():
                started = time.perf_counter()
                runtime.predict(image)
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: {"ms_median": statistics.median(v), "ms_p90": float(np.percentile(v, 90)), "samples": len(v)}
            for name, v in times.items()}


def agreement(reference: Detector, runtime, images: list[np.ndarray]) -> dict:
    """How the runtime's detections compare with PyTorch's on every image."""
    from torchvision.ops import box_iou

    matched = total = 0
    problems = []
    for image in images:
        expected, got = as_arrays(reference.predict(image)), as_arrays(runtime.predict(image))
        problem = match_detections(expected, got)
        if problem:
            problems.append(problem)
        iou = box_iou(torch.as_tensor(expected[0]).reshape(-1, 4), torch.as_tensor(got[0]).reshape(-1, 4)).numpy()
        matched += int(((iou >= MATCH_IOU).any(axis=1) if iou.size else np.zeros(len(expected[1]), bool)).sum())
        total += len(expected[1])
    return {"detections": total, "matched_share": matched / total if total else None, "problems": problems}


def run_in_thread(function):
    """Run ``function`` in a worker thread: PyTorch's OpenMP threads spin in the main thread while ONNX Runtime
    works there (measured: 120 ms against 13 ms per image on a tiny model), which would penalize the mixed
    runtime for where it was called rather than for what it costs. A service calls the model from a worker thread."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=function()))
    thread.start()
    thread.join()
    return result["value"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", default="../shared/data/drone_cars/images/6_*")
    parser.add_argument("--max-images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="checkpoint config override")
    parser.add_argument("--out", default="docs/benchmarks/export")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(glob.glob(args.images))[: args.max_images]
    if not paths:
        parser.error(f"--images {args.images!r} matches no file")
    images = [load_image(p) for p in paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        started = time.perf_counter()
        export_onnx(args.checkpoint, onnx_path, args.set)
        export_seconds = time.perf_counter() - started
        size_mib = onnx_path.stat().st_size / 2**20
        reference = Detector.load(args.checkpoint, device="cpu", overrides=args.set, runtime="torch")
        runtimes = {"onnx graph": OnnxDetector(onnx_path, threads=args.threads),
                    "Detector onnx": Detector.load(args.checkpoint, device="cpu", overrides=args.set, runtime="onnx"),
                    "Detector torch": reference}
        try:
            runtimes["openvino graph"] = OpenVinoDetector(onnx_path, args.threads)
        except Exception as error:  # noqa: BLE001 - not installed, or the graph does not compile: say which
            openvino_note = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        else:
            openvino_note = ""
        timings = run_in_thread(lambda: time_rows(runtimes, images, args.repeats))
        agreements = {name: agreement(reference, runtime, images) for name, runtime in runtimes.items()
                      if name != "Detector torch"}
    input_sizes = sorted({tuple(resize_longest(image, runtimes["onnx graph"].max_size).shape[:2]) for image in images})
    results = {
        "command": shlex.join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                     "openvino": _version("openvino")},
        "checkpoint": args.checkpoint, "overrides": args.set, "images": len(images), "input_sizes": input_sizes,
        "export_seconds": export_seconds, "onnx_mib": size_mib, "openvino_note": openvino_note,
        "rows": {name: {**timings[name], **agreements.get(name, {})} for name in runtimes},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"| runtime | ms/img median | ms/img p90 | matched with PyTorch (IoU >= {MATCH_IOU}) |", "|---|---:|---:|---:|"]
    for name, row in results["rows"].items():
        share = row.get("matched_share")
        lines.append(f"| {name} | {row['ms_median']:.1f} | {row['ms_p90']:.1f} | "
                     f"{'reference' if name == 'Detector torch' else 'n/a' if share is None else f'{share:.3f}'} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.json'}")
    return 0


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
