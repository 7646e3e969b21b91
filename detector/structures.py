"""Small fixed-field records that flow through the pipeline.

Box convention everywhere: ``(N, 4)`` float32, absolute pixels, ``x1, y1, x2, y2``.
Labels: foreground classes are ``1..K``; ``BACKGROUND`` (0) is defined here, once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.errors import DetectorError  # re-exported: most modules import it from here
from detector.results import DetectionsFormat

__all__ = ["BACKGROUND", "Dataset", "DatasetReport", "Detections", "DetectorError", "ImageBatch", "ImageRecord", "Targets"]

BACKGROUND = 0


def _as_boxes(boxes, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def _region_labels(values, count: int, as_array, dtype):
    """Ignore-region labels (G,): ``values`` checked against the region count G, or all 0 (any class) for None."""
    if values is None:
        return as_array([0] * count, dtype=dtype)
    labels = as_array(values, dtype=dtype).reshape(-1)
    if len(labels) != count or (count and labels.min() < 0):
        raise ValueError(f"{count} ignore regions need as many ignore_labels, each 0 (any class) or 1..K; got "
                         f"{labels.tolist()}")
    return labels


@dataclass
class ImageRecord:
    """One annotated image as every dataset reader yields it.

    boxes: (M, 4) float32 pixel xyxy; labels: (M,) int64 in 1..K;
    ignore: (G, 4) float32 pixel xyxy regions that are neither positive nor negative
    (KITTI DontCare, COCO iscrowd). An image with M == 0 is a negative, not an error.
    ignore_labels: (G,) int64, the class a region belongs to (a COCO crowd of cars, a VOC difficult car: 1..K) or
    0 for any class (KITTI DontCare); None = all 0. areas: (M,) float32 object areas from the source (COCO ``area``,
    a segment's) for the COCO small/medium/large split, NaN where it has none; None = the box areas.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray | None = None
    areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = _as_boxes(self.boxes, "boxes")
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore = _as_boxes(self.ignore, "ignore")
        self.ignore_labels = _region_labels(self.ignore_labels, len(self.ignore), np.asarray, np.int64)
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float32).reshape(-1)
        if len(self.labels) != len(self.boxes) or (self.areas is not None and len(self.areas) != len(self.boxes)):
            raise ValueError(f"{self.image_path}: {len(self.boxes)} boxes but {len(self.labels)} labels"
                             + ("" if self.areas is None else f" and {len(self.areas)} areas"))
        if len(self.labels) and self.labels.min() <= BACKGROUND:
            raise ValueError(f"{self.image_path}: labels must be foreground classes 1..K")

    def targets(self) -> "Targets":
        """The record's ground truth in original image pixels, as the evaluators take it."""
        return Targets(self.boxes, self.labels, (self.height, self.width), self.ignore, self.ignore_labels, self.areas)


@dataclass
class DatasetReport:
    """What a reader changed or dropped while loading. `summary` gives one line per kind that happened, which
    `data stats`, `train`, `eval` and `convert` print; `details` names the files behind each count (written to the
    run folder as data_report.json)."""

    clipped_boxes: int = 0  # boxes partly outside the image, clipped to it
    degenerate_boxes: int = 0  # boxes with zero width or height after clipping, dropped
    dropped_labels: int = 0  # objects whose class is not selected by the config
    images_with_dropped_labels: int = 0
    images_without_labels: int = 0  # kept as negatives
    labels_without_image: list[str] = field(default_factory=list)  # label files (VOC/YOLO/KITTI) skipped
    missing_images: list[str] = field(default_factory=list)  # images the annotations list but the disk lacks (COCO)
    orphan_annotations: list[str] = field(default_factory=list)  # ids of annotations of an unlisted image (COCO)
    unreadable_images: list[str] = field(default_factory=list)  # truncated or undecodable image files, skipped
    converted_images: int | None = None  # grayscale / RGBA / 16-bit, converted to 8-bit RGB; counted by data stats
    # kind -> files it concerns (image file names; label files for labels_without_image), for the details file
    details: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, name: str) -> None:
        """Name a file behind a count of ``kind`` (once per file)."""
        names = self.details.setdefault(kind, [])
        if not names or names[-1] != name:
            names.append(name)

    def summary(self) -> list[str]:
        """One line per kind of change that happened, with its count; empty when the reader changed nothing."""
        details = self.details
        entries = [  # (count, what happened, files behind it)
            (self.clipped_boxes, "boxes extended outside their image and were clipped", details.get("clipped_boxes")),
            (self.degenerate_boxes, "degenerate boxes (zero width or height) were dropped",
             details.get("degenerate_boxes")),
            (self.dropped_labels, f"objects of classes not selected were dropped, in {self.images_with_dropped_labels} "
             "images", details.get("dropped_labels")),
            (self.images_without_labels, "images have no label file and are kept as negatives", None),
            (len(self.labels_without_image), "label files have no image and were skipped", self.labels_without_image),
            (len(self.missing_images), "images listed by the annotations are missing on disk and were skipped",
             self.missing_images),
            (len(self.unreadable_images), "image files are truncated or undecodable and were skipped",
             self.unreadable_images),
            (len(self.orphan_annotations), "annotations refer to an image id the file does not list and were dropped",
             self.orphan_annotations),
            (self.converted_images or 0, "images are not 8-bit RGB and are converted when loaded",
             details.get("converted_images")),
        ]
        return [f"{count} {what}" + (f" (first: {names[0]})" if names else "") for count, what, names in entries if count]

    def to_json(self) -> dict:
        """Counts and the files behind them, JSON-ready."""
        return {**asdict(self), "summary": self.summary()}


@dataclass
class Dataset:
    """A whole dataset: class names (index i is label i + 1) and per-image records."""

    class_names: list[str]
    records: list[ImageRecord]
    report: DatasetReport = field(default_factory=DatasetReport)
    root: Path | None = None  # the dataset folder (or COCO JSON) read; split filters also match paths relative to it
    # the source's id of each class (COCO category ids; class_names order); None: 1..K (formats without ids)
    category_ids: list[int] | None = None

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (background excluded)."""
        return len(self.class_names)


@dataclass
class Targets:
    """Ground truth for one image, in the coordinates of the (transformed) input tensor.

    boxes: (M, 4) float32 xyxy; labels: (M,) int64 in 1..K; ignore: (G, 4) float32 xyxy;
    image_size: (height, width) of the image before padding; ignore_labels: (G,) int64, a region's class or 0 for
    any class (None = all 0); areas: (M,) float32 source areas, NaN = the box's (None = all box areas). Training
    treats every ignore region as any class; the evaluators honour ignore_labels and areas.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    image_size: tuple[int, int]
    ignore: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    ignore_labels: torch.Tensor | None = None
    areas: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        self.ignore = torch.as_tensor(self.ignore, dtype=torch.float32).reshape(-1, 4)
        self.ignore_labels = _region_labels(self.ignore_labels, len(self.ignore), torch.as_tensor, torch.int64)
        if self.areas is not None:
            self.areas = torch.as_tensor(self.areas, dtype=torch.float32).reshape(-1)
        if len(self.boxes) != len(self.labels) or (self.areas is not None and len(self.areas) != len(self.boxes)):
            raise ValueError(f"Targets: {len(self.boxes)} boxes but {len(self.labels)} labels"
                             + ("" if self.areas is None else f" and {len(self.areas)} areas"))

    def to(self, device: torch.device | str) -> "Targets":
        return Targets(self.boxes.to(device), self.labels.to(device), self.image_size, self.ignore.to(device),
                       self.ignore_labels.to(device), None if self.areas is None else self.areas.to(device))


@dataclass
class Detections(DetectionsFormat):
    """Detections for one image, in original image pixels.

    boxes: (D, 4) float32 xyxy; scores: (D,) float32 in [0, 1]; labels: (D,) int64 in 1..K;
    class_names: the names of all K classes (label l is class_names[l - 1]).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), self.class_names)

    def filter(self, keep: torch.Tensor) -> "Detections":
        """Keep the detections selected by a boolean mask or index tensor."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names)


@dataclass
class ImageBatch:
    """A batch as the model sees it.

    images: (N, 3, H, W) float32, normalized and zero-padded to a stride multiple;
    image_sizes: per image (height, width) before padding (the transformed image);
    original_sizes: per image (height, width) of the source image, for mapping detections back;
    proposals: optional per-image (P_i, 4) xyxy boxes in input coordinates (precomputed proposals read from a
    file and transformed with the image).
    """

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    proposals: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> "ImageBatch":
        proposals = None if self.proposals is None else [p.to(device) for p in self.proposals]
        return ImageBatch(self.images.to(device), self.image_sizes, self.original_sizes, proposals)
