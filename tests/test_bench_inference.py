"""scripts/bench_inference.py: the stages group times a cascade checkpoint with its first k stages, and a model cut
to k stages predicts what its stages compute (the whole cascade unchanged, one stage as stage 1 alone)."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from conftest import SCRIPTS, script_module
from detector.config import load_config
from detector.detector import build_detector
from detector.roi_heads import select_detections

DEMO_CONFIG = str(SCRIPTS.parent / "configs" / "demo.yaml")
SMALL = ["model.weights=none", "model.head_dim=64", "model.rpn_post_nms_top_n_test=20", "model.score_thresh=0.0"]


@pytest.fixture(scope="module")
def bench_inference():
    with script_module("bench_inference") as module:
        yield module


def _model(cascade: bool):
    torch.manual_seed(0)
    ious = "[0.5,0.6,0.7]" if cascade else "[]"
    config = load_config(DEMO_CONFIG, [*SMALL, f"model.cascade_ious={ious}", "data.max_size=96"])
    return build_detector(config, pretrained=False).eval(), config


def _images() -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 96, generator=generator)], [(64, 96)]


def test_first_stages_keeps_the_whole_cascade_and_cuts_to_stage_one(bench_inference) -> None:
    model, _ = _model(cascade=True)
    images, sizes = _images()
    whole = model.predict(images, sizes)[0]
    same = bench_inference.first_stages(model, 3).predict(images, sizes)[0]
    assert torch.equal(whole.boxes, same.boxes) and torch.equal(whole.scores, same.scores)
    one = bench_inference.first_stages(model, 1)
    assert one.roi_heads.num_stages == 1 and model.roi_heads.num_stages == 3  # the original is not cut
    stage_one = one.roi_heads
    assert len(stage_one.box_heads) == len(stage_one.predictors) == len(stage_one.box_coders) == 1
    assert len(stage_one.matchers) == 1 and stage_one.stage_loss_weights == [1.0]
    with torch.no_grad():  # stage 1 alone: its softmax scores and its deltas on the proposals, then postprocess
        batch = model.preprocess(images)
        features = model.backbone(batch.images)
        proposals, _ = model.proposal_source(batch, features, None)
        heads = model.roi_heads
        logits, deltas = heads.stage_predictions(0, features, proposals)
        boxes = heads.box_coders[0].decode(deltas.float(), torch.cat(proposals))[:, None, :]
        expected = select_detections(F.softmax(logits, 1), boxes, [len(proposals[0])], sizes, heads.score_thresh,
                                     heads.nms_thresh, heads.detections_per_image)[0]
    cut = one.predict(images, sizes)[0]
    assert len(cut) > 0 and len(cut) == len(expected["boxes"])
    assert torch.allclose(cut.boxes, expected["boxes"]) and torch.allclose(cut.scores, expected["scores"])
    # the whole cascade averages three stages' scores on refined boxes: not what stage 1 alone gives
    assert len(cut) != len(whole) or not torch.allclose(cut.scores, whole.scores)

def test_stages_group_times_one_row_per_stage(bench_inference) -> None:
    model, config = _model(cascade=True)
    images, sizes = _images()
    args = argparse.Namespace(warmup=0, repeats=2, threads=1, stage_proposals=[5], runtime="torch")
    rows = bench_inference.bench_stages(bench_inference.Setup(model, config, images, sizes, args))
    assert [row.variant for row in rows] == ["1 of 3 stages", "2 of 3 stages", "3 of 3 stages",
                                             "3 of 3 stages, 5 proposals"]
    assert model.proposal_source.post_nms_top_n[1] == 20  # the cut ran on a copy
    assert all(row.ms > 0 for row in rows) and rows[0].speedup == 1.0
    assert "the one-stage time" in rows[2].note and "as it runs" in rows[2].note
    assert all(row.note.startswith("torch backbone") for row in rows)


def test_stages_group_says_so_for_a_single_stage_head(bench_inference) -> None:
    model, config = _model(cascade=False)
    images, sizes = _images()
    args = argparse.Namespace(warmup=0, repeats=1, threads=1, stage_proposals=[], runtime="torch")
    rows = bench_inference.bench_stages(bench_inference.Setup(model, config, images, sizes, args))
    assert len(rows) == 1 and rows[0].ms is None and "single-stage head" in rows[0].note
