"""Video jobs: an uploaded video is detected frame by frame in the background and drawn into an H.264 mp4.

Jobs run one at a time in a job thread; their frames reach the model through the service's one model worker
(`ModelWorker.predict`, which waits for room in the queue), so a video never calls the model beside it and image
requests keep being served between its batches. Each job owns a folder under the store's temporary root (the
upload and the annotated mp4); only the last ``max_finished`` finished jobs are kept, and an evicted job's folder
is deleted with it.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from detector.errors import DetectorError
from detector.serve.predictor import DetectionsLike, select
from detector.serve.worker import ModelWorker
from detector.sources import Source, open_source
from detector.video import DEFAULT_FPS, VideoFile, predict_frames
from detector.visualize import draw_detections

__all__ = ["Job", "JobOptions", "JobStore", "open_video"]

_POLL_S = 0.1
UPLOAD_NAME, VIDEO_NAME = "upload.mp4", "annotated.mp4"  # FFmpeg reads the container from the bytes, not the name


@dataclass
class JobOptions:
    """The detection options of a job's request, applied to every frame."""

    score_thresh: float | None = None
    classes: list[str] | None = None
    max_det: int | None = None


@dataclass
class Job:
    """One video: its state (queued, running, done, failed), progress and, when done, per-frame detections."""

    id: str
    folder: Path
    source: Source
    options: JobOptions
    status: str = "queued"
    frames_done: int = 0
    error: str | None = None
    frames: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def frames_total(self) -> int | None:
        return self.source.frame_count

    @property
    def video_path(self) -> Path:
        return self.folder / VIDEO_NAME

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        total = self.frames_total
        return min(1.0, self.frames_done / total) if total else 0.0

    def to_dict(self) -> dict:
        """The job's status as JSON; a finished job adds its frames and the URL of its annotated mp4."""
        state = {"id": self.id, "status": self.status, "progress": round(self.progress, 4),
                 "frames_done": self.frames_done, "frames_total": self.frames_total, "error": self.error}
        if self.status == "done":
            width, height = self.source.frame_size or (None, None)
            state.update(fps=self.source.fps or DEFAULT_FPS, width=width, height=height,
                         video_url=f"/v1/videos/{self.id}/video", frames=self.frames)
        return state


class _WorkerPredictor:
    """`predict_frames`' view of the model worker: a predictor whose calls queue behind the image requests."""

    def __init__(self, worker: ModelWorker, class_names: list[str], stop: threading.Event) -> None:
        self.worker, self.class_names, self.stop = worker, class_names, stop

    def predict_batch(self, images: Sequence[np.ndarray], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> list[DetectionsLike]:
        return self.worker.predict(list(images), self.stop).detections  # filtered per job in `_process`


def open_video(path: Path) -> Source:
    """Open an uploaded video and decode its first frame; a DetectorError in one sentence when it is not one."""
    try:
        source = open_source(path)
    except DetectorError:
        source = None
    if source is None or source.kind != "video":
        raise DetectorError("the upload is not a decodable video (expected e.g. mp4, webm, mov or avi)")
    return source


class JobStore:
    """Video jobs by id, a queue of jobs to run, and the thread that runs them."""

    def __init__(self, worker: ModelWorker, class_names: list[str], max_finished: int = 16,
                 max_pending: int = 4) -> None:
        self.worker, self.class_names = worker, list(class_names)
        self.max_finished, self.max_pending = max_finished, max_pending
        self.root = Path(tempfile.mkdtemp(prefix="detector-serve-"))
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._finished: list[str] = []  # ids, oldest first
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detector-video-jobs", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(job.status in ("queued", "running") for job in self._jobs.values())

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its folder, where the upload is written before the job is added."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def add(self, job_id: str, folder: Path, source: Source, options: JobOptions) -> Job | None:
        """Queue a job on an opened video; None (and nothing kept) when max_pending jobs already wait or run."""
        job = Job(job_id, folder, source, options)
        with self._lock:
            if sum(j.status in ("queued", "running") for j in self._jobs.values()) >= self.max_pending:
                job = None
            else:
                self._jobs[job_id] = job
        if job is None:
            source.close()
            shutil.rmtree(folder, ignore_errors=True)
            return None
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the job in progress, join the thread and delete every job's files."""
        self._stop.set()
        self._thread.join(timeout)
        with self._lock:
            for job in self._jobs.values():
                job.source.close()
            self._jobs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            job.status = "running"
            try:
                self._process(job)
                job.status = "done"
            except Exception as error:  # noqa: BLE001 - a bad video or a model failure fails this job only
                job.error = str(error) if isinstance(error, DetectorError) else f"{type(error).__name__}: {error}"
                job.status = "failed"
            finally:
                job.source.close()
                (job.folder / UPLOAD_NAME).unlink(missing_ok=True)  # the annotated mp4 is all that is served
                self._finish(job)

    def _process(self, job: Job) -> None:
        """Detect on every frame, draw the job's detections into the mp4 and record them per frame."""
        predictor = _WorkerPredictor(self.worker, self.class_names, self._stop)
        options, video = job.options, None
        try:
            for result in predict_frames(predictor, job.source, batch_size=self.worker.max_batch):
                chosen = select(result.detections, self.class_names, options.score_thresh, options.classes,
                                options.max_det)
                annotated = draw_detections(result.image, chosen.boxes, chosen.labels, self.class_names,
                                            scores=chosen.scores)
                if video is None:
                    size = job.source.frame_size or (annotated.shape[1], annotated.shape[0])
                    video = VideoFile(job.video_path, job.source.fps or DEFAULT_FPS, size)
                video.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR), result.index)
                job.frames.append({"frame": result.index, "detections": chosen.to_list()})
                job.frames_done += 1
        finally:
            if video is not None:
                video.release()
        if video is None:
            raise DetectorError("the video has no decodable frames")

    def _finish(self, job: Job) -> None:
        """Keep the last max_finished finished jobs; delete the folders of older ones."""
        with self._lock:
            self._finished.append(job.id)
            evicted = self._finished[: max(0, len(self._finished) - self.max_finished)]
            del self._finished[: len(evicted)]
            for job_id in evicted:
                self._jobs.pop(job_id, None)
        for job_id in evicted:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
