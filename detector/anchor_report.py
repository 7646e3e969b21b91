"""Anchor report: how well the RPN's anchor shapes fit a dataset's boxes, and a better grid (like YOLOv5's autoanchor).

IoU here is **shape-only**: a box and an anchor are compared as if centred on the same point, so the IoU depends
on widths and heights alone, ``min(w_b, w_a) * min(h_b, h_a) / (w_b h_b + w_a h_a - intersection)``, as
autoanchor measures it. It is an upper bound on what the RPN sees: real anchors sit on centres ``stride`` pixels
apart (detector/anchors.py), so a box lying between two centres meets its anchors off-centre, at a lower IoU.
The RPN also promotes each box's best anchor to a positive whatever its IoU (low-quality matches), so a box
below the threshold still trains, from a poorer starting point.

The proposal keeps the model's anchor layout, a grid of ``S`` sizes x ``R`` ratios per location (ratio =
height / width, area = size**2, as in `detector.anchors.cell_anchors`):

1. k-means in one dimension on the boxes' log size ``log sqrt(w h)`` gives ``S`` sizes, and on their log ratio
   ``log(h / w)`` gives ``R`` ratios. The grid is the product of the two axes, so the axes are fitted apart.
2. A local search then moves one size or one ratio at a time by a factor (0.5 ... 2), keeping a move when it
   raises the number of boxes with an anchor at IoU >= the threshold (ties: a higher mean best IoU), until no
   move helps. Sizes are whole pixels and ratios have two decimals throughout, so the figures printed are those
   of the YAML that is printed.
3. This runs for every grid with ``S * R`` at most the model's anchors per location, keeping for each ``S`` the
   most ratios that fit (with an FPN ``S`` stays the number of levels, one size per level), and once more from
   the config's own grid, so the proposal never covers fewer boxes than it; the grid with the highest coverage
   (ties: mean best IoU) is proposed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detector.anchors import cell_anchors
from detector.structures import Dataset

__all__ = ["anchor_report", "anchor_shapes", "box_shapes", "coverage", "format_report", "kmeans_1d",
           "plot_anchor_report", "propose_anchors", "shape_iou"]

REPORT_THRESHOLDS = (0.5,)  # shares printed besides the chosen threshold
_FACTORS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.4, 2.0)  # local-search moves (multiplicative)
_MAX_ROUNDS = 100


def box_shapes(dataset: Dataset, max_size: int) -> np.ndarray:
    """(N, 2) float64 ``(w, h)`` of every ground-truth box, in model-input pixels: each image is resized so its
    longest side is ``max_size`` (data.max_size) and its boxes scale with it. Ignore regions are left out."""
    shapes = []
    for record in dataset.records:
        scale = max_size / max(record.width, record.height)
        boxes = record.boxes.astype(np.float64)
        shapes.append(np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) * scale)
    return np.concatenate(shapes) if shapes else np.zeros((0, 2))


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(S*R, 2) ``(w, h)`` of the anchors, size-major, exactly as the model builds them (ratio = h / w)."""
    anchors = cell_anchors(tuple(float(s) for s in sizes), tuple(float(r) for r in ratios)).numpy()
    return np.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], axis=1)


def shape_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """(N, 2) box and (A, 2) anchor ``(w, h)`` -> (N, A) IoU with each anchor centred on the box."""
    boxes_wh, anchors_wh = np.asarray(boxes_wh, np.float64), np.asarray(anchors_wh, np.float64)
    inter = (np.minimum(boxes_wh[:, None, 0], anchors_wh[None, :, 0])
             * np.minimum(boxes_wh[:, None, 1], anchors_wh[None, :, 1]))  # (N, A)
    areas = boxes_wh[:, 0:1] * boxes_wh[:, 1:2] + (anchors_wh[:, 0] * anchors_wh[:, 1])[None, :]  # (N, A)
    return inter / (areas - inter)


def coverage(boxes_wh: np.ndarray, anchors_wh: np.ndarray, threshold: float) -> float:
    """Share of boxes with at least one anchor at shape-only IoU >= ``threshold`` (0 for no boxes)."""
    if len(boxes_wh) == 0:
        return 0.0
    return float((shape_iou(boxes_wh, anchors_wh).max(axis=1) >= threshold).mean())


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """(k,) sorted centres of 1-D k-means (Lloyd), started at the quantiles (i + 0.5) / k: deterministic.
    Fewer distinct values than ``k`` give fewer centres."""
    values = np.sort(np.asarray(values, np.float64))
    k = min(k, len(np.unique(values)))
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        updated = np.array([values[nearest == j].mean() if (nearest == j).any() else centres[j] for j in range(k)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return np.unique(centres)


def _fitness(boxes_wh: np.ndarray, sizes: Sequence[float], ratios: Sequence[float],
             threshold: float) -> tuple[int, float]:
    """(boxes with an anchor at IoU >= threshold, mean best IoU): compared as a tuple, count first."""
    best = shape_iou(boxes_wh, anchor_shapes(sizes, ratios)).max(axis=1)
    return int((best >= threshold).sum()), float(best.mean())


def _round_grid(sizes: Sequence[float], ratios: Sequence[float]) -> tuple[list[float], list[float]]:
    """Whole-pixel sizes and two-decimal ratios, sorted and without repeats (what the printed YAML holds)."""
    return (sorted({float(max(1, round(s))) for s in sizes}),
            sorted({max(0.01, round(float(r), 2)) for r in ratios}))


def _local_search(boxes_wh: np.ndarray, sizes: list[float], ratios: list[float],
                  threshold: float) -> tuple[list[float], list[float], tuple[int, float]]:
    """Move one size or ratio at a time by each of _FACTORS; keep the best move while it helps."""
    sizes, ratios = _round_grid(sizes, ratios)
    best = _fitness(boxes_wh, sizes, ratios, threshold)
    for _ in range(_MAX_ROUNDS):
        move = None
        for axis in ("sizes", "ratios"):
            values = sizes if axis == "sizes" else ratios
            for index in range(len(values)):
                for factor in _FACTORS:
                    moved = [v * factor if i == index else v for i, v in enumerate(values)]
                    trial = _round_grid(moved, ratios) if axis == "sizes" else _round_grid(sizes, moved)
                    if len(trial[0]) * len(trial[1]) < len(sizes) * len(ratios):
                        continue  # rounding merged two values: the grid lost an anchor
                    score = _fitness(boxes_wh, *trial, threshold)
                    if score > (move[0] if move else best):
                        move = (score, trial)
        if move is None:
            break
        best, (sizes, ratios) = move
    return sizes, ratios, best


def _candidate_grids(num_anchors: int, num_sizes: int | None) -> list[tuple[int, int]]:
    """(S, R) grids with S * R <= num_anchors, for each S the most ratios that fit; S fixed with an FPN."""
    if num_sizes is not None:
        return [(num_sizes, max(1, num_anchors // num_sizes))]
    # for S sizes, R = A // S ratios fit; A // R sizes then fit too: the grids no other grid contains
    return sorted({(num_anchors // (num_anchors // s), num_anchors // s) for s in range(1, num_anchors + 1)})


def propose_anchors(boxes_wh: np.ndarray, num_anchors: int, threshold: float = 0.7, num_sizes: int | None = None,
                    start: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """The sizes x ratios grid of at most ``num_anchors`` anchors per location that covers the most boxes at
    shape-only IoU >= ``threshold`` (module docstring). ``num_sizes`` fixes S (one size per FPN level). ``start``
    (sizes, ratios), e.g. the config's grid, is searched from as well, so the proposal covers at least as many
    boxes as it does (up to rounding to whole pixels and two-decimal ratios).

    Returns the best grid, {sizes, ratios, anchors_per_location, covered (box count), mean_best_iou}, and under
    "grids" the grid reached from every start, in the same form plus "from": k-means (per S x R, fewest sizes
    first) or start."""
    log_size = 0.5 * np.log(boxes_wh[:, 0] * boxes_wh[:, 1])
    log_ratio = np.log(boxes_wh[:, 1] / boxes_wh[:, 0])
    starts = [("k-means", list(np.exp(kmeans_1d(log_size, num_s))), list(np.exp(kmeans_1d(log_ratio, num_r))))
              for num_s, num_r in _candidate_grids(num_anchors, num_sizes)]
    if start is not None:
        starts.append(("start", list(start[0]), list(start[1])))
    grids = []
    for origin, sizes, ratios in starts:
        sizes, ratios, (covered, mean_iou) = _local_search(boxes_wh, sizes, ratios, threshold)
        grids.append({"sizes": sizes, "ratios": ratios, "anchors_per_location": len(sizes) * len(ratios),
                      "covered": covered, "mean_best_iou": mean_iou, "from": origin})
    if num_sizes is not None:  # k-means finds fewer sizes than levels when the boxes have fewer distinct sizes
        grids = [grid for grid in grids if len(grid["sizes"]) == num_sizes] or grids
    best = max(grids, key=lambda grid: (grid["covered"], grid["mean_best_iou"]))  # the first of equals
    return {**best, "grids": grids}


def _describe_grid(boxes_wh: np.ndarray, sizes: Sequence[float], ratios: Sequence[float],
                   threshold: float) -> dict[str, Any]:
    """Coverage at ``threshold`` and at REPORT_THRESHOLDS, mean best IoU, and per anchor the boxes it covers."""
    anchors = anchor_shapes(sizes, ratios)
    iou = shape_iou(boxes_wh, anchors)  # (N, A)
    best_anchor = iou.argmax(axis=1)
    per_anchor = [
        {"size": float(sizes[a // len(ratios)]), "ratio": float(ratios[a % len(ratios)]),
         "width": round(float(w), 1), "height": round(float(h), 1),
         "boxes_at_iou": int((iou[:, a] >= threshold).sum()), "best_for": int((best_anchor == a).sum())}
        for a, (w, h) in enumerate(anchors)
    ]
    thresholds = sorted({threshold, *REPORT_THRESHOLDS}, reverse=True)
    return {
        "anchor_sizes": [float(s) for s in sizes], "anchor_ratios": [float(r) for r in ratios],
        "anchors_per_location": len(anchors),
        "coverage": {f"{t:g}": float((iou.max(axis=1) >= t).mean()) for t in thresholds},
        "mean_best_iou": float(iou.max(axis=1).mean()),
        "anchors": per_anchor,
        "unmatched_anchors": [a for a in per_anchor if a["boxes_at_iou"] == 0],
    }


def anchor_report(boxes_wh: np.ndarray, sizes: Sequence[float], ratios: Sequence[float], threshold: float = 0.7,
                  fpn: bool = False) -> dict[str, Any]:
    """JSON-ready report: box statistics, the current grid's coverage and the proposed grid's (see module doc).

    boxes_wh: (N, 2) box (w, h) in model-input pixels (`box_shapes`), N >= 1; with ``fpn`` the proposal keeps
    one size per level."""
    boxes_wh = np.asarray(boxes_wh, np.float64).reshape(-1, 2)
    box_size = np.sqrt(boxes_wh[:, 0] * boxes_wh[:, 1])
    box_ratio = boxes_wh[:, 1] / boxes_wh[:, 0]
    proposed = propose_anchors(boxes_wh, len(sizes) * len(ratios), threshold, len(sizes) if fpn else None,
                               start=(sizes, ratios))
    percentiles = (5, 50, 95)
    return {
        "iou": "shape-only (anchor centred on the box, as YOLOv5's autoanchor): an upper bound for grid anchors",
        "threshold": threshold,
        "boxes": len(boxes_wh),
        "box_size_percentiles": {f"p{p}": round(float(np.percentile(box_size, p)), 1) for p in percentiles},
        "box_ratio_percentiles": {f"p{p}": round(float(np.percentile(box_ratio, p)), 2) for p in percentiles},
        "current": _describe_grid(boxes_wh, sizes, ratios, threshold),
        "proposed": _describe_grid(boxes_wh, proposed["sizes"], proposed["ratios"], threshold),
        "grids_tried": [{"from": "current grid" if g["from"] == "start" else g["from"],
                         "anchor_sizes": g["sizes"], "anchor_ratios": g["ratios"],
                         "coverage": g["covered"] / len(boxes_wh), "mean_best_iou": g["mean_best_iou"]}
                        for g in proposed["grids"]],
    }


def _number(value: float) -> str:
    return f"{value:g}"


def _yaml_list(values: Sequence[float]) -> str:
    return f"[{', '.join(_number(v) for v in values)}]"


def _grid_lines(grid: dict[str, Any], threshold: float) -> list[str]:
    shares = ", ".join(f">= {t}: {share:.1%}" for t, share in grid["coverage"].items())
    lines = [f"  boxes with an anchor at IoU {shares}; mean best IoU {grid['mean_best_iou']:.3f}",
             f"  {'anchor (size x ratio)':<24}{'w x h':>14}{f'boxes IoU>={threshold:g}':>16}{'best for':>10}"]
    for a in grid["anchors"]:
        name = f"{_number(a['size'])} x {_number(a['ratio'])}"
        lines.append(f"  {name:<24}{a['width']:>7g} x {a['height']:<6g}{a['boxes_at_iou']:>14}{a['best_for']:>10}")
    unmatched = [f"{_number(a['size'])} x {_number(a['ratio'])}" for a in grid["unmatched_anchors"]]
    lines.append(f"  anchors matching no box at IoU >= {threshold:g}: {', '.join(unmatched) or 'none'}")
    return lines


def format_report(report: dict[str, Any], title: str) -> str:
    """The report as printed by `detector data anchors`, ending with a ready-to-paste YAML snippet."""
    current, proposed, threshold = report["current"], report["proposed"], report["threshold"]
    size_p, ratio_p = report["box_size_percentiles"], report["box_ratio_percentiles"]
    lines = [
        title,
        f"{report['boxes']} boxes; size sqrt(w*h) p5/p50/p95: {size_p['p5']:g} / {size_p['p50']:g} / "
        f"{size_p['p95']:g} px; "
        f"ratio h/w p5/p50/p95: {ratio_p['p5']:g} / {ratio_p['p50']:g} / {ratio_p['p95']:g}",
        "IoU is shape-only: each anchor centred on the box (as YOLOv5's autoanchor). Real anchors sit on a grid of",
        "centres a stride apart, so the RPN sees these IoUs or lower.",
        "",
        f"current anchors: {len(current['anchor_sizes'])} sizes x {len(current['anchor_ratios'])} ratios = "
        f"{current['anchors_per_location']} per location",
        *_grid_lines(current, threshold),
        "",
        f"proposed anchors (k-means on log size and log ratio, then a local search for the most boxes at IoU >= "
        f"{threshold:g}): {len(proposed['anchor_sizes'])} sizes x {len(proposed['anchor_ratios'])} ratios = "
        f"{proposed['anchors_per_location']} per location (at most the current {current['anchors_per_location']})",
        *_grid_lines(proposed, threshold),
        f"  grids searched (start, S x R, share at IoU >= {threshold:g}, mean best IoU, sizes, ratios):",
        *[f"  {g['from']:<13}{len(g['anchor_sizes']):>3} x {len(g['anchor_ratios']):<3}{g['coverage']:>7.1%}"
          f"{g['mean_best_iou']:>7.3f}  {_yaml_list(g['anchor_sizes'])} {_yaml_list(g['anchor_ratios'])}"
          for g in report["grids_tried"]],
        "",
        "paste into the config's model section:",
        f"  anchor_sizes: {_yaml_list(proposed['anchor_sizes'])}",
        f"  anchor_ratios: {_yaml_list(proposed['anchor_ratios'])}",
    ]
    return "\n".join(lines)


def plot_anchor_report(boxes_wh: np.ndarray, report: dict[str, Any], path: Path) -> Path:
    """Scatter of box (w, h) in model pixels, log axes, with the current and proposed anchor shapes on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axis = plt.subplots(figsize=(7, 6))
    axis.scatter(boxes_wh[:, 0], boxes_wh[:, 1], s=4, alpha=0.3, color="tab:blue", label="boxes")
    threshold = f"{report['threshold']:g}"
    for key, marker, color in (("current", "x", "tab:red"), ("proposed", "+", "tab:green")):
        shapes = np.array([[a["width"], a["height"]] for a in report[key]["anchors"]])
        share = report[key]["coverage"][threshold]
        axis.scatter(shapes[:, 0], shapes[:, 1], s=90, marker=marker, color=color, linewidths=2,
                     label=f"{key} anchors ({share:.1%} of boxes at IoU >= {threshold})")
    axis.set_xscale("log")
    axis.set_yscale("log")
    for scale_axis in (axis.xaxis, axis.yaxis):  # label 10, 100 in plain pixels, and leave the minor ticks bare
        scale_axis.set_major_formatter(ScalarFormatter())
        scale_axis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("width (model-input pixels)")
    axis.set_ylabel("height (model-input pixels)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

