"""Test-time augmentation: weighted box fusion by hand, views mapped back to original pixels, one view = plain
prediction, and evaluation / the API with eval.tta on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_run_overrides
from detector.api import Detector
from detector.config import load_config
from detector.data.build import build_datasets
from detector.data.dataset import image_to_tensor
from detector.data.transforms import build_transform
from detector.detector import build_detector
from detector.engine import evaluate
from detector.structures import Detections, DetectorError
from detector.tta import TestTimeAugmentation, build_tta, flip_boxes, rot90_boxes, weighted_box_fusion

SMALL_MODEL = ["model.weights=none", "model.head_dim=64", "model.rpn_post_nms_top_n_test=32", "data.max_size=160"]


def test_wbf_two_views_by_hand() -> None:
    # IoU([0,0,10,10], [2,0,12,10]) = 80 / 120 = 0.67 >= 0.55: one cluster, coordinates weighted by score
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    fused, scores, labels = weighted_box_fusion(boxes, torch.tensor([0.9, 0.6]), torch.tensor([1, 1]), num_views=2)
    # x1 = (0*0.9 + 2*0.6) / 1.5 = 0.8, x2 = (10*0.9 + 12*0.6) / 1.5 = 10.8; score = (0.9 + 0.6) / 2 views
    torch.testing.assert_close(fused, torch.tensor([[0.8, 0.0, 10.8, 10.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.75]))
    assert labels.tolist() == [1] and fused.dtype == torch.float32


def test_wbf_keeps_classes_apart_and_discounts_boxes_few_views_found() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    fused, scores, labels = weighted_box_fusion(boxes, torch.tensor([0.8, 0.6, 0.9]), torch.tensor([1, 2, 1]),
                                                num_views=4)
    # nothing overlaps within a class: three clusters of one box, each found by one view of four
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.6]) / 4)
    assert labels.tolist() == [1, 1, 2]
    torch.testing.assert_close(fused, boxes[[2, 0, 1]])


def test_wbf_below_the_iou_threshold_does_not_fuse() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])  # IoU 50 / 150 = 0.33
    fused, scores, _ = weighted_box_fusion(boxes, torch.tensor([0.9, 0.6]), torch.tensor([1, 1]), 2, iou=0.55)
    assert len(fused) == 2
    fused, scores, _ = weighted_box_fusion(boxes, torch.tensor([0.9, 0.6]), torch.tensor([1, 1]), 2, iou=0.3)
    torch.testing.assert_close(fused, torch.tensor([[2.0, 0.0, 12.0, 10.0]]))  # (5*0.6) / 1.5 = 2
    torch.testing.assert_close(scores, torch.tensor([0.75]))


def test_nms_fusion_keeps_the_best_of_a_cluster_and_caps() -> None:
    tta = TestTimeAugmentation([32], hflip=False, fusion="nms", iou=0.55, max_det=2)
    views = [Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 0.0, 50.0, 10.0]]), torch.tensor([0.6, 0.3]),
                        torch.tensor([1, 1])),
             Detections(torch.tensor([[1.0, 0.0, 11.0, 10.0], [80.0, 0.0, 90.0, 10.0]]), torch.tensor([0.9, 0.5]),
                        torch.tensor([1, 1]))]
    fused = tta.fuse(views)
    # IoU 90 / 110 = 0.82 -> the 0.9 box wins; 0.5 and 0.3 are apart; the cap keeps the best two
    torch.testing.assert_close(fused.scores, torch.tensor([0.9, 0.5]))
    torch.testing.assert_close(fused.boxes, torch.tensor([[1.0, 0.0, 11.0, 10.0], [80.0, 0.0, 90.0, 10.0]]))


def test_flip_boxes_by_hand_and_twice_is_identity() -> None:
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    torch.testing.assert_close(flip_boxes(boxes, 100), torch.tensor([[70.0, 5.0, 90.0, 25.0]]))
    torch.testing.assert_close(flip_boxes(flip_boxes(boxes, 100), 100), boxes)


def test_rot90_boxes_by_hand_and_against_torch_rot90() -> None:
    # a quarter turn counter-clockwise of a 100 x 200 (H x W) image: (x, y) -> (y, 200 - x), the image 200 x 100
    boxes = torch.tensor([[20.0, 30.0, 60.0, 70.0]])
    torch.testing.assert_close(rot90_boxes(boxes, 100, 200, 1), torch.tensor([[30.0, 140.0, 70.0, 180.0]]))
    torch.testing.assert_close(rot90_boxes(boxes, 100, 200, 2), torch.tensor([[140.0, 30.0, 180.0, 70.0]]))
    torch.testing.assert_close(rot90_boxes(boxes, 100, 200, 0), boxes)
    mask = torch.zeros(100, 200)
    mask[30:70, 20:60] = 1  # the box's pixels
    for turns in range(4):
        turned = torch.rot90(mask, turns, dims=(-2, -1))
        ys, xs = torch.nonzero(turned, as_tuple=True)
        expected = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
        torch.testing.assert_close(rot90_boxes(boxes, 100, 200, turns), expected)
        height, width = turned.shape
        torch.testing.assert_close(rot90_boxes(expected, height, width, 4 - turns), boxes)  # and back


class BrightRegionModel:
    """A stand-in for FastRCNN.predict: one detection on the bright pixels of each input, score 0.8, mapped to
    original pixels as the real model does."""

    def predict(self, images, original_sizes, proposals=None):
        detections = []
        for image, (height, width) in zip(images, original_sizes):
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            scale = torch.tensor([width / image.shape[-1], height / image.shape[-2]] * 2)
            detections.append(Detections(box[None] * scale, torch.tensor([0.8]), torch.tensor([1])))
        return detections


class RecordingTTA(TestTimeAugmentation):
    """Keeps the views it fuses."""

    def fuse(self, views: list[Detections]) -> Detections:
        self.views = views
        return super().fuse(views)


def test_every_view_comes_back_in_original_pixels() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[30:70, 20:60] = 255  # box [20, 30, 60, 70], off-centre so a wrong flip would show
    tta = RecordingTTA([100, 200, 300], hflip=True)  # half, original and 1.5x, each also mirrored
    (fused,) = tta.predict_arrays(BrightRegionModel(), [image])
    assert len(tta.views) == 6
    for view in tta.views:  # interpolation blurs the edges of resized views by under a pixel
        torch.testing.assert_close(view.boxes, torch.tensor([[20.0, 30.0, 60.0, 70.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(fused.boxes, torch.tensor([[20.0, 30.0, 60.0, 70.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(fused.scores, torch.tensor([0.8]))  # found by all 6 views


def test_turned_views_come_back_in_original_pixels() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[30:70, 20:60] = 255  # off-centre in both axes, on a non-square image: a wrong turn or size would show
    tta = RecordingTTA([100, 200], hflip=True, turns=[0, 1, 2, 3])
    assert tta.num_views == 16
    (fused,) = tta.predict_arrays(BrightRegionModel(), [image])
    assert len(tta.views) == 16
    for view in tta.views:
        torch.testing.assert_close(view.boxes, torch.tensor([[20.0, 30.0, 60.0, 70.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(fused.scores, torch.tensor([0.8]))
    with pytest.raises(ValueError, match="turns"):
        TestTimeAugmentation([100], turns=[4])


class ProposalEchoModel:
    """A stand-in for FastRCNN.predict that detects exactly the proposals it is given, mapped to original pixels."""

    def predict(self, images, original_sizes, proposals):
        detections = []
        for image, (height, width), boxes in zip(images, original_sizes, proposals):
            scale = torch.tensor([width / image.shape[-1], height / image.shape[-2]] * 2)
            detections.append(Detections(boxes * scale, torch.full((len(boxes),), 0.5),
                                         torch.ones(len(boxes), dtype=torch.long)))
        return detections


def test_proposals_are_mirrored_and_turned_with_their_view() -> None:
    image = torch.zeros(3, 50, 100)  # a view at half the original 100 x 200 image
    proposals = torch.tensor([[10.0, 15.0, 30.0, 35.0]])  # view pixels: [20, 30, 60, 70] in the original
    tta = RecordingTTA([100], hflip=True, turns=[0, 1, 3])
    tta.predict(ProposalEchoModel(), [[image]], [(100, 200)], [[proposals]])
    assert len(tta.views) == 6
    for view in tta.views:
        torch.testing.assert_close(view.boxes, torch.tensor([[20.0, 30.0, 60.0, 70.0]]))


@pytest.fixture(scope="module")
def small_model():
    config = load_config(None, SMALL_MODEL)
    torch.manual_seed(0)
    return build_detector(config, pretrained=False).eval(), config


@pytest.fixture
def images() -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    first = generator.integers(0, 80, (120, 160, 3), dtype=np.uint8)
    first[30:80, 40:110] = 230
    second = generator.integers(0, 255, (90, 150, 3), dtype=np.uint8)
    return [first, second]


def _rows(detections: Detections) -> list[list[float]]:
    """Detections as sorted rows (score, label, box): the same set in any order of equal scores."""
    rows = torch.cat([detections.scores[:, None], detections.labels[:, None].float(), detections.boxes], dim=1)
    return sorted(rows.tolist())


@pytest.mark.parametrize("fusion", ["wbf", "nms"])
def test_one_view_gives_exactly_the_plain_prediction(small_model, images, fusion) -> None:
    model, config = small_model
    transform = build_transform(None, 160, train=False)
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    plain = model.predict([image_to_tensor(transform(image, *empty).image) for image in images],
                          [image.shape[:2] for image in images])
    tta = TestTimeAugmentation([160], hflip=False, fusion=fusion, max_det=config.model.detections_per_image)
    fused = tta.predict_arrays(model, images)
    assert len(plain[0]) > 0
    for expected, actual in zip(plain, fused):
        assert _rows(actual) == _rows(expected)


def test_sizes_and_flips_give_sorted_boxes_inside_the_image(small_model, images) -> None:
    model, config = small_model
    tta = TestTimeAugmentation([128, 200], hflip=True, max_det=config.model.detections_per_image)
    assert tta.num_views == 4
    for image, found in zip(images, tta.predict_arrays(model, images)):
        height, width = image.shape[:2]
        assert 0 < len(found) <= config.model.detections_per_image
        assert (found.boxes[:, 0] >= 0).all() and (found.boxes[:, 2] <= width).all()
        assert (found.boxes[:, 1] >= 0).all() and (found.boxes[:, 3] <= height).all()
        assert (found.boxes[:, 2:] > found.boxes[:, :2]).all()
        assert torch.equal(found.scores, found.scores.sort(descending=True).values)
        assert (found.scores <= 1).all() and found.labels.min() >= 1


def test_config_defaults_and_one_sentence_errors() -> None:
    assert build_tta(load_config(None, ["data.max_size=320"])).sizes == (320, 400)  # max_size and 1.25x it
    tta = build_tta(load_config(None, ["eval.tta_sizes=[256,256,512]", "eval.tta_hflip=false"]))
    assert tta.sizes == (256, 512) and tta.num_views == 2 and tta.turns == (0,)
    assert build_tta(load_config(None, ["eval.tta_sizes=[256]", "eval.tta_turns=[0,1]"])).num_views == 4
    assert build_tta(load_config(None, ["eval.tta_turns=[]"])).turns == (0,)
    with pytest.raises(DetectorError, match="'eval.tta_turns'"):  # refused when the config is read
        load_config(None, ["eval.tta_turns=[0,4]"])
    with pytest.raises(DetectorError, match="'eval.tta_sizes'"):
        build_tta(load_config(None, ["eval.tta_sizes=[0]"]))
    with pytest.raises(DetectorError, match="'eval.tta_iou'"):
        build_tta(load_config(None, ["eval.tta_iou=1.5"]))


def test_api_predict_with_tta(small_model, images) -> None:
    model, config = small_model
    config.eval.tta_sizes, config.eval.tta_hflip = [160], False
    detector = Detector(model, config, runtime="torch")
    plain, one_view = detector.predict(images[0]), detector.predict(images[0], tta=True)
    assert _rows(one_view) == _rows(plain)
    config.eval.tta, config.eval.tta_sizes, config.eval.tta_hflip = True, [128, 200], True
    detector = Detector(model, config, runtime="torch")  # eval.tta on: TTA unless tta=False
    tta = TestTimeAugmentation([128, 200], max_det=config.model.detections_per_image)
    expected = tta.predict_arrays(detector.model, images)  # its own copy: channels_last rounds differently
    for actual, wanted in zip(detector.predict(images), expected):
        assert _rows(actual) == _rows(wanted)


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """A random-weight model, the validation split of tiny synthetic scenes, and configs for them."""
    root = tmp_path_factory.mktemp("tta_eval")
    config = load_config(None, tiny_run_overrides(root))  # data.max_size 160
    _, val = build_datasets(config)
    torch.manual_seed(0)
    make_config = lambda **extra: load_config(None, tiny_run_overrides(root, **extra))  # noqa: E731
    return build_detector(config, pretrained=False), val, make_config


def _metrics(output) -> dict[str, float]:
    return {k: v for k, v in output.result.metrics.items() if isinstance(v, float) and not math.isnan(v)}


def test_evaluate_with_one_view_matches_plain_evaluation(tiny_eval) -> None:
    model, val, make_config = tiny_eval
    plain = evaluate(model, val, make_config(), torch.device("cpu"), progress=False)
    one_view = make_config(**{"eval.tta": "true", "eval.tta_sizes": "[160]", "eval.tta_hflip": "false"})
    output = evaluate(model, val, one_view, torch.device("cpu"), progress=False)
    assert len(plain.evaluator.results()) > 0
    assert output.evaluator.results() == plain.evaluator.results()  # the same detections, in COCO json
    assert _metrics(output) == _metrics(plain) and "AP50" in _metrics(output)
    assert output.losses.keys() == plain.losses.keys()


def test_evaluate_with_tta_end_to_end(tiny_eval) -> None:
    model, val, make_config = tiny_eval
    config = make_config(**{"eval.tta": "true"})  # eval.tta_sizes empty: 160 and 200, each also mirrored
    output = evaluate(model, val, config, torch.device("cpu"), progress=False)
    assert 0.0 <= output.result.metrics["AP50"] <= 1.0
    assert "val_roi_cls" in output.losses  # from the data.max_size view
    config.eval.tta_sizes = [128]
    assert evaluate(model, val, config, torch.device("cpu"), progress=False).losses == {}
