"""HTTP plumbing of the service: JSON errors, the API key, upload limits and the Prometheus metrics.

Every error response is ``{"error": "<one sentence>"}`` with its status code; a request never takes the process
down (an unexpected exception is a 500 of that request only).
"""

from __future__ import annotations

import hmac
import time
from typing import AsyncIterator, BinaryIO, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from detector.errors import DetectorError

__all__ = ["ApiError", "Metrics", "error_response", "install", "receive_upload"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COPY_CHUNK = 1024 * 1024
# no key needed: the page, its static files (/static/...), health and the API's description (/docs, its files under
# /docs-static/, /openapi.json), none of which holds data; a browser opening them cannot send a header
_PUBLIC_PATHS = ("/healthz", "/", "/favicon.ico", "/docs", "/openapi.json")
_PUBLIC_PREFIXES = ("/static/", "/docs-static/")


class ApiError(DetectorError):
    """A request the service refuses: its HTTP status, one sentence, and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("detector_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("detector_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("detector_queue_depth", "Requests waiting for the model", registry=self.registry)
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, max_batch})
        self.batch_size = Histogram("detector_batch_size", "Images per model call", buckets=batch_buckets,
                                    registry=self.registry)
        self.model_seconds = Histogram("detector_model_seconds", "Seconds per model call (predict_batch)",
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.model_seconds.observe(seconds)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _endpoint(request: Request) -> str:
    """The route template (/v1/videos/{job_id}), so the metrics have one series per endpoint, not per URL."""
    route = request.scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    for prefix in _PUBLIC_PREFIXES:
        if request.url.path.startswith(prefix):
            return prefix.rstrip("/")
    # FastAPI's own pages (/docs, /openapi.json) are plain routes: the router marks them with an endpoint
    return request.url.path if "endpoint" in request.scope else "unmatched"


def _authorized(request: Request, api_key: str | None) -> bool:
    path = request.url.path
    if api_key is None or path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES):
        return True
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())  # constant time


def install(app: FastAPI, metrics: Metrics, api_key: str | None) -> None:
    """The API-key check, the per-request metrics, and JSON bodies for every error, on ``app``."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Response:
        started = time.perf_counter()
        if not _authorized(request, api_key):
            response: Response = error_response(401, "this service needs an API key: send it in the X-API-Key header "
                                                     "or as Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})
        else:
            try:
                response = await call_next(request)
            except Exception as error:  # noqa: BLE001 - a bug in one request must not end the service
                response = error_response(500, f"internal error: {type(error).__name__}: {error}")
        endpoint = _endpoint(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> Response:
        return error_response(error.status, str(error), error.headers)

    @app.exception_handler(DetectorError)
    async def detector_error(_: Request, error: DetectorError) -> Response:
        return error_response(400, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(error.status_code, message, dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body"))
        return error_response(400, f"invalid {where or 'request'}: {first.get('msg', 'malformed request').lower()}")


async def _limited(request: Request, limit: int, option: str) -> AsyncIterator[bytes]:
    """The request body in chunks; 413 as soon as it passes ``limit`` bytes (also for a chunked upload)."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the request body is larger than the {limit / 2**20:g} MB limit ({option})")
        yield chunk


async def receive_upload(request: Request, limit: int, sink: BinaryIO, option: str) -> int:
    """Write the uploaded file to ``sink``: the multipart field ``file``, or else the raw request body.

    Refuses bodies over ``limit`` bytes with 413 (named after ``option``), before reading when Content-Length
    says so. Returns the number of bytes written; an empty upload is a 400.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is larger than the {limit / 2**20:g} MB limit ({option})")
    written = 0
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, _limited(request, limit, option), max_files=4, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as error:
            raise ApiError(400, f"the multipart body could not be read: {error}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            await form.close()
            raise ApiError(400, "the multipart body has no file field named 'file'")
        try:
            while chunk := await upload.read(_COPY_CHUNK):
                sink.write(chunk)
                written += len(chunk)
        finally:
            await form.close()
    else:
        async for chunk in _limited(request, limit, option):
            sink.write(chunk)
            written += len(chunk)
    if written == 0:
        raise ApiError(400, "the request has no file: send it as the multipart field 'file' or as the request body")
    return written
