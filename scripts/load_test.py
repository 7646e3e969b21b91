"""A bounded localhost load test of `detector serve`: throughput and latency under concurrent clients, the cost
of the HTTP layer against calling the predictor directly, and (``--overload``) load shedding with flat memory.

    python scripts/load_test.py --model runs/x/best.pt                 # 16 clients, 400 requests, direct baseline
    python scripts/load_test.py --model model.onnx --requests 80
    python scripts/load_test.py --model runs/x/best.pt --overload      # 64 clients against a queue of 4: 429s, RSS

The server runs in a subprocess (``python -m detector.serve``) on a free port; the clients are threads with one
httpx client each, uploading the images (``--images``, KITTI from ../shared/data by default) round robin. Every
phase has a deadline. Figures are printed and written as JSON (``--out``) with the command, machine and versions.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = str(ROOT.parent / "shared" / "data" / "kitti_tiny" / "training" / "image_2" / "*.jpeg")
PACKAGES = ("detector", "torch", "onnxruntime", "fastapi", "uvicorn", "starlette", "httpx", "numpy",
            "opencv-python-headless")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a .pt checkpoint or an .onnx export")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="glob of the images to upload")
    parser.add_argument("--requests", type=int, default=400, help="requests in the load phase")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 16; 64 with --overload)")
    parser.add_argument("--overload", action="store_true", help="many clients against a small queue: 429s and RSS")
    parser.add_argument("--queue-size", type=int, help="the server's --queue-size (default 32; 4 with --overload)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, help="model threads, server and direct alike (default: torch's)")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="seconds each phase may take at most")
    parser.add_argument("--out", help="JSON report (default docs/benchmarks/serve/load_test.json, or "
                                      "load_test_overload.json with --overload)")
    args = parser.parse_args(argv)
    args.clients = args.clients or (64 if args.overload else 16)
    args.queue_size = args.queue_size or (4 if args.overload else 32)
    name = "load_test_overload.json" if args.overload else "load_test.json"
    args.out = args.out or str(ROOT / "docs" / "benchmarks" / "serve" / name)
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (psutil when installed, else /proc/PID/status)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """`python -m detector.serve` in a subprocess, its output in a log file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
        self.command = [sys.executable, "-m", "detector.serve", args.model, "--port", str(self.port),
                        "--queue-size", str(args.queue_size), "--max-batch", str(args.max_batch)]
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"the server did not answer /healthz within {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        Path(self.log.name).unlink(missing_ok=True)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    ms = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1), "mean": round(float(ms.mean()), 1)}


def run_load(base: str, images: list[tuple[str, bytes]], requests: int, clients: int, timeout: float,
             on_sample=None) -> dict:
    """``requests`` uploads by ``clients`` threads; stops early at ``timeout`` seconds. Latency of 200s only."""
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.time() + timeout

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.time() < deadline:
                with lock:
                    index = next(counter)
                if index >= requests:
                    return
                name, data = images[index % len(images)]
                started = time.perf_counter()
                try:
                    status = str(http.post("/v1/detect", files={"file": (name, data, "image/jpeg")}).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if on_sample is not None:
            on_sample()
        time.sleep(0.25)
    wall = time.perf_counter() - started
    done = statuses.get("200", 0)
    return {"requests": sum(statuses.values()), "ok": done, "wall_s": round(wall, 2),
            "throughput_images_per_s": round(done / wall, 2) if wall else None,
            "latency_ms": percentiles(latencies), "status_counts": dict(sorted(statuses.items())),
            "finished_in_time": time.time() < deadline}


def server_metrics(base: str) -> dict:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("detector_batch_size_sum", "detector_batch_size_count", "detector_model_seconds_sum"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    calls = values.get("detector_batch_size_count", 0)
    return {"model_calls": int(calls), "mean_batch_size": round(values.get("detector_batch_size_sum", 0) / calls, 2)
            if calls else None, "model_seconds": round(values.get("detector_model_seconds_sum", 0), 2)}


def _timed_loop(predictor, arrays: list[np.ndarray], count: int, deadline: float) -> tuple[list[float], float]:
    latencies, started = [], time.perf_counter()
    for index in range(count):
        if time.time() > deadline:
            break
        begun = time.perf_counter()
        predictor.predict_batch([arrays[index % len(arrays)]])
        latencies.append(time.perf_counter() - begun)
    return latencies, time.perf_counter() - started


def run_direct(model: str, images: list[tuple[str, bytes]], count: int, threads: int | None, timeout: float) -> dict:
    """The predictor in a plain loop in this process, one image per call, on the same images.

    The loop runs in a worker thread, as the service's model worker does. It is also timed briefly in the main
    thread: with torch's OpenMP threads spinning beside ONNX Runtime's, the main thread measured up to 10x slower
    on a busy 2-core machine (OMP_WAIT_POLICY=PASSIVE or OMP_NUM_THREADS=1 removes the gap).
    """
    import cv2

    from detector.serve.predictor import load_predictor

    predictor = load_predictor(model)
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    arrays = [cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for _, data in images]
    deadline = time.time() + timeout
    results: list = []
    worker = threading.Thread(target=lambda: results.append(_timed_loop(predictor, arrays, count + 2, deadline)))
    worker.start()
    worker.join()
    latencies, wall = results[0]
    latencies, wall = latencies[2:], wall - sum(latencies[:2])  # the first two calls are the warm-up
    main_latencies, main_wall = _timed_loop(predictor, arrays, min(count, 20), deadline)
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    return {"images": len(latencies), "wall_s": round(wall, 2), "torch_threads": torch_threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "throughput_images_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
            "latency_ms": percentiles(latencies),
            "main_thread_images_per_s": round(len(main_latencies) / main_wall, 2) if main_wall > 0 else None}


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = sorted(glob.glob(args.images))
    if not paths:
        raise SystemExit(f"--images {args.images} matches no file")
    images = [(Path(path).name, Path(path).read_bytes()) for path in paths]
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
              "versions": versions(), "mode": "overload" if args.overload else "load",
              "settings": {"model": args.model, "images": len(images), "requests": args.requests,
                           "clients": args.clients, "queue_size": args.queue_size, "max_batch": args.max_batch,
                           "threads": args.threads}}
    server = Server(args)
    print(f"server: {' '.join(server.command)}", flush=True)
    try:
        server.wait_ready(min(args.phase_timeout, 180))
        pid = server.process.pid
        # warm-up with full batches: the model's memory (allocator caches, activations of a batch of max_batch) is
        # then at its steady state, and the RSS "before" the measured phase is the served model's, not a cold start's
        warm = run_load(server.base, images, 8 * args.max_batch, 2 * args.max_batch, args.phase_timeout)
        rss = {"before_mb": rss_mb(pid), "during_samples_mb": []}

        def sample() -> None:
            value = rss_mb(pid)
            if value is not None:
                rss["during_samples_mb"].append(round(value, 1))

        print(f"warm-up: {warm['status_counts']}; load: {args.requests} requests, {args.clients} clients", flush=True)
        load = run_load(server.base, images, args.requests, args.clients, args.phase_timeout, sample)
        time.sleep(2)
        rss["after_mb"] = rss_mb(pid)
        during = rss.pop("during_samples_mb")
        rss.update(during_max_mb=max(during, default=None), samples=len(during))
        rss = {key: round(v, 1) if isinstance(v, float) else v for key, v in rss.items()}
        load.update(server_metrics(server.base))
        report["server"], report["server_rss"] = load, rss
    finally:
        server.stop()
    print(f"server: {load['throughput_images_per_s']} images/s, latency {load['latency_ms']}, "
          f"statuses {load['status_counts']}, mean batch {load['mean_batch_size']}")
    print(f"server RSS MB: before {rss['before_mb']}, max during {rss['during_max_mb']}, after {rss['after_mb']}")
    if args.overload:
        shed = load["status_counts"].get("429", 0)
        report["overload"] = {"shed_429": shed, "shed_fraction": round(shed / max(1, load["requests"]), 3),
                              "unexpected_statuses": {k: v for k, v in load["status_counts"].items()
                                                      if k not in ("200", "429")},
                              "rss_growth_mb": round(rss["after_mb"] - rss["before_mb"], 1)
                              if rss["after_mb"] and rss["before_mb"] else None}
        print(f"overload: {report['overload']}")
    else:
        direct = run_direct(args.model, images, args.requests, args.threads, args.phase_timeout)
        report["direct"] = direct
        if direct["throughput_images_per_s"] and load["throughput_images_per_s"]:
            report["server_over_direct_throughput"] = round(load["throughput_images_per_s"]
                                                            / direct["throughput_images_per_s"], 3)
        print(f"direct predict_batch loop: {direct['throughput_images_per_s']} images/s (main thread: "
              f"{direct['main_thread_images_per_s']}), latency {direct['latency_ms']}; server / direct throughput = "
              f"{report.get('server_over_direct_throughput')}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
