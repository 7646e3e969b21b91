"""Configuration: nested dataclasses whose defaults are documented here, in code.

``configs/*.yaml`` files override the defaults; ``section.key=value`` arguments override the file.
An unknown key fails with a did-you-mean suggestion, a wrong type fails naming the key and the
expected type, and the resolved config is written next to every run's outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.errors import DetectorError


@dataclass
class ModelConfig:
    """The detector: backbone -> proposals -> ROI pooling -> box head."""

    # Foreground class names; num_classes (K) is their count. Label l is class_names[l - 1]; 0 is background.
    class_names: list[str] = field(default_factory=lambda: ["car"])
    # efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 (offline ImageNet weights) | resnet18 | resnet34 |
    # resnet50 | mobilenet_v3_large | vgg16
    backbone: str = "efficientnet_lite0"
    # none | imagenet | /path/to/state_dict.pth
    weights: str = "imagenet"
    # Stages frozen from the input side (0 = train everything, 1 = freeze the stem, ...).
    freeze_stages: int = 1
    # Replace BatchNorm by FrozenBatchNorm2d: batches of a few images give noisy batch statistics.
    frozen_bn: bool = True
    # False: one feature map at stride 16 (original Fast R-CNN). True: FPN over strides 8/16/32.
    fpn: bool = False
    fpn_channels: int = 128
    # Region proposals: rpn | selective_search | file
    proposals: str = "rpn"
    # JSON file of precomputed proposals keyed by image file name (proposals: file).
    proposals_file: str = ""
    # Selective search: fast | quality; proposals kept per image.
    selective_search_mode: str = "fast"
    selective_search_max: int = 2000
    # RPN anchors: sizes in input pixels (one per level with FPN) and height/width ratios.
    anchor_sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0, 256.0])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_fg_iou: float = 0.7  # anchors at or above this IoU with a box are positives
    rpn_bg_iou: float = 0.3  # anchors below this IoU with every box are negatives
    rpn_batch_per_image: int = 256  # anchors sampled per image for the RPN loss
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000  # per level, before NMS
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000  # per image, after NMS
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    # ROI pooling: align (RoIAlign, the default: it localizes best, see docs/BENCHMARKS.md) |
    # partition (the lecture's non-overlapping bins) | torchvision (torchvision.ops.roi_pool)
    roi_pool_mode: str = "align"
    # Output grid [rows, cols]: [2, 3] is the lecture's grid (3 wide, 2 high), [7, 7] the classic Fast R-CNN grid.
    roi_output_size: list[int] = field(default_factory=lambda: [7, 7])
    roi_sampling_ratio: int = 2  # RoIAlign samples per bin side (align mode only)
    # Box head: fc (flatten -> two fully connected layers) | conv (a small conv head then one fc) |
    # c4 (the backbone's pretrained last stage run on the pooled features, then global average pooling)
    head: str = "fc"
    head_dim: int = 512  # width of the fully connected layers
    roi_batch_per_image: int = 256  # proposals sampled per image for the box-head loss
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5  # proposals at or above this IoU with a box are foreground, the rest background
    box_loss: str = "smooth_l1"  # smooth_l1 | l1 | giou | diou | ciou
    # Multiplies the box loss; 0 = the loss's own default (detector/roi_heads.py), chosen so the IoU losses'
    # gradients have the scale of smooth L1's.
    box_loss_weight: float = 0.0
    # Cascade R-CNN: one box-head stage per foreground IoU threshold, each refining the previous stage's boxes
    # (e.g. [0.5, 0.6, 0.7]); empty = the single stage at roi_fg_iou.
    cascade_ious: list[float] = field(default_factory=list)
    # Postprocess: score threshold, per-class NMS IoU and detections kept per image.
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class DataConfig:
    """Where the images and labels are and how they are read."""

    # coco | voc | yolo | kitti | synthetic (rendered road scenes, nothing to download)
    format: str = "synthetic"
    # Dataset folder (or COCO json). For synthetic: where the scenes are rendered.
    train_path: str = "runs/synthetic/train"
    # Validation dataset; empty = the same folder as train_path, split by val_filter.
    val_path: str = "runs/synthetic/val"
    # Regular expressions on image file names: images matching val_filter form the validation split
    # (a contiguous block, never a random split), the rest train; empty = use val_path.
    val_filter: str = ""
    # Images matching test_filter form the test split, reported once and never tuned on; they are left out of
    # training like validation's. Empty = no test split.
    test_filter: str = ""
    train_filter: str = ""  # optional: only train on images matching this (e.g. to leave gaps between blocks)
    # The final fit: once every choice was made on the validation split, train on train + val (as VOC07+12 and KITTI
    # submissions do). Validation then scores training images: its AP chooses nothing (best.pt is the last weights).
    train_on_val: bool = False
    # Map source class names to output names (e.g. {Car: car, Van: car}); unlisted names map to themselves.
    class_map: dict[str, str] = field(default_factory=dict)
    # Source class names that become ignore regions (neither positive nor negative).
    ignore_classes: list[str] = field(default_factory=lambda: ["DontCare"])
    names_file: str = ""  # YOLO: class names file or data YAML
    # COCO only: the folder the JSON's file_name values are relative to (COCO's own train2017/ beside annotations/);
    # empty = look next to the JSON (detector/data/coco.py).
    image_root: str = ""
    # VOC only: auto | 1-based | 0-based pixel values; auto reads 1-based (as the VOC spec and Detectron2) unless a box
    # starts at 0, then 0-based with a warning (detector/data/voc.py).
    voc_coordinates: str = "auto"
    # KITTI only: all | easy | moderate | hard, the level validation (and `detector eval`) scores at: objects the
    # KITTI benchmark would not score there (too short, too occluded or truncated; detector/data/kitti.py) become
    # ignore regions. Training always learns from every labelled object.
    kitti_difficulty: str = "all"
    # Longest image side fed to the model (images are resized keeping their aspect ratio): at inference and
    # evaluation always; in training unless augment.sizes lists training sizes (Detectron2's MIN_SIZE_TRAIN beside
    # MIN_SIZE_TEST), so overriding it at inference never changes how a checkpoint was trained.
    max_size: int = 320
    # Synthetic data only: images rendered for train and val, and their size (height, width).
    synthetic_train_images: int = 240
    synthetic_val_images: int = 60
    synthetic_size: list[int] = field(default_factory=lambda: [320, 320])
    # Synthetic data only: the share of the driver's-view cars placed far down the road (34-100 m at the default zoom,
    # 5..16 px wide), as a dash-cam video shows them; 0 keeps the stills' near range (16..120 px wide).
    synthetic_far_cars: float = 0.0
    num_workers: int = 2


@dataclass
class AugmentConfig:
    """Bounding-box-aware albumentations applied to training images (probabilities unless noted)."""

    enabled: bool = True
    # Multi-scale training: the longest side of each training image is drawn from these sizes (pixels) instead of
    # data.max_size, as Detectron2's ResizeShortestEdge choice; empty = data.max_size.
    sizes: list[int] = field(default_factory=list)
    hflip: float = 0.5
    # Rotation by a random multiple of 90 degrees (0, 90, 180 or 270, equally likely) with this probability. Seen from
    # above, a street can run at any heading, so aerial data takes it (with hflip: all eight flips and turns); a
    # driver's view has a sky above and a road below, so it stays 0 there.
    rotate90: float = 0.0
    affine: float = 0.5  # scale / translate / rotate, the lecture's augmentations
    scale: list[float] = field(default_factory=lambda: [0.75, 1.25])  # range of the scale factor
    translate: float = 0.1  # maximum shift as a fraction of the image size
    rotate: float = 5.0  # maximum rotation in degrees
    # How a rotated box is refitted: rounded (around the box's inscribed rounded rectangle, corner radius a quarter
    # of the shorter side: within 1-2% of a drawn car's true extent) | ellipse (the inscribed ellipse: too tight,
    # -19% in height for a 94x44 car at 10 degrees) | largest_box (the box's corners: too loose, +5%)
    rotate_method: str = "rounded"
    brightness_contrast: float = 0.3
    hue_saturation: float = 0.2
    blur: float = 0.1
    noise: float = 0.1
    crop: float = 0.0  # probability of a random crop
    # Mosaic (YOLOv4 / Ultralytics): with this probability a training image becomes four images' windows around a
    # random centre, each at its own scale; boxes cut by a window's edge follow min_visibility and cut_objects, as a
    # crop's do (detector/data/mosaic_augment.py). It comes before every other step. Off by default.
    mosaic: float = 0.0
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # crop area fraction
    min_visibility: float = 0.3  # objects less visible than this after crop or affine leave the labels
    # What becomes of them: ignore (an ignore region: neither car nor background) | drop (background)
    cut_objects: str = "ignore"
    # Robust training: with probability `weather` an image first gets one of `weather_corruptions` (names of
    # detector/robustness.py) at a severity drawn from 1..weather_max_severity, at its own resolution, as
    # `detector eval --corrupt` applies them. Off by default. The default list leaves snow, sun_glare, shadow,
    # defocus_blur, jpeg and contrast out, so the corruption benchmark also scores corruptions never trained on.
    weather: float = 0.0
    weather_corruptions: list[str] = field(default_factory=lambda: [
        "fog", "rain", "night", "motion_blur", "gaussian_noise", "brightness"])
    weather_max_severity: int = 5


@dataclass
class TrainConfig:
    """Optimization and the run folder."""

    name: str = "train"  # runs/<name>/, auto-suffixed (train-2, ...) rather than overwritten
    output_dir: str = "runs"
    epochs: int = 12
    batch_size: int = 4
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | step
    step_milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of training (step)
    step_gamma: float = 0.1
    warmup_iters: int = 100  # linear warmup from warmup_factor * lr
    warmup_factor: float = 0.001
    clip_grad_norm: float = 10.0  # 0 disables clipping
    accumulate: int = 1  # gradient accumulation steps
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; fp16 uses a gradient scaler)
    ema: bool = False  # keep an exponential moving average of the weights for evaluation
    ema_decay: float = 0.999
    eval_every: int = 1  # validation mAP every N epochs (0 = only at the end)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    # Convolution weights in channels_last (NHWC) memory format, so oneDNN's convolutions skip their layout reorders
    # in the forward and backward passes (the activations follow the weights); the same maths up to float rounding.
    # Off by default so runs measured before it existed keep their meaning; the configs turn it on.
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    sync_bn: bool = False  # SyncBatchNorm under DDP (only when frozen_bn is off)
    # Stop training after this many wall-clock minutes (0 = no limit); a resumed run counts its earlier time.
    time_budget_min: float = 0.0
    log_every: int = 10  # iterations between metrics.jsonl rows
    # Save the weights every N minutes of training (0 = never) as snapshot_<minutes>min.pt, for accuracy-against-
    # wall-clock curves (scripts/benchmark.py --curve-every-min): evaluated after training, so they cost it no time.
    snapshot_every_min: float = 0.0
    # Repeat-factor sampling (Detectron2's for LVIS; detector/data/repeat.py): an image holding a group seen in a
    # share f of the training images is drawn max(1, sqrt(repeat_threshold / f)) times as often. 0 = off. A group is
    # a class, and with repeat_long_side > 0 also a box of that class whose long side is at least this many pixels
    # at data.max_size (long vehicles among cars). An epoch keeps its number of images.
    repeat_threshold: float = 0.0
    repeat_long_side: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation and detection outputs."""

    score_thresh: float = 0.05  # detections kept for mAP (low, so the PR curve is complete)
    confusion_score_thresh: float = 0.25
    confusion_iou: float = 0.5
    batch_size: int = 4
    # Test-time augmentation: predict at several sizes (and flipped), fuse the boxes. Costs one pass per view.
    tta: bool = False
    tta_sizes: list[int] = field(default_factory=list)  # longest sides; empty = data.max_size and 1.25x it
    tta_hflip: bool = True
    # quarter turns counter-clockwise (0-3), each a view (with and without the flip): [0, 1] adds the image turned a
    # quarter, for images seen from above (a model trained with augment.rotate90); [0] or empty = no turned view
    tta_turns: list[int] = field(default_factory=lambda: [0])
    tta_fusion: str = "wbf"  # wbf (weighted box fusion) | nms
    tta_iou: float = 0.55  # boxes of different views at or above this IoU are fused


@dataclass
class TrackConfig:
    """`detector track`: ByteTrack's thresholds (detector/track/bytetrack.py), drawing and speed."""

    high_thresh: float = 0.5  # detections at or above start and keep tracks
    low_thresh: float = 0.1  # detections from here to high_thresh only extend existing tracks (occluded cars)
    new_track_thresh: float = 0.6  # an unmatched detection above this starts a track
    match_iou: float = 0.2  # least IoU of a track's prediction with a high-score detection it takes
    low_match_iou: float = 0.5  # ... with a low-score detection
    tentative_match_iou: float = 0.3  # ... for a track seen once, to be confirmed
    max_lost: int = 30  # frames a track may go unseen and keep its ID
    min_box_area: float = 0.0  # square pixels (in the frame) a detection needs to start a track; 0: no floor
    trail: int = 30  # positions drawn behind each car
    speed_window_s: float = 1.0  # speed = ground distance over this many seconds (with --homography)
    line_tolerance: float = 2.0  # pixels from a counting line within which a car keeps its side
    # sightings in a row on the far side of a line before a crossing counts (1: at once); 2 ignores a box that jumps
    # across for one frame (a track that ends there, or a box moved onto another car)
    line_min_frames: int = 1


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the resolved config as YAML (loadable by `load_config`)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _did_you_mean(key: str, options: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    prefix = f"{where}." if where else ""
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(options)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float widening allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except DetectorError:
                continue
        raise DetectorError(f"config key '{where}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise DetectorError(f"config key '{where}' expects a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DetectorError(f"config key '{where}' expects a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
    elif tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    elif isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise DetectorError(f"config key '{where}' expects {_type_name(tp)}, got {value!r}")


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise DetectorError(f"unknown config key '{path}'{_did_you_mean(str(key), list(hints), where)}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise DetectorError(f"config key '{path}' is a section and expects a mapping, got {value!r}")
            _apply(getattr(section, key), value, path)
        else:
            setattr(section, key, _coerce(value, hints[key], path))


def parse_override(text: str) -> dict[str, Any]:
    """``'train.lr=0.01'`` -> ``{'train': {'lr': 0.01}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise DetectorError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = value
    for part in reversed(dotted.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    config = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise DetectorError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise DetectorError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise DetectorError(f"config file {path} must hold a mapping of sections (model, data, ...)")
        _apply(config, values, "")
    return apply_overrides(config, overrides)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    config = Config()
    _apply(config, values, "")
    return config


_CHOICES = {
    ("model", "backbone"): ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "vgg16"),
    ("model", "proposals"): ("rpn", "selective_search", "file"),
    ("model", "selective_search_mode"): ("fast", "quality"),
    ("model", "roi_pool_mode"): ("partition", "torchvision", "align"),
    ("model", "head"): ("fc", "conv", "c4"),
    ("model", "box_loss"): ("smooth_l1", "l1", "giou", "diou", "ciou"),
    ("augment", "rotate_method"): ("rounded", "ellipse", "largest_box"),
    ("augment", "cut_objects"): ("ignore", "drop"),
    ("eval", "tta_fusion"): ("wbf", "nms"),
    ("data", "format"): ("coco", "voc", "yolo", "kitti", "synthetic"),
    ("data", "kitti_difficulty"): ("all", "easy", "moderate", "hard"),
    ("data", "voc_coordinates"): ("auto", "1-based", "0-based"),
    ("train", "optimizer"): ("sgd", "adamw"),
    ("train", "scheduler"): ("cosine", "step"),
    ("train", "amp"): ("none", "bf16", "fp16"),
}


def _between(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def check(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return check, f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


_UNIT = _between(0.0, 1.0)
_POSITIVE = (lambda v: v > 0, "positive")
_NON_NEGATIVE = (lambda v: v >= 0, "at least 0")
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
# Range of every numeric config value (each item of a list value); NaN and infinity are refused for all of them.
_RANGES = {
    **{key: _UNIT for key in (
        "model.rpn_nms_thresh", "model.score_thresh", "model.nms_thresh", "eval.score_thresh",
        "eval.confusion_score_thresh", "eval.confusion_iou", "eval.tta_iou", "augment.hflip", "augment.rotate90",
        "augment.affine",
        "track.high_thresh", "track.low_thresh", "track.new_track_thresh", "track.match_iou", "track.low_match_iou",
        "track.tentative_match_iou",
        "augment.translate", "augment.brightness_contrast", "augment.hue_saturation", "augment.blur", "augment.noise",
        "augment.crop", "augment.min_visibility", "augment.weather", "data.synthetic_far_cars")},
    "augment.weather_max_severity": _between(1, 5),
    "model.cascade_ious": _between(0.0, 1.0, low_open=True, high_open=True),
    "train.ema_decay": _between(0.0, 1.0, high_open=True),
    "train.momentum": _between(0.0, 1.0, high_open=True),
    "train.warmup_factor": _between(0.0, 1.0, low_open=True),
    "train.step_gamma": _between(0.0, 1.0, low_open=True),
    "train.step_milestones": _between(0.0, 1.0, low_open=True, high_open=True),
    "augment.crop_scale": _between(0.0, 1.0, low_open=True),
    "augment.rotate": _between(0.0, 180.0),
    "eval.tta_turns": _between(0, 3),
    **{key: _POSITIVE for key in ("train.lr", "model.anchor_sizes", "model.anchor_ratios", "augment.scale")},
    **{key: _NON_NEGATIVE for key in (
        "train.weight_decay", "train.clip_grad_norm", "train.time_budget_min", "model.box_loss_weight",
        "model.freeze_stages", "model.roi_sampling_ratio", "train.warmup_iters", "train.eval_every", "train.seed",
        "train.threads", "data.num_workers", "track.max_lost", "track.trail", "track.line_tolerance",
        "track.min_box_area", "train.repeat_threshold", "train.repeat_long_side")},
    "track.speed_window_s": _POSITIVE,
    **{key: _AT_LEAST_1 for key in (
        "model.fpn_channels", "model.selective_search_max", "model.rpn_pre_nms_top_n_train",
        "model.rpn_pre_nms_top_n_test", "model.rpn_post_nms_top_n_train", "model.rpn_post_nms_top_n_test",
        "model.head_dim", "model.detections_per_image", "data.synthetic_train_images", "data.synthetic_val_images",
        "eval.batch_size", "track.line_min_frames")},
    **{key: (lambda v: v >= 32, "at least 32 pixels") for key in ("data.synthetic_size", "augment.sizes", "eval.tta_sizes")},
}
_LENGTHS = {"data.synthetic_size": 2, "augment.scale": 2, "augment.crop_scale": 2}


def _check_numbers(config: Config) -> None:
    """Every numeric value finite and inside its `_RANGES` entry; fixed-length lists of the right length."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for key, value in vars(values).items():
            name = f"{section.name}.{key}"
            items = value if isinstance(value, list) else [value]
            numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not numbers:
                continue
            if name in _LENGTHS and len(items) != _LENGTHS[name]:
                raise DetectorError(f"config key '{name}' expects {_LENGTHS[name]} numbers, got {value!r}")
            check, expected = _RANGES.get(name, (lambda v: True, ""))
            for v in numbers:
                if not math.isfinite(v):
                    raise DetectorError(f"config key '{name}' is {value!r}; expected a finite number")
                if not check(v):
                    raise DetectorError(f"config key '{name}' is {value!r}; expected {expected}"
                                        + (" for every item" if isinstance(value, list) else ""))
    if config.augment.scale[0] > config.augment.scale[1] or config.augment.crop_scale[0] > config.augment.crop_scale[1]:
        raise DetectorError("config keys 'augment.scale' and 'augment.crop_scale' expect [low, high] with low <= high")


def validate(config: Config) -> None:
    """Value checks that types alone cannot express."""
    _check_numbers(config)
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise DetectorError(f"config key '{section}.{key}' is '{value}'; expected one of {', '.join(choices)}")
    if not config.model.class_names:
        raise DetectorError("config key 'model.class_names' must name at least one class")
    if len(config.model.roi_output_size) != 2 or min(config.model.roi_output_size) < 1:
        raise DetectorError("config key 'model.roi_output_size' expects two positive integers [rows, cols]")
    if config.model.proposals == "file" and not config.model.proposals_file:
        raise DetectorError("config key 'model.proposals_file' must name a JSON file when model.proposals is 'file'")
    for section, key in (("train", "batch_size"), ("train", "accumulate"), ("train", "log_every"), ("train", "epochs"),
                         ("model", "rpn_batch_per_image"), ("model", "roi_batch_per_image"), ("data", "max_size")):
        if getattr(getattr(config, section), key) < 1:
            raise DetectorError(f"config key '{section}.{key}' must be at least 1")
    for key in ("rpn_positive_fraction", "roi_positive_fraction", "rpn_fg_iou", "rpn_bg_iou", "roi_fg_iou"):
        if not 0.0 < getattr(config.model, key) <= 1.0:
            raise DetectorError(f"config key 'model.{key}' must be in (0, 1]")
    if config.model.rpn_bg_iou > config.model.rpn_fg_iou:
        raise DetectorError("config key 'model.rpn_bg_iou' must not exceed 'model.rpn_fg_iou'")
    if config.track.low_thresh > config.track.high_thresh:
        raise DetectorError("config key 'track.low_thresh' must not exceed 'track.high_thresh'")
    if config.train.snapshot_every_min and not config.train.snapshot_every_min >= 0.01:
        raise DetectorError(f"config key 'train.snapshot_every_min' is {config.train.snapshot_every_min}; expected 0 "
                            "(no snapshots) or at least 0.01 (snapshot files are named by minute, 2 decimals)")
    if config.train.repeat_long_side and not config.train.repeat_threshold:
        raise DetectorError("config key 'train.repeat_long_side' needs 'train.repeat_threshold' above 0 (it only "
                            "adds a group to repeat-factor sampling, which the threshold turns on)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.train.device):
        raise DetectorError(f"config key 'train.device' is '{config.train.device}'; expected auto, cpu, cuda or cuda:N")


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``section.key=value`` overrides to an existing config (e.g. one read from a checkpoint)."""
    for override in overrides:
        _apply(config, parse_override(override), "")
    validate(config)
    return config
