"""Detection on any source: an image, a folder, a glob, a video file, a webcam index or a stream URL.

Three threads keep the model busy: a reader decodes frames ahead into a bounded queue, the calling thread
runs ``predict_batch`` on batches of frames, and (in `run_detection`) a writer draws boxes and writes the
annotated images / mp4, ``detections.json`` and ``detections.csv``. Every frame is ``(H, W, 3)`` uint8 RGB;
every box is ``(D, 4)`` float32 ``x1, y1, x2, y2`` in that frame's own pixels.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import queue
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from detector.errors import DetectorError
from detector.runs import new_run_dir, prepare_out_dir
from detector.sources import Frame, Source, open_source
from detector.visualize import IMAGE_SUFFIXES, draw_detections, save_image

if TYPE_CHECKING:  # video I/O needs no torch: the ONNX predictor (detector.export) runs it without
    from detector.structures import Detections

__all__ = ["BackgroundSink", "DetectSummary", "Frame", "FrameResult", "Source", "VideoFile", "open_source",
           "predict_frames", "run_detection", "write_results"]

DEFAULT_FPS = 25.0  # for the output mp4 when a webcam or stream does not report its rate
_POLL_S = 0.1  # how often a blocked thread looks at its stop flag
_STALL_S = 60.0  # a source that delivers no frame for this long is reported as stalled (DETECTOR_STALL_S)
_DONE = object()  # end-of-stream marker in the thread queues
_SHOW_NOTE = "--show needs a display and OpenCV with GUI support; continuing without a window"


class FramePredictor(Protocol):
    """What `predict_frames` needs from a detector (`detector.api.Detector` is one)."""

    class_names: list[str]

    def predict_batch(self, images: Sequence[np.ndarray], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> list[Detections]: ...


@dataclass
class FrameResult:
    """A frame with its detections (boxes (D, 4) xyxy in the frame's pixels).

    model_seconds is this frame's share of the ``predict_batch`` call that processed it.
    """

    index: int
    name: str
    image: np.ndarray
    detections: Detections
    model_seconds: float = 0.0



class _Failure:
    """An exception raised in a background thread, carried to the thread that consumes its output."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Prefetcher:
    """Runs an iterable in a background thread and hands its items over through a bounded queue."""

    def __init__(self, items: Iterable[Any], maxsize: int, name: str = "the source") -> None:
        self.name = name
        self.stall_s = float(os.environ.get("DETECTOR_STALL_S", _STALL_S))
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="detector-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=_POLL_S)
                return True
        return False

    def _run(self, items: Iterable[Any]) -> None:
        iterator = None
        try:
            iterator = iter(items)
            for item in iterator:
                if not self._put(item):
                    break
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer's thread
            self._put(_Failure(error))
        finally:
            if hasattr(iterator, "close"):
                iterator.close()  # releases the capture even when the consumer stopped early

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                item = self._queue.get(timeout=self.stall_s)
            except queue.Empty:
                raise DetectorError(f"{self.name} stalled: no frame for {self.stall_s:g} s (set DETECTOR_STALL_S to "
                                    "wait longer)") from None
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.stall_s)  # a reader blocked in a dead stream is a daemon: left behind


class BackgroundSink:
    """Feeds items to ``handle`` in a background thread; a failure there is raised by the next `put`."""

    def __init__(self, handle: Callable[[Any], None], maxsize: int) -> None:
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="detector-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            try:
                self._handle(item)
            except BaseException as error:  # noqa: BLE001 - re-raised in the producer's thread
                self._error = error
                return

    def put(self, item: Any) -> None:
        while True:
            if self._error is not None:
                raise self._error
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=_POLL_S)
                return

    def close(self, discard: bool = False) -> None:
        """Finish the queued items (or drop them when ``discard``), join the thread, re-raise its failure."""
        if discard:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
        while self._error is None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_DONE, timeout=_POLL_S)
                break
        self._thread.join()
        if self._error is not None and not discard:
            raise self._error


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DetectorError(f"batch_size must be a positive integer, got {batch_size!r}")


def predict_frames(detector: FramePredictor, source: str | int | Source, batch_size: int = 4,
                   score_thresh: float | None = None, classes: Sequence[str] | None = None,
                   max_det: int | None = None) -> Iterator[FrameResult]:
    """Per-frame detections, boxes (D, 4) xyxy in each frame's pixels, in source order.

    Frames are decoded ahead in a background thread and sent to ``detector.predict_batch`` ``batch_size``
    at a time. The reader thread is stopped and joined however the iteration ends.
    """
    _check_batch_size(batch_size)
    opened = source if isinstance(source, Source) else open_source(source)
    prefetcher = _Prefetcher(opened.frames(), maxsize=2 * batch_size, name=f"the {opened.kind} {opened.location}")
    frames = iter(prefetcher)
    try:
        # full batches of batch_size, then the remainder; an empty list ends the loop
        for batch in iter(lambda: list(itertools.islice(frames, batch_size)), []):
            started = time.perf_counter()
            detections = detector.predict_batch([frame.image for frame in batch], score_thresh=score_thresh,
                                                classes=classes, max_det=max_det)
            share = (time.perf_counter() - started) / len(batch)
            for frame, frame_detections in zip(batch, detections, strict=True):
                yield FrameResult(frame.index, frame.name, frame.image, frame_detections, share)
    finally:
        prefetcher.close()
        opened.close()


class VideoFile:
    """An mp4 being written from BGR frames: H.264 through PyAV (libx264, yuv420p: what browsers play), else
    OpenCV's MPEG-4 part 2 ("mp4v"), which media players read but browsers do not. Frames of another size (a stream
    that changes resolution) are resized to the first one's; odd sizes are padded by one pixel (H.264's 4:2:0 needs
    even ones). Given source frame numbers, frames the source could not decode repeat the last picture, so frame n
    of the mp4 is always source frame n."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path, (width, height) = Path(path), size
        try:
            import av
        except ImportError:  # PyAV is a dependency; an environment without it still writes a playable file
            av = None
        self._av, self._size = av, (width, height)
        self._last: tuple[int, np.ndarray] | None = None  # (source frame number, picture) of the last frame written
        if av is not None:
            self._container = av.open(str(self.path), "w")
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "20", "preset": "veryfast"}
            self.codec = "h264"
        else:
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not self._writer.isOpened():
                raise DetectorError(f"cannot write the annotated video {self.path} (OpenCV has no mp4v writer)")
            self.codec = "mp4v"

    def write(self, bgr: np.ndarray, index: int | None = None) -> None:
        """One (H, W, 3) uint8 BGR frame; ``index``: its source frame number (see the class doc)."""
        width, height = self._size
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        if index is not None:
            if self._last is not None:
                for _ in range(index - self._last[0] - 1):  # skipped (undecodable) frames: hold the last picture
                    self._encode(self._last[1])
            self._last = (index, bgr)
        self._encode(bgr)

    def _encode(self, bgr: np.ndarray) -> None:
        if self._av is None:
            self._writer.write(bgr)
            return
        width, height = self._size
        if width % 2 or height % 2:
            bgr = cv2.copyMakeBorder(bgr, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        if self._av is None:
            self._writer.release()
            return
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()


class _ResultWriter:
    """Draws each FrameResult and writes the annotated image or mp4 frame, JSON entries and CSV rows."""

    def __init__(self, source: Source, out_dir: Path, class_names: Sequence[str], show: bool) -> None:
        self.source, self.out_dir, self.class_names = source, out_dir, list(class_names)
        self.video_path = out_dir / f"{source.stem}.mp4" if source.is_video else None
        self.json_path, self.csv_path = out_dir / "detections.json", out_dir / "detections.csv"
        self.entries: list[dict] = []
        self.video: VideoFile | None = None
        # the window is drawn by the calling thread (GUI toolkits want one thread); the writer offers frames
        self.display: queue.Queue | None = queue.Queue(maxsize=1) if show else None
        self._csv_file = self.csv_path.open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame_or_image", "class", "score", "x1", "y1", "x2", "y2"])

    def write(self, result: FrameResult) -> None:
        found = result.detections.to("cpu")  # a GPU detector may hand back device tensors
        annotated = draw_detections(result.image, found.boxes, found.labels, self.class_names, scores=found.scores)
        rows = found.to_list()
        if self.source.is_video:
            self._write_video_frame(annotated, result.index)
            key: int | str = result.index
            self.entries.append({"frame": result.index, "detections": rows})
        else:
            name = result.name if Path(result.name).suffix.lower() in IMAGE_SUFFIXES else f"{result.name}.png"
            save_image(self.out_dir / name, annotated)
            key = result.name
            self.entries.append({"image": result.name, "detections": rows})
        self._csv.writerows([key, row["class"], row["score"], *row["box"]] for row in rows)
        if self.display is not None:
            with contextlib.suppress(queue.Full):  # a slow window shows fewer frames, never slows the writer
                self.display.put_nowait(annotated)

    def _write_video_frame(self, annotated: np.ndarray, index: int) -> None:
        """Frame ``index`` of the source into the mp4 (frame n of the mp4 is source frame n, as in the JSON / CSV)."""
        if self.video is None:
            size = self.source.frame_size or (annotated.shape[1], annotated.shape[0])
            self.video = VideoFile(self.video_path, self.source.fps or DEFAULT_FPS, size)
        self.video.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR), index)

    def finish(self) -> None:
        """Close the video and CSV and write the JSON (also after a failure: what was done is kept)."""
        if self.video is not None:
            self.video.release()
        if self.display is not None:
            cv2.destroyAllWindows()
        self._csv_file.close()
        if self.source.is_video:
            size = list(self.source.frame_size) if self.source.frame_size else None
            payload = {"source": self.source.location, "fps": self.source.fps, "frame_size": size,
                       "frames": self.entries}
        else:
            payload = {"source": self.source.location, "images": self.entries}
        self.json_path.write_text(json.dumps(payload))  # compact: an hour of video has 90,000 frame entries


@dataclass
class DetectSummary:
    """What `run_detection` did: frame and detection counts, speeds, and where the outputs are.

    seconds is end to end (decode, model, drawing, writing); model_seconds only the ``predict_batch`` calls.
    annotated is the annotated mp4 for video sources, the folder of annotated images otherwise.
    """

    source: str
    frames: int
    skipped_frames: int
    detections: int
    seconds: float
    model_seconds: float
    out_dir: Path
    annotated: Path
    json_path: Path
    csv_path: Path

    @property
    def mean_detections(self) -> float:
        return self.detections / self.frames if self.frames else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_seconds if self.model_seconds > 0 else 0.0

    def describe(self) -> str:
        return (f"{self.source}: {self.frames} frames ({self.skipped_frames} skipped), {self.detections} detections "
                f"({self.mean_detections:.2f} per frame), {self.fps:.1f} FPS end to end, {self.model_fps:.1f} FPS "
                f"model only -> {self.out_dir}")

    def to_dict(self) -> dict:
        """JSON-ready: every field (paths as strings) plus the derived rates."""
        rates = {"mean_detections": self.mean_detections, "fps": self.fps, "model_fps": self.model_fps}
        items = {**asdict(self), **rates}.items()
        return {key: str(v) if isinstance(v, Path) else round(v, 3) if isinstance(v, float) else v for key, v in items}


def _display_available() -> bool:
    """True when a screen exists and this OpenCV build can open windows (the headless wheel cannot)."""
    screen = sys.platform in ("win32", "darwin") or any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY"))
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return screen and gui is not None and gui.group(1).upper() != "NONE"


def _show_latest(display: queue.Queue, title: str) -> bool:
    """Show the newest annotated frame, if any; True when the user pressed q or Esc to stop."""
    with contextlib.suppress(queue.Empty):
        cv2.imshow(title, cv2.cvtColor(display.get_nowait(), cv2.COLOR_RGB2BGR))
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


class ResultWriter(Protocol):
    """What `write_results` drives: ``write`` runs in the background thread, ``finish`` once at the end."""

    display: queue.Queue | None

    def write(self, item: Any) -> None: ...

    def finish(self) -> None: ...


def write_results(writer: ResultWriter, results: Iterator[FrameResult], source: Source, batch_size: int,
                  step: Callable[[FrameResult], Any] | None = None) -> float:
    """Feed ``results`` (from `predict_frames`) to ``writer.write`` in a background thread, each first through
    ``step`` in this thread when given (tracking); show frames when the writer has a display. Returns the seconds
    spent in ``predict_batch``. After a failure the queued items are dropped, and the writer is always finished."""
    sink, completed, model_seconds = BackgroundSink(writer.write, maxsize=2 * batch_size), False, 0.0
    try:
        with contextlib.closing(results), tqdm(total=source.total, unit="frame", desc=source.stem) as bar:
            for result in results:
                model_seconds += result.model_seconds
                sink.put(step(result) if step else result)
                bar.update(1)
                if writer.display is not None and _show_latest(writer.display, f"detector: {source.stem}"):
                    break
        completed = True
    finally:
        try:
            sink.close(discard=not completed)
        finally:
            writer.finish()
    return model_seconds


def run_detection(detector: FramePredictor, source: str | int | Path, out_dir: str | Path | None = None,
                  classes: Sequence[str] | None = None, score_thresh: float | None = 0.5, max_det: int | None = 100,
                  batch_size: int = 4, show: bool = False) -> DetectSummary:
    """Detect on ``source`` and write annotated images or an mp4, detections.json and detections.csv.

    Boxes in the outputs are x1, y1, x2, y2 in the source's pixels. Nothing existing is overwritten.
    """
    _check_batch_size(batch_size)
    opened = open_source(source)
    try:
        out = new_run_dir("runs/detect", opened.stem) if out_dir is None else prepare_out_dir(out_dir)
        if show and not _display_available():
            print(_SHOW_NOTE)
            show = False
        writer = _ResultWriter(opened, out, detector.class_names, show)
        started = time.perf_counter()
        results = predict_frames(detector, opened, batch_size, score_thresh, classes, max_det)
        model_seconds = write_results(writer, results, opened, batch_size)
    finally:
        opened.close()
    found = sum(len(entry["detections"]) for entry in writer.entries)
    return DetectSummary(opened.location, len(writer.entries), opened.skipped, found, time.perf_counter() - started,
                         model_seconds, out, writer.video_path or out, writer.json_path, writer.csv_path)
