"""Non-learned region proposal sources: selective search, and precomputed proposals from a JSON file.

Both are drop-in replacements for the RPN (``detector/rpn.py``): an ``nn.Module`` whose
``forward(batch, features, targets)`` returns per-image ``(P_i, 4)`` float32 ``x1, y1, x2, y2`` proposals in
input pixels (the coordinates of ``batch.images``) and an empty loss dict, since nothing here is learned.
Ground-truth boxes are added to the proposals during training by the ROI heads, not here.

The proposals file is the classic Fast R-CNN input: a JSON object keyed by image file name
(``"000012.jpeg"``) or image id (``"12"``), each value either ``[[x1, y1, x2, y2], ...]`` or
``{"boxes": [[...], ...], "scores": [...]}``, boxes in ORIGINAL image pixels.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from detector.backbone import IMAGENET_MEAN, IMAGENET_STD
from detector.boxes import clip_boxes, nondegenerate, xywh_to_xyxy
from detector.data.images import load_image
from detector.structures import Dataset, DetectorError, ImageBatch, ImageRecord, Targets

__all__ = [
    "FileProposals",
    "SelectiveSearchProposals",
    "compute_proposals",
    "proposals_for_record",
    "read_proposals_file",
    "selective_search",
    "write_proposals_file",
]

SELECTIVE_SEARCH_MODES = ("fast", "quality")


# ----------------------------------------------------------------------------------------------------------------
# Selective search


def _opencv_version() -> str:
    """The installed OpenCV wheel version (e.g. 5.0.0.93): the contrib wheel must match it exactly."""
    for distribution in ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return cv2.__version__


def _require_ximgproc():
    """Return ``cv2.ximgproc``, or fail with how to install it (it ships only in the OpenCV contrib wheel)."""
    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is None:
        raise DetectorError(
            "selective search needs OpenCV contrib (cv2.ximgproc): run `make selective-search` or "
            f"pip install opencv-contrib-python-headless=={_opencv_version()}"
        )
    return ximgproc


def _check_mode(mode: str) -> None:
    if mode not in SELECTIVE_SEARCH_MODES:
        raise DetectorError(f"selective search mode must be one of {SELECTIVE_SEARCH_MODES}, got '{mode}'")


@contextmanager
def _opencv_threads(num_threads: int) -> Iterator[None]:
    """Run OpenCV with ``num_threads`` threads, restoring the global setting afterwards.

    OpenCV's thread count is process-wide; restoring it keeps augmentation code elsewhere unaffected.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(num_threads)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _downscale(image_bgr: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink an (H, W, 3) image so its longest side is at most ``max_side``; never upscale."""
    height, width = image_bgr.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image_bgr
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (width, height)
    return cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)


def _unique_in_order(boxes: np.ndarray) -> np.ndarray:
    """Drop repeated (N, 4) boxes, keeping each first occurrence and the original (ranked) order."""
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def selective_search(
    image_bgr: np.ndarray,
    mode: str = "fast",
    max_proposals: int = 2000,
    min_size: float = 4.0,
    max_side: int | None = 500,
) -> np.ndarray:
    """Selective search (Uijlings et al.) on one uint8 BGR (H, W, 3) image.

    The image is downscaled so its longest side is at most ``max_side`` (speed grows with pixel count),
    and the boxes are scaled back. Returns (P, 4) float32 xyxy boxes in the pixels of ``image_bgr``,
    in OpenCV's rank order, clipped to the image, without boxes narrower or shorter than ``min_size``
    and without duplicates, at most ``max_proposals`` of them.
    """
    _check_mode(mode)
    ximgproc = _require_ximgproc()
    height, width = image_bgr.shape[:2]
    small = _downscale(np.ascontiguousarray(image_bgr), max_side)
    search = ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(small)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process()).reshape(-1, 4)  # (R, 4) integer x, y, w, h in `small` pixels
    scale = np.array([width / small.shape[1], height / small.shape[0]] * 2, dtype=np.float32)
    boxes = xywh_to_xyxy(rects) * scale
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    sizes = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(sizes >= min_size).all(axis=1)]
    return _unique_in_order(boxes)[:max_proposals]


class SelectiveSearchProposals(nn.Module):
    """Selective search as a proposal source with the RPN's interface (no parameters, no losses).

    ``pixel_mean`` / ``pixel_std`` are the RGB normalization of ``batch.images`` in [0, 1] units
    (``images = (rgb / 255 - mean) / std``); they are undone to give OpenCV the uint8 image back.
    ``num_threads`` caps OpenCV's threads while searching (default: torch's intra-op thread count,
    so a data-loader worker with one torch thread does not oversubscribe the cores).
    """

    def __init__(
        self,
        mode: str = "fast",
        max_proposals: int = 2000,
        min_size: float = 4.0,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        max_side: int | None = 500,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        _require_ximgproc()
        _check_mode(mode)
        if max(pixel_mean) > 1.0:
            raise DetectorError(
                f"pixel_mean must be in [0, 1] RGB units (like ImageNet's {IMAGENET_MEAN}), got {tuple(pixel_mean)}"
            )
        self.mode = mode
        self.max_proposals = max_proposals
        self.min_size = min_size
        self.max_side = max_side
        self.num_threads = num_threads
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).reshape(3, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).reshape(3, 1, 1)

    def to_bgr(self, image: Tensor, image_size: tuple[int, int]) -> np.ndarray:
        """Normalized, padded (3, H, W) RGB tensor -> uint8 (h, w, 3) BGR array of the unpadded image."""
        height, width = image_size
        rgb = image[:, :height, :width].detach().float().cpu() * self.pixel_std + self.pixel_mean
        rgb = (rgb * 255).round().clamp(0, 255).to(torch.uint8)
        # (3, h, w) RGB -> (h, w, 3) BGR, OpenCV's channel order
        return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[..., ::-1])

    @torch.no_grad()
    def forward(
        self, batch: ImageBatch, features: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Per-image (P_i, 4) float32 xyxy proposals in input pixels; ``features`` and ``targets`` are unused."""
        proposals = []
        threads = self.num_threads if self.num_threads is not None else torch.get_num_threads()
        with _opencv_threads(threads):
            for image, image_size in zip(batch.images, batch.image_sizes):
                boxes = selective_search(
                    self.to_bgr(image, image_size), self.mode, self.max_proposals, self.min_size, self.max_side
                )
                proposals.append(torch.from_numpy(boxes).to(batch.images.device))
        return proposals, {}


def compute_proposals(
    dataset: Dataset, mode: str = "fast", max_proposals: int = 2000, max_side: int = 500, progress: bool = True
) -> dict[str, np.ndarray]:
    """Selective search over every image of ``dataset``, for writing a proposals file.

    Returns ``{key: (P, 4) float32 xyxy}`` in original image pixels, keyed by image file name, or by
    image id (as a string) when two images share a file name, so every key names one image.
    """
    _check_mode(mode)
    names = [record.image_path.name for record in dataset.records]
    by_name = len(set(names)) == len(names)
    proposals = {}
    with _opencv_threads(torch.get_num_threads()):
        for record in tqdm(dataset.records, desc=f"selective search ({mode})", disable=not progress):
            image_bgr = cv2.cvtColor(load_image(record.image_path), cv2.COLOR_RGB2BGR)
            key = record.image_path.name if by_name else str(record.image_id)
            proposals[key] = selective_search(image_bgr, mode, max_proposals, max_side=max_side)
    return proposals


# ----------------------------------------------------------------------------------------------------------------
# Proposals from a file


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
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write("{\n" + ",\n".join(lines) + "\n}\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def proposals_for_record(proposals: dict[str, np.ndarray], record: ImageRecord, path: str | Path) -> np.ndarray:
    """The (N, 4) xyxy proposals of one image, looked up by file name, then by image id (``path`` names the file)."""
    for key in (record.image_path.name, str(record.image_id)):
        if key in proposals:
            return proposals[key]
    raise DetectorError(
        f"{path}: no proposals for image {record.image_path} (looked for keys '{record.image_path.name}' "
        f"and '{record.image_id}')"
    )


class FileProposals(nn.Module):
    """Precomputed proposals as a proposal source with the RPN's interface (no parameters, no losses).

    The data pipeline reads the file, transforms each image's boxes with the image and puts them in
    ``batch.proposals``; this module clips them to the unpadded image, drops boxes whose width or height
    is not above ``min_size`` and keeps the first ``max_proposals`` (the file's order, best first).
    """

    def __init__(self, max_proposals: int = 2000, min_size: float = 1e-3) -> None:
        super().__init__()
        self.max_proposals = max_proposals
        self.min_size = min_size

    def forward(
        self, batch: ImageBatch, features: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Per-image (P_i, 4) float32 xyxy proposals in input pixels; ``features`` and ``targets`` are unused."""
        if batch.proposals is None:
            raise DetectorError(
                "the batch carries no proposals: model.proposals is 'file' but the config needs "
                "model.proposals_file set (the dataset provides no proposals)"
            )
        proposals = []
        for boxes, image_size in zip(batch.proposals, batch.image_sizes):
            boxes = clip_boxes(boxes.to(torch.float32), image_size)
            proposals.append(boxes[nondegenerate(boxes, self.min_size)][: self.max_proposals])
        return proposals, {}
