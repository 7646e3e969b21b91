"""Train / val / test splits of the real-data configs: pinned counts, and no near-duplicate across splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.config import load_config
from detector.data.build import build_datasets, build_split
from detector.data.splits import cross_split_correlation, thumbnail
from detector.structures import Dataset, DetectorError, ImageRecord

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config(name: str, shared_data: Path, folder: str):
    return load_config(str(CONFIGS / name), [f"data.train_path={shared_data / folder}"])


@pytest.mark.slow
@pytest.mark.parametrize("name, folder, images, boxes", [
    ("drone_cars.yaml", "drone_cars", {"train": 747, "val": 157, "test": 111}, {"train": 3502, "val": 595, "test": 521}),
    ("kitti_cars.yaml", "kitti_tiny", {"train": 41, "val": 16, "test": 15}, {"train": 109, "val": 53, "test": 31}),
])
def test_split_counts_are_pinned_and_disjoint(shared_data, name, folder, images, boxes):
    config = _config(name, shared_data, folder)
    splits = {split: build_split(config, split) for split in images}
    assert {s: len(d.records) for s, d in splits.items()} == images
    assert {s: sum(len(r.boxes) for r in d.records) for s, d in splits.items()} == boxes
    names = {s: {r.image_path.name for r in d.records} for s, d in splits.items()}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    train, val = build_datasets(config)  # what trains: the train block, with the val block in a final fit
    fit = names["train"] | (names["val"] if config.data.train_on_val else set())
    assert {r.image_path.name for r in train.records} == fit
    assert {r.image_path.name for r in val.records} == names["val"]


def test_drone_split_leaves_20_frame_gaps_between_drone2_blocks(shared_data):
    config = _config("drone_cars.yaml", shared_data, "drone_cars")
    frames = {split: sorted(int(r.image_path.stem.split("(")[1].rstrip(")")) for r in build_split(config, split).records
                            if r.image_path.name.startswith("Drone2"))
              for split in ("train", "val", "test")}
    assert (frames["val"][0], frames["val"][-1]) == (1, 110)
    assert (frames["train"][0], frames["train"][-1]) == (131, 508)
    assert (frames["test"][0], frames["test"][-1]) == (529, 579)
    assert frames["train"][0] - frames["val"][-1] > 20 and frames["test"][0] - frames["train"][-1] > 20


@pytest.mark.slow
@pytest.mark.parametrize("name, folder", [("drone_cars.yaml", "drone_cars"), ("kitti_cars.yaml", "kitti_tiny")])
def test_no_near_duplicate_across_splits(shared_data, name, folder):
    config = _config(name, shared_data, folder)
    highest, pairs = cross_split_correlation({s: build_split(config, s) for s in ("train", "val", "test")})
    assert pairs == [] and max(highest.values()) < 0.9


def test_the_check_finds_the_drone_leak_of_the_old_split(shared_data):
    """The split this config replaced (val = Drone2 frames 480-579, train 1-479) leaked: the drone films the same
    street again, 52 pairs of frames across it correlate at 0.9 or more, the highest at 0.99."""
    config = _config("drone_cars.yaml", shared_data, "drone_cars")
    config.data.val_filter, config.data.test_filter, config.data.train_filter = r"^Drone2_\((4[89]\d|5\d\d)\)", "", "^Drone2"
    train, val = build_split(config, "train"), build_split(config, "val")
    _, pairs = cross_split_correlation({"train": train, "val": val})
    assert len(pairs) == 52 and pairs[0].correlation > 0.99


def test_thumbnail_correlation_by_hand(tmp_path):
    """Brightness and contrast changes keep the correlation at 1; the negative image gives -1; noise lowers it."""
    rng = np.random.default_rng(0)
    base = (rng.random((64, 64)) * 200).astype(np.uint8)
    variants = {"same": base, "brighter": (base // 2 + 40).astype(np.uint8), "negative": 255 - base,
                "other": (rng.random((64, 64)) * 200).astype(np.uint8)}
    vectors = {}
    for name, image in variants.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), image)
        vectors[name] = thumbnail(tmp_path / f"{name}.png")
    assert float(vectors["same"] @ vectors["brighter"]) == pytest.approx(1.0, abs=0.02)
    assert float(vectors["same"] @ vectors["negative"]) == pytest.approx(-1.0, abs=1e-3)
    assert abs(float(vectors["same"] @ vectors["other"])) < 0.3
    records = lambda *names: Dataset(["car"], [ImageRecord(tmp_path / f"{n}.png", 64, 64, np.zeros((0, 4), np.float32),
                                                            np.zeros(0, np.int64), i) for i, n in enumerate(names)])
    highest, pairs = cross_split_correlation({"a": records("same"), "b": records("brighter", "other")})
    assert [(p.image_a, p.image_b) for p in pairs] == [("same.png", "brighter.png")]


def test_a_test_split_must_be_configured():
    config = load_config(None)
    with pytest.raises(DetectorError, match="data.test_filter"):
        build_split(config, "test")
    with pytest.raises(DetectorError, match="split 'dev' is unknown"):
        build_split(config, "dev")


@pytest.mark.slow
def test_train_on_val_adds_the_validation_block_and_never_the_test_block(shared_data):
    """The final fit (configs/drone_cars.yaml ships it): the 747 images of the train block + the 157 of the val block
    (3502 + 595 boxes) train; the test block stays out, and the blocks themselves are unchanged."""
    config = _config("drone_cars.yaml", shared_data, "drone_cars")
    assert config.data.train_on_val
    train, val = build_datasets(config)
    test = build_split(config, "test")
    assert (len(train.records), len(val.records), len(test.records)) == (904, 157, 111)
    assert sum(len(r.boxes) for r in train.records) == 4097
    names = {r.image_path.name for r in train.records}
    assert {r.image_path.name for r in val.records} <= names and not names & {r.image_path.name for r in test.records}
    assert len({r.image_id for r in train.records}) == 904
    assert len(build_split(config, "train").records) == 747  # the train block itself is unchanged
    config.data.train_on_val = False
    assert len(build_datasets(config)[0].records) == 747


def test_joined_datasets_keep_image_ids_unique():
    """Two COCO files both number their images from 1: the second's ids are shifted past the first's."""
    from detector.data.build import _joined

    def dataset(ids):
        records = [ImageRecord(Path(f"/x/{i}.jpg"), 8, 8, np.zeros((0, 4)), np.zeros(0), i) for i in ids]
        return Dataset(["car"], records)

    assert [r.image_id for r in _joined(dataset([1, 2, 3]), dataset([1, 2])).records] == [1, 2, 3, 4, 5]
    assert [r.image_id for r in _joined(dataset([1, 2]), dataset([7, 9])).records] == [1, 2, 7, 9]
