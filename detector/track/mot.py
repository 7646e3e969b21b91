"""MOTChallenge text files: one line per box, ``frame, id, x, y, w, h, score, -1, -1, -1`` (frames from 1, boxes
as top-left corner and size in pixels). Ground-truth files put a "consider" flag (0 or 1) in the score column, and
may add class and visibility: `read_mot` keeps the first seven fields; `read_ground_truth` splits a ground-truth file
into the boxes to find (flag 1) and the ignore regions (flag 0: objects too hidden to ask for, where a prediction is
neither right nor wrong).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.structures import DetectorError

__all__ = ["MotBox", "read_ground_truth", "read_mot", "write_mot"]


@dataclass(frozen=True)
class MotBox:
    frame: int  # from 1
    track_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels
    score: float = 1.0


def write_mot(path: str | Path, boxes: list[MotBox]) -> Path:
    """Write ``boxes`` sorted by frame and id; atomic, and an existing file is never replaced."""
    path = Path(path)
    if path.exists():
        raise DetectorError(f"{path} already exists; choose a new file name (nothing is overwritten)")
    lines = []
    for b in sorted(boxes, key=lambda b: (b.frame, b.track_id)):
        x1, y1, x2, y2 = b.box
        lines.append(f"{b.frame},{b.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{b.score:.4f},-1,-1,-1\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.writelines(lines)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_mot(path: str | Path) -> list[MotBox]:
    """The boxes of a MOT file, their seventh field as ``score``. A malformed line fails with one sentence naming the
    file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DetectorError(f"cannot read the MOT file {path}: {error}") from None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.replace(" ", ",").split(",") if field.strip()]
        where = f"{path}:{number}"
        if len(fields) < 7:
            raise DetectorError(f"{where}: expected at least 7 comma-separated fields (frame, id, x, y, w, h, score), "
                                f"got {len(fields)}")
        try:
            values = [float(field) for field in fields[:7]]
        except ValueError:
            raise DetectorError(f"{where}: expected numbers in the first 7 fields, got {line.strip()!r}") from None
        frame, track_id, x, y, w, h, score = values
        if not all(np.isfinite(values)) or frame < 1 or not frame.is_integer() or not track_id.is_integer() or w < 0 or h < 0:
            raise DetectorError(f"{where}: expected a frame >= 1, an integer id and a non-negative size, got "
                                f"{line.strip()!r}")
        boxes.append(MotBox(int(frame), int(track_id), (x, y, x + w, y + h), score))
    return boxes


def read_ground_truth(path: str | Path) -> tuple[list[MotBox], list[MotBox]]:
    """A MOTChallenge ground-truth file -> (the boxes to find: consider flag not 0, the ignore regions: flag 0)."""
    boxes = read_mot(path)
    return [b for b in boxes if b.score != 0], [b for b in boxes if b.score == 0]
