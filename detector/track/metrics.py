"""Tracking metrics: CLEAR MOT (MOTA, MOTP, ID switches, fragmentations) and identity metrics (IDF1) through
``motmetrics``, and HOTA (Luiten et al., IJCV 2021) written out from the paper's definitions.

HOTA at a localization threshold alpha: per frame, ground-truth and predicted boxes are matched one-to-one
(Hungarian) maximizing IoU weighted by how often the two IDs overlap over the whole video (the global alignment
score), and a match counts when its IoU is at least alpha. Then DetA = TP / (TP + FN + FP), and each true
positive c with ground-truth ID g and predicted ID p scores A(c) = TPA / (TPA + FNA + FPA) = n(g, p) /
(N(g) + N(p) - n(g, p)), with n(g, p) the matches between the two IDs and N(.) their box counts; AssA is A's
mean over the true positives and HOTA(alpha) = sqrt(DetA * AssA). HOTA is its mean over alpha = 0.05, ..., 0.95.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from detector.boxes import box_ioa
from detector.structures import DetectorError
from detector.track.bytetrack import iou_matrix
from detector.track.mot import MotBox

__all__ = ["ALPHAS", "clear_and_identity", "count_errors", "direction_count_error", "drop_ignored", "evaluate_tracks",
           "hota", "ignore_below_height"]

ALPHAS = np.arange(0.05, 0.99, 0.05)  # 19 thresholds


def _by_frame(boxes: list[MotBox]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    grouped: dict[int, list[MotBox]] = defaultdict(list)
    for box in boxes:
        grouped[box.frame].append(box)
    return {frame: (np.array([b.track_id for b in items]), np.array([b.box for b in items], np.float64))
            for frame, items in grouped.items()}


def hota(ground_truth: list[MotBox], predicted: list[MotBox]) -> dict[str, float]:
    """HOTA, DetA and AssA averaged over `ALPHAS` (see the module doc), plus HOTA at alpha 0.5."""
    gt, pr = _by_frame(ground_truth), _by_frame(predicted)
    frames = sorted(set(gt) | set(pr))
    empty = (np.zeros(0, int), np.zeros((0, 4)))
    gt_count: dict[int, int] = defaultdict(int)
    for box in ground_truth:
        gt_count[box.track_id] += 1
    pr_count: dict[int, int] = defaultdict(int)
    for box in predicted:
        pr_count[box.track_id] += 1
    # global alignment: for every ID pair, the summed per-frame IoU-normalized similarity
    overlap: dict[tuple[int, int], float] = defaultdict(float)
    similarities = {}
    for frame in frames:
        (g_ids, g_boxes), (p_ids, p_boxes) = gt.get(frame, empty), pr.get(frame, empty)
        iou = iou_matrix(g_boxes, p_boxes)  # (G, P)
        similarities[frame] = iou
        if iou.size:
            denominator = iou.sum(0)[None, :] + iou.sum(1)[:, None] - iou
            normalized = np.divide(iou, denominator, out=np.zeros_like(iou), where=denominator > 0)
            for i, j in zip(*np.nonzero(normalized)):
                overlap[(int(g_ids[i]), int(p_ids[j]))] += float(normalized[i, j])
    alignment = {pair: value / (gt_count[pair[0]] + pr_count[pair[1]] - value) for pair, value in overlap.items()}
    true_positives = np.zeros(len(ALPHAS))
    matches = [defaultdict(int) for _ in ALPHAS]  # per alpha: (gt id, predicted id) -> matched frames
    for frame in frames:
        (g_ids, _), (p_ids, _) = gt.get(frame, empty), pr.get(frame, empty)
        iou = similarities[frame]
        if not iou.size:
            continue
        weights = np.array([[alignment.get((int(g), int(p)), 0.0) for p in p_ids] for g in g_ids])
        rows, cols = linear_sum_assignment(-(weights * iou))
        for a, alpha in enumerate(ALPHAS):
            good = iou[rows, cols] >= alpha - np.finfo(float).eps
            true_positives[a] += good.sum()
            for i, j in zip(rows[good], cols[good]):
                matches[a][(int(g_ids[i]), int(p_ids[j]))] += 1
    num_gt, num_pr = len(ground_truth), len(predicted)
    det_a = true_positives / np.maximum(1, num_gt + num_pr - true_positives)  # TP / (TP + FN + FP)
    ass_a = np.array([
        sum(n * n / (gt_count[g] + pr_count[p] - n) for (g, p), n in matches[a].items()) / max(1.0, true_positives[a])
        for a in range(len(ALPHAS))
    ])
    per_alpha = np.sqrt(det_a * ass_a)
    half = int(np.argmin(np.abs(ALPHAS - 0.5)))
    return {"HOTA": float(per_alpha.mean()), "DetA": float(det_a.mean()), "AssA": float(ass_a.mean()),
            "HOTA50": float(per_alpha[half])}


def clear_and_identity(ground_truth: list[MotBox], predicted: list[MotBox], iou_threshold: float = 0.5) -> dict:
    """MOTA, MOTP (mean IoU of matches), IDF1, ID switches, fragmentations, false positives and misses (motmetrics;
    a ground-truth and a predicted box can match at IoU >= ``iou_threshold``), and "ID switches across a gap": those
    of the ID switches where the object's ground truth has a gap since it was last matched (frames without its box:
    fully hidden, too little of it visible, or out of view), the switches a full occlusion may explain."""
    import motmetrics

    gt, pr = _by_frame(ground_truth), _by_frame(predicted)
    empty = (np.zeros(0, int), np.zeros((0, 4)))
    accumulator = motmetrics.MOTAccumulator(auto_id=False)
    for frame in sorted(set(gt) | set(pr)):
        (g_ids, g_boxes), (p_ids, p_boxes) = gt.get(frame, empty), pr.get(frame, empty)
        distance = 1.0 - iou_matrix(g_boxes, p_boxes)
        distance[distance > 1.0 - iou_threshold] = np.nan  # not a possible match
        accumulator.update(g_ids.tolist(), p_ids.tolist(), distance, frameid=frame)
    names = {"mota": "MOTA", "motp": "MOTP", "idf1": "IDF1", "num_switches": "ID switches",
             "num_fragmentations": "fragmentations", "num_false_positives": "false positives",
             "num_misses": "misses", "num_objects": "ground-truth boxes"}
    summary = motmetrics.metrics.create().compute(accumulator, metrics=list(names), name="all")
    values = {names[key]: float(summary[key].iloc[0]) for key in names}
    values["MOTP"] = 1.0 - values["MOTP"] if np.isfinite(values["MOTP"]) else float("nan")  # distance -> IoU
    values["ID switches across a gap"] = float(_switches_across_gaps(accumulator.mot_events, ground_truth))
    return values


def _switches_across_gaps(events, ground_truth: list[MotBox]) -> int:
    """Of motmetrics' SWITCH events (a DataFrame indexed by (frame, event) with Type and OId), those whose object
    lacks a ground-truth box in some frame between its previous match and the switch."""
    present = {(box.frame, box.track_id) for box in ground_truth}
    matched = events[events["Type"].isin(["MATCH", "SWITCH"])]
    last_match: dict[int, int] = {}
    count = 0
    for (frame, _), kind, object_id in zip(matched.index, matched["Type"], matched["OId"]):
        object_id = int(object_id)
        if kind == "SWITCH" and object_id in last_match:
            count += any((gap, object_id) not in present for gap in range(last_match[object_id] + 1, frame))
        last_match[object_id] = frame
    return count


def drop_ignored(ground_truth: list[MotBox], predicted: list[MotBox], ignore: list[MotBox],
                 min_ioa: float = 0.5, match_iou: float = 0.5) -> list[MotBox]:
    """``predicted`` without the boxes that lie in an ignore region: a box matching no ground-truth box of its frame
    (IoU below ``match_iou``) and at least ``min_ioa`` of whose area lies inside one of the frame's ignore regions (a
    car too hidden to ask for) is neither a hit nor a false positive, and leaves before scoring (MOTChallenge's
    distractor rule, with COCO's intersection-over-area test for crowd regions). Order is kept."""
    if not ignore:
        return list(predicted)
    gt, regions = _by_frame(ground_truth), _by_frame(ignore)
    by_frame: dict[int, list[int]] = defaultdict(list)
    for index, box in enumerate(predicted):
        if box.frame in regions:
            by_frame[box.frame].append(index)
    dropped: set[int] = set()
    for frame, indices in by_frame.items():
        boxes = torch.tensor([predicted[i].box for i in indices], dtype=torch.float64)  # (P, 4)
        inside = box_ioa(boxes, torch.from_numpy(regions[frame][1])).amax(1) >= min_ioa  # (P,)
        truth = gt.get(frame, (None, np.zeros((0, 4))))[1]
        found = torch.from_numpy(iou_matrix(boxes.numpy(), truth).max(1, initial=0.0) >= match_iou)  # (P,)
        dropped.update(i for i, drop in zip(indices, (inside & ~found).tolist()) if drop)
    return [box for index, box in enumerate(predicted) if index not in dropped]


def ignore_below_height(ground_truth: list[MotBox], predicted: list[MotBox], ignore: list[MotBox],
                        min_height: float, match_iou: float = 0.5) -> tuple[list[MotBox], list[MotBox], list[MotBox]]:
    """KITTI's tracking rule for small objects: a ground-truth box under ``min_height`` pixels tall becomes an ignore
    region (neither a miss when not found nor a hit when found), and a predicted box under ``min_height`` tall that
    matches no remaining ground-truth box (IoU below ``match_iou``) is dropped (neither a hit nor a false positive).
    Returns (ground truth, predicted, ignore regions) for `evaluate_tracks`; ``min_height`` 0 changes nothing."""
    if min_height < 0:
        raise DetectorError(f"min_height must be >= 0 pixels, got {min_height}")
    tall = [box for box in ground_truth if box.box[3] - box.box[1] >= min_height]
    small = [box for box in ground_truth if box.box[3] - box.box[1] < min_height]
    kept = _by_frame(tall)
    no_truth = np.zeros((0, 4))

    def counts(box: MotBox) -> bool:
        if box.box[3] - box.box[1] >= min_height:
            return True
        truth = kept.get(box.frame, (None, no_truth))[1]
        return bool(iou_matrix(np.array([box.box], np.float64), truth).max(initial=0.0) >= match_iou)

    return tall, [box for box in predicted if counts(box)], list(ignore) + small


def evaluate_tracks(ground_truth: list[MotBox], predicted: list[MotBox],
                    ignore: list[MotBox] | None = None, min_height: float = 0.0) -> dict[str, float]:
    """Every tracking metric of this module in one dict; predicted boxes in an ``ignore`` region do not count
    (`drop_ignored`). ``min_height`` > 0 scores as KITTI's tracking benchmark does: cars under that many pixels tall
    are neither asked for nor held against a prediction (`ignore_below_height`)."""
    ignore = list(ignore or [])
    if min_height:
        ground_truth, predicted, ignore = ignore_below_height(ground_truth, predicted, ignore, min_height)
    predicted = drop_ignored(ground_truth, predicted, ignore)
    return {**clear_and_identity(ground_truth, predicted), **hota(ground_truth, predicted)}


def count_errors(predicted_path: str, true_path: str) -> dict[str, dict[str, float]]:
    """Per line and direction: predicted count - true count, and the total's relative error. Both files hold
    ``{"lines": {name: {"left": n, "right": n, ...}}}`` (counts.json of `detector track`, and the renderer's truth)."""
    def lines(path: str) -> dict:
        try:
            content = json.loads(Path(path).read_text())
            return {name: (int(v["left"]), int(v["right"])) for name, v in content["lines"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DetectorError(f"{path}: expected {{\"lines\": {{name: {{\"left\": n, \"right\": n}}}}}} ({error})") from None

    predicted, truth = lines(predicted_path), lines(true_path)
    missing = sorted(set(truth) - set(predicted))
    if missing:
        raise DetectorError(f"{predicted_path} has no count for line(s) {', '.join(missing)} of {true_path}")
    return {name: line_count_error(predicted[name], counts) for name, counts in truth.items()}


def line_count_error(predicted: tuple[int, int], truth: tuple[int, int]) -> dict[str, float]:
    """One line's (left, right) counts against the true ones: each direction's difference, the total's relative error
    (with no true crossing, the predicted total) and the per-direction error (`direction_count_error`)."""
    (got_left, got_right), (left, right) = predicted, truth
    total, got_total = left + right, got_left + got_right
    return {"left": got_left - left, "right": got_right - right,
            "total_relative": (got_total - total) / total if total else float(got_total),
            "by_direction_relative": direction_count_error(predicted, truth)}


def direction_count_error(predicted: tuple[int, int], truth: tuple[int, int]) -> float:
    """Relative count error of one line that a wrong direction cannot hide: the per-direction misses and extras summed,
    over the true total (1/9 left/right against a true 0/10 is 2/10 = 0.2, where the totals alone say 0). With no
    true crossing, the number of predicted ones."""
    wrong = sum(abs(got - true) for got, true in zip(predicted, truth))
    total = sum(truth)
    return wrong / total if total else float(wrong)
