"""Property-based fuzzing of the dataset readers (hypothesis): random and mutated KITTI, YOLO, VOC and COCO files.

The only outcomes allowed are records or a DetectorError whose sentence names the file (or the dataset folder);
never another exception type, never a traceback from deep inside a parser.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.data.readers import read_dataset
from detector.structures import Dataset, DetectorError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
FUZZ_EACH_FORMAT = settings(FUZZ, max_examples=180)  # KITTI, YOLO and VOC share one test: about 60 each

VALID = {
    "kitti": "Car 0.00 0 -1.57 10.0 20.0 60.0 50.0 1.5 1.6 3.9 1.0 1.5 10.0 0.1\nDontCare -1 -1 -10 0 0 8 8 -1 -1 -1 -1000 -1000 -1000 -10\n",
    "yolo": "0 0.5 0.5 0.2 0.3\n1 0.25 0.75 0.1 0.1\n",
    "voc": ("<annotation><filename>a.png</filename><size><width>80</width><height>60</height></size>"
            "<object><name>car</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>51</xmax>"
            "<ymax>41</ymax></bndbox></object></annotation>"),
}
COCO = {
    "images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}],
    "categories": [{"id": 1, "name": "car"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 20], "iscrowd": 0}],
}
LABEL_FILE = {"kitti": "training/label_2/a.txt", "yolo": "labels/a.txt", "voc": "Annotations/a.xml",
              "coco": "annotations.json"}
IMAGE_FILE = {"kitti": "training/image_2/a.png", "yolo": "images/a.png", "voc": "JPEGImages/a.png", "coco": "images/a.png"}


def _read(fmt: str, content: str | bytes) -> Dataset | None:
    """Write one image and ``content`` as its label file, read the dataset; check the allowed outcomes."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = root / IMAGE_FILE[fmt]
        image.parent.mkdir(parents=True)
        cv2.imwrite(str(image), np.zeros((60, 80, 3), np.uint8))
        label = root / LABEL_FILE[fmt]
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
        if fmt == "yolo":
            (root / "classes.txt").write_text("car\ntruck\n")
        try:
            dataset = read_dataset(root, fmt)
        except DetectorError as error:
            assert label.name in str(error) or str(root) in str(error), str(error)
            assert "\n" not in str(error).strip(), str(error)
            return None
        for record in dataset.records:  # what training needs: finite boxes inside the image, labels 1..K
            assert np.isfinite(record.boxes).all() and np.isfinite(record.ignore).all()
            assert (record.boxes[:, [0, 2]] >= 0).all() and (record.boxes[:, [0, 2]] <= record.width).all()
            assert (record.boxes[:, 2] > record.boxes[:, 0]).all() and (record.boxes[:, 3] > record.boxes[:, 1]).all()
            assert ((record.labels >= 1) & (record.labels <= dataset.num_classes)).all()
        return dataset


def _mutations(valid: str) -> st.SearchStrategy[str]:
    """A valid file with characters deleted, replaced or inserted at random places."""
    def mutate(data: tuple[list[tuple[int, int, str]], str]) -> str:
        edits, _ = data
        text = valid
        for kind, position, piece in edits:
            position %= len(text) + 1
            if kind == 0:
                text = text[:position] + text[position + 1:]
            elif kind == 1:
                text = text[:position] + piece + text[position + 1:]
            else:
                text = text[:position] + piece + text[position:]
        return text
    piece = st.sampled_from(["-", "1e309", "nan", " ", "\n", "<", ">", "/", "x", "9999", "0", "-1", ".", "\x00", "é"])
    edit = st.tuples(st.integers(0, 2), st.integers(0, 10_000), piece)
    return st.tuples(st.lists(edit, min_size=1, max_size=6), st.just("")).map(mutate)


@FUZZ_EACH_FORMAT
@given(st.sampled_from(["kitti", "yolo", "voc"]), st.binary(max_size=300) | st.text(max_size=300))
def test_random_label_files(fmt, content):
    _read(fmt, content)


@FUZZ_EACH_FORMAT
@given(st.sampled_from(["kitti", "yolo", "voc"]).flatmap(lambda fmt: st.tuples(st.just(fmt), _mutations(VALID[fmt]))))
def test_mutated_label_files(case):
    _read(*case)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(st.sampled_from(["images", "categories", "annotations"]), st.integers(0, 5), JSON_VALUES)
def test_coco_with_a_field_replaced(section, field_index, value):
    content = json.loads(json.dumps(COCO))
    entry = content[section][0]
    keys = sorted(entry)
    entry[keys[field_index % len(keys)]] = value
    _read("coco", json.dumps(content, allow_nan=True))


@FUZZ
@given(st.sampled_from(["images", "categories", "annotations", "root"]), JSON_VALUES)
def test_coco_with_a_section_replaced(section, value):
    content = json.loads(json.dumps(COCO))
    if section == "root":
        content = value
    else:
        content[section] = value
    _read("coco", json.dumps(content, allow_nan=True))


@FUZZ
@given(_mutations(json.dumps(COCO)))
def test_coco_mutated(content):
    _read("coco", content)
