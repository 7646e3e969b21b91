"""COCO evaluation: mAP via pycocotools, per-class AP, precision-recall curves and a confusion matrix.

Boxes arrive as (N, 4) float32 pixel ``x1, y1, x2, y2`` (``Targets`` and ``Detections`` in the SAME,
original-image coordinates) and become COCO ``x, y, w, h`` only at the pycocotools edge. Foreground
labels 1..K are used directly as COCO category ids; category ``k`` is named ``class_names[k - 1]``.

Ignore regions become ``iscrowd=1`` ground truth. A region of a class (a COCO crowd of cars, a VOC difficult car)
is written under that class; a region of any class (KITTI DontCare, label 0) once per category, because pycocotools
matches crowd regions within a category only. A detection on a region of its class, or of any class, is then
neither a true nor a false positive (pycocotools crowd semantics). Object areas, which split AP small / medium /
large, are the source's (COCO ``area``) where it has them, else the boxes'.

Metrics are fractions in [0, 1]. Where pycocotools reports -1 (no ground truth in that class or area
range, so the metric is undefined) we report ``float('nan')``: it cannot be averaged into a score by
accident, and it prints as ``nan``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.boxes import box_ioa, box_iou, xyxy_to_xywh
from detector.structures import Detections, DetectorError, Targets

# The order of COCOeval.stats, so stats[i] is METRIC_NAMES[i].
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IGNORE_IOA = 0.5  # a detection more than half inside an ignore region is not counted in the confusion matrix


def _numpy(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    return torch.as_tensor(tensor).detach().cpu().numpy().astype(dtype)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        found = sorted(set(labels.tolist()))
        raise DetectorError(f"{where}: labels must be foreground classes 1..{num_classes}, got {found}")


def _check_lengths(image_ids: list[int], **per_image: list) -> None:
    for name, values in per_image.items():
        if len(values) != len(image_ids):
            raise DetectorError(
                f"COCO evaluation: expected one {name} entry per image id ({len(image_ids)}), got {len(values)}"
            )


def _annotation(ann_id: int, image_id: int, category_id: int, box_xywh: list[float], iscrowd: int,
                area: float = math.nan) -> dict:
    return {
        "id": ann_id,  # pycocotools treats id 0 as "unmatched", so ids start at 1
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box_xywh,
        # the small/medium/large split uses it: the source's area (a segment's, in COCO) where given, else the box's
        "area": area if math.isfinite(area) else box_xywh[2] * box_xywh[3],
        "iscrowd": iscrowd,
    }


def coco_ground_truth(image_ids: list[int], targets: list[Targets], class_names: list[str],
                      category_ids: list[int] | None = None) -> dict:
    """A COCO ground-truth dataset dict (images, categories, annotations) built from ``Targets``.

    Target boxes and ignore regions are (M, 4) / (G, 4) pixel xyxy; they are written as COCO xywh.
    ``image_size`` (height, width) gives each image's size. An ignore region is written as ``iscrowd=1`` under its
    class (``ignore_labels``: a COCO crowd of cars absorbs car detections only), or once per category when its label
    is 0 (KITTI DontCare: unlabelled, any class). Object areas are the targets' source ``areas`` where given, else
    the box areas. ``category_ids[k]`` is the id written for label k + 1 (the source's ids; default 1..K).
    """
    _check_lengths(image_ids, targets=targets)
    if len(set(image_ids)) != len(image_ids):
        raise DetectorError("COCO evaluation: image ids must be unique, got a repeated id")
    ids = _category_ids(class_names, category_ids)
    categories = [{"id": ids[k], "name": name} for k, name in enumerate(class_names)]
    images, annotations = [], []
    for image_id, target in zip(image_ids, targets):
        height, width = target.image_size
        images.append({"id": int(image_id), "width": int(width), "height": int(height)})
        labels = _numpy(target.labels, np.int64)
        _check_labels(labels, len(class_names), f"Targets of image {image_id}")
        areas = [math.nan] * len(labels) if target.areas is None else _numpy(target.areas, np.float64).tolist()
        for box, label, area in zip(xyxy_to_xywh(_numpy(target.boxes, np.float32)).tolist(), labels.tolist(), areas):
            annotations.append(_annotation(len(annotations) + 1, int(image_id), ids[label - 1], box, 0, area))
        region_labels = _numpy(target.ignore_labels, np.int64).tolist()
        for region, label in zip(xyxy_to_xywh(_numpy(target.ignore, np.float32)).tolist(), region_labels):
            for category in (ids if label == 0 else [ids[label - 1]]):
                annotations.append(_annotation(len(annotations) + 1, int(image_id), category, region, iscrowd=1))
    info = {"description": "detector ground truth"}  # some pycocotools versions copy it in loadRes
    return {"info": info, "images": images, "categories": categories, "annotations": annotations}


def _category_ids(class_names: list[str], category_ids: list[int] | None) -> list[int]:
    ids = list(range(1, len(class_names) + 1)) if category_ids is None else [int(i) for i in category_ids]
    if len(ids) != len(class_names) or len(set(ids)) != len(ids):
        raise DetectorError(f"COCO evaluation: category_ids {category_ids} must give each of {len(class_names)} "
                            "classes its own id")
    return ids


def detections_to_coco(image_ids: list[int], detections: list[Detections],
                       category_ids: list[int] | None = None) -> list[dict]:
    """COCO results: per detection image_id, category_id (``category_ids[label - 1]``, default the label), bbox xywh
    rounded to 2 decimals, score.

    Detection boxes are (D, 4) pixel xyxy in original image coordinates.
    """
    _check_lengths(image_ids, detections=detections)
    ids = None if category_ids is None else [int(i) for i in category_ids]
    results = []
    for image_id, dets in zip(image_ids, detections):
        boxes = np.round(xyxy_to_xywh(_numpy(dets.boxes, np.float32)).astype(np.float64), 2)
        scores = _numpy(dets.scores, np.float64).tolist()
        labels = _numpy(dets.labels, np.int64).tolist()
        for box, score, label in zip(boxes.tolist(), scores, labels):
            category = label if ids is None else ids[label - 1]
            results.append({"image_id": int(image_id), "category_id": category, "bbox": box, "score": score})
    return results


def run_coco_eval(ground_truth: dict, results: list[dict]) -> tuple[COCOeval, str]:
    """Bbox COCOeval of ``results`` (COCO detection dicts) against ``ground_truth`` (a COCO dataset dict), in memory,
    quietly; returns it (``.stats[0]`` is AP) and its printed summary. Scores a subset of images when both are cut to
    them (docs/benchmarks/drone_cars_tta_turns/subset_ap.py)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds fields to the dicts it gets
        else:
            # loadRes indexes results[0], so zero detections get an empty results set built by hand.
            coco_dt = COCO()
            coco_dt.dataset = {key: list(ground_truth[key]) for key in ("images", "categories")}
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    return coco_eval, summary.getvalue()


def _undefined_to_nan(value: float) -> float:
    return float("nan") if value < 0 else float(value)


def _mean_precision(precision: np.ndarray) -> float:
    """Mean of a precision slice, skipping pycocotools' -1 (no ground truth); nan when nothing is defined."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else float("nan")


def _iou_index(coco_eval: COCOeval, iou: float) -> int:
    return int(np.argmin(np.abs(coco_eval.params.iouThrs - iou)))


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain text columns, first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = []
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _save_figure(figure: Figure, path: str | Path) -> None:
    # A bare Figure renders through Agg without touching pyplot's global backend state.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


@dataclass
class EvalResult:
    """COCO bbox metrics (fractions in [0, 1], nan where undefined) and the COCOeval object behind them.

    metrics: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.
    per_class: class name -> {"AP", "AP50", "num_gt"}.
    coco_eval: the accumulated pycocotools COCOeval; ``coco_eval.eval["precision"]`` is (T, R, K, A, M).
    summary: pycocotools' own printed summary.
    """

    metrics: dict[str, float]
    per_class: dict[str, dict]
    coco_eval: COCOeval
    class_names: list[str]
    summary: str = field(default="", repr=False)

    def table(self) -> str:
        """Overall metrics and a per-class AP table as aligned plain text."""
        fmt = lambda value: f"{value:.3f}"  # noqa: E731
        ap_names, ar_names = METRIC_NAMES[:6], METRIC_NAMES[6:]
        overall = _format_table(["metric", *ap_names], [["value", *(fmt(self.metrics[n]) for n in ap_names)]])
        recall = _format_table(["metric", *ar_names], [["value", *(fmt(self.metrics[n]) for n in ar_names)]])
        rows = [[name, fmt(v["AP"]), fmt(v["AP50"]), str(v["num_gt"])] for name, v in self.per_class.items()]
        classes = _format_table(["class", "AP", "AP50", "GT"], rows)
        return f"{overall}\n\n{recall}\n\n{classes}"

    def plot_pr_curves(self, path: str | Path) -> None:
        """PNG of per-class precision-recall curves at IoU 0.5, 0.75 and the mean over 0.5:0.95 (area all, 100 dets)."""
        precision = self.coco_eval.eval["precision"]  # (T, R, K, A, M)
        recall_thresholds = self.coco_eval.params.recThrs  # (R,)
        iou50, iou75 = _iou_index(self.coco_eval, 0.5), _iou_index(self.coco_eval, 0.75)
        ncols = min(len(self.class_names), 3)
        nrows = math.ceil(len(self.class_names) / ncols)
        figure = Figure(figsize=(4.5 * ncols, 3.8 * nrows))
        for k, name in enumerate(self.class_names):
            axes = figure.add_subplot(nrows, ncols, k + 1)
            curves = precision[:, :, k, 0, -1]  # (T, R): area "all", the largest maxDets
            if (curves < 0).all():
                axes.text(0.5, 0.5, "no ground truth", ha="center", va="center")
            else:
                axes.plot(recall_thresholds, curves[iou50], label=f"IoU 0.50 (AP {curves[iou50].mean():.3f})")
                axes.plot(recall_thresholds, curves[iou75], label=f"IoU 0.75 (AP {curves[iou75].mean():.3f})")
                axes.plot(recall_thresholds, curves.mean(axis=0), label=f"IoU 0.50:0.95 (AP {curves.mean():.3f})")
                axes.legend(loc="lower left", fontsize="small")
            axes.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", ylabel="precision", title=name)
        figure.tight_layout()
        _save_figure(figure, path)


@dataclass
class _EvalImage:
    """One processed image as detached CPU numpy: boxes (M, 4) / (G, 4) / (D, 4) pixel xyxy.

    Holding numpy rather than the caller's tensors keeps no device memory or autograd graph alive.
    """

    image_id: int
    image_size: tuple[int, int]  # (height, width)
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    ignore: np.ndarray
    ignore_labels: np.ndarray  # (G,) a region's class, 0 = any class
    gt_areas: np.ndarray | None  # (M,) source areas (NaN: the box's), None: box areas
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_labels: np.ndarray

    @classmethod
    def build(cls, image_id: int, target: Targets, dets: Detections) -> "_EvalImage":
        height, width = target.image_size
        return cls(
            image_id=image_id,
            image_size=(int(height), int(width)),
            gt_boxes=_numpy(target.boxes, np.float32).reshape(-1, 4),
            gt_labels=_numpy(target.labels, np.int64).reshape(-1),
            ignore=_numpy(target.ignore, np.float32).reshape(-1, 4),
            ignore_labels=_numpy(target.ignore_labels, np.int64).reshape(-1),
            gt_areas=None if target.areas is None else _numpy(target.areas, np.float32).reshape(-1),
            pred_boxes=_numpy(dets.boxes, np.float32).reshape(-1, 4),
            pred_scores=_numpy(dets.scores, np.float32).reshape(-1),
            pred_labels=_numpy(dets.labels, np.int64).reshape(-1),
        )

    def targets(self) -> Targets:
        return Targets(self.gt_boxes, self.gt_labels, self.image_size, self.ignore, self.ignore_labels, self.gt_areas)

    def detections(self) -> Detections:
        return Detections(*(torch.from_numpy(a) for a in (self.pred_boxes, self.pred_scores, self.pred_labels)))


def _confusion_per_image(
    image: _EvalImage, num_classes: int, iou_threshold: float, score_threshold: float
) -> np.ndarray:
    """(K+1, K+1) counts for one image: rows ground truth, cols prediction, index K = background.

    Greedy by descending score: each kept detection takes the unmatched ground-truth box (of any class,
    so confusions show) with the highest IoU >= ``iou_threshold``. An unmatched detection is a false
    positive unless it lies in an ignore region of its class or of any class; ground truth left unmatched is a miss.
    """
    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    keep = image.pred_scores >= score_threshold
    order = np.argsort(-image.pred_scores[keep], kind="stable")
    pred_boxes = torch.from_numpy(image.pred_boxes[keep][order])
    pred_labels = image.pred_labels[keep][order]
    ious = box_iou(pred_boxes, torch.from_numpy(image.gt_boxes)).numpy()  # (D, M)
    in_ignore = np.zeros(len(pred_labels), dtype=bool)
    if len(image.ignore) and len(pred_labels):
        inside = box_ioa(pred_boxes, torch.from_numpy(image.ignore)).numpy() > IGNORE_IOA  # (D, G)
        # a region of class k absorbs detections of class k only; a region of class 0 (DontCare) every class
        same_class = (image.ignore_labels[None, :] == 0) | (image.ignore_labels[None, :] == pred_labels[:, None])
        in_ignore = (inside & same_class).any(axis=1)
    gt_taken = np.zeros(len(image.gt_labels), dtype=bool)
    for d, pred_label in enumerate(pred_labels):
        candidates = np.where(gt_taken, -1.0, ious[d])  # (M,): a matched box cannot be matched again
        best = int(candidates.argmax()) if candidates.size else -1
        if best >= 0 and candidates[best] >= iou_threshold:
            gt_taken[best] = True
            matrix[image.gt_labels[best] - 1, pred_label - 1] += 1
        elif not in_ignore[d]:
            matrix[background, pred_label - 1] += 1
    np.add.at(matrix, (image.gt_labels[~gt_taken] - 1, background), 1)
    return matrix


class COCOEvaluator:
    """Accumulates ground truth and detections image by image, then scores them with pycocotools.

    Use as ``reset()``, ``process(...)`` per batch, ``evaluate()`` (detectron2 style). ``class_names[k - 1]``
    names foreground label k (K = len(class_names) classes, background excluded).
    """

    def __init__(self, class_names: list[str], category_ids: list[int] | None = None) -> None:
        if not class_names:
            raise DetectorError("COCOEvaluator: class_names must name at least one foreground class")
        self.class_names = list(class_names)
        # the source dataset's category ids (COCO's own), written to detections.json and ground_truth.json
        self.category_ids = _category_ids(self.class_names, category_ids)
        self.reset()

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K."""
        return len(self.class_names)

    def reset(self) -> None:
        """Forget every processed image."""
        self._images: list[_EvalImage] = []

    def process(self, image_ids: list[int], targets: list[Targets], detections: list[Detections]) -> None:
        """Add a batch: per image its id, ground truth and detections, all pixel xyxy in original image coordinates."""
        _check_lengths(image_ids, targets=targets, detections=detections)
        seen = {image.image_id for image in self._images}
        batch = [_EvalImage.build(int(i), target, dets) for i, target, dets in zip(image_ids, targets, detections)]
        for image in batch:  # validate the whole batch first so a bad one leaves the evaluator unchanged
            if image.image_id in seen:
                raise DetectorError(
                    f"COCOEvaluator.process: image id {image.image_id} was already processed; ids must be unique"
                )
            seen.add(image.image_id)
            _check_labels(image.gt_labels, self.num_classes, f"Targets of image {image.image_id}")
            _check_labels(image.pred_labels, self.num_classes, f"Detections of image {image.image_id}")
        self._images.extend(batch)

    def _require_images(self, caller: str) -> list[int]:
        if not self._images:
            raise DetectorError(f"COCOEvaluator.{caller}: no images were processed; call process() first")
        return [image.image_id for image in self._images]

    def results(self) -> list[dict]:
        """All processed detections as COCO results (see ``detections_to_coco``)."""
        image_ids = self._require_images("results")
        return detections_to_coco(image_ids, [image.detections() for image in self._images], self.category_ids)

    def evaluate(self) -> EvalResult:
        """Runs pycocotools bbox evaluation over every processed image (zero detections give AP 0)."""
        self._require_images("evaluate")
        ground_truth = self.ground_truth()
        # Evaluate exactly what save_results_json writes, so pycocotools on that file reproduces these numbers.
        coco_eval, summary = run_coco_eval(ground_truth, self.results())
        metrics = {name: _undefined_to_nan(value) for name, value in zip(METRIC_NAMES, coco_eval.stats)}
        precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
        iou50 = _iou_index(coco_eval, 0.5)
        all_gt_labels = np.concatenate([image.gt_labels for image in self._images])
        num_gt = np.bincount(all_gt_labels, minlength=self.num_classes + 1)  # (K+1,), index 0 unused
        per_class = {
            name: {
                "AP": _mean_precision(precision[:, :, k, 0, -1]),
                "AP50": _mean_precision(precision[iou50, :, k, 0, -1]),
                "num_gt": int(num_gt[k + 1]),
            }
            for k, name in enumerate(self.class_names)
        }
        return EvalResult(metrics, per_class, coco_eval, self.class_names, summary)

    def ground_truth(self) -> dict:
        """The COCO ground truth evaluated (images, categories with the source ids, boxes and crowd regions)."""
        image_ids = self._require_images("ground_truth")
        return coco_ground_truth(image_ids, [image.targets() for image in self._images], self.class_names,
                                 self.category_ids)

    def save_ground_truth_json(self, path: str | Path) -> None:
        """Writes `ground_truth`: with detections.json, pycocotools reproduces `evaluate`'s table from the files."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.ground_truth()))

    def save_results_json(self, path: str | Path) -> None:
        """Writes all detections as a COCO results JSON (loadable with ``COCO.loadRes``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results()))

    def confusion_matrix(self, iou_threshold: float = 0.5, score_threshold: float = 0.25) -> np.ndarray:
        """(K+1, K+1) int64 counts: rows ground-truth class, cols predicted class, last row/col background.

        Last row: detections matching no ground truth (false positives); last col: missed objects.
        Detections below ``score_threshold`` are dropped; detections more than half inside an ignore
        region that match no ground truth are not counted.
        """
        if not 0.0 < iou_threshold <= 1.0:
            raise DetectorError(f"confusion_matrix: iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= score_threshold <= 1.0:
            raise DetectorError(f"confusion_matrix: score_threshold must be in [0, 1], got {score_threshold}")
        self._require_images("confusion_matrix")
        matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        for image in self._images:
            matrix += _confusion_per_image(image, self.num_classes, iou_threshold, score_threshold)
        return matrix

    def plot_confusion_matrix(
        self, path: str | Path, iou_threshold: float = 0.5, score_threshold: float = 0.25
    ) -> None:
        """PNG of ``confusion_matrix(iou_threshold, score_threshold)`` with every count written in its cell."""
        matrix = self.confusion_matrix(iou_threshold, score_threshold)
        names = [*self.class_names, "background"]
        size = 2.0 + 0.8 * len(names)
        figure = Figure(figsize=(size + 1.5, size))
        axes = figure.add_subplot(1, 1, 1)
        image = axes.imshow(matrix, cmap="Blues")
        figure.colorbar(image, ax=axes)
        threshold = matrix.max() / 2 if matrix.max() else 1
        for (row, col), count in np.ndenumerate(matrix):
            axes.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axes.set_yticks(range(len(names)), names)
        title = f"confusion (IoU >= {iou_threshold}, score >= {score_threshold})"
        axes.set(xlabel="predicted", ylabel="ground truth", title=title)
        figure.tight_layout()
        _save_figure(figure, path)
