"""Bounding-box-aware image transforms: resize to the model's input size, plus training augmentation.

Boxes are (N, 4) float32 absolute-pixel ``x1, y1, x2, y2`` before and after (albumentations calls this
format ``pascal_voc``). Every transform keeps the image and its boxes in step; nothing else in the package
moves pixels.

Two kinds of boxes travel with an image, and a crop or an affine shift treats them differently:

- **objects** (ground-truth boxes with labels) are dropped when less than ``min_visibility`` of their area
  survives, because a car cut down to a sliver is no longer something the model should be asked to find;
- **regions** (ignore regions and precomputed proposals) are kept as long as any part stays inside: an
  ignore region that is 20% visible still covers an unlabeled object, and a clipped proposal is still a
  proposal. An object cut below ``min_visibility`` becomes an ignore region (``cut_objects="ignore"``, the
  default): the part of a car that stays in the crop is neither something to find nor background.

Rotation refits each box around its inscribed rounded rectangle (corner radius a quarter of the shorter side:
the outline of a car seen from above or from the side), `RoundedBoxAffine`. albumentations' ``largest_box``
rotates the box's corners, which overshoots for rounded objects, and ``ellipse`` undershoots: for a 94x44 car
with 12 px corners rotated 10 degrees (true extent 97x57 px) they give 100x60 and 93x46, the rounded rectangle
97x56 (tests/data/test_transforms.py measures this on a drawn car).

albumentations applies one ``min_visibility`` to all boxes of a call, so a sample with regions runs the
geometric part of the pipeline a second time, with the same seed. Each step's random parameters depend only
on its seed and the image shape, and the geometric steps come first, so both runs draw the same flip, crop
and affine (a test checks that a region equal to an object lands exactly where the object does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.augmentations.geometric import functional as fgeometric

from detector.structures import DetectorError

if TYPE_CHECKING:
    from detector.robustness import RandomCorruption

__all__ = ["AspectCrop", "Transform", "TransformResult", "build_transform"]

# The border that an affine shift or rotation uncovers is filled with the ImageNet mean colour, so after
# the backbone's normalization it is zero rather than a strong black edge the model could learn from.
FILL_RGB = (124, 116, 104)
MIN_BOX_SIZE = 1.0  # pixels: narrower or lower boxes carry no usable signal after augmentation
# Inputs only need a positive extent (albumentations rejects x2 <= x1): a 0.5 px box may grow when upscaled.
_MIN_INPUT_SIZE = 1e-3

_IGNORE, _PROPOSAL, _OBJECT = 1, 2, 3  # kinds of boxes in the second (regions) pass
CORNER_FRACTION = 0.25  # rounded-rectangle corner radius as a fraction of the box's shorter side
_ARC_POINTS = 16  # points per quarter circle: the extent errs by at most r * (1 - cos(pi / 64)) < 0.1% of r


@dataclass
class TransformResult:
    """A transformed sample: image (h, w, 3) uint8 RGB; boxes (M, 4) float32 xyxy; labels (M,) int64;
    ignore (G, 4) float32 xyxy; proposals (P, 4) float32 xyxy or None. All in transformed-image pixels."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    proposals: np.ndarray | None


class AspectCrop(BaseCrop):
    """Random crop that keeps the image's aspect ratio and covers ``scale`` of its area.

    albumentations' RandomResizedCrop draws its own aspect ratio and resizes to a fixed size, which
    distorts wide images such as KITTI's 1242x375 frames; this crop leaves resizing to LongestMaxSize.
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 1.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = scale

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        side = math.sqrt(self.py_random.uniform(*self.scale))  # area fraction -> side fraction
        crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
        x1 = self.py_random.randint(0, width - crop_w)
        y1 = self.py_random.randint(0, height - crop_h)
        return {"crop_coords": (x1, y1, x1 + crop_w, y1 + crop_h)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale",)


def rounded_box_affine(boxes: np.ndarray, matrix: np.ndarray, corner_fraction: float = CORNER_FRACTION) -> np.ndarray:
    """(N, 4+) pixel xyxy (extra columns kept) -> the boxes around each box's inscribed rounded rectangle (corner
    radius ``corner_fraction`` x its shorter side) moved by the 3x3 affine ``matrix``."""
    x1, y1, x2, y2 = (boxes[:, i:i + 1] for i in range(4))  # each (N, 1)
    radius = corner_fraction * np.minimum(x2 - x1, y2 - y1)
    angles = np.linspace(0.0, np.pi / 2, _ARC_POINTS)
    arcs = []
    # corner centres and the quarter circle each one draws: (sign of cos, sign of sin)
    for cx, cy, sx, sy in ((x2 - radius, y2 - radius, 1, 1), (x1 + radius, y2 - radius, -1, 1),
                           (x1 + radius, y1 + radius, -1, -1), (x2 - radius, y1 + radius, 1, -1)):
        arcs.append(np.stack([cx + sx * radius * np.cos(angles), cy + sy * radius * np.sin(angles)], axis=-1))
    points = np.concatenate(arcs, axis=1)  # (N, 4 * _ARC_POINTS, 2)
    moved = fgeometric.apply_affine_to_points(points.reshape(-1, 2), matrix).reshape(points.shape)
    return np.column_stack([moved[..., 0].min(1), moved[..., 1].min(1), moved[..., 0].max(1), moved[..., 1].max(1),
                            boxes[:, 4:]])


class RoundedBoxAffine(A.Affine):
    """``A.Affine`` that refits boxes around their inscribed rounded rectangles (`rounded_box_affine`) instead of
    the box corners (``largest_box``) or the inscribed ellipse (``ellipse``). Constant border modes only."""

    def apply_to_bboxes(self, bboxes: np.ndarray, bbox_matrix: np.ndarray, output_shape: tuple[int, int],
                        **params: Any) -> np.ndarray:
        if len(bboxes) == 0 or fgeometric.is_identity_matrix(bbox_matrix):
            return bboxes
        pixels = fgeometric.denormalize_bboxes(bboxes, params["shape"][:2])
        moved = fgeometric.validate_bboxes(rounded_box_affine(pixels, bbox_matrix), output_shape)
        return fgeometric.normalize_bboxes(moved, output_shape)


def _probability(augment: Any, name: str) -> float:
    value = float(getattr(augment, name))
    if not 0.0 <= value <= 1.0:
        raise DetectorError(f"config key 'augment.{name}' is a probability and must be in [0, 1], got {value}")
    return value


def _range(augment: Any, name: str, low: float, high: float) -> tuple[float, float]:
    values = tuple(float(v) for v in getattr(augment, name))
    if len(values) != 2 or not low <= values[0] <= values[1] <= high:
        raise DetectorError(
            f"config key 'augment.{name}' must be two increasing numbers within [{low}, {high}], got {list(values)}"
        )
    return values  # type: ignore[return-value]


def _check_scalar(augment: Any, name: str, low: float, high: float) -> float:
    value = float(getattr(augment, name))
    if not low <= value <= high:
        raise DetectorError(f"config key 'augment.{name}' must be in [{low}, {high}], got {value}")
    return value


_PROBABILITIES = ("hflip", "rotate90", "affine", "brightness_contrast", "hue_saturation", "blur", "noise", "crop")


def _validate(augment: Any) -> None:
    """Check every key up front, also those of steps switched off (their values are still wrong)."""
    for name in _PROBABILITIES:
        _probability(augment, name)
    if hasattr(augment, "mosaic"):  # applied by the dataset (detector/data/mosaic_augment.py), checked here with the rest
        _probability(augment, "mosaic")
    _range(augment, "scale", 1e-3, 100.0)
    _range(augment, "crop_scale", 1e-3, 1.0)
    _check_scalar(augment, "translate", 0.0, 1.0)
    _check_scalar(augment, "rotate", 0.0, 180.0)
    _check_scalar(augment, "min_visibility", 0.0, 1.0)
    if any(int(v) < 1 for v in getattr(augment, "sizes", [])):
        raise DetectorError(f"config key 'augment.sizes' must list positive pixel sizes, got {list(augment.sizes)}")
    for name, choices in (("rotate_method", ("rounded", "ellipse", "largest_box")), ("cut_objects", ("ignore", "drop"))):
        if getattr(augment, name, choices[0]) not in choices:
            raise DetectorError(f"config key 'augment.{name}' is '{getattr(augment, name)}'; expected one of {', '.join(choices)}")


def _resize(max_size: int) -> list[A.BasicTransform]:
    """Scale so the longest side is ``max_size`` (up or down), keeping the aspect ratio."""
    return [A.LongestMaxSize(max_size=max_size, p=1.0)]


def _geometric(augment: Any, max_size: int) -> list[A.BasicTransform]:
    """Crop (optional), resize so the longest side is ``max_size``, flip, affine: everything that moves boxes."""
    steps: list[A.BasicTransform] = []
    crop = _probability(augment, "crop")
    if crop > 0:
        # cropping the full-resolution image before resizing keeps the zoomed-in crop sharp
        steps.append(AspectCrop(scale=_range(augment, "crop_scale", 1e-3, 1.0), p=crop))
    sizes = [int(v) for v in getattr(augment, "sizes", [])]
    # a list draws one longest side per image (multi-scale training)
    steps.append(A.LongestMaxSize(max_size=sizes if sizes else max_size, p=1.0))
    if (hflip := _probability(augment, "hflip")) > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if (rotate90 := _probability(augment, "rotate90")) > 0:
        steps.append(A.RandomRotate90(p=rotate90))
    if (affine := _probability(augment, "affine")) > 0:
        translate = _check_scalar(augment, "translate", 0.0, 1.0)
        rotate = _check_scalar(augment, "rotate", 0.0, 180.0)
        method = getattr(augment, "rotate_method", "rounded")
        affine_class = RoundedBoxAffine if method == "rounded" else A.Affine
        extra = {} if method == "rounded" else {"rotate_method": method}
        steps.append(
            affine_class(
                scale=_range(augment, "scale", 1e-3, 100.0),
                translate_percent=(-translate, translate),
                rotate=(-rotate, rotate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=FILL_RGB,
                p=affine,
                **extra,
            )
        )
    return steps


def _photometric(augment: Any) -> list[A.BasicTransform]:
    """Colour, blur and noise: they change pixels only, never boxes."""
    steps: list[A.BasicTransform] = []
    if (p := _probability(augment, "brightness_contrast")) > 0:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=p))
    if (p := _probability(augment, "hue_saturation")) > 0:
        steps.append(A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=p))
    if (p := _probability(augment, "blur")) > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=p))
    if (p := _probability(augment, "noise")) > 0:
        # std as a fraction of 255: albumentations' default (0.2-0.44) would bury small cars in noise
        steps.append(A.GaussNoise(std_range=(0.02, 0.06), p=p))
    return steps


def _compose(steps: list[A.BasicTransform], min_visibility: float) -> A.Compose:
    params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True)
    return A.Compose(steps, bbox_params=params, seed=0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, 3) uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DetectorError(f"transform input image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) -> (H, W)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DetectorError(f"transform input image must have shape (H, W, 3), got {image.shape}")
    return image


def _clip_and_keep(boxes: np.ndarray, height: int, width: int, min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) xyxy -> (clipped boxes (N', 4) float32, keep mask (N,)): clip to the image, drop boxes whose
    width or height is below ``min_size`` pixels."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (N, 4), also when N == 0
    clipped = np.empty_like(boxes)
    clipped[:, 0::2] = boxes[:, 0::2].clip(0, width)
    clipped[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= min_size) & ((clipped[:, 3] - clipped[:, 1]) >= min_size)
    return clipped[keep], keep


class Transform:
    """Callable ``(image, boxes, labels, ignore, proposals) -> TransformResult``.

    image: (H, W, 3) uint8 RGB (grayscale (H, W) or (H, W, 1) is converted); boxes: (M, 4) pixel xyxy;
    labels: (M,) int in 1..K; ignore: (G, 4) pixel xyxy; proposals: (P, 4) pixel xyxy or None.
    Input boxes are clipped to the image first; output boxes are clipped to the transformed image and
    boxes (and their labels) narrower or lower than 1 px are dropped.

    Randomness comes from one generator: `set_seed` makes the following calls reproducible, which is how
    `DetectionDataset` ties each sample's augmentation to (seed, epoch, index) whatever the worker count.
    """

    def __init__(self, objects: A.Compose, regions: A.Compose, cut_objects_ignored: bool = False) -> None:
        """``objects``: the whole pipeline with the objects' min_visibility; ``regions``: the same geometric
        steps, at the same positions, without visibility filtering (separate instances: albumentations binds
        each step to the bbox processor of its Compose). ``cut_objects_ignored``: objects that the objects pass
        drops but that stay partly in the image become ignore regions."""
        self.objects = objects
        self.regions = regions
        self.cut_objects_ignored = cut_objects_ignored
        self._rng = np.random.default_rng()

    def set_seed(self, seed: int) -> None:
        """Make the random draws of the following calls a function of ``seed`` alone."""
        self._rng = np.random.default_rng(seed)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore: np.ndarray | None = None,
        proposals: np.ndarray | None = None,
    ) -> TransformResult:
        image = _as_rgb(image)
        height, width = image.shape[:2]
        boxes, keep = _clip_and_keep(boxes, height, width, _MIN_INPUT_SIZE)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)[keep]
        seed = int(self._rng.integers(0, 2**32 - 1))
        # the objects travel with their index as label, so the ones the visibility filter drops are known
        out_image, out_boxes, out_index = _run(self.objects, seed, image, boxes, np.arange(len(boxes)))
        out_boxes, keep = _clip_and_keep(out_boxes, *out_image.shape[:2], MIN_BOX_SIZE)
        out_index = out_index[keep]
        cut = np.setdiff1d(np.arange(len(boxes)), out_index) if self.cut_objects_ignored else np.zeros(0, np.int64)
        out_ignore, out_proposals = self._move_regions(seed, image, ignore, proposals, boxes[cut])
        return TransformResult(out_image, out_boxes, labels[out_index], out_ignore, out_proposals)

    def _move_regions(
        self, seed: int, image: np.ndarray, ignore: np.ndarray | None, proposals: np.ndarray | None,
        cut_objects: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the geometry again with the same seed on ignore regions, proposals and the objects the first pass
        cut away (kept unless outside); the cut objects that stay partly inside join the ignore regions."""
        height, width = image.shape[:2]
        ignore, _ = _clip_and_keep(np.zeros((0, 4)) if ignore is None else ignore, height, width, _MIN_INPUT_SIZE)
        wanted, _ = _clip_and_keep(np.zeros((0, 4)) if proposals is None else proposals, height, width, _MIN_INPUT_SIZE)
        if len(ignore) + len(wanted) + len(cut_objects) == 0:
            # nothing to move, so the second run is skipped
            return np.zeros((0, 4), np.float32), (None if proposals is None else np.zeros((0, 4), np.float32))
        regions = np.concatenate([ignore, wanted, cut_objects])  # (G + P + C, 4)
        kinds = np.repeat(np.array([_IGNORE, _PROPOSAL, _OBJECT], np.int64), [len(ignore), len(wanted), len(cut_objects)])
        out_image, out_regions, out_kinds = _run(self.regions, seed, image, regions, kinds)
        out_regions, keep = _clip_and_keep(out_regions, *out_image.shape[:2], MIN_BOX_SIZE)
        out_kinds = out_kinds[keep]
        moved_proposals = None if proposals is None else out_regions[out_kinds == _PROPOSAL]
        return out_regions[(out_kinds == _IGNORE) | (out_kinds == _OBJECT)], moved_proposals


def _seed_steps(pipeline: A.Compose, seed: int) -> None:
    """Seed every step of ``pipeline`` from (seed, its position).

    ``Compose.set_random_seed`` gives every step the *same* seed, so their first draws are equal: a flip
    with p=0.5 would then happen exactly when an affine with p=0.5 does. Seeding by position gives
    independent streams, and the same stream to a step at the same position in the regions pipeline.
    """
    pipeline.set_random_seed(seed)
    for position, step in enumerate(pipeline.transforms):
        step.set_random_seed(int(np.random.SeedSequence(seed, spawn_key=(position,)).generate_state(1)[0]))


def _run(
    pipeline: A.Compose, seed: int, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One seeded albumentations call -> (image (h, w, 3), boxes (M', 4) float32, labels (M',) int64)."""
    _seed_steps(pipeline, seed)
    out = pipeline(image=image, bboxes=boxes, labels=labels)
    out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)  # (M', 4), also when M' == 0
    return out["image"], out_boxes, np.asarray(out["labels"], dtype=np.int64).reshape(-1)


def build_transform(augment: Any | None, max_size: int, train: bool) -> "Transform | RandomCorruption":
    """The transform for one split.

    Always resizes so the longest side equals ``max_size`` (aspect kept); when ``train`` and
    ``augment.enabled``, adds `AugmentConfig`'s augmentations (read duck-typed from ``augment``: hflip, rotate90,
    affine, scale, translate, rotate, rotate_method, brightness_contrast, hue_saturation, blur, noise, crop,
    crop_scale, min_visibility, cut_objects, sizes; weather, weather_corruptions, weather_max_severity wrap the
    result in `detector.robustness.RandomCorruption`). Invalid values raise DetectorError naming the ``augment.*`` key.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size <= 0:
        raise DetectorError(f"max_size must be a positive integer (pixels of the longest image side), got {max_size!r}")
    max_size = int(max_size)
    if not (train and augment is not None and augment.enabled):
        return Transform(_compose(_resize(max_size), 0.0), _compose(_resize(max_size), 0.0))
    _validate(augment)
    objects = _compose(_geometric(augment, max_size) + _photometric(augment), float(augment.min_visibility))
    # regions are only moved: the photometric tail is left out (steps are seeded by position, see _seed_steps)
    cut_ignored = getattr(augment, "cut_objects", "ignore") == "ignore"
    transform = Transform(objects, _compose(_geometric(augment, max_size), 0.0), cut_ignored)
    if float(getattr(augment, "weather", 0.0)) > 0:
        # robust training: a named corruption first, at the image's own resolution (a leaf module: pixels only)
        from detector.robustness import RandomCorruption

        return RandomCorruption(transform, list(augment.weather_corruptions), float(augment.weather),
                                int(augment.weather_max_severity))
    return transform
