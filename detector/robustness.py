"""Named image corruptions at five severities, and the robustness figures built on them (mPC, rPC).

After Michaelis et al. 2019, "Benchmarking Robustness in Object Detection" (COCO-C): a detector is evaluated
on copies of its test set corrupted by each named corruption at severities 1 (mild) to 5 (severe), and
summarised by the mean performance under corruption, mPC (AP averaged over corruptions and severities), and
the relative performance under corruption, rPC = mPC / clean AP.

Every corruption is an albumentations transform (``night`` is one written here) with each random *strength*
range collapsed to one value per severity, ``SEVERITY_TABLE``; what is left random (where rain drops fall,
which way a flare points, the noise itself) is drawn from ``seed``, so ``corrupt(image, name, severity, seed)``
returns the same bytes every time. Corruptions only change pixel values: none moves, crops or resizes, so
ground-truth boxes stay valid. Pixel sizes (blur radii, kernel lengths) are absolute, as in COCO-C: corrupt
images at the resolution the detector is given them. Severity 3 still leaves the cars plain to a person
(docs/benchmarks/robustness/corruptions_*.jpg shows every corruption at every severity).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from detector.errors import DetectorError

__all__ = ["CORRUPTIONS", "SEVERITIES", "SEVERITY_TABLE", "CorruptedTransform", "Fog", "Night", "RandomCorruption",
           "corrupt", "group_figures", "markdown_table", "mpc", "parse_corruptions", "rpc", "score_corruptions", "summarize",
           "trained_corruptions"]

SEVERITIES = (1, 2, 3, 4, 5)

# One row per corruption, one column per severity 1..5: the value that the corruption's random range is
# collapsed to. Tuples name their fields in the comment; see the builders below for the transform each feeds.
SEVERITY_TABLE: dict[str, tuple[Any, ...]] = {
    # name             severity 1            2                   3                   4                   5
    # fog: `Fog` density, the fraction of the light replaced by the grey veil (on average over the image)
    "fog":            (0.25,                0.4,                0.55,               0.68,               0.8),
    # rain: (A.RandomRain rain_type, drop_width px, brightness_coefficient)
    "rain":           (("drizzle", 1, 0.9), ("default", 1, 0.8), ("heavy", 1, 0.7), ("heavy", 2, 0.6),
                       ("torrential", 2, 0.5)),
    # snow: (veil density as in fog, flakes as A.RandomRain rain_type drops, larger flakes' size px)
    "snow":           ((0.1, "drizzle", 3), (0.15, "default", 3), (0.2, "heavy", 4), (0.3, "heavy", 5),
                       (0.4, "torrential", 5)),
    # sun_glare: (A.RandomSunFlare source radius as a fraction of the image diagonal, number of flare circles)
    "sun_glare":      ((0.06, 4),           (0.09, 6),           (0.12, 8),          (0.16, 10),         (0.2, 12)),
    # shadow: (A.RandomShadow number of shadows, shadow_intensity: fraction of the light removed)
    "shadow":         ((1, 0.3),            (1, 0.45),           (2, 0.55),          (2, 0.65),          (3, 0.75)),
    # night: (gain on linear light, gamma, sensor noise std as a fraction of 255), `Night`
    "night":          ((0.6, 1.15, 0.025),  (0.46, 1.3, 0.035),  (0.35, 1.45, 0.045), (0.26, 1.6, 0.055),
                       (0.18, 1.8, 0.065)),
    # motion_blur: A.MotionBlur kernel length in pixels (odd)
    "motion_blur":    (5,                   9,                   13,                 19,                 27),
    # defocus_blur: A.Defocus disc radius in pixels
    "defocus_blur":   (2,                   3,                   4,                  6,                  8),
    # gaussian_noise: A.GaussNoise std as a fraction of 255
    "gaussian_noise": (0.04,                0.07,                0.1,                0.14,               0.19),
    # jpeg: A.ImageCompression JPEG quality
    "jpeg":           (40,                  25,                  15,                 10,                 6),
    # brightness: A.RandomBrightnessContrast brightness shift as a fraction of 255 (brighter)
    "brightness":     (0.1,                 0.2,                 0.3,                0.4,                0.5),
    # contrast: fraction of the contrast removed around the image mean
    "contrast":       (0.3,                 0.45,                0.6,                0.7,                0.8),
}


class Night(A.ImageOnlyTransform):
    """Low light: ``gain * x ** gamma`` on intensities in [0, 1] (darker, with the shadows crushed more than the
    highlights), then Gaussian sensor noise of standard deviation ``noise_std`` (a fraction of 255), which at
    night is large relative to the signal. The noise is drawn from the transform's seeded generator."""

    def __init__(self, gain: float, gamma: float, noise_std: float, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.gain, self.gamma, self.noise_std = gain, gamma, noise_std

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        shape = params["shape"][:2] + (3,)
        return {"noise": self.random_generator.normal(0.0, self.noise_std, size=shape).astype(np.float32)}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params: Any) -> np.ndarray:
        light = self.gain * (img.astype(np.float32) / 255.0) ** self.gamma + noise
        return np.clip(np.rint(light * 255.0), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain", "gamma", "noise_std")


class Fog(A.ImageOnlyTransform):
    """A grey veil, as light scattered by fog: ``x * (1 - v) + veil_rgb * v`` where the veil fraction ``v`` is
    ``density`` modulated by smooth, seeded two-octave noise (fog is patchy). albumentations' RandomFog (2.0.8)
    mostly blurs the image and lowers contrast by little even at its strongest, so fog is written here."""

    VEIL_RGB = (208, 210, 214)  # light, slightly bluish grey

    def __init__(self, density: float, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.density = density

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        small_w, small_h = max(8, width // 8), max(8, height // 8)  # the noise is smooth: build it at 1/8 size
        patches = np.zeros((small_h, small_w), np.float32)
        for cells, weight in ((3, 0.65), (9, 0.35)):  # coarse banks of fog, finer wisps
            grid = self.random_generator.random((cells, max(1, round(cells * width / height)))).astype(np.float32)
            layer = cv2.resize(grid, (small_w, small_h), interpolation=cv2.INTER_LINEAR)
            patches += weight * cv2.GaussianBlur(layer, (0, 0), sigmaX=small_h / cells / 2)  # no cell edges
        patches = cv2.resize(patches, (width, height), interpolation=cv2.INTER_LINEAR)
        # noise in about [0, 1] -> veil within +-25% of the density, (H, W) -> (H, W, 1) to broadcast over RGB
        veil = self.density * (0.75 + 0.5 * np.clip(patches, 0.0, 1.0))
        return {"veil": np.clip(veil, 0.0, 1.0)[..., None]}

    def apply(self, img: np.ndarray, veil: np.ndarray, **params: Any) -> np.ndarray:
        fogged = img.astype(np.float32) * (1.0 - veil) + np.float32(self.VEIL_RGB) * veil
        return np.clip(np.rint(fogged), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("density",)


def _fog(value: float, shape: tuple[int, int]) -> A.BasicTransform:
    return Fog(value)


def _rain(value: tuple[str, int, float], shape: tuple[int, int]) -> A.BasicTransform:
    rain_type, drop_width, brightness = value
    return A.RandomRain(slant_range=(-10, 10), drop_width=drop_width, blur_value=3, brightness_coefficient=brightness,
                        rain_type=rain_type, p=1.0)


def _snow(value: tuple[float, str, int], shape: tuple[int, int]) -> A.BasicTransform:
    # A.RandomSnow only lightens the image (its "bleach" method posterizes mid-greys, its "texture" method wraps
    # bright pixels to black in albumentations 2.0.8), so snow is the fog veil (falling snow hides the distance)
    # under two layers of flakes: short, wide, white, barely slanted rain drops, small ones and larger ones.
    density, rain_type, size = value
    flakes = [A.RandomRain(slant_range=(-3, 3), drop_length=width, drop_width=width, drop_color=(240, 240, 240),
                           blur_value=blur, brightness_coefficient=1.0, rain_type=rain_type, p=1.0)
              for width, blur in ((max(1, size // 2), 1), (size, 3))]
    return A.Sequential([Fog(density), *flakes], p=1.0)


def _sun_glare(value: tuple[float, int], shape: tuple[int, int]) -> A.BasicTransform:
    radius_fraction, circles = value
    radius = max(1, round(radius_fraction * math.hypot(*shape)))
    return A.RandomSunFlare(flare_roi=(0.1, 0.0, 0.9, 0.4), src_radius=radius,
                            num_flare_circles_range=(circles, circles), method="physics_based", p=1.0)


def _shadow(value: tuple[int, float], shape: tuple[int, int]) -> A.BasicTransform:
    count, intensity = value
    return A.RandomShadow(shadow_roi=(0.0, 0.3, 1.0, 1.0), num_shadows_limit=(count, count), shadow_dimension=5,
                          shadow_intensity_range=(intensity, intensity), p=1.0)


def _night(value: tuple[float, float, float], shape: tuple[int, int]) -> A.BasicTransform:
    return Night(*value)


def _motion_blur(value: int, shape: tuple[int, int]) -> A.BasicTransform:
    return A.MotionBlur(blur_limit=(value, value), allow_shifted=False, angle_range=(0, 180), direction_range=(0, 0),
                        p=1.0)


def _defocus_blur(value: int, shape: tuple[int, int]) -> A.BasicTransform:
    return A.Defocus(radius=(value, value), alias_blur=(0.1, 0.1), p=1.0)


def _gaussian_noise(value: float, shape: tuple[int, int]) -> A.BasicTransform:
    return A.GaussNoise(std_range=(value, value), mean_range=(0.0, 0.0), per_channel=True, p=1.0)


def _jpeg(value: int, shape: tuple[int, int]) -> A.BasicTransform:
    return A.ImageCompression(compression_type="jpeg", quality_range=(value, value), p=1.0)


def _brightness(value: float, shape: tuple[int, int]) -> A.BasicTransform:
    return A.RandomBrightnessContrast(brightness_limit=(value, value), contrast_limit=(0.0, 0.0), p=1.0)


def _contrast(value: float, shape: tuple[int, int]) -> A.BasicTransform:
    # x * (1 - c) + c * mean(x): contrast pulled towards the image mean, which stays put (albumentations'
    # contrast alone scales towards black); brightness_by_max=False makes the shift a fraction of the mean.
    return A.RandomBrightnessContrast(brightness_limit=(value, value), contrast_limit=(-value, -value),
                                      brightness_by_max=False, p=1.0)


# name -> builder(severity value from SEVERITY_TABLE, image (H, W)) -> a transform that applies it every time
CORRUPTIONS: dict[str, Callable[[Any, tuple[int, int]], A.BasicTransform]] = {
    "fog": _fog,
    "rain": _rain,
    "snow": _snow,
    "sun_glare": _sun_glare,
    "shadow": _shadow,
    "night": _night,
    "motion_blur": _motion_blur,
    "defocus_blur": _defocus_blur,
    "gaussian_noise": _gaussian_noise,
    "jpeg": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
}


def _check_name(name: str, where: str = "") -> None:
    if name not in CORRUPTIONS:
        close = difflib.get_close_matches(name, CORRUPTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DetectorError(f"{where}unknown corruption '{name}'{hint}: expected one of {', '.join(CORRUPTIONS)}")


def _check_severity(name: str, severity: int) -> None:
    if severity not in SEVERITIES:
        raise DetectorError(f"corruption '{name}' has severities 1 to 5, got {severity}")


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same image with corruption ``name`` at ``severity`` (1..5): same shape and dtype.

    Only pixel values change, so boxes on the image stay valid. Deterministic: the same arguments give the same
    bytes (the transform is built afresh inside an ``A.Compose`` seeded with ``seed``).
    """
    _check_name(name)
    _check_severity(name, severity)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DetectorError(f"corrupt expects an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    transform = CORRUPTIONS[name](SEVERITY_TABLE[name][severity - 1], shape)
    return A.Compose([transform], seed=seed)(image=np.ascontiguousarray(image))["image"]


def parse_corruptions(spec: str) -> list[tuple[str, int]]:
    """``"fog:3"``, ``"fog:3,rain:1"``, ``"fog"`` (severities 1..5) or ``"all"`` -> [(name, severity), ...].

    Raises DetectorError for an unknown name (suggesting the closest one) or a severity outside 1..5.
    """
    pairs: list[tuple[str, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise DetectorError(f"corruption list '{spec}' has an empty entry: expected 'name' or 'name:severity'")
        if item == "all":
            pairs += [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
            continue
        name, _, level = item.partition(":")
        name = name.strip()
        _check_name(name)
        if not level:
            pairs += [(name, severity) for severity in SEVERITIES]
            continue
        try:
            severity = int(level)
        except ValueError:
            raise DetectorError(f"corruption '{name}' has severities 1 to 5, got '{level}'") from None
        _check_severity(name, severity)
        pairs.append((name, severity))
    return list(dict.fromkeys(pairs))  # duplicates dropped, order kept


def _per_corruption(results: Mapping[tuple[str, int], float]) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for (name, severity), value in results.items():
        table.setdefault(name, {})[severity] = float(value)
    return table


def mpc(results: Mapping[tuple[str, int], float]) -> float:
    """Mean performance under corruption: {(name, severity): AP} -> the mean over corruptions of each
    corruption's mean over its severities (the plain mean of all values when every severity is present)."""
    if not results:
        raise DetectorError("mPC needs at least one (corruption, severity) result")
    means = [sum(row.values()) / len(row) for row in _per_corruption(results).values()]
    return sum(means) / len(means)


def rpc(results: Mapping[tuple[str, int], float], clean_ap: float) -> float:
    """Relative performance under corruption: mPC / clean AP (1.0 means corruptions cost nothing)."""
    if clean_ap <= 0:
        raise DetectorError(f"rPC needs a positive clean AP, got {clean_ap}")
    return mpc(results) / clean_ap


def markdown_table(results: Mapping[tuple[str, int], float], digits: int = 3) -> str:
    """{(name, severity): figure} -> a markdown table: one row per corruption, columns severity 1..5 and the mean,
    and a last row of per-severity means with mPC as its mean. A missing entry is shown as an en dash."""
    table = _per_corruption(results)
    if not table:
        raise DetectorError("markdown_table needs at least one (corruption, severity) result")

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ["| corruption | " + " | ".join(str(s) for s in SEVERITIES) + " | mean |",
             "|---|" + "---:|" * (len(SEVERITIES) + 1)]
    for name, row in table.items():
        values = [cell(row.get(severity)) for severity in SEVERITIES]
        lines.append(f"| {name} | " + " | ".join(values) + f" | {cell(sum(row.values()) / len(row))} |")
    columns = [[row[s] for row in table.values() if s in row] for s in SEVERITIES]
    means = [cell(sum(column) / len(column) if column else None) for column in columns]
    lines.append("| **mean** | " + " | ".join(means) + f" | **{cell(mpc(results))}** |")
    return "\n".join(lines)


def score_corruptions(evaluate: Callable[[Callable[[Any], Any]], Mapping[str, float]],
                      corruptions: Sequence[tuple[str, int]], progress: bool = True,
                      done: Mapping[tuple[str, int], Mapping[str, float]] | None = None,
                      on_score: Callable[[tuple[str, int], dict], None] | None = None) -> dict[tuple[str, int], dict]:
    """AP and AP50 of one model under each (name, severity): ``evaluate(wrap_transform)`` scores the model with
    its evaluation transform wrapped (e.g. `detector.engine.evaluate(..., wrap_transform=...)`) and returns its
    COCO metrics. -> {(name, severity): {"AP": .., "AP50": ..}} in the order given.

    ``done``: figures already scored (an interrupted run's), taken as they are; ``on_score(key, figures)`` is called
    after each new score, so a caller can save it and resume later."""
    from tqdm import tqdm

    done = done or {}
    scores: dict[tuple[str, int], dict] = {}
    for name, severity in tqdm(corruptions, desc="corruptions", unit="run", disable=not progress):
        if (name, severity) in done:
            scores[(name, severity)] = {m: done[(name, severity)][m] for m in ("AP", "AP50")}
            continue
        metrics = evaluate(lambda transform, n=name, v=severity: CorruptedTransform(transform, n, v))
        scores[(name, severity)] = {m: metrics[m] for m in ("AP", "AP50")}
        if on_score is not None:
            on_score((name, severity), scores[(name, severity)])
    return scores


def trained_corruptions(augment: Any) -> list[str]:
    """The corruptions a model was trained with (``augment.weather_corruptions`` when robust training was on), or []:
    read from a config's ``augment`` section, as `summarize`'s ``trained_on``."""
    on = getattr(augment, "enabled", False) and float(getattr(augment, "weather", 0.0)) > 0
    return list(augment.weather_corruptions) if on else []


def summarize(clean: Mapping[str, float], scores: Mapping[tuple[str, int], Mapping[str, float]],
              trained_on: Sequence[str] = ()) -> dict[str, Any]:
    """The robustness figures of one model: clean AP / AP50, every (corruption, severity) score, mPC and rPC of AP
    and AP50, and, for a model trained with corruptions (``trained_on``: augment.weather_corruptions), the same
    figures over the corruptions it was trained on ("seen") and over the others ("held_out"). rPC is None when
    the clean figure is 0."""
    summary: dict[str, Any] = {"clean": {m: clean[m] for m in ("AP", "AP50")},
                               "corruptions": [{"name": n, "severity": v, **dict(f)} for (n, v), f in scores.items()],
                               **group_figures(clean, scores, {name for name, _ in scores})}
    if trained_on:
        summary["trained_on"] = list(trained_on)
        scored = {name for name, _ in scores}
        for group, names in (("seen", scored & set(trained_on)), ("held_out", scored - set(trained_on))):
            figures = group_figures(clean, scores, names)
            if figures:
                summary[group] = {"names": sorted(names), **figures}
    return summary


def group_figures(clean: Mapping[str, float], scores: Mapping[tuple[str, int], Mapping[str, float]],
                  names: set[str] | Sequence[str], metrics: Sequence[str] = ("AP", "AP50")) -> dict[str, float | None]:
    """mPC and rPC of each of ``metrics`` over the scores of the corruptions in ``names`` ({} when none was scored);
    rPC is None when the clean figure is 0."""
    names = set(names)
    members = {key: figures for key, figures in scores.items() if key[0] in names}
    if not members:
        return {}
    out: dict[str, float | None] = {}
    for metric in metrics:
        per = {key: figures[metric] for key, figures in members.items()}
        out[f"mPC_{metric}"] = mpc(per)
        out[f"rPC_{metric}"] = rpc(per, clean[metric]) if clean[metric] > 0 else None
    return out


class CorruptedTransform:
    """An evaluation transform that first corrupts each image's pixels (``name`` at ``severity``), then runs the
    wrapped transform; for `detector.engine.evaluate(wrap_transform=...)`. Each image gets its own seed from the
    dataset's per-sample `set_seed`, so a run is reproducible and rain or noise differ from image to image."""

    def __init__(self, transform: Any, name: str, severity: int) -> None:
        _check_name(name)
        _check_severity(name, severity)
        self.transform, self.name, self.severity, self._seed = transform, name, severity, 0

    def set_seed(self, seed: int) -> None:
        self._seed = seed
        self.transform.set_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray | None = None,
                 proposals: np.ndarray | None = None) -> Any:
        corrupted = corrupt(image, self.name, self.severity, seed=self._seed % 2**32)
        return self.transform(corrupted, boxes, labels, ignore, proposals)



class RandomCorruption:
    """A training transform for robust training (config keys ``augment.weather*``): with probability ``p`` it
    first corrupts the image with one of ``names``, at a severity drawn uniformly from 1..``max_severity``, then
    runs the wrapped transform. Boxes are untouched (corruptions change pixels only). The draw comes from the
    generator that `set_seed` resets, so a sample's corruption is tied to its (seed, epoch, index) like the rest of
    its augmentation; without `set_seed` calls the draws continue one stream from seed 0."""

    def __init__(self, transform: Any, names: list[str], p: float, max_severity: int = 5) -> None:
        if not names:
            raise DetectorError("config key 'augment.weather_corruptions' must name at least one corruption when "
                                "augment.weather is above 0")
        for name in names:
            _check_name(name, "config key 'augment.weather_corruptions': ")
        if not 0.0 <= p <= 1.0:
            raise DetectorError(f"config key 'augment.weather' is a probability and must be in [0, 1], got {p}")
        if max_severity not in SEVERITIES:
            raise DetectorError(f"config key 'augment.weather_max_severity' must be 1 to 5, got {max_severity}")
        self.transform, self.names, self.p, self.max_severity = transform, list(names), float(p), int(max_severity)
        self._rng = np.random.default_rng(0)
        self.last: tuple[str, int] | None = None  # the corruption of the latest call (None: the image was left clean)

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed % 2**63, 0x57EA7E])  # a stream apart from the transform's own
        self.transform.set_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray | None = None,
                 proposals: np.ndarray | None = None) -> Any:
        self.last = None
        if self._rng.random() < self.p:
            name = self.names[int(self._rng.integers(len(self.names)))]
            severity = int(self._rng.integers(1, self.max_severity + 1))
            image = corrupt(np.ascontiguousarray(image), name, severity, seed=int(self._rng.integers(2**32)))
            self.last = (name, severity)
        return self.transform(image, boxes, labels, ignore, proposals)
