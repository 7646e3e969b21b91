"""Smoke test of the benchmark's peer (scripts/peer.py): torchvision's FasterRCNN on our backbone."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import SCRIPTS, script_module, tiny_run_overrides
from detector.config import apply_overrides, load_config
from detector.data.build import build_datasets
from detector.data.repeat import repeat_factors
from detector.engine import training_dataset, training_sampler
from detector.structures import Detections, DetectorError


CONFIGS = SCRIPTS.parent / "configs"


@pytest.fixture(scope="module")
def peer():
    with script_module("peer") as module:
        yield module


@pytest.fixture(scope="module")
def config():
    # the tiny images are 64x96, so max_size 96 is the size our transforms would already have produced
    return load_config(None, ["model.class_names=[car]", "data.max_size=96", "model.weights=none",
                              "model.anchor_sizes=[16, 32]", "model.anchor_ratios=[0.5, 1.0, 2.0]"])


@pytest.fixture(scope="module")
def model(peer, config):
    torch.manual_seed(0)
    return peer.peer_from_config(config)


def test_peer_matches_the_config(model):
    # background + 1 foreground class; 2 sizes x 3 ratios anchors on the single stride-16 level
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.rpn.anchor_generator.num_anchors_per_location() == [6]
    assert model.backbone.out_channels == 112
    assert list(model.transform.image_mean) == [0.5, 0.5, 0.5]  # tf_efficientnet_lite0's statistics


def test_transform_does_not_resize_inputs_of_max_size(peer, model):
    model.eval()
    assert peer.transformed_size(model, (64, 96)) == (64, 96)
    # whereas a peer built for 200 px upsamples the same image by min(200 / 64, 200 / 96) = 2.083
    other = peer.build_peer(1, 200, weights="none")
    assert peer.transformed_size(other.eval(), (64, 96)) == (133, 200)


def test_the_trained_peer_sees_our_training_sizes(peer, config):
    """With augment.sizes below data.max_size (the demo trains at 320, infers at 480) the peer trains on the images
    as our transform sized them (torchvision's transform would upsample them to 96), and infers at max_size."""
    model = peer.model_to_train(apply_overrides(copy.deepcopy(config), ["augment.sizes=[48]"]), torch.device("cpu"))
    assert peer.transformed_size(model.train(), (32, 48)) == (32, 48)
    assert peer.transformed_size(model.eval(), (32, 48)) == (64, 96)  # eval: resized to max_size 96
    assert peer.transformed_size(model.eval(), (64, 96)) == (64, 96)


def test_one_training_step_then_predict(peer, model, config, tiny_images, tiny_targets):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = model(list(tiny_images), peer.to_torchvision_targets(tiny_targets, "cpu"))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    assert losses["loss_box_reg"] > 0  # the first image has a box, so sampled positives give a box loss
    head_before = model.roi_heads.box_predictor.bbox_pred.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(head_before, model.roi_heads.box_predictor.bbox_pred.weight)

    model.eval()
    model.roi_heads.score_thresh = 0.0  # one step in, scores are low: keep every box to test the conversion
    raw = model([tiny_images[0]])[0]
    detections = peer.predict_peer(model, [tiny_images[0]], [(128, 192)], ["car"])[0]
    assert isinstance(detections, Detections) and len(detections) == len(raw["boxes"]) > 0
    # inputs were 64x96, originals 128x192: every coordinate doubles, and stays inside the original image
    torch.testing.assert_close(detections.boxes, raw["boxes"] * 2)
    boxes = detections.boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 128).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert set(detections.labels.tolist()) == {1} and detections.names[0] == "car"


@pytest.fixture(scope="module")
def benchmark(peer):
    with script_module("benchmark") as module:
        yield module


def test_step_time_leaves_out_epoch_starts_and_warmup(benchmark):
    # epoch firsts (9.0, 8.0) hold loader start-up; of the rest [5, 4, 3, 2, 1, 1, 1] the first 2 are warm-up
    per_epoch = [[9.0, 5.0, 4.0, 3.0, 2.0], [8.0, 1.0, 1.0, 1.0]]
    assert benchmark.mean_step_seconds(per_epoch, warmup=2) == (8.0 / 5, 5)
    assert benchmark.mean_step_seconds([[7.0]], warmup=2) == (None, 0)


def test_row_selection_and_ratio_table(benchmark):
    names = [row.name for row in benchmark.select_rows("ours,peer,weights")]
    assert names == ["ours", "peer", "weights=imagenet", "weights=none"]
    # 6 ROI pooling + 2 proposals + 2 + 2 + 2, issue 11: 8 labels + 1 cascade + 1 sampling + 1 mosaic + 5 box losses
    # + 2 heads + 2 backbones + 3 input sizes + 1 tta, issue 15: 2
    assert len(benchmark.select_rows("ablations")) == 40
    assert [r.overrides for r in benchmark.select_rows("mosaic")] == [("augment.mosaic=0.5",)]
    assert [r.overrides for r in benchmark.select_rows("weather")] == [
        ("augment.weather=0.5",), ("augment.weather=0.25", "augment.weather_max_severity=3")]
    assert [r.name for r in benchmark.select_rows("labels")] == [
        "rotate_method=rounded", "rotate_method=ellipse", "rotate_method=largest_box", "cut_objects=ignore",
        "cut_objects=drop", "anchors=32-256 x 0.33-3", "rotate90=1.0", "anchors +140 px +ratio 4.5"]
    assert [r.overrides for r in benchmark.select_rows("sampling")] == [
        ("train.repeat_threshold=0.2", "train.repeat_long_side=200")]
    seeded = benchmark.seed_rows(benchmark.select_rows("ours,peer,tta"), [0, 1])
    assert [r.name for r in seeded] == ["ours", "ours seed=1", "peer", "peer seed=1", "tta=flip+1.25x wbf"]
    assert seeded[1].overrides == ("train.seed=1",) and seeded[4].eval_overrides == ("eval.tta=true",)
    with pytest.raises(benchmark.DetectorError, match="--rows"):
        benchmark.select_rows("ours,fpn")
    rows = [{"name": "ours", "AP": 0.3, "train_s_per_iter": 1.0}, {"name": "peer", "AP": 0.2, "train_s_per_iter": 2.0}]
    ratio = benchmark.format_table(rows).splitlines()[-1].split(" | ")
    assert ratio[1] == "1.50" and ratio[7] == "0.50" and ratio[2] == "n/a"


def test_seed_summary_gives_mean_and_spread(benchmark):
    rows = [{"name": "ours", "AP": 0.70, "AP50": 0.9, "AP75": 0.8}, {"name": "ours seed=1", "AP": 0.74, "AP50": 0.9,
                                                                     "AP75": 0.84}, {"name": "peer", "AP": 0.6}]
    (line,) = benchmark.seed_summary(rows)
    # mean 0.72, sample standard deviation sqrt(2 * 0.02^2 / 1) = 0.028
    assert line.startswith("- ours, 2 seeds: AP 0.720 ± 0.028 (0.700-0.740)")


def test_results_chart_is_written_when_a_row_has_ap(benchmark, tmp_path):
    rows = [{"name": "ours", "AP": 0.6, "AP50": 0.9}, {"name": "frozen_bn=true", "AP": 0.6, "AP50": 0.9,
                                                       "note": "same config as ours"},
            {"name": "weights=none", "AP": 0.1, "AP50": None}]
    path = benchmark.plot_rows(rows, tmp_path / "results.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert benchmark.plot_rows([{"name": "peer", "note": "skipped"}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_like_for_like_peer_infers_as_ours_with_the_same_boxes(peer, config, tiny_images):
    """Same proposal count and detections cap as ours, backbone in ONNX Runtime: with the proposal counts
    set equal on both, the boxes match the PyTorch peer's up to float rounding."""
    import copy

    torch.manual_seed(0)
    shipped = peer.peer_from_config(config).eval()
    shipped.roi_heads.score_thresh = 0.0
    same = peer.like_for_like(copy.deepcopy(shipped), config, threads=1)
    assert same.rpn._post_nms_top_n["testing"] == config.model.rpn_post_nms_top_n_test == 300
    assert same.rpn._pre_nms_top_n["testing"] == config.model.rpn_pre_nms_top_n_test
    assert same.roi_heads.detections_per_img == config.model.detections_per_image
    assert type(same.backbone.body).__name__ == "OnnxBackbone"
    shipped.rpn._pre_nms_top_n, shipped.rpn._post_nms_top_n = same.rpn._pre_nms_top_n, same.rpn._post_nms_top_n
    shipped.roi_heads.score_thresh = same.roi_heads.score_thresh
    with torch.no_grad():
        expected, got = shipped([tiny_images[0]])[0], same([tiny_images[0]])[0]
    assert len(got["boxes"]) == len(expected["boxes"])
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-2, rtol=1e-3)


def test_minutes_to_reach_interpolates_the_curve(benchmark):
    curve = [[5.0, 0.40], [10.0, 0.60], [15.0, 0.70]]
    assert benchmark.minutes_to_reach(curve, 0.50) == 7.5  # halfway between 5 (0.40) and 10 (0.60)
    assert benchmark.minutes_to_reach(curve, 0.20) == 2.5  # from (0 min, AP 0)
    assert benchmark.minutes_to_reach(curve, 0.75) is None
    rows = [{"name": "ours", "curve": curve}, {"name": "peer", "curve": [[20.0, 0.5], [45.0, 0.65]]}]
    summary = benchmark.curve_summary(rows)
    assert summary[2] == ("- ours, against the final validation AP of peer (0.650 after 45.0 min): reaches it "
                          "after 12.5 minutes of training.")
    # each seed of ours against the peer of its seed, or the peer's first seed when that one did not run
    rows += [{"name": "ours seed=1", "curve": [[5.0, 0.5], [15.0, 0.6]]}, {"name": "ours seed=2", "curve": curve},
             {"name": "peer seed=2", "curve": [[45.0, 0.8]]}, {"name": "ours seed=30", "curve": curve}]
    assert benchmark.curve_summary(rows)[3:6] == [
        "- ours seed=1, against the final validation AP of peer (0.650 after 45.0 min): does not reach it in its 15.0 "
        "minutes (it ends at 0.600).",
        "- ours seed=2, against the final validation AP of peer seed=2 (0.800 after 45.0 min): does not reach it in "
        "its 15.0 minutes (it ends at 0.700).",
        "- ours seed=30, against the final validation AP of peer (0.650 after 45.0 min): reaches it after 12.5 minutes "
        "of training."]
    assert benchmark.seed_suffix("ours seed=3", "ours") == " seed=3" and benchmark.seed_suffix("ours", "ours") == ""
    assert benchmark.seed_suffix("cascade=0.5/0.6/0.7", "ours") is None


def test_a_measured_row_is_kept_unless_rerun(benchmark, monkeypatch):
    """An interrupted benchmark resumes: a row already in results.json with the same config, split and budget is
    returned as it is; another budget, another split or --rerun measures it again."""
    measured = []
    monkeypatch.setattr(benchmark, "run_row", lambda row, config, budget, split: measured.append(row.name) or {"AP": 0.5})
    args = benchmark.parse_args(["--config", "configs/demo.yaml", "--budget-min", "2", "--seeds", "0,1"])
    ours, seed1 = benchmark.seed_rows(benchmark.select_rows("ours"), args.seeds)
    done = {"ours": benchmark._measure_or_reuse(ours, args, {})}
    assert measured == ["ours"] and done["ours"]["AP"] == 0.5
    assert benchmark._measure_or_reuse(ours, args, done) is done["ours"] and measured == ["ours"]
    benchmark._measure_or_reuse(seed1, args, done)  # seed 1 is another config: measured
    assert measured == ["ours", "ours seed=1"]
    for changed in (["--budget-min", "3"], ["--split", "test"], ["--rerun"]):
        other = benchmark.parse_args(["--config", "configs/demo.yaml", "--budget-min", "2", *changed])
        benchmark._measure_or_reuse(ours, other, done)
    assert measured == ["ours", "ours seed=1", "ours", "ours", "ours"]


def test_a_final_fit_is_scored_on_test_only(benchmark, monkeypatch):
    """data.train_on_val trains on the validation split: a validation score or curve of it would be a training
    figure, so the benchmark refuses both and scores it on test."""
    monkeypatch.setattr(benchmark, "run_row", lambda row, config, budget, split: {"AP": 0.5, "split": split})
    (ours,) = benchmark.select_rows("ours")
    for extra in (["--split", "val"], ["--split", "test", "--curve-every-min", "5"]):
        args = benchmark.parse_args(["--config", "configs/demo.yaml", "--set", "data.train_on_val=true", *extra])
        with pytest.raises(DetectorError, match="data.train_on_val"):
            benchmark._measure_or_reuse(ours, args, {})
    args = benchmark.parse_args(["--config", "configs/demo.yaml", "--set", "data.train_on_val=true", "--split", "test"])
    assert benchmark._measure_or_reuse(ours, args, {})["split"] == "test"


def test_the_row_identity_ignores_options_left_at_their_default(benchmark):
    """A row measured before an option existed is kept: the identity leaves out options at their default (and the
    tracker's options, which change no detection figure, and the TTA's while it is off), but any option set away
    from its default changes it."""
    demo = lambda *overrides: load_config("configs/demo.yaml", list(overrides))  # apply_overrides works in place
    base = demo()
    key = benchmark.config_key("ours", base)
    same = demo("augment.weather=0.0", "track.max_lost=5", "train.name=other", "eval.tta_turns=[0,1]")
    assert benchmark.config_key("ours", same) == key  # the TTA's options count only with eval.tta on
    with_tta = benchmark.config_key("ours", demo("eval.tta=true"))
    assert with_tta != key
    assert benchmark.config_key("ours", demo("eval.tta=true", "eval.tta_turns=[0,1]")) != with_tta
    assert benchmark.config_key("ours", demo("augment.weather=0.5")) != key
    assert benchmark.config_key("ours", demo("train.seed=1")) != key
    assert benchmark.config_key("peer", base) != key


def test_train_step_benchmark_times_both_models_in_both_layouts(peer, tmp_path, monkeypatch):
    """scripts/bench_train_step.py on tiny synthetic scenes: four variants, every timed step recorded (6 batches from
    a training set of 4, so it goes round again), one speedup per model; bad counts and an existing --json are
    refused with one sentence."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "step.json"
    sets = [arg for override in tiny_run_overrides(tmp_path) for arg in ("--set", override)]
    with script_module("bench_train_step") as bench:
        with pytest.raises(SystemExit, match="--steps must be at least 1"):
            bench.main(["--config", str(CONFIGS / "demo.yaml"), "--steps", "0", *sets])
        bench.main(["--config", str(CONFIGS / "demo.yaml"), "--steps", "5",
                    "--warmup", "1", "--threads", "1", "--json", str(out), *sets])
        figures = json.loads(out.read_text())
        assert set(figures["seconds"]) == {"ours, channels_last", "ours, contiguous", "peer, channels_last",
                                           "peer, contiguous"}
        assert all(len(runs) == 5 and min(runs) > 0 for runs in figures["seconds"].values())
        assert figures["threads"] == 1 and figures["versions"]["torch"] == torch.__version__
        assert set(figures["speedup"]) == {"ours", "peer"} and all(v > 0 for v in figures["speedup"].values())
        with pytest.raises(SystemExit, match="exists"):
            bench.main(["--config", str(CONFIGS / "demo.yaml"), "--json", str(out)])


def test_the_peer_samples_with_the_configs_repeat_factors_and_mosaic(peer, tmp_path, monkeypatch, capsys):
    """"Trained the same way" includes the batches: with train.repeat_threshold the peer draws from the same
    repeat-factor sampler as ours (tests/data/test_repeat.py pins the factors), and with augment.mosaic its samples
    are ours' mosaics (`training_dataset`), one tiny epoch here."""
    config = load_config(None, tiny_run_overrides(tmp_path, **{"train.repeat_threshold": 1.0,
                                                               "train.repeat_long_side": 40, "augment.mosaic": 1.0}))
    samplers, datas = [], []

    def recording_sampler(*args):
        samplers.append(training_sampler(*args))
        return samplers[-1]

    def recording_dataset(*args):
        datas.append(training_dataset(*args))
        return datas[-1]

    monkeypatch.setattr(peer, "training_sampler", recording_sampler)
    monkeypatch.setattr(peer, "training_dataset", recording_dataset)
    datasets = build_datasets(config)
    run = peer.train_peer(config, 0, datasets)
    expected = repeat_factors(datasets[0], 1.0, 40, 160)
    assert len(samplers) == 1 and samplers[0].repeat_factors.tolist() == expected.tolist() and expected.max() > 1
    assert len(datas) == 1 and datas[0].mosaic is not None and datas[0].mosaic.p == 1.0
    assert "peer repeat-factor sampling" in capsys.readouterr().out and len(run.iteration_seconds) == 1
