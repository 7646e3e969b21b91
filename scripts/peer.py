"""The benchmark's peer: torchvision's FasterRCNN on our own ImageNet-initialized backbone.

Everything that is not the detector design under test is shared with ours, so the comparison measures the
detector and not the plumbing: the same `detector.backbone.build_backbone` (EfficientNet-Lite0, frozen stages,
frozen BN), the same datasets, augmentations, input size, batch order, SGD schedule (`detector.optim`),
gradient clipping, memory layout (`train.channels_last`) and wall-clock budget rule, and the same
`detector.evaluation.COCOEvaluator` on the same validation images. The rest is torchvision's: its RPN and ROI heads
with their defaults, a TwoMLPHead and RoIAlign 7x7 on the single stride-16 map, anchors of the config's sizes and
ratios on that one level.

Input size. torchvision's `GeneralizedRCNNTransform` rescales every image by
``min(min_size / shorter_side, max_size / longer_side)``. Our transforms already resize the longer side to
``data.max_size``, so with ``min_size = max_size = data.max_size`` that factor is exactly 1 and the peer sees
the very pixels ours sees (`transformed_size` checks it; `train_peer` refuses to run otherwise). Training images
that `augment.sizes` made smaller stay as they are (`InputSizedTransform`).

Boxes are (N, 4) float32 absolute-pixel ``x1, y1, x2, y2`` throughout; torchvision's labels include background
(0), so the peer has ``num_classes + 1`` outputs and its foreground labels 1..K are ours unchanged.

    python scripts/benchmark.py --config configs/drone_cars.yaml --rows peer   # trains and scores the peer
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from detector.backbone import Backbone, build_backbone
from detector.config import Config
from detector.data.build import build_datasets
from detector.data.dataset import DetectionDataset, SampleBatch, build_loader
from detector.data.transforms import Transform, build_transform
from detector.data.repeat import describe as describe_repeats
from detector.engine import (
    EvalOutput,
    seed_everything,
    torch_settings,
    training_dataset,
    training_sampler,
)
from detector.distributed import resolve_device
from detector.runtime import onnx_backbone
from detector.evaluation import COCOEvaluator
from detector.optim import build_optimizer, build_scheduler
from detector.structures import Dataset, Detections, DetectorError, Targets

__all__ = [
    "FeatureMap",
    "PeerRun",
    "build_peer",
    "evaluate_peer",
    "like_for_like",
    "peer_from_config",
    "predict_peer",
    "to_torchvision_targets",
    "train_peer",
    "transformed_size",
]


class FeatureMap(nn.Module):
    """Our `Backbone` with torchvision's backbone contract: ``out_channels`` and an OrderedDict of maps.

    forward: (N, 3, H, W) normalized images -> {"0": (N, out_channels, H / 16, W / 16)}.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if len(backbone.strides) != 1:
            raise DetectorError(
                f"the peer uses one feature map, but the backbone has strides {backbone.strides}; build it with fpn=False"
            )
        self.body = backbone
        self.out_channels = backbone.out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.body(images)[0])])


class InputSizedTransform(GeneralizedRCNNTransform):
    """torchvision's transform, except that training keeps every input at the size our training transform gave it
    (`augment.sizes`, or data.max_size). torchvision's own would take each training image to data.max_size, so with
    `augment.sizes` below it (configs/demo.yaml trains at 320 and infers at 480) the peer would train on upsampled
    images that ours never sees. Inference resizes as torchvision does (a no-op for inputs of data.max_size)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return (image, target) if self.training else super().resize(image, target)


def build_peer(
    num_classes: int,
    max_size: int,
    *,
    anchor_sizes: Sequence[float] = (32.0, 64.0, 128.0, 256.0),
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    freeze_stages: int = 2,
    frozen_bn: bool = True,
) -> FasterRCNN:
    """torchvision's FasterRCNN for ``num_classes`` foreground classes on our stride-16 backbone.

    Inputs of longest side ``max_size`` are not resized again (min_size = max_size = ``max_size``), nor are
    training inputs of any size (`InputSizedTransform`); pixels are
    normalized with the backbone's own ``pixel_mean`` / ``pixel_std``. Anchors: every size with every
    ratio (height / width) on the one level. Everything else keeps torchvision's defaults.
    """
    if num_classes < 1 or max_size < 1:
        raise DetectorError(f"build_peer needs num_classes >= 1 and max_size >= 1, got {num_classes} and {max_size}")
    body = build_backbone(backbone, weights=weights, freeze_stages=freeze_stages, frozen_bn=frozen_bn)
    anchors = AnchorGenerator(sizes=(tuple(float(s) for s in anchor_sizes),),
                              aspect_ratios=(tuple(float(r) for r in anchor_ratios),))
    model = FasterRCNN(
        FeatureMap(body),
        num_classes=num_classes + 1,  # torchvision counts background as class 0
        min_size=max_size,
        max_size=max_size,
        image_mean=list(body.pixel_mean),
        image_std=list(body.pixel_std),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
    )
    model.transform = InputSizedTransform(max_size, max_size, list(body.pixel_mean), list(body.pixel_std))
    return model


def peer_from_config(config: Config, pretrained: bool = True) -> FasterRCNN:
    """`build_peer` with the backbone, anchors, classes and input size of ``config`` (ours reads the same keys)."""
    model = config.model
    if model.fpn:
        raise DetectorError("config key 'model.fpn' must be false for the peer, which uses one stride-16 map")
    return build_peer(
        len(model.class_names),
        config.data.max_size,
        anchor_sizes=model.anchor_sizes,
        anchor_ratios=model.anchor_ratios,
        backbone=model.backbone,
        weights=model.weights if pretrained else "none",
        freeze_stages=model.freeze_stages,
        frozen_bn=model.frozen_bn,
    )


def like_for_like(model: FasterRCNN, config: Config, threads: int) -> FasterRCNN:
    """The trained peer set to infer as ours does (in place): the same number of RPN proposals before and after
    NMS (model.rpn_pre/post_nms_top_n_test), the same detections cap, and the backbone in ONNX Runtime
    (detector/runtime.py), as `Detector` runs ours on a CPU. torchvision's defaults as shipped are 1000 proposals
    and the PyTorch backbone."""
    model.eval()
    model.rpn._pre_nms_top_n["testing"] = config.model.rpn_pre_nms_top_n_test
    model.rpn._post_nms_top_n["testing"] = config.model.rpn_post_nms_top_n_test
    model.roi_heads.detections_per_img = config.model.detections_per_image
    model.roi_heads.score_thresh = config.model.score_thresh
    model.backbone.body = onnx_backbone(model.backbone.body.eval(), threads)
    return model


@torch.no_grad()
def transformed_size(model: FasterRCNN, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) that torchvision's transform turns an image of ``image_size`` into (before padding)."""
    image = torch.zeros(3, *image_size, device=next(model.parameters()).device)
    batch, _ = model.transform([image])
    return tuple(batch.image_sizes[0])


def _check_no_resize(model: FasterRCNN, max_size: int) -> None:
    """The fairness condition: the peer must see the same input pixels as ours, so no second resize."""
    for size in ((max_size, max_size), (max(1, max_size // 3), max_size)):
        if transformed_size(model, size) != size:
            raise DetectorError(
                f"the peer's transform resizes a {size[1]}x{size[0]} input to {transformed_size(model, size)}; "
                f"its min_size and max_size must both equal data.max_size ({max_size})"
            )


def to_torchvision_targets(targets: list[Targets], device: torch.device | str) -> list[dict[str, Tensor]]:
    """Our `Targets` -> torchvision's {"boxes": (M, 4) xyxy, "labels": (M,) int64} (ignore regions are
    dropped: torchvision has no notion of them)."""
    return [{"boxes": t.boxes.to(device), "labels": t.labels.to(device)} for t in targets]


def predict_peer(model: FasterRCNN, images: list[Tensor], original_sizes: list[tuple[int, int]],
                 class_names: list[str]) -> list[Detections]:
    """Run the peer in eval mode on (3, h, w) images in [0, 1] and return `Detections` in original pixels.

    torchvision returns boxes in the pixels of the images it was given (the resized inputs); they are scaled
    by original / input size per axis, exactly as `FastRCNN.postprocess` does for ours.
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model([image.to(device) for image in images])
    detections = []
    for output, image, (orig_h, orig_w) in zip(outputs, images, original_sizes):
        h, w = image.shape[-2:]
        scale = torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h], device=output["boxes"].device)
        detections.append(Detections(output["boxes"] * scale, output["scores"], output["labels"], list(class_names)))
    return detections


def evaluate_peer(model: FasterRCNN, val_dataset: Dataset, config: Config, progress: bool = True,
                  wrap_transform: Callable[[Transform], Transform] | None = None) -> EvalOutput:
    """COCO metrics of the peer on ``val_dataset``, computed exactly as `detector.engine.evaluate` does for ours:
    same eval transform, batch size and `COCOEvaluator`, ground truth from the original records. ``wrap_transform``
    wraps the eval transform as there (e.g. `detector.robustness.CorruptedTransform`)."""
    transform = build_transform(None, config.data.max_size, train=False)
    data = DetectionDataset(val_dataset, wrap_transform(transform) if wrap_transform else transform)
    loader = build_loader(data, config.eval.batch_size, False, min(config.data.num_workers, 2), config.train.seed)
    evaluator = COCOEvaluator(list(config.model.class_names))
    records = {r.image_id: r for r in val_dataset.records}
    for batch in tqdm(loader, desc="eval peer", unit="batch", disable=not progress, leave=False):
        detections = predict_peer(model, batch.images, batch.original_sizes, list(config.model.class_names))
        originals = [records[i] for i in batch.image_ids]
        targets = [r.targets() for r in originals]
        evaluator.process(batch.image_ids, targets, [d.to("cpu") for d in detections])
    return EvalOutput(evaluator.evaluate(), evaluator, {})


@dataclass
class PeerRun:
    """A finished peer training: the model and, per epoch, the seconds of every optimizer step
    (data loading included; the first step of an epoch also holds the loader's start-up)."""

    model: FasterRCNN
    iteration_seconds: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    # (training minutes, weights file) of every snapshot written (train.snapshot_every_min)
    snapshots: list[tuple[float, Path]] = field(default_factory=list)

    snapshot_clock: "SnapshotClock | None" = None

    @property
    def iterations(self) -> int:
        return sum(len(epoch) for epoch in self.iteration_seconds)


class SnapshotClock:
    """Saves the peer's weights each time another ``every_min`` minutes of training have passed."""

    def __init__(self, every_min: float, folder: Path, started: float) -> None:
        self.every, self.folder, self.started, self.count = every_min * 60, Path(folder), started, 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def maybe_save(self, run: PeerRun) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed < (self.count + 1) * self.every:
            return
        self.count += 1
        path = self.folder / f"snapshot_{elapsed / 60:06.2f}min.pt"
        torch.save(run.model.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # atomic: a snapshot on disk is always whole
        run.snapshots.append((elapsed / 60, path))


def _step(model: FasterRCNN, batch: SampleBatch, device: torch.device, scale: float) -> dict[str, Tensor]:
    """Forward + backward of one batch; the loss is divided by ``scale`` for gradient accumulation."""
    images = [image.to(device) for image in batch.images]
    losses = model(images, to_torchvision_targets(batch.targets, device))
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        values = {k: round(float(v), 4) for k, v in losses.items()}
        raise DetectorError(f"the peer's loss became non-finite ({values}); lower train.lr")
    (loss / scale).backward()
    return losses


def _optimizer_step(model: FasterRCNN, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, clip: float) -> None:
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def model_to_train(config: Config, device: torch.device) -> FasterRCNN:
    """The peer as `train_peer` trains it: ImageNet weights on ``device``, NHWC convolution weights with
    `train.channels_last` (as `engine.Trainer` gives ours), and no second resize of the inputs."""
    model = peer_from_config(config).to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    _check_no_resize(model, config.data.max_size)
    return model


def train_peer(config: Config, budget_min: float, datasets: tuple[Dataset, Dataset] | None = None,
               progress: bool = True, snapshot_dir: Path | None = None) -> PeerRun:
    """Train the peer like `detector.engine.Trainer` trains ours: same data, augmentation, batch order (repeat-factor
    sampling included), optimizer, schedule and clipping; with ``budget_min`` (0 = none) training stops when the wall
    clock runs out and the learning rate anneals with the clock, as `train.time_budget_min` does for ours. With
    `train.snapshot_every_min` and ``snapshot_dir``, the weights are saved every that many minutes, as ours'."""
    with torch_settings(config.train.threads, config.train.deterministic):
        return _train_peer(config, budget_min, datasets, progress, snapshot_dir)


def _train_peer(config: Config, budget_min: float, datasets: tuple[Dataset, Dataset] | None, progress: bool,
                snapshot_dir: Path | None) -> PeerRun:
    train = config.train
    seed_everything(train.seed)
    device = resolve_device(train.device)
    train_set, _ = datasets or build_datasets(config)
    model = model_to_train(config, device)
    data = training_dataset(config, train_set)  # ours' augmentation, mosaic included, and data seed
    sampler = training_sampler(config, train_set)  # with ours' repeat-factor sampling, when the config asks for it
    if sampler.repeat_factors is not None and progress:
        print(f"peer {describe_repeats(sampler.repeat_factors.numpy())}", flush=True)
    loader = build_loader(data, train.batch_size, False, config.data.num_workers, train.seed, sampler=sampler)
    steps_per_epoch = math.ceil(math.ceil(len(sampler) / train.batch_size) / train.accumulate)
    optimizer = build_optimizer(model, train)
    run, started = PeerRun(model), time.monotonic()
    if snapshot_dir is not None and train.snapshot_every_min > 0:
        run.snapshot_clock = SnapshotClock(train.snapshot_every_min, snapshot_dir, started)
    used = (lambda: (time.monotonic() - started) / (budget_min * 60)) if budget_min else None
    scheduler = build_scheduler(optimizer, train, train.epochs * steps_per_epoch, clock=used)
    for epoch in range(train.epochs):
        model.train()
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        run.iteration_seconds.append(_train_epoch(run, loader, optimizer, scheduler, config, device, epoch, progress, used))
        if used and used() >= 1.0:
            break
    run.train_seconds = time.monotonic() - started
    return run


def _train_epoch(run: PeerRun, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                 config: Config, device: torch.device, epoch: int, progress: bool,
                 budget_used: Callable[[], float] | None = None) -> list[float]:
    """One epoch (cut short when the budget is used up); returns the seconds between consecutive optimizer
    steps (the first from the epoch start)."""
    train = config.train
    seconds, last = [], time.perf_counter()
    bar = tqdm(loader, desc=f"peer epoch {epoch + 1}/{train.epochs}", unit="it", disable=not progress, dynamic_ncols=True)
    for index, batch in enumerate(bar, start=1):
        losses = _step(run.model, batch, device, train.accumulate)
        if index % train.accumulate == 0 or index == len(loader):
            _optimizer_step(run.model, optimizer, scheduler, train.clip_grad_norm)
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
        run.last_losses = {k: float(v.detach()) for k, v in losses.items()}
        if run.snapshot_clock is not None:
            run.snapshot_clock.maybe_save(run)
        bar.set_postfix(loss=f"{sum(run.last_losses.values()):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if budget_used and budget_used() >= 1.0:
            break
    return seconds
