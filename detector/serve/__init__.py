"""`detector serve`: the detector as an HTTP service with a web page.

    detector serve runs/x/best.pt            # or model.onnx (served without torch); then open http://127.0.0.1:8000/

Files, from the bottom: predictor.py (what the service needs from a model, and loading one), worker.py (the
bounded request queue and the one micro-batching thread that calls the model), jobs.py (video jobs), middleware.py
(JSON errors, API key, upload limits, Prometheus metrics), app.py (the routes: `create_app`), settings.py (the
settings and the command line), static/ (the page: plain HTML, CSS and JavaScript, no build step).

Importing this package is cheap: the names below load their modules (FastAPI, the app) on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app", "load_predictor", "main"]

_HOMES = {"Settings": "settings", "main": "settings", "create_app": "app", "load_predictor": "predictor"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'detector.serve' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"detector.serve.{_HOMES[name]}"), name)
