"""Datasets from the config: read (or render) the train and validation splits.

Splits are by contiguous blocks chosen with regular expressions on image file names (`data.val_filter`,
`data.test_filter`, and `data.train_filter` to leave gaps between blocks), never at random: neighbouring video
frames are near-duplicates and a random split leaks them into validation. `detector.data.splits` checks that no
image of one split nearly duplicates an image of another. `data.train_on_val` is the final fit: after every choice
was made on validation, the validation block trains too (the test block never does).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from detector.config import Config, DataConfig
from detector.data.readers import read_dataset
from detector.data.synthetic import write_coco_dataset
from detector.data.yolo import declared_split_filters
from detector.structures import Dataset, DetectorError


def filter_records(dataset: Dataset, pattern: str, keep_matching: bool, option: str) -> Dataset:
    """Records whose file name, or path relative to the dataset folder (``images/val/x.jpg``), matches (or, with
    keep_matching=False, does not match) a regular expression."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise DetectorError(f"config key '{option}' is not a valid regular expression ({error})") from None
    root = dataset.root.resolve() if dataset.root is not None else None

    def matches(path: Path) -> bool:
        if regex.search(path.name):
            return True
        try:
            return root is not None and bool(regex.search(path.resolve().relative_to(root).as_posix()))
        except ValueError:
            return False

    records = [r for r in dataset.records if matches(r.image_path) == keep_matching]
    return replace(dataset, records=records)


def read_split(data: DataConfig, path: str, class_names: list[str] | None) -> Dataset:
    """Read one dataset folder with the config's class selection."""
    return read_dataset(
        path,
        data.format,
        classes=class_names,
        class_map=data.class_map or None,
        ignore_classes=data.ignore_classes,
        names_file=data.names_file or None,
        kitti_difficulty=data.kitti_difficulty,
        image_root=data.image_root or None,
        voc_coordinates=data.voc_coordinates,
    )


def render_synthetic(data: DataConfig, seed: int) -> tuple[Path, Path]:
    """Render (once) the synthetic train and validation scenes; returns their annotation files."""
    size = (data.synthetic_size[0], data.synthetic_size[1])
    far = data.synthetic_far_cars
    train = write_coco_dataset(Path(data.train_path), data.synthetic_train_images, size=size, seed=seed, far_cars=far)
    val = write_coco_dataset(Path(data.val_path), data.synthetic_val_images, size=size, seed=seed + 1_000_003,
                             far_cars=far)
    return train, val


SPLITS = ("train", "val", "test")


def _joined(first: Dataset, second: Dataset) -> Dataset:
    """The records of both datasets as one (the first's classes and root; image paths are absolute). Image ids stay
    unique: where the two sources number their images alike (two COCO files), the second's are shifted."""
    ids = {record.image_id for record in first.records}
    shift = max(ids, default=0) if any(record.image_id in ids for record in second.records) else 0
    return replace(first, records=[*first.records, *(replace(r, image_id=r.image_id + shift) for r in second.records)])


def _read_splits(config: Config) -> dict[str, Dataset]:
    """All splits the config defines: train, val and (with data.test_filter) test, each its own block; with
    data.train_on_val also "fit", the train and val blocks together, which is what trains."""
    data, class_names = config.data, list(config.model.class_names)
    if data.format == "synthetic":
        train_file, val_file = render_synthetic(data, config.train.seed)
        coco = replace(data, format="coco")
        train, val = read_split(coco, str(train_file), class_names), read_split(coco, str(val_file), class_names)
        return {"train": train, "val": val, **({"fit": _joined(train, val)} if data.train_on_val else {})}
    # KITTI's difficulty levels say which objects the benchmark scores: validation and test only. Training learns
    # from every labelled object (a short or truncated car is still a car, not background or an ignore region).
    train = labelled = read_split(replace(data, kitti_difficulty="all"), data.train_path, class_names)
    scored = train if data.kitti_difficulty == "all" else read_split(data, data.train_path, class_names)
    filters = {"val": data.val_filter, "test": data.test_filter, "train": data.train_filter}
    if data.format == "yolo" and not data.val_filter:  # an Ultralytics data.yaml's train: / val: / test: folders
        declared = declared_split_filters(data.train_path, data.names_file or None)
        if "val" in declared:
            filters = {split: filters[split] or declared.get(split, "") for split in filters}
    splits: dict[str, Dataset] = {}
    if filters["val"]:
        splits["val"] = filter_records(scored, filters["val"], True, "data.val_filter")
        train = filter_records(train, filters["val"], False, "data.val_filter")
    elif not data.val_path or Path(data.val_path).resolve() == Path(data.train_path).resolve():
        raise DetectorError(
            "the config has no validation split: data.val_filter is empty and data.val_path is "
            + (f"the training folder {data.train_path}" if data.val_path else "empty")
            + "; set data.val_filter to a block of its file names or data.val_path to another folder (validating on "
            "the training images would report training accuracy)"
        )
    else:
        splits["val"] = read_split(data, data.val_path, class_names)
    if filters["test"]:
        splits["test"] = filter_records(scored, filters["test"], True, "data.test_filter")
        train = filter_records(train, filters["test"], False, "data.test_filter")
    if filters["train"]:
        train = filter_records(train, filters["train"], True, "data.train_filter")
    splits["train"] = train
    if data.train_on_val:  # the final fit: the validation block joins training with every label (all KITTI levels)
        val_labels = (filter_records(labelled, filters["val"], True, "data.val_filter") if filters["val"]
                      else read_split(replace(data, kitti_difficulty="all"), data.val_path, class_names))
        splits["fit"] = _joined(train, val_labels)
    return splits


def build_split(config: Config, split: str) -> Dataset:
    """One split of `config`: train, val (every choice is made on it) or test (reported once, never tuned on)."""
    if split not in SPLITS:
        raise DetectorError(f"split '{split}' is unknown; expected one of {', '.join(SPLITS)}")
    splits = _read_splits(config)
    if split not in splits:
        raise DetectorError("the config has no test split; set data.test_filter to the test block's file names")
    dataset = splits[split]
    if not dataset.records:
        raise DetectorError(f"the {split} split is empty; check data.train_path, data.val_path and the filters")
    return dataset


def build_datasets(config: Config) -> tuple[Dataset, Dataset]:
    """(training set, validation split) for `config`; class names follow `model.class_names`. The training set is
    the train block, or with data.train_on_val (the final fit) the train and val blocks together. Images of the test
    split (data.test_filter) are in neither."""
    splits = _read_splits(config)
    for name, label in (("train", "train"), ("val", "validation")):
        if not splits[name].records:
            raise DetectorError(f"the {label} split is empty; check data.train_path, data.val_path and the filters")
    return splits.get("fit", splits["train"]), splits["val"]
