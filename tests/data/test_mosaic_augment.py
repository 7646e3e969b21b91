"""Mosaic augmentation: a scripted mosaic computed by hand (pixels, boxes, cut objects), rescaled partners, the
dataset's reproducible draws, and the config key reaching ours' and the peer's training data."""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import load_config
from detector.data.dataset import DetectionDataset
from detector.data.mosaic_augment import MosaicAugment, RawSample, build_mosaic
from detector.data.transforms import build_transform
from detector.engine import training_dataset
from detector.structures import Dataset, DetectorError, ImageRecord


class ScriptedRng:
    """Stands in for np.random.Generator: each method returns its scripted values in order."""

    def __init__(self, uniform: list[float], integers: list) -> None:
        self._uniform, self._integers = list(uniform), list(integers)

    def random(self) -> float:
        return 0.0  # below any p > 0: the mosaic happens

    def uniform(self, low: float, high: float) -> float:
        return self._uniform.pop(0)

    def integers(self, low: int, high: int, size: int | None = None):
        value = self._integers.pop(0)
        assert size is not None or low <= value < high, (value, low, high)
        return value


def _image(width: int, height: int, value: int) -> np.ndarray:
    """(height, width, 3) uint8 whose pixel (y, x) holds (value, x, y), so every pasted window can be traced."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([np.full_like(xs, value), xs, ys], axis=-1).astype(np.uint8)


# the sample: 100 x 80, car A well inside the top left quadrant, car B straddling the centre (50, 40)
SAMPLE = RawSample(_image(100, 80, 1), np.array([[10, 10, 30, 30], [40, 30, 60, 50]], np.float32),
                   np.array([1, 1]), np.zeros((0, 4), np.float32))
# a partner of the same size: C at the top right, D at the bottom left, E across x = 50 at the top
PARTNER = RawSample(_image(100, 80, 2), np.array([[60, 5, 90, 35], [5, 50, 45, 75], [40, 0, 60, 20]], np.float32),
                    np.array([2, 2, 2]), np.array([[0, 60, 10, 70]], np.float32))


def _mosaic(cut_ignored: bool = True) -> RawSample:
    # centre at 0.5 x 100 = 50 and 0.5 x 80 = 40; partners 1, 1, 1; windows (x0, y0): TL (0, 0), TR (50, 0),
    # BL (0, 40), BR (0, 0)
    rng = ScriptedRng([0.5, 0.5], [np.array([1, 1, 1]), 0, 0, 50, 0, 0, 40, 0, 0])
    return MosaicAugment(1.0, 0.3, cut_ignored)(SAMPLE, lambda i: PARTNER, 2, rng)


def test_a_scripted_mosaic_by_hand():
    out = _mosaic()
    # pixels: each quadrant holds its window, traced by the (value, x, y) encoding
    assert (out.image[:40, :50] == SAMPLE.image[:40, :50]).all()
    assert (out.image[:40, 50:] == PARTNER.image[:40, 50:]).all()
    assert (out.image[40:, :50] == PARTNER.image[40:, :50]).all()
    assert (out.image[40:, 50:] == PARTNER.image[:40, :50]).all()
    # boxes: A whole; C where it was; E's right half (visible 0.5 >= 0.3) in TR, its left half moved to BR by
    # (+50, +40); D where it was; B is 10x10 of 20x20 in the top left (0.25 < 0.3): an ignore region
    expected = {(10, 10, 30, 30, 1), (60, 5, 90, 35, 2), (50, 0, 60, 20, 2), (5, 50, 45, 75, 2), (90, 40, 100, 60, 2)}
    got = {tuple(int(v) for v in box) + (int(label),) for box, label in zip(out.boxes, out.labels)}
    assert got == expected
    # the partner's ignore region (0, 60, 10, 70) is inside BL's window (y 40..80) only
    assert sorted(map(tuple, out.ignore.astype(int).tolist())) == [(0, 60, 10, 70), (40, 30, 50, 40)]
    assert out.proposals is None


def test_proposals_are_clipped_to_their_windows_and_kept():
    # a proposals file's boxes travel like ignore regions: clipped to the window, kept while any part stays
    sample = RawSample(SAMPLE.image, SAMPLE.boxes, SAMPLE.labels, SAMPLE.ignore,
                       np.array([[0, 0, 100, 80]], np.float32))
    partner = RawSample(PARTNER.image, PARTNER.boxes, PARTNER.labels, PARTNER.ignore,
                        np.array([[40, 0, 60, 20]], np.float32))
    rng = ScriptedRng([0.5, 0.5], [np.array([1, 1, 1]), 0, 0, 50, 0, 0, 40, 0, 0])
    out = MosaicAugment(1.0, 0.3)(sample, lambda i: partner, 2, rng)
    # TL: the whole-image proposal cut to (0, 0, 50, 40); TR: (50, 0, 60, 20); BL: none; BR: moved by (+50, +40)
    expected = [(0, 0, 50, 40), (50, 0, 60, 20), (90, 40, 100, 60)]
    assert sorted(map(tuple, out.proposals.astype(int).tolist())) == expected


def test_cut_objects_become_background_when_asked():
    out = _mosaic(cut_ignored=False)
    assert out.ignore.astype(int).tolist() == [[0, 60, 10, 70]]
    assert len(out.boxes) == 5


def test_a_smaller_partner_is_scaled_to_the_samples_long_side():
    small = RawSample(_image(50, 40, 3), np.array([[10, 10, 20, 30]], np.float32), np.array([1]),
                      np.zeros((0, 4), np.float32))
    # every window at (0, 0); the 50x40 partner is scaled x2 to 100x80, so its box (10, 10, 20, 30) is (20, 20, 40,
    # 60): in TR's window (0..50, 0..40) it is cut to (20, 20, 40, 40), half visible, moved to (70, 20, 90, 40)
    rng = ScriptedRng([0.5, 0.5], [np.array([1, 1, 1])] + [0] * 8)
    out = MosaicAugment(1.0, 0.5)(SAMPLE, lambda i: small, 2, rng)
    boxes = {tuple(int(v) for v in box) for box in out.boxes}
    assert (70, 20, 90, 40) in boxes and (20, 60, 40, 80) in boxes and (70, 60, 90, 80) in boxes
    assert out.image.shape == SAMPLE.image.shape


def test_probability_zero_and_bad_values():
    assert MosaicAugment(0.0, 0.3)(SAMPLE, lambda i: PARTNER, 2, np.random.default_rng(0)) is SAMPLE
    with pytest.raises(DetectorError, match="augment.mosaic"):
        MosaicAugment(1.5, 0.3)
    config = load_config(None, ["augment.mosaic=1.5"])
    with pytest.raises(DetectorError, match="augment.mosaic"):
        build_transform(config.augment, 320, train=True)


def _dataset(tmp_path) -> Dataset:
    import cv2

    records = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), _image(100, 80, 10 + i))
        records.append(ImageRecord(path, 100, 80, boxes=[[20 * i, 10, 20 * i + 30, 40]], labels=[1], image_id=i))
    return Dataset(["car"], records)


def test_the_dataset_draws_mosaics_reproducibly(tmp_path):
    config = load_config(None, ["augment.mosaic=1.0", "augment.affine=0", "augment.hflip=0", "data.max_size=100",
                                "augment.brightness_contrast=0", "augment.hue_saturation=0", "augment.blur=0",
                                "augment.noise=0"])
    data = training_dataset(config, _dataset(tmp_path))
    assert isinstance(data.mosaic, MosaicAugment)
    first, again = data[2], data[2]
    assert torch_equal(first.image, again.image) and torch_equal(first.targets.boxes, again.targets.boxes)
    source = (first.image[2] * 255).round().int()  # the value channel (written as blue): the image of each pixel
    assert len(source.unique()) > 1, "a mosaic of four draws holds more than one image"
    data.set_epoch(1)
    assert not torch_equal(data[2].image, first.image)
    boxes = first.targets.boxes
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 100) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 80)).all()
    # the config without mosaic gives a dataset without it (the same for the validation transform)
    assert build_mosaic(load_config(None, []).augment) is None
    assert DetectionDataset(_dataset(tmp_path), build_transform(None, 100, train=False)).mosaic is None


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
