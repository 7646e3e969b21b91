import re

import pytest

from detector.config import Config, config_from_dict, load_config, parse_override
from detector.structures import DetectorError


def test_defaults_are_documented_dataclasses():
    config = Config()
    assert config.model.backbone == "efficientnet_lite0"
    assert config.model.roi_output_size == [7, 7]


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.5\n  epochs: 3\nmodel:\n  roi_output_size: [2, 3]\n")
    config = load_config(path, ["train.lr=0.01", "data.class_map={Car: car, Van: car}"])
    assert config.train.lr == 0.01 and config.train.epochs == 3
    assert config.model.roi_output_size == [2, 3]
    assert config.data.class_map == {"Car": "car", "Van": "car"}


def test_int_widens_to_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


def test_scientific_notation_without_a_dot_is_a_float():
    """PyYAML (YAML 1.1) reads 1e-4 as a string; a float key takes it as the number."""
    assert load_config(None, ["train.lr=1e-4", "train.weight_decay=5E-5"]).train.lr == 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "did you mean 'train.lr'"),
        ("trian.lr=0.1", "did you mean 'train'"),
        ("train.epochs=abc", "'train.epochs' expects int"),
        ("model.fpn=3", "'model.fpn' expects bool"),
        ("model.roi_output_size=7", "'model.roi_output_size' expects a list"),
        ("model.roi_pool_mode=bilinear", "expected one of partition, torchvision, align"),
        ("train.lr", "section.key=value"),
        ("train.snapshot_every_min=0.001", "'train.snapshot_every_min' is 0.001; expected 0"),
        ("train.lr=.nan", "'train.lr' is nan; expected a finite number"),
        ("train.lr=-0.1", "'train.lr' is -0.1; expected positive"),
        ("model.score_thresh=-3", "'model.score_thresh' is -3.0; expected [0, 1]"),
        ("train.ema_decay=7", "'train.ema_decay' is 7.0; expected [0, 1)"),
        ("data.synthetic_size=[320]", "'data.synthetic_size' expects 2 numbers, got [320]"),
        ("data.synthetic_far_cars=1.5", "'data.synthetic_far_cars' is 1.5; expected [0, 1]"),
        ("model.anchor_sizes=[32, 0]", "'model.anchor_sizes' is [32.0, 0.0]; expected positive for every item"),
        ("model.detections_per_image=0", "'model.detections_per_image' is 0; expected at least 1"),
        ("track.low_thresh=0.7", "'track.low_thresh' must not exceed 'track.high_thresh'"),
    ],
)
def test_bad_overrides_fail_with_one_sentence(override, message):
    with pytest.raises(DetectorError, match=re.escape(message)):
        load_config(None, [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbon: resnet18\n")
    with pytest.raises(DetectorError, match="did you mean 'model.backbone'"):
        load_config(path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DetectorError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(DetectorError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["train.epochs=7", "model.class_names=[car, van]"])
    config.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert config_from_dict(config.to_dict()) == config


def test_parse_override_nests():
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}
