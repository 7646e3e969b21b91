"""Repeat-factor sampling: hand-computed factors (classes and long boxes), and the epochs the sampler draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import tiny_run_overrides
from detector.config import load_config
from detector.data.repeat import describe, repeat_factors
from detector.engine import EpochSampler, Trainer, training_sampler
from detector.structures import Dataset, DetectorError, ImageRecord

CAR = [0, 0, 90, 40]  # long side 90
BUS = [0, 0, 250, 60]  # long side 250


def _dataset() -> Dataset:
    """Ten 640x320 images: 0-6 a car, 7 a car and a bus (both class 1), 8 a truck (class 2), 9 a negative."""
    records = [ImageRecord(f"{i}.jpg", 640, 320, boxes=[CAR], labels=[1], image_id=i) for i in range(7)]
    records.append(ImageRecord("7.jpg", 640, 320, boxes=[CAR, BUS], labels=[1, 1], image_id=7))
    records.append(ImageRecord("8.jpg", 640, 320, boxes=[CAR], labels=[2], image_id=8))
    records.append(ImageRecord("9.jpg", 640, 320, boxes=np.zeros((0, 4)), labels=[], image_id=9))
    return Dataset(["car", "truck"], records)


def test_class_factors_by_hand():
    # car in 8 of 10 images: sqrt(0.5 / 0.8) < 1 -> 1; truck in 1 of 10: sqrt(0.5 / 0.1) = sqrt(5)
    factors = repeat_factors(_dataset(), threshold=0.5)
    assert factors.tolist() == pytest.approx([1] * 8 + [math.sqrt(5), 1])


def test_long_boxes_are_a_group_of_their_own():
    # "long car" (a box of class 1 with long side >= 200) is in 1 of 10 images: sqrt(0.4 / 0.1) = 2
    factors = repeat_factors(_dataset(), threshold=0.4, long_side=200)
    assert factors.tolist() == pytest.approx([1] * 7 + [2, 2, 1])
    # at max_size 320 the images are halved: the bus is 125 px long, under 200, so only the truck repeats
    assert repeat_factors(_dataset(), 0.4, 200, max_size=320).tolist() == pytest.approx([1] * 8 + [2, 1])
    # at max_size 1280 the car is 180 px: with long side 150 every class-1 image holds a long car (8 of 10: no repeat)
    assert repeat_factors(_dataset(), 0.4, 150, max_size=1280).tolist() == pytest.approx([1] * 8 + [2, 1])


def test_threshold_zero_is_off_and_negative_is_refused():
    assert repeat_factors(_dataset(), 0.0, 200).tolist() == [1.0] * 10
    with pytest.raises(DetectorError, match="at least 0"):
        repeat_factors(_dataset(), -0.1)
    assert "2 of 10 training images repeat 2.00-2.00x" in describe(repeat_factors(_dataset(), 0.4, 200))
    assert "no image" in describe(np.ones(3))


def test_sampler_draws_rare_images_more_often_and_keeps_epoch_length():
    factors = np.array([1.0] * 9 + [4.0])  # image 9: 4 copies in a pool of 13, 10 drawn
    sampler = EpochSampler(10, shuffle=True, seed=0, repeat_factors=factors)
    draws = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        epoch_draws = list(sampler)
        assert len(epoch_draws) == 10 and set(epoch_draws) <= set(range(10))
        draws += epoch_draws
    counts = np.bincount(draws, minlength=10) / 200
    assert counts[9] == pytest.approx(4 * 10 / 13, abs=0.15)  # 3.08 draws per epoch
    assert counts[:9] == pytest.approx(10 / 13, abs=0.1)  # 0.77 each
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=6)  # resuming mid-epoch replays the same draws
    assert list(sampler) == full[6:]


def test_sampler_rounds_fractional_factors_stochastically():
    sampler = EpochSampler(2, shuffle=True, seed=1, repeat_factors=np.array([1.0, 1.5]))
    draws = []
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    # image 1 has 1 or 2 copies (half the epochs each): pools [0, 1] and [0, 1, 1]; P(draw 1) = 1/2 and 2/3
    assert np.mean(np.array(draws) == 1) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=0.02)


def test_sampler_without_factors_is_unchanged_and_bad_factors_fail():
    plain, ones = EpochSampler(10, True, 3), EpochSampler(10, True, 3, repeat_factors=None)
    plain.set_epoch(2), ones.set_epoch(2)
    assert list(plain) == list(ones)
    with pytest.raises(ValueError, match="10 factors of at least 1"):
        EpochSampler(10, True, 3, repeat_factors=np.full(10, 0.5))


def test_config_checks_the_keys():
    with pytest.raises(DetectorError, match="train.repeat_long_side' needs 'train.repeat_threshold'"):
        load_config(None, ["train.repeat_long_side=200"])
    with pytest.raises(DetectorError, match="train.repeat_threshold"):
        load_config(None, ["train.repeat_threshold=-1"])
    assert load_config(None, ["train.repeat_threshold=0.2", "train.repeat_long_side=200"]).train.repeat_long_side == 200


def test_trainer_samples_with_the_configs_factors(tmp_path, capsys):
    # a long side of 40 px at 160 is held by the boxes of some synthetic training images, not all: those repeat
    overrides = tiny_run_overrides(tmp_path, **{"train.repeat_threshold": 1.0, "train.repeat_long_side": 40})
    trainer = Trainer(load_config(None, overrides), progress=False)
    expected = repeat_factors(trainer.train_set, 1.0, 40, 160)
    assert trainer.sampler.repeat_factors.tolist() == expected.tolist()
    assert 1 < expected.max() and "repeat-factor sampling" in capsys.readouterr().out


def test_training_sampler_takes_the_factors_from_the_config():
    # off by default: plain shuffled epochs; on: the factors of repeat_factors at data.max_size
    dataset = _dataset()
    assert training_sampler(load_config(None, []), dataset).repeat_factors is None
    config = load_config(None, ["train.repeat_threshold=0.5", "train.repeat_long_side=200", "data.max_size=640"])
    sampler = training_sampler(config, dataset)
    # the long car (image 7) and the truck (image 8) are each in 1 of 10 images: sqrt(0.5 / 0.1) = sqrt(5)
    assert sampler.repeat_factors.tolist() == pytest.approx([1] * 7 + [math.sqrt(5)] * 2 + [1])
    assert len(sampler) == 10 and sampler.shuffle and sampler.seed == 0
