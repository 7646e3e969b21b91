"""Frame sources for detection: an image, a folder, a glob, a video file, a webcam index or a stream URL.

`open_source` classifies what the user named and fails with one sentence naming it when it cannot be read;
`Source.frames()` yields ``(H, W, 3)`` uint8 RGB frames, skipping (and counting) frames that cannot be decoded.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from detector.data.images import IMAGE_EXTENSIONS, list_images, load_image
from detector.errors import DetectorError

__all__ = ["Frame", "Source", "VIDEO_EXTENSIONS", "open_source"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # rtsp://, rtmp://, http(s)://, udp://, ...
_GLOB_MAGIC = re.compile(r"[*?[]")
# A gap longer than this (about 2 s at 25 fps) is the end of the video, not a run of damaged frames.
_MAX_CONSECUTIVE_FAILURES = 50
_MAX_RECONNECTS = 3
_MAX_FPS = 240.0  # a higher reported frame rate is a container or stream clock, not the video's rate



@dataclass
class Frame:
    """One decoded frame: its position in the source, a name, and the (H, W, 3) uint8 RGB pixels."""

    index: int
    name: str
    image: np.ndarray



@dataclass
class Source:
    """A classified source. kind: image | folder | glob | video | webcam | stream.

    Image kinds list their ``paths`` (names are relative to ``root``); video kinds hold an open capture and
    report ``fps``, ``frame_size`` (width, height) and ``frame_count`` (None when unknown, as for streams).
    `frames` is single-pass for video kinds. ``skipped`` counts frames that could not be decoded.
    """

    kind: str
    location: str
    stem: str
    paths: list[Path] = field(default_factory=list)
    root: Path = Path(".")
    fps: float | None = None
    frame_size: tuple[int, int] | None = None
    frame_count: int | None = None
    skipped: int = 0
    reconnects: int = 0  # streams: times the address was opened again after it stopped delivering frames
    _capture: Any = field(default=None, repr=False)
    _pending: Frame | None = field(default=None, repr=False)
    _next_index: int = field(default=0, repr=False)  # stream position of the next read, failed reads included

    @property
    def is_video(self) -> bool:
        return self.kind in ("video", "webcam", "stream")

    @property
    def total(self) -> int | None:
        """Number of frames to expect, when known (for the progress bar's ETA)."""
        return self.frame_count if self.is_video else len(self.paths)

    def frames(self) -> Iterator[Frame]:
        """Decoded frames in order; undecodable ones are counted in ``skipped`` and left out."""
        return self._video_frames() if self.is_video else self._image_frames()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _image_frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                image = load_image(path)
            except DetectorError:
                if self.kind == "image":  # the only image is unreadable: nothing to detect on
                    raise
                self.skipped += 1
                continue
            yield Frame(index, os.path.relpath(path, self.root), image)

    def _video_frames(self) -> Iterator[Frame]:
        try:
            if self._pending is not None:
                frame, self._pending = self._pending, None
                yield frame
            while (frame := self._read()) is not None:
                yield frame
        finally:
            self.close()

    def _read(self) -> Frame | None:
        """The next decodable frame; failures are counted as skipped only when a later frame decodes."""
        failures = 0
        while self._capture is not None:
            index = self._next_index
            self._next_index += 1
            ok, bgr = self._capture.read()
            if ok and bgr is not None:
                self.skipped += failures
                return Frame(index, f"frame_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            failures += 1
            past_end = self.frame_count is not None and self._next_index >= self.frame_count
            if past_end or failures >= _MAX_CONSECUTIVE_FAILURES:
                if self.kind == "stream" and self.reconnects < _MAX_RECONNECTS and self._reopen():
                    failures = 0  # a dropped network stream: join it again, a bounded number of times
                    continue
                return None
        return None

    def _reopen(self) -> bool:
        """Open the stream's address again (after a drop); False when it does not open."""
        self.reconnects += 1
        warnings.warn(f"the stream {self.location} stopped delivering frames; reconnecting "
                      f"({self.reconnects} of {_MAX_RECONNECTS})", stacklevel=2)
        if self._capture is not None:
            self._capture.release()
        self._capture = cv2.VideoCapture(self.location)
        return bool(self._capture.isOpened())


def open_source(source: str | int | Path) -> Source:
    """Classify ``source`` and open it; raises DetectorError naming the source when it has nothing to read."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if _URL.match(text):
        return _open_capture("stream", text, text, _stream_stem(text))
    if path.is_dir():
        return _image_source("folder", text, list_images(path), path, path.resolve().name)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return _image_source("image", text, [path], path.parent, path.stem)
        if suffix in VIDEO_EXTENSIONS:
            return _open_capture("video", text, str(path), path.stem)
        raise DetectorError(f"source {text} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) "
                            f"nor a video ({', '.join(VIDEO_EXTENSIONS)})")
    if text.isdigit():
        return _open_capture("webcam", text, int(text), f"webcam{text}")
    if _GLOB_MAGIC.search(text):
        return _glob_source(text)
    raise DetectorError(f"source {text} does not exist (expected an image, folder, glob, video file, "
                        "webcam index or stream URL)")


def _image_source(kind: str, text: str, paths: list[Path], root: Path, stem: str) -> Source:
    if not paths:
        raise DetectorError(f"source {text} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Source(kind, text, stem, paths=paths, root=root)


def _glob_source(pattern: str) -> Source:
    matches = glob.glob(os.path.expanduser(pattern), recursive=True)
    paths = sorted(Path(p) for p in matches if Path(p).suffix.lower() in IMAGE_EXTENSIONS and Path(p).is_file())
    # names are relative to the pattern's fixed prefix, so "a/*/x.jpg" keeps a/1/x.jpg and a/2/x.jpg apart
    fixed = []
    for part in Path(os.path.expanduser(pattern)).parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return _image_source("glob", pattern, paths, root, root.resolve().name or "glob")


def _stream_stem(url: str) -> str:
    tail = [part for part in re.split(r"[/?#:@]+", _URL.sub("", url)) if part]
    stem = Path(tail[-1]).stem if tail else "stream"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "stream"


def _open_capture(kind: str, text: str, target: str | int, stem: str) -> Source:
    """Open a video, webcam or stream and decode its first frame, so a source without frames fails here."""
    what = {"video": "video file", "webcam": "webcam", "stream": "stream"}[kind]
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        raise DetectorError(f"cannot open the {what} {text} "
                            "(missing device, unreachable address or unsupported format)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if fps and not 0 < fps <= _MAX_FPS:  # RTSP sources often report the 90 kHz clock rate
        warnings.warn(f"the {what} {text} reports {fps:g} frames per second; treating its rate as unknown",
                      stacklevel=2)
        fps = None
    source = Source(kind, text, stem, fps=fps if fps and fps > 0 else None,
                    frame_size=size if min(size) > 0 else None, frame_count=count if count > 0 else None,
                    _capture=capture)
    source._pending = source._read()
    if source._pending is None:
        source.close()
        raise DetectorError(f"the {what} {text} has no decodable frames")
    height, width = source._pending.image.shape[:2]
    source.frame_size = (width, height)  # the decoded size is the truth; some containers report 0
    return source
