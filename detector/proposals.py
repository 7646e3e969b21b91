"""Non-learned region proposal sources: selective search, and precomputed proposals from a JSON file.

Both are drop-in replacements for the RPN (``detector/rpn.py``): an ``nn.Module`` whose
``forward(batch, features, targets)`` returns per-image ``(P_i, 4)`` float32 ``x1, y1, x2, y2`` proposals in
input pixels (the coordinates of ``batch.images``) and an empty loss dict, since nothing here is learned.
Ground-truth boxes are added to the proposals during training by the ROI heads, not here.

The proposals file (the classic Fast R-CNN input) is read and written by `detector.data.proposals_file`: the data
pipeline transforms each image's proposals with the image, and `FileProposals` takes them from the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
from detector.structures import Dataset, DetectorError, ImageBatch, Targets

__all__ = ["FileProposals", "SelectiveSearchProposals", "compute_proposals", "selective_search"]

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
    dataset: Dataset, load: Callable[[Path], np.ndarray], mode: str = "fast", max_proposals: int = 2000,
    max_side: int = 500, progress: bool = True,
) -> dict[str, np.ndarray]:
    """Selective search over every image of ``dataset`` (``load``: image file -> (H, W, 3) uint8 RGB, as
    `detector.data.images.load_image`), for writing a proposals file.

    Returns ``{key: (P, 4) float32 xyxy}`` in original image pixels, keyed by image file name, or by
    image id (as a string) when two images share a file name, so every key names one image.
    """
    _check_mode(mode)
    names = [record.image_path.name for record in dataset.records]
    by_name = len(set(names)) == len(names)
    proposals = {}
    with _opencv_threads(torch.get_num_threads()):
        for record in tqdm(dataset.records, desc=f"selective search ({mode})", disable=not progress):
            image_bgr = cv2.cvtColor(load(record.image_path), cv2.COLOR_RGB2BGR)
            key = record.image_path.name if by_name else str(record.image_id)
            proposals[key] = selective_search(image_bgr, mode, max_proposals, max_side=max_side)
    return proposals


# ----------------------------------------------------------------------------------------------------------------
# Proposals from a file (read by detector.data.proposals_file, carried in the batch)


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
