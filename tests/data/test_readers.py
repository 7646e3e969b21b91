"""Dataset readers: every format gives the same pixel-xyxy records, and every bad input one clear sentence."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.config import load_config
from detector.data.build import build_datasets, build_split
from detector.data.readers import FORMATS, detect_format, read_dataset
from detector.structures import DetectorError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KITTI_LINE = "{} 0.00 0 0.00 {} {} {} {} 1.5 1.6 3.9 1.0 1.5 10.0 0.1"


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    return path


def _text(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def kitti(tmp_path) -> Path:
    """000000: Car, Van, DontCare; 000001: no label file (negative); 000002.txt: no image."""
    root = tmp_path / "kitti"
    _image(root / "training/image_2/000000.png", 100, 50)
    _image(root / "training/image_2/000001.png", 100, 50)
    _text(
        root / "training/label_2/000000.txt",
        KITTI_LINE.format("Car", 10, 5, 40, 30),
        KITTI_LINE.format("Van", 50.5, 10, 90, 45.25),
        KITTI_LINE.format("DontCare", 0, 0, 8, 8),
    )
    _text(root / "training/label_2/000002.txt", KITTI_LINE.format("Car", 1, 1, 5, 5))
    return root


@pytest.fixture
def yolo(tmp_path) -> Path:
    """a.png 200x100 with one car (80, 30, 120, 70) and one truck; b.png has an empty label file."""
    root = tmp_path / "yolo"
    _image(root / "images/a.png", 200, 100)
    _image(root / "images/b.png", 200, 100)
    _text(root / "labels/a.txt", "0 0.5 0.5 0.2 0.4", "1 0.25 0.25 0.1 0.1")
    _text(root / "labels/b.txt", "")
    _text(root / "classes.txt", "car", "truck")
    return root


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2, difficult in objects
    )
    size = f"<size><width>{width}</width><height>{height}</height></size>"
    return f"<annotation><filename>{filename}</filename>{size}{body}</annotation>"


@pytest.fixture
def voc(tmp_path) -> Path:
    """a.jpg: car (1-based 11 21 51 61) and a difficult bus; size 0 in the XML, so read from the header."""
    root = tmp_path / "voc"
    _image(root / "JPEGImages/a.jpg", 80, 70)
    objects = [("car", 11, 21, 51, 61, 0), ("bus", 1, 1, 20, 20, 1)]
    _text(root / "Annotations/a.xml", _voc_xml("old folder/a.jpg", 0, 0, objects))
    return root


@pytest.fixture
def coco(tmp_path) -> Path:
    """Categories by id: 1 car, 3 truck; image 7 has a car, a crowd of cars and a truck; image 9 is empty."""
    root = tmp_path / "coco"
    _image(root / "images/x.png", 64, 48)
    _image(root / "images/y.png", 64, 48)
    content = {
        "images": [
            {"id": 9, "file_name": "y.png", "width": 64, "height": 48},
            {"id": 7, "file_name": "x.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 3, "name": "truck"}, {"id": 1, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 20], "iscrowd": 0, "area": 450.5},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [40, 10, 10, 10], "iscrowd": 0},
        ],
    }
    _text(root / "annotations.json", json.dumps(content))
    return root


def test_kitti_reads_boxes_ignore_regions_negatives_and_orphan_labels(kitti):
    dataset = read_dataset(kitti, "kitti")
    assert dataset.class_names == ["Car", "Van"]  # sorted, DontCare excluded
    first, second = dataset.records
    np.testing.assert_allclose(first.boxes, [[10, 5, 40, 30], [50.5, 10, 90, 45.25]])
    assert first.labels.tolist() == [1, 2]
    np.testing.assert_allclose(first.ignore, [[0, 0, 8, 8]])
    assert (first.width, first.height, first.image_id, second.image_id) == (100, 50, 0, 1)
    assert len(second.boxes) == 0 and second.labels.dtype == np.int64
    assert dataset.report.images_without_labels == 1
    assert dataset.report.labels_without_image == ["000002.txt"]


def test_kitti_class_map_and_selection_drop_other_classes(kitti):
    dataset = read_dataset(kitti, "kitti", classes=["car"], class_map={"Car": "car", "Van": "car"})
    assert dataset.class_names == ["car"] and dataset.records[0].labels.tolist() == [1, 1]
    dropped = read_dataset(kitti, "kitti", classes=["Van"])
    assert dropped.records[0].labels.tolist() == [1]
    assert (dropped.report.dropped_labels, dropped.report.images_with_dropped_labels) == (1, 1)


def test_kitti_malformed_line_names_file_line_and_field_count(kitti):
    _text(kitti / "training/label_2/000000.txt", KITTI_LINE.format("Car", 1, 1, 5, 5), "Car 0.00 0 0.00 1 2 3")
    with pytest.raises(DetectorError) as error:
        read_dataset(kitti, "kitti")
    assert str(error.value) == (
        f"{kitti / 'training/label_2/000000.txt'}:2: expected 15 fields "
        "(type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry), got 7"
    )


def test_kitti_non_numeric_field_is_named(kitti):
    _text(kitti / "training/label_2/000000.txt", KITTI_LINE.format("Car", "ten", 1, 5, 5))
    with pytest.raises(DetectorError, match=r"000000.txt:1: expected numbers .*got 'ten'"):
        read_dataset(kitti, "kitti")


def _kitti_object(name: str, truncated: float, occluded: int, box: tuple[float, float, float, float]) -> str:
    return f"{name} {truncated:.2f} {occluded} 0.00 {box[0]} {box[1]} {box[2]} {box[3]} 1.5 1.6 3.9 1.0 1.5 10.0 0.1"


# (truncated, occluded, box height) -> the lowest KITTI level that scores the car (devkit: min height 40/25/25 px,
# max occlusion 0/1/2, max truncation 0.15/0.30/0.50 for easy/moderate/hard)
KITTI_CARS = [
    ((0.00, 0, 40.0), "easy"),  # exactly the easy height
    ((0.15, 0, 50.0), "easy"),  # exactly the easy truncation
    ((0.00, 0, 39.5), "moderate"),  # too short for easy
    ((0.00, 1, 60.0), "moderate"),  # partly occluded
    ((0.30, 0, 60.0), "moderate"),  # exactly the moderate truncation
    ((0.00, 2, 25.0), "hard"),  # largely occluded, exactly the hard height
    ((0.50, 0, 60.0), "hard"),  # exactly the hard truncation
    ((0.00, 0, 24.5), None),  # too short for any level
    ((0.00, 3, 60.0), None),  # occlusion unknown
    ((0.51, 0, 60.0), None),  # truncated more than half
]


@pytest.mark.parametrize("difficulty", ["all", "easy", "moderate", "hard"])
def test_kitti_difficulty_turns_unscored_cars_into_ignore_regions(tmp_path, difficulty):
    root = tmp_path / "kitti"
    _image(root / "image_2/000000.png", 400, 100)
    lines = [_kitti_object("Car", t, o, (30.0 * i, 0.0, 30.0 * i + 20, h)) for i, ((t, o, h), _) in enumerate(KITTI_CARS)]
    _text(root / "label_2/000000.txt", *lines)
    record = read_dataset(root, "kitti", kitti_difficulty=difficulty).records[0]
    order = ["easy", "moderate", "hard"]
    scored = [difficulty == "all" or (lowest is not None and order.index(lowest) <= order.index(difficulty))
              for _, lowest in KITTI_CARS]
    assert record.boxes[:, 0].tolist() == [30.0 * i for i, keep in enumerate(scored) if keep]
    assert record.ignore[:, 0].tolist() == [30.0 * i for i, keep in enumerate(scored) if not keep]


def test_kitti_difficulty_is_checked(kitti, yolo):
    with pytest.raises(DetectorError, match="KITTI difficulty must be all, easy, moderate, hard; got 'medium'"):
        read_dataset(kitti, "kitti", kitti_difficulty="medium")
    with pytest.raises(DetectorError, match="data.kitti_difficulty is only used by the kitti format, not 'yolo'"):
        read_dataset(yolo, "yolo", kitti_difficulty="hard")


def test_yolo_converts_normalized_centres_with_the_image_size(yolo):
    dataset = read_dataset(yolo, "yolo")
    assert dataset.class_names == ["car", "truck"]
    a, b = dataset.records
    # car: cx 0.5*200=100, w 0.2*200=40, cy 0.5*100=50, h 0.4*100=40; truck: cx 50, cy 25, w 20, h 10
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [40, 20, 60, 30]], atol=1e-4)
    assert a.labels.tolist() == [1, 2] and len(b.boxes) == 0
    assert dataset.report.images_without_labels == 0  # an empty label file is a labelled negative


def test_yolo_names_from_yaml_dict_or_class_ids(yolo, tmp_path):
    (yolo / "classes.txt").unlink()
    assert read_dataset(yolo, "yolo").class_names == ["0", "1"]
    names = _text(tmp_path / "data.yaml", "names:", "  1: lorry", "  0: auto")
    assert read_dataset(yolo, "yolo", names_file=str(names)).class_names == ["auto", "lorry"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 abc 0.2 0.4", r"a.txt:2: expected numbers \(class cx cy w h\), got 'abc'"),
        ("0 320 240 64 48", r"a.txt:2: cx cy w h must be normalized to \[0, 1\] by the image size, got 320 240 64 48"),
        ("0 0.5 0.5 -0.2 0.4", r"a.txt:2: cx cy w h must be normalized"),
        ("0 0.5 0.5 0.2", r"a.txt:2: expected 5 fields \(class cx cy w h\), got 4"),
        ("1.5 0.5 0.5 0.2 0.2", r"a.txt:2: class id must be a non-negative integer, got '1.5'"),
        ("4 0.5 0.5 0.2 0.2", r"a.txt: class id 4 is out of range for 2 class names"),
    ],
)
def test_yolo_malformed_lines_name_file_and_line(yolo, line, message):
    _text(yolo / "labels/a.txt", "0 0.5 0.5 0.2 0.4", line)
    with pytest.raises(DetectorError, match=message):
        read_dataset(yolo, "yolo")


def test_box_outside_the_image_is_clipped_and_counted(yolo):
    # cx 0.95*200=190, w 0.2*200=40 -> x 170..210, clipped to 200; cy 0.05*100=5, h 20 -> y -5..15 -> 0..15
    _text(yolo / "labels/a.txt", "0 0.95 0.05 0.2 0.2")
    dataset = read_dataset(yolo, "yolo")
    np.testing.assert_allclose(dataset.records[0].boxes, [[170, 0, 200, 15]], atol=1e-4)
    assert (dataset.report.clipped_boxes, dataset.report.degenerate_boxes) == (1, 0)


def test_degenerate_boxes_are_dropped_and_counted(kitti):
    zero_width = KITTI_LINE.format("Car", 10, 5, 10, 30)
    right_of_image = KITTI_LINE.format("Car", 120, 5, 130, 30)  # clipped to x 100..100: zero width
    lines = [zero_width, right_of_image]
    _text(kitti / "training/label_2/000000.txt", KITTI_LINE.format("Car", 1, 1, 5, 5), *lines)
    dataset = read_dataset(kitti, "kitti")
    np.testing.assert_allclose(dataset.records[0].boxes, [[1, 1, 5, 5]])
    assert (dataset.report.degenerate_boxes, dataset.report.clipped_boxes) == (2, 0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"classes": ["Bus"]}, r"class 'Bus' in classes does not exist in the data; available: Car, Van"),
        (  # a misspelt class_map key shows through the class it should have produced
            {"class_map": {"car": "vehicle"}, "classes": ["vehicle"]},
            r"class 'vehicle' in classes does not exist in the data; available: Car, Van",
        ),
        ({"classes": ["Car", "Car"]}, r"classes lists a name more than once"),
        ({"classes": []}, r"classes is empty; pick at least one of: Car, Van"),
    ],
)
def test_unknown_or_repeated_class_names_are_errors(kitti, options, message):
    with pytest.raises(DetectorError, match=message):
        read_dataset(kitti, "kitti", **options)


def test_class_map_names_a_subset_lacks_are_unused(kitti):
    """Evaluating on a few KITTI frames without a Van must not fail on {Van: Car} (as ignore_classes)."""
    dataset = read_dataset(kitti, "kitti", class_map={"Van": "Car", "Tram": "Car"}, classes=["Car"])
    assert dataset.class_names == ["Car"] and sum(len(r.boxes) for r in dataset.records) > 0


def test_voc_reads_one_based_pixels_as_detectron2_marks_difficult_as_ignore_and_reads_size_from_header(voc):
    """1-based inclusive pixels 11..51 cover the continuous 0-based extent [10, 51)."""
    dataset = read_dataset(voc, "voc")
    assert dataset.class_names == ["bus", "car"]
    record = dataset.records[0]
    np.testing.assert_allclose(record.boxes, [[10, 20, 51, 61]])
    assert record.labels.tolist() == [2]
    np.testing.assert_allclose(record.ignore, [[0, 0, 20, 20]])
    assert (record.width, record.height) == (80, 70)
    np.testing.assert_allclose(read_dataset(voc, "voc", voc_coordinates="0-based").records[0].boxes, [[11, 21, 51, 61]])


def test_voc_with_a_box_at_zero_is_read_as_zero_based_with_a_warning(voc):
    _text(voc / "Annotations/a.xml", _voc_xml("a.jpg", 80, 70, [("car", 0, 5, 30, 40, 0)]))
    with pytest.warns(UserWarning, match=r"1 VOC boxes in .* start at 0 \(first: a.jpg\).*read as 0-based"):
        dataset = read_dataset(voc, "voc")
    np.testing.assert_allclose(dataset.records[0].boxes, [[0, 5, 30, 40]])
    assert dataset.report.clipped_boxes == 0
    _text(voc / "Annotations/a.xml", _voc_xml("a.jpg", 80, 70, [("car", 1, "inf", 30, 40, 0)]))
    with pytest.raises(DetectorError, match=r"a.xml: <object> 1 \('car'\) needs finite numeric <bndbox>"):
        read_dataset(voc, "voc")


def test_voc_matches_by_filename_when_the_xml_basename_differs(voc):
    (voc / "Annotations/a.xml").rename(voc / "Annotations/renamed.xml")
    _image(voc / "JPEGImages/b.jpg", 80, 70)
    _text(voc / "Annotations/orphan.xml", _voc_xml("gone.jpg", 80, 70, []))
    dataset = read_dataset(voc, "voc")
    assert [len(r.boxes) for r in dataset.records] == [1, 0]  # a.jpg found through <filename>
    assert dataset.report.images_without_labels == 1 and dataset.report.labels_without_image == ["orphan.xml"]


def test_voc_malformed_xml_names_the_file(voc):
    _text(voc / "Annotations/a.xml", "<annotation><object>")
    with pytest.raises(DetectorError, match=r"a.xml: malformed XML"):
        read_dataset(voc, "voc")


def test_coco_converts_xywh_orders_by_category_id_and_keeps_image_ids(coco):
    dataset = read_dataset(coco, "coco")
    assert dataset.class_names == ["car", "truck"]  # category ids 1, 3
    x, y = dataset.records
    assert (x.image_id, y.image_id) == (7, 9)
    np.testing.assert_allclose(x.boxes, [[10, 20, 40, 40], [40, 10, 50, 20]])
    assert x.labels.tolist() == [1, 2]
    np.testing.assert_allclose(x.ignore, [[0, 0, 5, 5]])  # iscrowd
    assert x.ignore_labels.tolist() == [1]  # a crowd of cars: an ignore region of class car, not of any class
    np.testing.assert_allclose(x.areas, [450.5, np.nan])  # the source's area where given (the truck has none)
    assert len(y.boxes) == 0 and y.areas is None


def test_coco_area_that_is_not_a_number_names_the_annotation(coco):
    content = json.loads((coco / "annotations.json").read_text())
    content["annotations"][0]["area"] = "abc"
    _text(coco / "annotations.json", json.dumps(content))
    with pytest.raises(DetectorError, match=r"annotations.json: annotations\[0\] has area 'abc'; expected a non-negative"):
        read_dataset(coco, "coco")


def test_coco_keeps_its_category_ids_for_the_saved_results(coco):
    assert read_dataset(coco, "coco").category_ids == [1, 3]  # car, truck
    assert read_dataset(coco, "coco", classes=["truck"]).category_ids == [3]
    assert read_dataset(coco, "coco", class_map={"truck": "car"}).category_ids is None  # two sources: 1..K


def test_coco_json_file_annotations_folder_and_missing_images(coco):
    assert len(read_dataset(coco / "annotations.json", "coco").records) == 2
    (coco / "annotations").mkdir()
    (coco / "annotations.json").rename(coco / "annotations/instances.json")
    (coco / "images/y.png").unlink()
    dataset = read_dataset(coco, "coco")
    assert [r.image_id for r in dataset.records] == [7]
    assert dataset.report.missing_images == ["y.png"] and dataset.report.labels_without_image == []
    assert dataset.report.summary() == ["1 images listed by the annotations are missing on disk and were skipped "
                                        "(first: y.png)"]


def test_coco_annotation_of_an_unlisted_image_is_dropped_and_counted(coco):
    content = json.loads((coco / "annotations.json").read_text())
    content["annotations"].append({"id": 8, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5]})
    (coco / "annotations.json").write_text(json.dumps(content))
    dataset = read_dataset(coco, "coco")
    assert sum(len(r.boxes) for r in dataset.records) == 2  # image 7's car and truck, as before
    assert dataset.report.orphan_annotations == ["8"]
    assert any("1 annotations refer to an image id the file does not list" in line for line in dataset.report.summary())


def test_coco_image_root_as_in_coco_itself(coco, tmp_path):
    """COCO's own layout: annotations/instances_train2017.json beside train2017/; or data.image_root anywhere."""
    root = tmp_path / "coco2017"
    (root / "annotations").mkdir(parents=True)
    (coco / "annotations.json").rename(root / "annotations/instances_train2017.json")
    (coco / "images").rename(root / "train2017")
    assert len(read_dataset(root / "annotations/instances_train2017.json", "coco").records) == 2
    (root / "annotations/instances_train2017.json").rename(root / "annotations/mine.json")
    elsewhere = tmp_path / "pictures"
    (root / "train2017").rename(elsewhere)
    assert len(read_dataset(root, "coco", image_root=str(elsewhere)).records) == 2
    with pytest.raises(DetectorError, match="no images of .*mine.json were found"):
        read_dataset(root, "coco")
    with pytest.raises(DetectorError, match="data.image_root .*nowhere is not a folder"):
        read_dataset(root, "coco", image_root=str(tmp_path / "nowhere"))
    config = load_config(None, ["data.format=coco", f"data.train_path={root}", f"data.image_root={elsewhere}",
                                "data.val_filter=^x", "model.class_names=[car]"])
    assert [r.image_path.name for r in build_split(config, "val").records] == ["x.png"]


BAD_BBOX_ANNOTATION = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2]}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"annotations.json: malformed JSON"),
        (json.dumps({"images": []}), r"annotations.json: expected a 'categories' list"),
        (json.dumps({"images": [{"id": 1}], "categories": []}), r"images\[0\] has no 'file_name'"),
        (
            json.dumps({"images": [], "categories": [], "annotations": [BAD_BBOX_ANNOTATION]}),
            r"annotation id 5 has bbox \[1, 2\], expected \[x, y, width, height\]",
        ),
        (json.dumps({"images": [{"id": "1", "file_name": "x.png"}], "categories": []}),
         r"images\[0\] has id '1'; expected an integer"),
        (json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": "abc"}], "categories": []}),
         r"images\[0\] has width 'abc'; expected a non-negative number of pixels"),
        (json.dumps({"images": [], "categories": [{"id": 1, "name": "car"}],
                     "annotations": [{"id": 5, "image_id": "7", "category_id": 1, "bbox": [1, 2, 3, 4]}]}),
         r"annotations\[0\] has image_id '7'; expected an integer"),
    ],
)
def test_coco_bad_json_names_the_file(coco, content, message):
    (coco / "annotations.json").write_text(content)
    with pytest.raises(DetectorError, match=message):
        read_dataset(coco, "coco")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_dataset_names_the_folder(tmp_path, fmt):
    layouts = {
        "coco": [("annotations.json", json.dumps({"images": [], "categories": []}))],
        "voc": [("JPEGImages/.keep", ""), ("Annotations/.keep", "")],
        "yolo": [("images/.keep", ""), ("labels/.keep", "")],
        "kitti": [("training/image_2/.keep", ""), ("training/label_2/.keep", "")],
    }
    for name, content in layouts[fmt]:
        _text(tmp_path / name, content)
    with pytest.raises(DetectorError, match=f"no images found in {tmp_path}"):
        read_dataset(tmp_path, fmt)


def test_wrong_format_missing_path_and_misplaced_names_file(kitti, tmp_path):
    with pytest.raises(DetectorError, match="unknown dataset format 'pascal'; expected one of: coco, voc, yolo, kitti"):
        read_dataset(kitti, "pascal")
    with pytest.raises(DetectorError, match="dataset path does not exist: .*nowhere"):
        read_dataset(tmp_path / "nowhere", "kitti")
    with pytest.raises(DetectorError, match="names_file is only used by the yolo format"):
        read_dataset(kitti, "kitti", names_file="names.txt")
    with pytest.raises(DetectorError, match="is not a YOLO dataset: expected the folders images/ and labels/"):
        read_dataset(kitti, "yolo")


def test_detect_format(kitti, yolo, voc, coco):
    assert [detect_format(p) for p in (kitti, yolo, voc, coco, coco / "annotations.json")] == [
        "kitti", "yolo", "voc", "coco", "coco",
    ]
    (yolo / "labels_xml").mkdir()
    (yolo / "labels_xml/a.xml").write_text("<annotation/>")
    with pytest.raises(DetectorError, match=r"matches several formats \(voc, yolo\)"):
        detect_format(yolo)


def test_kitti_tiny_acceptance_numbers(shared_data):
    dataset = read_dataset(shared_data / "kitti_tiny", "kitti")
    assert len(dataset.records) == 75
    labels = np.concatenate([r.labels for r in dataset.records])
    counts = {name: int((labels == i + 1).sum()) for i, name in enumerate(dataset.class_names)}
    assert (counts["Car"], counts["Van"], counts["Truck"]) == (209, 25, 10)
    assert sum(len(r.ignore) for r in dataset.records) == 188
    assert "DontCare" not in dataset.class_names


def test_kitti_tiny_hard_difficulty_keeps_the_cars_the_benchmark_scores(shared_data):
    """Counted from the label files (height >= 25 px, occluded <= 2, truncated <= 0.5): 50 of the 62 validation
    cars (000050-000074) and 107 of the 147 training cars."""
    dataset = read_dataset(shared_data / "kitti_tiny", "kitti", classes=["Car"], kitti_difficulty="hard")
    val = [r for r in dataset.records if int(r.image_path.stem) >= 50]
    train = [r for r in dataset.records if int(r.image_path.stem) < 50]
    assert (sum(len(r.boxes) for r in val), sum(len(r.boxes) for r in train)) == (50, 107)


def test_kitti_cars_config_scores_validation_at_hard_and_trains_on_every_car(shared_data):
    """configs/kitti_cars.yaml: the hard level applies to validation and test only (53 of val's 62 cars scored,
    the other 9 ignore regions; 31 of test's 38); training keeps all 109 of its cars as objects."""
    config = load_config(str(CONFIGS / "kitti_cars.yaml"), [f"data.train_path={shared_data / 'kitti_tiny'}"])
    train, val = build_datasets(config)
    test = build_split(config, "test")
    assert (len(train.records), len(val.records), len(test.records)) == (41, 16, 15)
    assert [sum(len(r.boxes) for r in d.records) for d in (train, val, test)] == [109, 53, 31]
    everything = read_dataset(shared_data / "kitti_tiny", "kitti", classes=["Car"], ignore_classes=config.data.ignore_classes)
    by_name = {r.image_path.name: r for r in everything.records}
    assert sum(len(by_name[r.image_path.name].boxes) for r in val.records) == 62
    assert sum(len(r.ignore) for r in val.records) == sum(len(by_name[r.image_path.name].ignore) for r in val.records) + 9
    assert sum(len(r.ignore) for r in test.records) == sum(len(by_name[r.image_path.name].ignore) for r in test.records) + 7


def test_drone_cars_voc_is_zero_based_and_its_yolo_labels_are_one_pixel_up_left(shared_data):
    """drone_cars' XML has 435 boxes starting at 0 on x or y: read as 0-based, no box leaves the image; its YOLO
    labels are the same boxes minus 1 on all four sides (which the YOLO reader clips at 0)."""
    root = shared_data / "drone_cars"
    from_yolo = read_dataset(root, "yolo", class_map={"0": "car"})
    with pytest.warns(UserWarning, match="435 VOC boxes .* start at 0"):
        zero_based = read_dataset(root, "voc")
    assert zero_based.report.clipped_boxes == 0 and from_yolo.report.clipped_boxes == 435
    from_voc = read_dataset(root, "voc", voc_coordinates="0-based")
    for record in from_voc.records:
        record.boxes = np.maximum(record.boxes - 1, 0)
    assert from_yolo.class_names == from_voc.class_names == ["car"]
    for dataset in (from_yolo, from_voc):
        assert len(dataset.records) == 1055 and sum(len(r.boxes) for r in dataset.records) == 4828
    voc_by_name = {r.image_path.name: r for r in from_voc.records}
    assert set(voc_by_name) == {r.image_path.name for r in from_yolo.records}
    for record in from_yolo.records:
        other = voc_by_name[record.image_path.name]
        np.testing.assert_allclose(record.boxes, other.boxes, atol=1e-3, err_msg=record.image_path.name)
        assert record.labels.tolist() == other.labels.tolist()


def _yolo_config(root: Path, *overrides: str):
    return load_config(None, ["data.format=yolo", f"data.train_path={root}", "model.class_names=[car]", *overrides])


def test_a_config_without_a_validation_split_is_refused(yolo):
    """An empty data.val_filter with no separate data.val_path used to validate on the training images."""
    for val_path in ("", str(yolo)):
        with pytest.raises(DetectorError, match="the config has no validation split: data.val_filter is empty"):
            build_datasets(_yolo_config(yolo, f"data.val_path={val_path}"))
    train, val = build_datasets(_yolo_config(yolo, "data.val_filter=^b"))
    assert [r.image_path.name for r in train.records] == ["a.png"] and [r.image_path.name for r in val.records] == ["b.png"]


def test_ultralytics_split_folders_and_filters_on_relative_paths(tmp_path):
    """images/train + images/val with data.yaml's train: / val: / test: keys, as Ultralytics lays datasets out."""
    root = tmp_path / "ultra"
    for split, names in (("train", ("a", "b")), ("val", ("c",)), ("test", ("d",))):
        for name in names:
            _image(root / f"images/{split}/{name}.png", 64, 48)
            _text(root / f"labels/{split}/{name}.txt", "0 0.5 0.5 0.2 0.2")
    _text(root / "data.yaml", "path: .", "train: images/train", "val: images/val", "test: [images/test]",
          "names: {0: car}")
    config = _yolo_config(root, "data.val_path=")
    names = {split: sorted(r.image_path.name for r in build_split(config, split).records) for split in ("train", "val", "test")}
    assert names == {"train": ["a.png", "b.png"], "val": ["c.png"], "test": ["d.png"]}
    # a filter matches the path relative to the dataset folder as well as the file name
    config = _yolo_config(root, "data.val_filter=^images/(val|test)/", "data.train_filter=^images/train/")
    assert sorted(r.image_path.name for r in build_split(config, "val").records) == ["c.png", "d.png"]
    _text(root / "data.yaml", "train: images/train", "val: lists/val.txt", "names: [car]")
    with pytest.raises(DetectorError, match=r"data.yaml: 'val: lists/val.txt' is an image list"):
        build_split(_yolo_config(root, "data.val_path="), "val")
    _text(root / "data.yaml", "train: images", "val: images", "names: [car]")  # one folder: no validation split
    with pytest.raises(DetectorError, match="the config has no validation split"):
        build_split(_yolo_config(root, "data.val_path="), "val")
