"""Named corruptions: determinism, severity ordering on a fixed image, the spec parser, mPC / rPC."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.errors import DetectorError
from detector.robustness import (CORRUPTIONS, SEVERITIES, SEVERITY_TABLE, corrupt, markdown_table, mpc,
                                 parse_corruptions, rpc)

ALL = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
# corruptions whose result depends on the seed (where drops fall, the noise itself, ...)
RANDOM = ["fog", "rain", "snow", "sun_glare", "shadow", "night", "gaussian_noise"]


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 96x128 street-like image in mid-tones: a vertical gradient, a road, and a few coloured 'cars'."""
    rng = np.random.default_rng(7)
    image = np.empty((96, 128, 3), np.uint8)
    image[:] = np.linspace(150, 90, 96, dtype=np.uint8)[:, None, None]  # (96,) -> (96, 1, 1) sky-to-road ramp
    image[60:, :] = (80, 82, 86)
    for _ in range(6):
        x, y = int(rng.integers(0, 108)), int(rng.integers(40, 84))
        cv2.rectangle(image, (x, y), (x + 18, y + 10), tuple(int(c) for c in rng.integers(30, 220, 3)), cv2.FILLED)
    cv2.line(image, (0, 80), (127, 70), (230, 230, 230), 2)
    return image


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


def rms_contrast(image: np.ndarray) -> float:
    return float((_gray(image) / 255.0).std())


def laplacian_variance(image: np.ndarray) -> float:
    return float(cv2.Laplacian(_gray(image), cv2.CV_64F).var())


def noise_variance(image: np.ndarray, clean: np.ndarray) -> float:
    return float((image.astype(np.float64) - clean).var())


def mean_abs_error(image: np.ndarray, clean: np.ndarray) -> float:
    return float(np.abs(image.astype(np.float64) - clean).mean())


def brightness(image: np.ndarray) -> float:
    return float(image.mean())


def test_registry_and_table_agree() -> None:
    assert set(CORRUPTIONS) == set(SEVERITY_TABLE)
    assert all(len(row) == len(SEVERITIES) for row in SEVERITY_TABLE.values())


@pytest.mark.parametrize(("name", "severity"), ALL)
def test_corruption_is_deterministic_and_changes_pixels(scene: np.ndarray, name: str, severity: int) -> None:
    before = scene.copy()
    first = corrupt(scene, name, severity, seed=3)
    second = corrupt(scene, name, severity, seed=3)
    assert first.shape == scene.shape and first.dtype == np.uint8
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, scene)
    assert np.array_equal(scene, before)  # the input is left alone


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_depend_on_the_seed(scene: np.ndarray, name: str) -> None:
    assert not np.array_equal(corrupt(scene, name, 3, seed=0), corrupt(scene, name, 3, seed=1))


@pytest.mark.parametrize(("name", "statistic", "direction"), [
    ("fog", lambda out, clean: rms_contrast(out), -1),
    ("contrast", lambda out, clean: rms_contrast(out), -1),
    ("gaussian_noise", noise_variance, +1),
    ("night", lambda out, clean: brightness(out), -1),
    ("motion_blur", lambda out, clean: laplacian_variance(out), -1),
    ("defocus_blur", lambda out, clean: laplacian_variance(out), -1),
    ("jpeg", mean_abs_error, +1),
    ("brightness", lambda out, clean: abs(brightness(out) - brightness(clean)), +1),
])
def test_severity_is_monotone(scene: np.ndarray, name: str, statistic, direction: int) -> None:
    clean = scene.astype(np.float64)
    values = [statistic(scene, clean)] + [statistic(corrupt(scene, name, s, seed=0), clean) for s in SEVERITIES]
    if name in ("gaussian_noise", "jpeg", "brightness"):  # statistics that are 0 on the clean image
        assert values[0] == 0.0
    steps = np.diff(values) * direction
    assert (steps > 0).all(), f"{name}: {values}"


def test_night_is_noisy(scene: np.ndarray) -> None:
    """Night is not a plain darkening: the same pixel values in a flat region come out different."""
    night = corrupt(scene, "night", 3).astype(np.float64)
    assert night[70:, :, 0].std() > 2.0  # the flat road region (before: std 0)


def test_corrupt_rejects_bad_input(scene: np.ndarray) -> None:
    with pytest.raises(DetectorError, match="uint8 RGB"):
        corrupt(scene[..., 0], "fog", 1)
    with pytest.raises(DetectorError, match="did you mean 'fog'"):
        corrupt(scene, "fogg", 1)
    with pytest.raises(DetectorError, match="severities 1 to 5"):
        corrupt(scene, "fog", 6)


def test_parse_corruptions_forms() -> None:
    assert parse_corruptions("fog:3") == [("fog", 3)]
    assert parse_corruptions("fog:3, rain:1") == [("fog", 3), ("rain", 1)]
    assert parse_corruptions("fog") == [("fog", s) for s in (1, 2, 3, 4, 5)]
    everything = parse_corruptions("all")
    assert len(everything) == 5 * len(CORRUPTIONS) == 60
    assert everything[:5] == [("fog", s) for s in (1, 2, 3, 4, 5)]
    assert parse_corruptions("fog:2,fog") == [("fog", 2), ("fog", 1), ("fog", 3), ("fog", 4), ("fog", 5)]


def test_parse_corruptions_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(DetectorError) as error:
        parse_corruptions("fog:3,motionblur:2")
    message = str(error.value)
    assert "unknown corruption 'motionblur'" in message and "(did you mean 'motion_blur'?)" in message
    assert "gaussian_noise" in message  # the valid names are listed
    assert "\n" not in message


@pytest.mark.parametrize("spec", ["fog:0", "fog:6", "rain:x", "fog:-1"])
def test_parse_corruptions_rejects_severities_outside_1_to_5(spec: str) -> None:
    with pytest.raises(DetectorError, match="severities 1 to 5"):
        parse_corruptions(spec)


def test_parse_corruptions_rejects_empty_entries() -> None:
    with pytest.raises(DetectorError, match="empty entry"):
        parse_corruptions("fog:1,,rain")


def test_mpc_and_rpc_hand_computed() -> None:
    # fog: 0.5 0.4 0.3 0.2 0.1 (mean 0.3); rain: 0.6 everywhere (mean 0.6) -> mPC 0.45; clean AP 0.6 -> rPC 0.75
    results = {("fog", s): 0.6 - 0.1 * s for s in SEVERITIES} | {("rain", s): 0.6 for s in SEVERITIES}
    assert mpc(results) == pytest.approx(0.45)
    assert rpc(results, clean_ap=0.6) == pytest.approx(0.75)


def test_mpc_weights_each_corruption_equally() -> None:
    # fog has one severity (0.2), rain five (all 0.8): the mean over corruptions is 0.5, not (0.2 + 4.0) / 6
    results = {("fog", 5): 0.2} | {("rain", s): 0.8 for s in SEVERITIES}
    assert mpc(results) == pytest.approx(0.5)


def test_mpc_rpc_errors() -> None:
    with pytest.raises(DetectorError, match="at least one"):
        mpc({})
    with pytest.raises(DetectorError, match="positive clean AP"):
        rpc({("fog", 1): 0.3}, clean_ap=0.0)


def test_markdown_table() -> None:
    results = {("fog", s): 0.6 - 0.1 * s for s in SEVERITIES} | {("rain", 1): 0.6, ("rain", 2): 0.4}
    lines = markdown_table(results, digits=2).splitlines()
    assert lines[0] == "| corruption | 1 | 2 | 3 | 4 | 5 | mean |"
    assert lines[2] == "| fog | 0.50 | 0.40 | 0.30 | 0.20 | 0.10 | 0.30 |"
    assert lines[3] == "| rain | 0.60 | 0.40 | – | – | – | 0.50 |"
    # per-severity means over the corruptions that have them, and mPC = (0.3 + 0.5) / 2
    assert lines[4] == "| **mean** | 0.55 | 0.40 | 0.30 | 0.20 | 0.10 | **0.40** |"


# --- scoring under corruption: `detector eval --corrupt` ------------------------------------------------------------

def test_corrupted_transform_changes_pixels_not_boxes():
    from detector.data.transforms import build_transform
    from detector.robustness import CorruptedTransform

    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    boxes, labels = np.array([[10, 20, 60, 80]], np.float32), np.array([1])
    plain = build_transform(None, 160, train=False)
    wrapped = CorruptedTransform(build_transform(None, 160, train=False), "night", 5)
    plain.set_seed(3)
    wrapped.set_seed(3)
    expected, got = plain(image, boxes, labels), wrapped(image, boxes, labels)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    assert got.image.shape == expected.image.shape and got.image.mean() < expected.image.mean() - 20
    wrapped.set_seed(3)
    np.testing.assert_array_equal(wrapped(image, boxes, labels).image, got.image)  # reproducible per sample seed


def test_eval_cli_scores_corruptions(tiny_checkpoint, tmp_path, capsys):
    import json

    from detector.cli import main

    annotations = tiny_checkpoint.parents[2] / "data" / "val" / "annotations.json"
    out = tmp_path / "e"
    assert main(["eval", str(tiny_checkpoint), str(annotations), "--format", "coco", "--out", str(out),
                 "--corrupt", "fog:1,night:5"]) == 0
    summary = json.loads((out / "robustness.json").read_text())
    assert [(c["name"], c["severity"]) for c in summary["corruptions"]] == [("fog", 1), ("night", 5)]
    aps = [c["AP"] for c in summary["corruptions"]]
    assert summary["mPC_AP"] == pytest.approx(sum(aps) / 2)
    assert summary["clean"]["AP"] == pytest.approx(json.loads((out / "metrics.json").read_text())["AP"])
    assert "mPC" in (out / "robustness.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(tiny_checkpoint), str(annotations), "--format", "coco", "--corrupt", "fgo:3"]) == 2
    assert "did you mean 'fog'" in capsys.readouterr().err
    assert main(["eval", str(tiny_checkpoint), str(annotations), "--format", "coco", "--corrupt", "fog:3",
                 "--slice", "96"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


# --- robust training: augment.weather -------------------------------------------------------------------------------

def _weather_transform(*overrides: str):
    from detector.config import load_config
    from detector.data.transforms import build_transform

    config = load_config(None, ["augment.enabled=true", "augment.hflip=0", "augment.affine=0",
                                "augment.brightness_contrast=0", "augment.hue_saturation=0", "augment.blur=0",
                                "augment.noise=0", *overrides])
    return build_transform(config.augment, 160, train=True)


def test_weather_augmentation_corrupts_listed_names_and_keeps_boxes(scene):
    from detector.robustness import RandomCorruption

    boxes, labels = np.array([[10, 40, 40, 60], [70, 50, 100, 70]], np.float32), np.array([1, 1])
    off = _weather_transform()
    assert not isinstance(off, RandomCorruption)  # off by default
    weather = _weather_transform("augment.weather=1.0", "augment.weather_corruptions=[fog, night]",
                                 "augment.weather_max_severity=2")
    assert isinstance(weather, RandomCorruption)
    drawn = set()
    for seed in range(40):
        off.set_seed(seed)
        weather.set_seed(seed)
        clean, got = off(scene, boxes, labels), weather(scene, boxes, labels)
        drawn.add(weather.last)
        np.testing.assert_array_equal(got.boxes, clean.boxes)  # pixels only
        assert not np.array_equal(got.image, clean.image)
        weather.set_seed(seed)
        np.testing.assert_array_equal(weather(scene, boxes, labels).image, got.image)  # tied to the sample seed
    assert drawn == {("fog", 1), ("fog", 2), ("night", 1), ("night", 2)}  # listed names, severities 1..max only


def test_weather_probability_leaves_the_rest_clean(scene):
    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    off, weather = _weather_transform(), _weather_transform("augment.weather=0.3")
    corrupted = 0
    for seed in range(200):
        off.set_seed(seed)
        weather.set_seed(seed)
        same = np.array_equal(off(scene, boxes, labels).image, weather(scene, boxes, labels).image)
        assert same == (weather.last is None)
        corrupted += weather.last is not None
    assert 40 <= corrupted <= 80  # p = 0.3 of 200: 60 expected, 3.2 standard deviations either side


@pytest.mark.parametrize("overrides, message", [
    (["augment.weather=0.5", "augment.weather_corruptions=[fgo]"], "augment.weather_corruptions.*did you mean 'fog'"),
    (["augment.weather=0.5", "augment.weather_corruptions=[]"], "at least one corruption"),
    (["augment.weather=1.5"], "augment.weather"),
    (["augment.weather=0.5", "augment.weather_max_severity=6"], "augment.weather_max_severity"),
])
def test_weather_config_errors_name_the_key(overrides, message):
    with pytest.raises(DetectorError, match=message):
        _weather_transform(*overrides)
