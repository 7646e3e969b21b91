"""The HTTP service: routes for images, video jobs, health and metrics, and the web page.

    from detector.serve.app import create_app
    app = create_app(predictor, Settings(model_name="best.pt"))   # any `Predictor`: a Detector, an OnnxDetector, a fake

Boxes in every response are ``x1, y1, x2, y2`` in the uploaded image's (or frame's) own pixels; labels are 1..K and
``class`` is their name. The model is only ever called by the one `ModelWorker` thread. This module imports no
torch: an ``.onnx`` model is served without it.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from detector.errors import DetectorError
from detector.serve.jobs import UPLOAD_NAME, JobOptions, JobStore, open_video
from detector.serve.middleware import ApiError, Metrics, install, receive_upload
from detector.serve.predictor import Predictor, select, unknown_classes
from detector.serve.settings import Settings
from detector.serve.worker import ModelWorker, QueueFull
from detector.visualize import draw_detections

__all__ = ["STATIC_DIR", "create_app", "decode_image"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
try:  # Swagger UI's JavaScript and CSS, packaged (swagger-ui-bundle): the /docs page works offline
    from swagger_ui_bundle import swagger_ui_path as SWAGGER_DIR
except ImportError:  # pragma: no cover - a dependency; without it /docs falls back to FastAPI's CDN links
    SWAGGER_DIR = None
JPEG_QUALITY = 90
_UPLOAD_BODY = {  # what the routes read by hand (for the size limits), described for /docs
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB; 413 over ``max_pixels``, 400 when not an image.

    The size is read from the header first (Pillow opens lazily), so an oversized image is refused before it is
    decoded into memory; formats Pillow cannot read are still decoded by OpenCV and checked after.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"the image is over the {max_pixels / 1e6:g} megapixel limit (--max-pixels)") from None
    except Exception:  # noqa: BLE001 - not a format Pillow knows: OpenCV decides below
        width = height = 0
    if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height} pixels, over the {max_pixels / 1e6:g} megapixel limit "
                            "(--max-pixels)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ApiError(400, "the upload is not a decodable image (expected e.g. JPEG, PNG, BMP, WebP or TIFF)")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ApiError(413, f"the image is {bgr.shape[1]}x{bgr.shape[0]} pixels, over the {max_pixels / 1e6:g} "
                            "megapixel limit (--max-pixels)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _encode_jpeg(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DetectorError("the annotated image could not be encoded as JPEG")
    return encoded.tobytes()


def create_app(predictor: Predictor, settings: Settings | None = None) -> FastAPI:
    """The service around ``predictor``: starts its model worker and video-job threads (stopped at shutdown)."""
    settings = settings or Settings()
    class_names = list(predictor.class_names)
    metrics = Metrics(settings.max_batch)
    worker = ModelWorker(predictor, settings.max_batch, settings.max_wait_ms / 1000, settings.queue_size,
                         on_batch=metrics.observe_batch)
    metrics.watch_queue(lambda: worker.depth)
    jobs = JobStore(worker, class_names, settings.max_jobs, settings.max_pending_jobs)
    overloaded = {"Retry-After": str(settings.retry_after_s)}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.close()
        worker.close()

    app = FastAPI(title="detector", version="1", lifespan=lifespan, docs_url=None,
                  description="Car detection on images and videos. Boxes are x1, y1, x2, y2 in the upload's pixels.")
    app.state.settings, app.state.worker, app.state.jobs, app.state.metrics = settings, worker, jobs, metrics
    install(app, metrics, settings.api_key)

    def options(score_thresh: float | None = Query(None, ge=0, le=1, description="keep scores >= this"),
                classes: str | None = Query(None, description="comma-separated class names to keep"),
                max_det: int | None = Query(None, gt=0, description="keep at most this many, best first")) -> JobOptions:
        names = [name.strip() for name in classes.split(",") if name.strip()] if classes else None
        unknown = unknown_classes(names or [], class_names)
        if unknown:
            raise ApiError(400, f"classes names {', '.join(unknown)}, which the model does not know (it has "
                                f"{', '.join(class_names)})")
        return JobOptions(score_thresh, names, max_det)

    async def run_model(image: np.ndarray):
        try:
            future = worker.submit([image])
        except QueueFull as error:
            raise ApiError(429, str(error), overloaded) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as error:  # noqa: BLE001 - the predictor failed on this batch; the worker goes on
            message = str(error) if isinstance(error, DetectorError) else f"{type(error).__name__}: {error}"
            raise ApiError(500, f"the model failed on this request: {message}") from None

    @app.post("/v1/detect", openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="Detect on one image (multipart field 'file' or the raw body)")
    async def detect(request: Request, chosen: JobOptions = Depends(options),
                     annotated: bool = Query(False, description="return the image with boxes drawn (JPEG)")) -> Response:
        started = time.perf_counter()
        if worker.full:  # refuse before reading the body: under overload, shedding must be cheap
            raise ApiError(429, "the request queue is full; retry later", overloaded)
        body = io.BytesIO()
        await receive_upload(request, settings.max_body_bytes, body, "--max-body-mb")
        image = await run_in_threadpool(decode_image, body.getvalue(), settings.max_pixels)
        result = await run_model(image)
        found = select(result.detections[0], class_names, chosen.score_thresh, chosen.classes, chosen.max_det)
        timing = {"queue": round(result.queue_seconds * 1000, 2), "model": round(result.model_seconds * 1000, 2)}
        if annotated:
            drawn = draw_detections(image, found.boxes, found.labels, class_names, scores=found.scores)
            jpeg = await run_in_threadpool(_encode_jpeg, drawn)
            timing["total"] = round((time.perf_counter() - started) * 1000, 2)
            return Response(jpeg, media_type="image/jpeg", headers={
                "X-Detections": str(len(found)), "X-Timing-Ms": ",".join(f"{k}={v}" for k, v in timing.items())})
        timing["total"] = round((time.perf_counter() - started) * 1000, 2)
        return JSONResponse({"model": settings.model_name, "width": image.shape[1], "height": image.shape[0],
                             "detections": found.to_list(), "timing_ms": timing})

    @app.post("/v1/videos", status_code=202, openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="Start a video job (multipart field 'file' or the raw body); poll GET /v1/videos/{id}")
    async def submit_video(request: Request, chosen: JobOptions = Depends(options)) -> Response:
        if jobs.pending >= settings.max_pending_jobs:
            raise ApiError(429, f"{settings.max_pending_jobs} video jobs are already queued or running; retry later",
                           overloaded)
        job_id, folder = jobs.new_folder()
        try:
            with open(folder / UPLOAD_NAME, "wb") as sink:
                await receive_upload(request, settings.max_video_bytes, sink, "--max-video-mb")
            source = await run_in_threadpool(open_video, folder / UPLOAD_NAME)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if jobs.add(job_id, folder, source, chosen) is None:
            raise ApiError(429, f"{settings.max_pending_jobs} video jobs are already queued or running; retry later",
                           overloaded)
        return JSONResponse({"id": job_id, "status_url": f"/v1/videos/{job_id}"}, status_code=202)

    def find_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no video job {job_id} (unknown, or evicted: the last {settings.max_jobs} finished "
                                "jobs are kept)")
        return job

    @app.get("/v1/videos/{job_id}", summary="A video job's status, progress and, when done, per-frame detections")
    async def video_status(job_id: str) -> Response:
        return JSONResponse(find_job(job_id).to_dict())

    @app.get("/v1/videos/{job_id}/video", summary="The annotated H.264 mp4 of a finished video job")
    async def video_file(job_id: str) -> Response:
        job = find_job(job_id)
        if job.status != "done" or not job.video_path.is_file():
            raise ApiError(409, f"video job {job_id} is {job.status}; its video exists once it is done")
        return FileResponse(job.video_path, media_type="video/mp4", filename=f"{job_id}.mp4",
                            content_disposition_type="inline")

    @app.get("/healthz", summary="Liveness, the model's name and classes (needs no API key)")
    async def healthz() -> dict:
        return {"status": "ok" if worker.alive else "stopping", "model": settings.model_name, "classes": class_names,
                "auth_required": settings.api_key is not None}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return metrics.render()

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """The OpenAPI page with Swagger UI's files served from here (FastAPI's default loads them from a CDN, which
        an offline or firewalled deployment cannot reach)."""
        if SWAGGER_DIR is None:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="detector API")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="detector API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if SWAGGER_DIR is not None:
        app.mount("/docs-static", StaticFiles(directory=SWAGGER_DIR), name="docs-static")
    return app
