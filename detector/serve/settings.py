"""The service's settings and the `detector serve` command line (also ``python -m detector.serve``).

Importing this module costs nothing (argparse only): `detector.cli` can add the ``serve`` options without
loading FastAPI, uvicorn or the model.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from detector.errors import DetectorError

__all__ = ["API_KEY_ENV", "Settings", "add_arguments", "main", "run"]

API_KEY_ENV = "DETECTOR_API_KEY"
_MB = 1024 * 1024


@dataclass
class Settings:
    """How the service runs. Every default is what `detector serve` uses when the option is not given."""

    model_name: str = "model"  # shown by /healthz and in every detection response
    host: str = "127.0.0.1"  # localhost only unless asked: the service has no TLS
    port: int = 8000
    max_batch: int = 4  # images per model call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    queue_size: int = 32  # requests waiting for the model; one more is answered 429
    max_body_mb: float = 20.0  # image uploads; larger bodies are answered 413
    max_video_mb: float = 200.0  # video uploads
    max_pixels: int = 40_000_000  # decoded image size limit (width * height), 413 above
    api_key: str | None = None  # when set, required in X-API-Key or Authorization: Bearer (not for /healthz, the page)
    max_jobs: int = 16  # finished video jobs kept (the oldest is deleted with its files)
    max_pending_jobs: int = 4  # video jobs queued or running; one more is answered 429
    retry_after_s: int = 1  # the Retry-After header of a 429

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * _MB)

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * _MB)


def _positive(kind: type, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options, on ``parser`` (a `detector` subcommand parser or a standalone one)."""
    defaults = Settings()
    count, size = _positive(int, "a positive integer"), _positive(float, "a positive number")
    parser.add_argument("model", metavar="CHECKPOINT_OR_ONNX", help="a .pt checkpoint or an .onnx export")
    parser.add_argument("--host", default=defaults.host, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=count, default=defaults.port)
    parser.add_argument("--max-batch", type=count, default=defaults.max_batch, help="images per model call")
    parser.add_argument("--max-wait-ms", type=_positive(float, "a number of milliseconds"),
                        default=defaults.max_wait_ms, help="how long a batch waits for more requests")
    parser.add_argument("--queue-size", type=count, default=defaults.queue_size,
                        help="requests that may wait for the model; more are answered 429 with Retry-After")
    parser.add_argument("--max-body-mb", type=size, default=defaults.max_body_mb, help="image upload limit (413 above)")
    parser.add_argument("--max-video-mb", type=size, default=defaults.max_video_mb, help="video upload limit")
    parser.add_argument("--max-pixels", type=lambda text: int(size(text)), default=defaults.max_pixels,
                        help="decoded image limit, width x height (413 above; 40e6 is accepted)")
    parser.add_argument("--max-jobs", type=count, default=defaults.max_jobs, help="finished video jobs kept")
    parser.add_argument("--api-key", default=None,
                        help=f"require this key (X-API-Key or Authorization: Bearer); default: ${API_KEY_ENV} if set")


def settings_from_args(args: argparse.Namespace) -> Settings:
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return Settings(model_name=Path(args.model).name, host=args.host, port=args.port, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_body_mb=args.max_body_mb,
                    max_video_mb=args.max_video_mb, max_pixels=args.max_pixels, api_key=api_key,
                    max_jobs=args.max_jobs)


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted (`detector serve`). Raises DetectorError for a bad model file."""
    settings = settings_from_args(args)
    from detector.serve.predictor import load_predictor

    predictor = load_predictor(args.model)
    import uvicorn

    from detector.serve.app import create_app

    app = create_app(predictor, settings)
    where = f"http://{settings.host}:{settings.port}"
    print(f"serving {settings.model_name} ({len(predictor.class_names)} classes) on {where} (API docs: {where}/docs)"
          + ("; API key required" if settings.api_key else ""), flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    except SystemExit as stop:  # uvicorn exits when it cannot bind: say so in one sentence
        if stop.code:
            raise DetectorError(f"cannot serve on {where}: the address is in use or not available") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m detector.serve CHECKPOINT_OR_ONNX [options]``: exit code 2 and one sentence for user errors."""
    parser = argparse.ArgumentParser(prog="detector serve", description="Serve a detector over HTTP with a web page.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
