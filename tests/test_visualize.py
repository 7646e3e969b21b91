"""Drawing, grids, atomic image writes and the dataset preview."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detector.structures import Dataset, DetectorError, ImageRecord
from detector.visualize import IGNORE_COLOR, class_color, draw_detections, image_grid, save_image, show_dataset


def test_boxes_are_drawn_on_their_pixels_in_the_class_colour() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(
        image, torch.tensor([[20.0, 40.0, 60.0, 80.0]]), torch.tensor([2]), ["car", "van"], thickness=1
    )
    assert image.max() == 0  # the input is left alone
    assert tuple(out[60, 20]) == class_color(2) and tuple(out[60, 59]) == class_color(2)  # left and right edge
    assert tuple(out[40, 40]) == class_color(2) and tuple(out[79, 40]) == class_color(2)  # top and bottom edge
    assert out[60, 40].max() == 0 and out[60, 61].max() == 0  # inside and outside stay untouched
    assert (out[25:40, 20:60] != 0).any()  # the label sits above the box


def test_classes_get_distinct_colours_and_scores_are_written() -> None:
    assert len({class_color(label) for label in range(1, 11)}) == 10
    assert IGNORE_COLOR not in {class_color(label) for label in range(1, 20)}
    image = np.zeros((100, 200, 3), np.uint8)
    plain = draw_detections(image, [[10, 50, 190, 90]], [1], ["car"])
    scored = draw_detections(image, [[10, 50, 190, 90]], [1], ["car"], scores=[0.87])
    assert not np.array_equal(plain, scored)  # " 0.87" adds text after the name


def test_ignore_regions_are_hatched_grey() -> None:
    out = draw_detections(np.zeros((60, 60, 3), np.uint8), np.zeros((0, 4)), [], [], ignore=[[10, 10, 50, 50]])
    grey = np.all(out == IGNORE_COLOR, axis=2)
    assert grey[15:45, 15:45].mean() > 0.05  # hatching inside, not just the outline
    assert not grey[:9].any() and not grey[51:].any()  # nothing outside the region


def test_image_grid_letterboxes_each_image_into_its_cell() -> None:
    wide = np.full((10, 20, 3), 255, np.uint8)
    grid = image_grid([wide, wide, np.zeros((5, 5), np.uint8)], cols=2, cell_size=40)
    assert grid.shape == (80, 80, 3)
    # a 20x10 image scaled to 40x20, centred vertically in the first 40x40 cell
    assert grid[10:30, 0:40].min() == 255 and grid[0:10, 0:40].max() < 255 and grid[30:40, 0:40].max() < 255
    with pytest.raises(DetectorError):
        image_grid([], cols=2, cell_size=40)


def test_save_image_creates_folders_and_leaves_no_temp_files(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = save_image(tmp_path / "a" / "b" / "x.png", image)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image)  # lossless, RGB order
    save_image(path, image[::-1])  # replaced, not refused
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image[::-1])
    with pytest.raises(DetectorError, match="x.txt"):
        save_image(tmp_path / "x.txt", image)


def test_show_dataset_writes_a_png_grid(tmp_path: Path) -> None:
    records = []
    for index in range(5):
        path = tmp_path / f"img{index}.jpg"
        assert cv2.imwrite(str(path), np.full((60, 90, 3), 40 * index, np.uint8))
        records.append(ImageRecord(path, 90, 60, [[10, 10, 50, 40]], [1], index, ignore=[[60, 0, 90, 30]]))
    augment = SimpleNamespace(
        enabled=True, hflip=0.5, rotate90=0.0, affine=1.0, scale=[0.9, 1.1], translate=0.1, rotate=10.0,
        brightness_contrast=0.3, hue_saturation=0.2, blur=0.1, noise=0.1, crop=0.3, crop_scale=[0.5, 1.0],
        min_visibility=0.3,
    )  # fmt: skip
    out = show_dataset(Dataset(["car"], records), tmp_path / "show" / "grid.png", augment, max_size=64, num=4, seed=1)
    grid = cv2.imread(str(out))
    assert out == tmp_path / "show" / "grid.png" and grid.shape == (128, 128, 3)  # 4 images: 2x2 cells of 64
    again = show_dataset(Dataset(["car"], records), tmp_path / "again.png", augment, max_size=64, num=4, seed=1)
    np.testing.assert_array_equal(cv2.imread(str(again)), grid)  # same seed, same picture
    with pytest.raises(DetectorError):
        show_dataset(Dataset(["car"], []), tmp_path / "none.png", None, max_size=64)
