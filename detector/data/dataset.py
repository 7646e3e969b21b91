"""The torch side of the data: a Dataset of transformed samples, their collate function and a seeded loader.

A `DetectionDataset` reads one `ImageRecord` per index, loads the image as (H, W, 3) uint8 RGB, moves the
image, its boxes, ignore regions and (optional) precomputed proposals through a `Transform`, and returns a
`Sample` in transformed-image pixels (boxes ``x1, y1, x2, y2``). Images keep their own size: the model pads a
batch to a stride multiple, so samples are collated as lists, never stacked.

Reproducibility: the augmentation of sample ``index`` in epoch ``epoch`` is seeded from
``(seed, epoch, index)`` alone, so a run draws the same augmentations whatever the number of workers and
whichever worker loads the sample.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from detector.data.images import load_image
from detector.data.mosaic_augment import MosaicAugment, RawSample
from detector.data.transforms import Transform
from detector.data.proposals_file import proposals_for_record
from detector.structures import Dataset, DetectorError, ImageRecord, Targets

__all__ = ["DetectionDataset", "Sample", "SampleBatch", "build_loader", "collate_samples", "seed_worker"]


@dataclass
class Sample:
    """One transformed image.

    image: (3, h, w) float32 RGB in [0, 1]; targets: boxes / ignore regions in the same (h, w) pixels,
    ``targets.image_size == (h, w)``; original_size: (H, W) of the image file, for mapping detections back;
    proposals: (P, 4) float32 xyxy in (h, w) pixels, or None when the dataset has no proposals.
    """

    image: Tensor
    targets: Targets
    image_id: int
    original_size: tuple[int, int]
    proposals: Tensor | None = None


@dataclass
class SampleBatch:
    """A list of samples, field by field. Images differ in size, so they stay a list of (3, h_i, w_i)."""

    images: list[Tensor]
    targets: list[Targets]
    image_ids: list[int]
    original_sizes: list[tuple[int, int]]
    proposals: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.images)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on (seed, epoch, index) only, well mixed even for neighbouring values."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class DetectionDataset(torch.utils.data.Dataset):
    """Samples of a `detector.structures.Dataset` after ``transform``.

    ``proposals`` maps an image file's basename (or its image id, as a string) to (P, 4) float32 xyxy boxes
    in original image pixels, as `detector.data.proposals_file.read_proposals_file` returns them; they are transformed
    with the image. ``seed`` and `set_epoch` make each sample's augmentation reproducible. ``mosaic`` (training
    only) first turns a sample into a mosaic of it and three others (`detector.data.mosaic_augment`).
    """

    def __init__(
        self, dataset: Dataset, transform: Transform, proposals: dict[str, np.ndarray] | None = None, seed: int = 0,
        mosaic: MosaicAugment | None = None,
    ) -> None:
        if seed < 0:
            raise DetectorError(f"the data seed must be a non-negative integer, got {seed}")
        self.dataset = dataset
        self.records = dataset.records
        self.class_names = list(dataset.class_names)
        self.transform = transform
        self.proposals = proposals
        self.seed = seed
        self.mosaic = mosaic
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentations: call before iterating a loader (workers copy the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        seed = sample_seed(self.seed, self.epoch, index)
        raw = self._load(index)
        if self.mosaic is not None:
            # its own stream: the transform's generator starts from `seed` itself
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
            raw = self.mosaic(raw, self._load, len(self.records), rng)
        self.transform.set_seed(seed)
        out = self.transform(raw.image, raw.boxes, raw.labels, raw.ignore, raw.proposals)
        height, width = out.image.shape[:2]
        tensor = image_to_tensor(out.image)
        targets = Targets(
            boxes=torch.from_numpy(out.boxes),
            labels=torch.from_numpy(out.labels),
            image_size=(height, width),
            ignore=torch.from_numpy(out.ignore),
        )
        moved = None if out.proposals is None else torch.from_numpy(out.proposals)
        return Sample(tensor, targets, int(record.image_id), (record.height, record.width), moved)

    def _load(self, index: int) -> RawSample:
        """Record ``index``'s image and annotations, untransformed."""
        record = self.records[index]
        image = load_image(record.image_path)
        _check_size(record, image)
        proposals = None
        if self.proposals is not None:
            proposals = proposals_for_record(self.proposals, record, "the proposals file")
        return RawSample(image, record.boxes, record.labels, record.ignore, proposals)


def _check_size(record: ImageRecord, image: np.ndarray) -> None:
    """Annotations are in the pixels of the size the reader recorded; another size would misplace every box."""
    height, width = image.shape[:2]
    if (height, width) != (record.height, record.width):
        raise DetectorError(
            f"{record.image_path}: the image is {width}x{height} pixels but its annotation says "
            f"{record.width}x{record.height}; fix the annotation's image size"
        )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1], the model's input."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def collate_samples(samples: list[Sample]) -> SampleBatch:
    """Gather samples into a `SampleBatch` (lists, since image sizes differ).

    ``proposals`` is None when no sample has proposals; a batch mixing samples with and without them is
    a programming error (one dataset either has a proposals file or not).
    """
    with_proposals = [sample.proposals is not None for sample in samples]
    if any(with_proposals) and not all(with_proposals):
        raise ValueError("collate_samples: some samples have proposals and some do not")
    return SampleBatch(
        images=[sample.image for sample in samples],
        targets=[sample.targets for sample in samples],
        image_ids=[sample.image_id for sample in samples],
        original_sizes=[sample.original_size for sample in samples],
        proposals=[sample.proposals for sample in samples] if all(with_proposals) and samples else None,
    )


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy / random per worker and switch OpenCV's thread pool off.

    Augmentation does not depend on these seeds (see `sample_seed`), but any other code that draws from
    numpy or random in a worker should not repeat the same numbers in every worker. The workers are the
    parallelism, so OpenCV's own threads would only oversubscribe the cores. It must be 0: resizing the
    pool inherited from the parent (e.g. ``setNumThreads(1)``) deadlocks in a forked worker when the
    parent's pool threads were idle at fork time.
    """
    seed = torch.initial_seed() % 2**32  # torch gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)


def build_loader(
    dataset: DetectionDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader of `SampleBatch`es whose order (``shuffle``) and worker seeds follow ``seed``.

    With a ``sampler`` (e.g. distributed), the order is the sampler's and ``shuffle`` must be False.
    Workers are not persistent, so `DetectionDataset.set_epoch` before each epoch's iteration takes effect.
    """
    if sampler is not None and shuffle:
        raise ValueError("build_loader: pass shuffle=False with a sampler; the sampler decides the order")
    if batch_size < 1 or num_workers < 0:
        raise DetectorError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        pin_memory=False,
    )
