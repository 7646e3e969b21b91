"""Dataset writers: round trips through the readers on the real data, and the writers' own rules."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.data.readers import read_dataset
from detector.data.writers import write_dataset
from detector.structures import Dataset, DetectorError, ImageRecord

DRONE_SUBSET = 100  # images: enough variety, fast enough for every test run
CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _by_name(dataset: Dataset) -> dict[str, ImageRecord]:
    return {record.image_path.name: record for record in dataset.records}


def _assert_same(expected: Dataset, actual: Dataset, atol: float, ignore: bool = True) -> None:
    """Same class names, images, labels and boxes (and ignore regions), matched by file name."""
    assert actual.class_names == expected.class_names
    want, got = _by_name(expected), _by_name(actual)
    assert sorted(got) == sorted(want)
    for name, record in want.items():
        other = got[name]
        assert (other.width, other.height) == (record.width, record.height), name
        np.testing.assert_array_equal(other.labels, record.labels, err_msg=name)
        np.testing.assert_allclose(other.boxes, record.boxes, atol=atol, err_msg=name)
        if ignore:
            np.testing.assert_allclose(other.ignore, record.ignore, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def drone(shared_data: Path) -> Dataset:
    """The first 100 drone_cars images (YOLO labels; class 0 named 'car')."""
    full = read_dataset(shared_data / "drone_cars", "yolo", class_map={"0": "car"})
    return replace(full, records=full.records[:DRONE_SUBSET])


def test_kitti_to_coco_reads_back_like_kitti(shared_data: Path, tmp_path: Path) -> None:
    kitti = read_dataset(shared_data / "kitti_tiny", "kitti")
    assert sum(len(r.ignore) for r in kitti.records) > 100  # DontCare regions are part of the check
    out = write_dataset(kitti, tmp_path / "coco", "coco")
    assert (out / "annotations.json").is_file() and len(list((out / "images").iterdir())) == len(kitti.records)
    _assert_same(kitti, read_dataset(out, "coco"), atol=1e-3)


def test_dontcare_is_its_own_category_for_a_reader_that_ignores_crowds(shared_data: Path, tmp_path: Path) -> None:
    """KITTI's DontCare regions go into COCO under category DontCare, not Car: a reader that honours no iscrowd flag
    (plain json here, like supervision's from_coco) counts exactly KITTI's cars, and ours reads them back as ignore."""
    kitti = read_dataset(shared_data / "kitti_tiny", "kitti", class_map={"Van": "Car"})
    cars, regions = sum(len(r.boxes) for r in kitti.records), sum(len(r.ignore) for r in kitti.records)
    out = write_dataset(kitti, tmp_path / "coco", "coco")
    content = json.loads((out / "annotations.json").read_text())
    name_of = {c["id"]: c["name"] for c in content["categories"]}
    per_name = Counter(name_of[a["category_id"]] for a in content["annotations"])
    assert regions > 100 and per_name["DontCare"] == regions
    assert sum(per_name[name] for name in kitti.class_names) == cars
    assert not any(a["iscrowd"] and name_of[a["category_id"]] != "DontCare" for a in content["annotations"])
    back = read_dataset(out, "coco", class_map={"Van": "Car"})
    assert back.class_names == kitti.class_names and sum(len(r.ignore) for r in back.records) == regions
    voc = write_dataset(kitti, tmp_path / "voc", "voc")
    names = Counter(o.findtext("name") for xml in (voc / "Annotations").glob("*.xml") for o in ET.parse(xml).iter("object"))
    assert names["DontCare"] == regions


def test_images_are_copied_unless_linking_is_asked_for(tmp_path: Path) -> None:
    dataset = _synthetic(tmp_path)
    copied = write_dataset(dataset, tmp_path / "copy", "coco") / "images" / "frame_0.png"
    linked = write_dataset(dataset, tmp_path / "link", "coco", link=True) / "images" / "frame_0.png"
    source = dataset.records[0].image_path
    assert copied.read_bytes() == source.read_bytes() and not copied.samefile(source)
    assert linked.samefile(source)


def test_kitti_to_kitti_and_voc_keep_ignore_regions(shared_data: Path, tmp_path: Path) -> None:
    kitti = read_dataset(shared_data / "kitti_tiny", "kitti")
    for fmt in ("kitti", "voc"):  # coordinates are written with 2 decimals
        _assert_same(kitti, read_dataset(write_dataset(kitti, tmp_path / fmt, fmt), fmt), atol=0.006)


def test_drone_yolo_to_voc_matches_yolo_and_the_original_xml(drone: Dataset, shared_data: Path, tmp_path: Path) -> None:
    out = write_dataset(drone, tmp_path / "voc", "voc")
    _assert_same(drone, read_dataset(out, "voc"), atol=0.5)
    # drone_cars ships the same boxes as VOC XML (0-based; its YOLO labels are them minus 1 on every side)
    for record in drone.records[:10]:
        stem = record.image_path.stem
        ours = ET.parse(out / "Annotations" / f"{stem}.xml").getroot()
        theirs = ET.parse(shared_data / "drone_cars" / "labels_xml" / f"{stem}.xml").getroot()
        boxes = [[float(o.findtext(f"bndbox/{t}")) for t in CORNERS] for o in ours.iter("object")]
        original = [[float(o.findtext(f"bndbox/{t}")) for t in CORNERS] for o in theirs.iter("object")]
        # theirs are 0-based, our YOLO-read boxes theirs minus 1 (clipped at 0); written 1-based: (x1 + 1, y1 + 1, x2, y2)
        expected = np.maximum(np.asarray(original) - 1, 0) + [1, 1, 0, 0]
        np.testing.assert_allclose(sorted(boxes), sorted(expected.tolist()), atol=0.5, err_msg=stem)


def test_drone_yolo_to_coco_to_yolo(drone: Dataset, tmp_path: Path) -> None:
    coco = read_dataset(write_dataset(drone, tmp_path / "coco", "coco"), "coco")
    _assert_same(drone, coco, atol=0.5)
    back = read_dataset(write_dataset(coco, tmp_path / "yolo", "yolo"), "yolo")
    _assert_same(drone, back, atol=0.5)
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "car\n"


def _synthetic(tmp_path: Path) -> Dataset:
    """Two 20x40 images with the same basename in different folders; one box, one ignore region, one negative."""
    paths = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "frame.png")
        assert cv2.imwrite(str(paths[-1]), np.zeros((20, 40, 3), np.uint8))
    return Dataset(
        ["car", "van"],
        [
            ImageRecord(paths[0], 40, 20, [[0, 0, 10, 5]], [2], 0, ignore=[[20, 2, 30, 12]]),
            ImageRecord(paths[1], 40, 20, np.zeros((0, 4)), [], 1),
        ],
    )


def test_voc_is_one_based_and_writes_ignore_as_difficult(tmp_path: Path) -> None:
    dataset = _synthetic(tmp_path)
    out = write_dataset(dataset, tmp_path / "voc", "voc")
    root = ET.parse(out / "Annotations" / "frame_0.xml").getroot()  # colliding basenames get the index
    objects = [
        (o.findtext("name"), o.findtext("difficult"), [o.findtext(f"bndbox/{t}") for t in CORNERS])
        for o in root.iter("object")
    ]
    assert objects == [("van", "0", ["1", "1", "10", "5"]), ("DontCare", "1", ["21", "3", "30", "12"])]
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["frame_0.png", "frame_1.png"]


def test_crowds_of_a_class_and_source_areas_survive_coco_and_voc(tmp_path: Path) -> None:
    """A crowd of vans stays a region of class van (COCO: iscrowd under van; VOC: a difficult van), a DontCare region
    stays of any class, and COCO keeps the source's object areas."""
    image = tmp_path / "a.png"
    assert cv2.imwrite(str(image), np.zeros((20, 40, 3), np.uint8))
    record = ImageRecord(image, 40, 20, [[0, 0, 10, 5]], [1], 0, ignore=[[20, 2, 30, 12], [30, 0, 40, 10]],
                         ignore_labels=[2, 0], areas=[31.5])
    dataset = Dataset(["car", "van"], [record])
    coco = json.loads((write_dataset(dataset, tmp_path / "coco", "coco") / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert [(names[a["category_id"]], a["iscrowd"], a["area"]) for a in coco["annotations"]] == [
        ("car", 0, 31.5), ("van", 1, 100.0), ("DontCare", 1, 100.0)]
    for fmt in ("coco", "voc"):
        back = read_dataset(tmp_path / fmt, fmt) if fmt == "coco" else read_dataset(
            write_dataset(dataset, tmp_path / fmt, fmt), fmt)
        (got,) = back.records
        assert got.ignore_labels.tolist() == [back.class_names.index("van") + 1, 0]
        np.testing.assert_allclose(got.ignore, record.ignore)
    assert read_dataset(tmp_path / "coco", "coco").records[0].areas.tolist() == [31.5]


def test_yolo_drops_ignore_regions_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="detector.data.writers"):
        out = write_dataset(_synthetic(tmp_path), tmp_path / "yolo", "yolo")
    assert "1 ignore regions were not written" in caplog.text
    assert (out / "labels" / "frame_0.txt").read_text() == "1 0.125000 0.125000 0.250000 0.250000\n"
    assert (out / "labels" / "frame_1.txt").read_text() == ""  # a negative is stated, not left out
    back = read_dataset(out, "yolo")
    assert back.class_names == ["car", "van"] and sum(len(r.ignore) for r in back.records) == 0


def test_non_empty_destination_is_refused(tmp_path: Path) -> None:
    dataset = _synthetic(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(DetectorError, match="taken is not empty"):
        write_dataset(dataset, tmp_path / "taken", "coco")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (write_dataset(dataset, tmp_path / "empty", "coco") / "annotations.json").is_file()  # empty is fine


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    dataset = replace(_synthetic(tmp_path), class_names=["car", "delivery van"])
    with pytest.raises(DetectorError, match="KITTI type"):
        write_dataset(dataset, tmp_path / "out", "kitti")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging folder left


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="unknown output format 'csv'"):
        write_dataset(_synthetic(tmp_path), tmp_path / "out", "csv")
