"""The one thread that calls the model: a bounded request queue and micro-batching.

Every model call of the service happens here, in one thread, so a model that is not thread-safe is never called
concurrently and the CPU threads of the model are never oversubscribed. Requests (one image, or a chunk of video
frames) wait in a bounded queue; the worker takes the first, then waits at most ``max_wait_s`` for more until it
has ``max_batch`` images, and calls ``predictor.predict_batch`` once for all of them. A full queue is refused at
once (`QueueFull`, which the app answers with 429) instead of letting latency and memory grow without bound. A
predictor exception fails only the requests of that batch; the worker goes on with the next one.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from detector.errors import DetectorError
from detector.serve.predictor import DetectionsLike, Predictor

__all__ = ["BatchResult", "ModelWorker", "QueueFull"]

_POLL_S = 0.1  # how often an idle worker looks at its stop flag


class QueueFull(DetectorError):
    """The request queue is full: the service is overloaded and the client should retry later."""


@dataclass
class BatchResult:
    """One request's share of a model call: its detections (one per image, in order) and where its time went.

    queue_seconds: from `submit` to the start of the model call; model_seconds: the whole batch's model call.
    """

    detections: list[DetectionsLike]
    queue_seconds: float
    model_seconds: float
    batch_size: int


@dataclass
class _Request:
    images: list[np.ndarray]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class ModelWorker:
    """A thread that runs ``predictor.predict_batch`` on micro-batches of queued requests.

    max_batch: the most images per model call (a request with more images than that runs alone);
    max_wait_s: how long the first request of a batch waits for others; queue_size: requests that may wait;
    on_batch(images, seconds): called after every successful model call (metrics).
    """

    def __init__(self, predictor: Predictor, max_batch: int = 4, max_wait_s: float = 0.01, queue_size: int = 64,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise DetectorError(f"the model worker needs max_batch >= 1, queue_size >= 1 and max_wait_s >= 0, got "
                                f"{max_batch}, {queue_size} and {max_wait_s}")
        self.predictor, self.max_batch, self.max_wait_s = predictor, max_batch, max_wait_s
        self._on_batch = on_batch
        self._queue: queue.Queue[_Request] = queue.Queue(queue_size)
        self._held: _Request | None = None  # taken from the queue but too big for the batch being built
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detector-model-worker", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (the queue, and the one held back for the next batch)."""
        return self._queue.qsize() + (self._held is not None)

    @property
    def full(self) -> bool:
        """True when a `submit` without waiting would be refused now."""
        return self._queue.full()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def submit(self, images: list[np.ndarray], timeout: float | None = 0.0) -> Future:
        """Queue ``images`` ((H, W, 3) uint8 RGB each); the future's result is a `BatchResult`.

        timeout: seconds to wait for room in the queue (0: none, None: forever); raises `QueueFull` after it.
        """
        if self._stop.is_set():
            raise DetectorError("the model worker has stopped; the service is shutting down")
        request = _Request(list(images))
        try:
            if timeout == 0:
                self._queue.put_nowait(request)
            else:
                self._queue.put(request, timeout=timeout)
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} waiting); retry later") from None
        return request.future

    def predict(self, images: list[np.ndarray], stop: threading.Event | None = None) -> BatchResult:
        """Blocking `submit` for background work (video jobs): waits for room in the queue rather than failing,
        until ``stop`` is set, then waits for the result."""
        while True:
            if stop is not None and stop.is_set():
                raise DetectorError("the job was stopped before the model ran on its frames")
            try:
                future = self.submit(images, timeout=_POLL_S)
                break
            except QueueFull:
                continue
        return future.result()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; requests still waiting fail with a DetectorError."""
        self._stop.set()
        self._thread.join(timeout)
        stopped = DetectorError("the service is shutting down; the request was not run")
        pending = [self._held] if self._held is not None else []
        self._held = None
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(stopped)

    def _next_batch(self) -> list[_Request]:
        """Up to max_batch images of queued requests: the first one, then whatever arrives within max_wait_s."""
        first, self._held = self._held, None
        if first is None:
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                return []
        batch, count = [first], len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        while count < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:  # past the deadline, requests already waiting still join (they cost no extra wait)
                request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if count + len(request.images) > self.max_batch:
                self._held = request
                break
            batch.append(request)
            count += len(request.images)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            # a request whose client went away (cancelled future) is dropped before it costs a model call
            batch = [request for request in self._next_batch() if request.future.set_running_or_notify_cancel()]
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        images = [image for request in batch for image in request.images]
        started = time.perf_counter()
        try:
            detections = list(self.predictor.predict_batch(images))
            if len(detections) != len(images):
                raise DetectorError(f"the model returned {len(detections)} results for a batch of {len(images)} images")
        except Exception as error:  # noqa: BLE001 - fails this batch's requests only; the worker keeps running
            for request in batch:
                request.future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(len(images), seconds)
        offset = 0
        for request in batch:
            share = detections[offset : offset + len(request.images)]
            offset += len(request.images)
            request.future.set_result(BatchResult(share, started - request.enqueued, seconds, len(images)))
