"""DetectionDataset, collate and the seeded loader, on small images written to a temporary folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detector.data.dataset import DetectionDataset, SampleBatch, build_loader, collate_samples
from detector.data.transforms import build_transform
from detector.structures import Dataset, DetectorError, ImageRecord

AUGMENT = SimpleNamespace(
    enabled=True, hflip=0.5, rotate90=0.0, affine=1.0, scale=[0.8, 1.2], translate=0.1, rotate=10.0,
    brightness_contrast=0.5, hue_saturation=0.5, blur=0.2, noise=0.2, crop=0.5, crop_scale=[0.5, 1.0],
    min_visibility=0.3,
)  # fmt: skip


def _write(path: Path, rgb: np.ndarray) -> Path:
    bgr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Three 40x80 images: one car and an ignore region; a negative; a grayscale image with a truck."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    colour[:, :, 0] = 250  # a red channel that a BGR/RGB swap would move
    records = [
        ImageRecord(_write(tmp_path / "a.png", colour), 80, 40, [[8, 4, 40, 20]], [1], 10, ignore=[[60, 0, 80, 10]]),
        ImageRecord(_write(tmp_path / "b.png", colour[::-1].copy()), 80, 40, np.zeros((0, 4)), [], 11),
        ImageRecord(_write(tmp_path / "c.png", colour[:, :, 1].copy()), 80, 40, [[0, 0, 30, 30]], [2], 12),
    ]
    return Dataset(["car", "truck"], records)


def test_sample_is_in_transformed_pixels(dataset: Dataset) -> None:
    data = DetectionDataset(dataset, build_transform(None, max_size=160, train=False))
    sample = data[0]
    assert sample.image.shape == (3, 80, 160) and sample.image.dtype == torch.float32
    assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
    assert sample.targets.image_size == (80, 160)
    torch.testing.assert_close(sample.targets.boxes, torch.tensor([[16.0, 8.0, 80.0, 40.0]]))
    torch.testing.assert_close(sample.targets.ignore, torch.tensor([[120.0, 0.0, 160.0, 20.0]]))
    assert sample.targets.labels.tolist() == [1]
    assert (sample.image_id, sample.original_size, sample.proposals) == (10, (40, 80), None)


def test_pixels_are_rgb_in_unit_range(dataset: Dataset) -> None:
    sample = DetectionDataset(dataset, build_transform(None, max_size=80, train=False))[0]  # no resize
    assert torch.allclose(sample.image[0], torch.full((40, 80), 250 / 255))  # red stays channel 0
    gray = DetectionDataset(dataset, build_transform(None, max_size=80, train=False))[2]
    assert torch.equal(gray.image[0], gray.image[1]) and torch.equal(gray.image[1], gray.image[2])


def test_negative_image_has_empty_targets(dataset: Dataset) -> None:
    sample = DetectionDataset(dataset, build_transform(AUGMENT, max_size=80, train=True))[1]
    assert sample.targets.boxes.shape == (0, 4) and sample.targets.labels.shape == (0,)


def test_proposals_are_transformed_with_the_image(dataset: Dataset) -> None:
    proposals = {"a.png": np.array([[0, 0, 10, 10], [70, 30, 90, 50]], np.float32), "11": np.zeros((0, 4), np.float32)}
    proposals["c.png"] = np.array([[5, 5, 15, 25]], np.float32)
    data = DetectionDataset(dataset, build_transform(None, max_size=160, train=False), proposals=proposals)
    # the second proposal extends past the image: it is clipped first, then scaled
    torch.testing.assert_close(data[0].proposals, torch.tensor([[0.0, 0.0, 20.0, 20.0], [140.0, 60.0, 160.0, 80.0]]))
    assert data[1].proposals.shape == (0, 4)  # found by image id
    batch = collate_samples([data[0], data[1], data[2]])
    assert [p.shape[0] for p in batch.proposals] == [2, 0, 1]


def test_missing_proposals_name_the_image(dataset: Dataset) -> None:
    data = DetectionDataset(
        dataset, build_transform(None, max_size=80, train=False), proposals={"a.png": np.zeros((0, 4))}
    )
    with pytest.raises(DetectorError, match="b.png"):
        data[1]


def test_collate_keeps_per_image_sizes(dataset: Dataset) -> None:
    data = DetectionDataset(dataset, build_transform(None, max_size=160, train=False))
    batch = collate_samples([data[i] for i in range(3)])
    assert isinstance(batch, SampleBatch) and len(batch) == 3
    assert [tuple(image.shape) for image in batch.images] == [(3, 80, 160)] * 3
    assert batch.image_ids == [10, 11, 12] and batch.original_sizes == [(40, 80)] * 3
    assert [len(t.boxes) for t in batch.targets] == [1, 0, 1] and batch.proposals is None


def test_same_epoch_same_augmentation_new_epoch_new_one(dataset: Dataset) -> None:
    data = DetectionDataset(dataset, build_transform(AUGMENT, max_size=80, train=True), seed=3)
    first = [data[i] for i in range(3)]
    again = [data[i] for i in range(3)]
    data.set_epoch(1)
    later = [data[i] for i in range(3)]
    for a, b in zip(first, again):
        assert torch.equal(a.image, b.image) and torch.equal(a.targets.boxes, b.targets.boxes)
    assert any(a.image.shape != c.image.shape or not torch.equal(a.image, c.image) for a, c in zip(first, later))


def test_loader_is_reproducible_whatever_the_worker_count(dataset: Dataset) -> None:
    data = DetectionDataset(dataset, build_transform(AUGMENT, max_size=80, train=True), seed=5)
    data.set_epoch(2)
    runs = []
    for workers in (0, 2):
        loader = build_loader(data, batch_size=2, shuffle=True, num_workers=workers, seed=9)
        runs.append([(sample_id, image, targets.boxes) for batch in loader
                     for sample_id, image, targets in zip(batch.image_ids, batch.images, batch.targets)])  # fmt: skip
    assert [r[0] for r in runs[0]] == [r[0] for r in runs[1]]  # same shuffled order
    for (_, image_a, boxes_a), (_, image_b, boxes_b) in zip(*runs):
        assert torch.equal(image_a, image_b) and torch.equal(boxes_a, boxes_b)


def test_loader_order_follows_the_seed(dataset: Dataset) -> None:
    data = DetectionDataset(Dataset(dataset.class_names, dataset.records * 4), build_transform(None, 80, False))
    orders = [[i for batch in build_loader(data, 4, True, 0, seed) for i in batch.image_ids] for seed in (1, 1, 2)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert sorted(orders[0]) == sorted([10, 11, 12] * 4)
    with pytest.raises(ValueError, match="sampler"):
        build_loader(data, 4, True, 0, 1, sampler=torch.utils.data.SequentialSampler(data))


def test_image_size_mismatch_is_reported(dataset: Dataset) -> None:
    record = dataset.records[0]
    wrong = ImageRecord(record.image_path, 100, 40, record.boxes, record.labels, record.image_id)
    data = DetectionDataset(Dataset(dataset.class_names, [wrong]), build_transform(None, 80, False))
    with pytest.raises(DetectorError, match="80x40 pixels but its annotation says 100x40"):
        data[0]
