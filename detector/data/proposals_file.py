"""Proposals files: the classic Fast R-CNN input, read into the data pipeline (`model.proposals: file`).

A JSON object keyed by image file name (``"000012.jpeg"``) or image id (``"12"``), each value either
``[[x1, y1, x2, y2], ...]`` or ``{"boxes": [[...], ...], "scores": [...]}``, boxes in ORIGINAL image pixels.
`detector.data.dataset.DetectionDataset` transforms each image's proposals with the image; the model's
`detector.proposals.FileProposals` takes them from the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detector.runs import write_text_atomic
from detector.structures import DetectorError, ImageRecord

__all__ = ["proposals_for_record", "read_proposals_file", "write_proposals_file"]



def _as_box_array(value, path: Path, key: str) -> np.ndarray:
    """A JSON list of [x1, y1, x2, y2] -> validated (N, 4) float32 array; every failure names file and key."""
    expected = 'a list of [x1, y1, x2, y2] boxes or {"boxes": [...], "scores": [...]}'
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise DetectorError(f"{path}: key '{key}' must be {expected}, got rows of different lengths") from None
    if array.shape == (0,):  # an image with no proposals
        return np.zeros((0, 4), dtype=np.float32)
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != 4:
        raise DetectorError(f"{path}: key '{key}' must be {expected}, got {json.dumps(value)[:60]}")
    if not np.isfinite(array).all():
        raise DetectorError(f"{path}: key '{key}' has non-finite box coordinates (NaN or Infinity)")
    inverted = np.flatnonzero((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if len(inverted):
        first = inverted[0]
        raise DetectorError(
            f"{path}: key '{key}' box {first} {array[first].tolist()} has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)"
        )
    return array.astype(np.float32)


def _scores_order(scores, num_boxes: int, path: Path, key: str) -> np.ndarray:
    """Validate a JSON list of scores and return the indices that sort the boxes by descending score."""
    array = np.asarray(scores) if isinstance(scores, list) else np.asarray([])
    if not isinstance(scores, list) or array.dtype.kind not in "iuf" or array.shape != (num_boxes,):
        raise DetectorError(f"{path}: key '{key}' must have one number in \"scores\" per box ({num_boxes} boxes)")
    if not np.isfinite(array).all():
        raise DetectorError(f"{path}: key '{key}' has non-finite scores (NaN or Infinity)")
    return np.argsort(-array, kind="stable")


def _parse_value(value, path: Path, key: str) -> np.ndarray:
    """One JSON value (list of boxes, or an object with boxes and optional scores) -> (N, 4) float32."""
    if not isinstance(value, dict):
        return _as_box_array(value, path, key)
    if "boxes" not in value:
        raise DetectorError(f"{path}: key '{key}' is an object without a \"boxes\" list")
    boxes = _as_box_array(value["boxes"], path, key)
    if "scores" not in value:
        return boxes
    return boxes[_scores_order(value["scores"], len(boxes), path, key)]


def read_proposals_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a proposals JSON file -> ``{image file name or id: (N, 4) float32 xyxy}`` in original image pixels.

    Boxes given with ``"scores"`` come back sorted by descending score.
    """
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path}: proposals file not found (model.proposals_file)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetectorError(f"{path}: the proposals file is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise DetectorError(
            f"{path}: the proposals file must be a JSON object keyed by image file name or id, "
            f"got a {type(content).__name__}"
        )
    return {str(key): _parse_value(value, path, str(key)) for key, value in content.items()}


def write_proposals_file(path: str | Path, proposals: dict[str, np.ndarray]) -> None:
    """Write ``{image file name or id: (N, 4) xyxy}`` as a proposals JSON file, one image per line.

    Atomic (a temporary file renamed into place), and refuses to overwrite an existing file.
    Coordinates are rounded to 0.01 pixel.
    """
    path = Path(path)
    if path.exists():
        raise DetectorError(f"{path}: the proposals file already exists; remove it or choose another path")
    lines = []
    for key, boxes in proposals.items():
        array = _as_box_array(np.asarray(boxes, dtype=np.float64).tolist(), path, str(key))
        lines.append(f"{json.dumps(str(key))}: {json.dumps(np.round(array.astype(np.float64), 2).tolist())}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "{\n" + ",\n".join(lines) + "\n}\n")


def proposals_for_record(proposals: dict[str, np.ndarray], record: ImageRecord, path: str | Path) -> np.ndarray:
    """The (N, 4) xyxy proposals of one image, looked up by file name, then by image id (``path`` names the file)."""
    for key in (record.image_path.name, str(record.image_id)):
        if key in proposals:
            return proposals[key]
    raise DetectorError(
        f"{path}: no proposals for image {record.image_path} (looked for keys '{record.image_path.name}' "
        f"and '{record.image_id}')"
    )
