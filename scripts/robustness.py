"""Corruption benchmark: ours and the peer (or any trained models) on one split under every named corruption.

    python scripts/robustness.py --model ours=runs/bench/kitti_cars-ours/best.pt \
        --model peer=runs/bench/kitti_cars-peer/peer.pt --split test --corrupt all \
        --out docs/benchmarks/robustness/kitti_test

Each ``--model NAME=WEIGHTS`` is a checkpoint of `detector train` (ours: its config rides in it) or the peer's
``peer.pt`` written by scripts/benchmark.py (torchvision's FasterRCNN: its config is the ``config.yaml`` beside it).
Every model is scored on the split of its own config (``--split``), clean and under each (corruption, severity) of
``--corrupt`` (detector/robustness.py: each image corrupted at its own resolution, before the resize, with its own
seed), with the project's COCO evaluator; the summary per model is mPC (mean AP over corruptions and severities) and
rPC = mPC / clean AP, as Michaelis et al. 2019. A model trained with ``augment.weather`` also gets mPC / rPC over
the corruptions it was trained on and over the held-out ones. Writes robustness.json (command, date, machine,
versions, every figure), robustness.md and robustness.png (AP per corruption, one bar per model) into --out; a model
already there with the same weights, split and corruptions is kept. A model being scored saves each figure to
robustness.partial.json as it comes, so an interrupted run resumes at the corruption where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.checkpoint import load_detector  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.data.build import build_split  # noqa: E402
from detector.engine import evaluate  # noqa: E402
from detector.errors import DetectorError  # noqa: E402
from detector.robustness import (  # noqa: E402
    SEVERITIES, group_figures, parse_corruptions, score_corruptions, summarize, trained_corruptions)
from detector.runs import json_safe, write_text_atomic  # noqa: E402

PEER_CONFIG = "config.yaml"  # scripts/benchmark.py saves the peer's config beside its peer.pt
PARTIAL = "robustness.partial.json"  # figures of a model being scored, saved as they come (resume)


def parse_model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise DetectorError(f"--model '{spec}': expected NAME=WEIGHTS, e.g. ours=runs/kitti_cars/best.pt")
    weights = Path(path.strip())
    if not weights.is_file():
        raise DetectorError(f"--model {name}: weights file {weights} not found")
    return name.strip(), weights


def model_kind(weights: Path) -> str:
    """'ours' for a `detector train` checkpoint (a dict holding the config), 'peer' for a bare state dict."""
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    return "ours" if isinstance(payload, dict) and "config" in payload and "model" in payload else "peer"


def scorer(weights: Path, kind: str, split: str, max_images: int) -> tuple[Callable, Any]:
    """-> (evaluate(wrap_transform) -> COCO metrics of the model on the split, the model's config)."""
    if kind == "ours":
        model, config = load_detector(weights)
    else:
        from peer import evaluate_peer, peer_from_config  # scripts/ is on sys.path when this file runs

        config_path = weights.parent / PEER_CONFIG
        if not config_path.is_file():
            raise DetectorError(f"--model {weights}: a peer's weights need their {PEER_CONFIG} beside them "
                                f"(scripts/benchmark.py writes it), not found at {config_path}")
        config = load_config(str(config_path))
        model = peer_from_config(config, pretrained=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
    dataset = build_split(config, split)
    if max_images:
        dataset.records = dataset.records[:max_images]
    if kind == "ours":
        return (lambda wrap: evaluate(model, dataset, config, torch.device("cpu"), with_loss=False, progress=False,
                                      wrap_transform=wrap).result.metrics), config
    return (lambda wrap: evaluate_peer(model, dataset, config, progress=False, wrap_transform=wrap).result.metrics,
            config)


def score_model(name: str, weights: Path, split: str, corruptions: list[tuple[str, int]], max_images: int,
                partial: Path | None = None) -> dict:
    """The robustness summary of one model; with ``partial`` (a JSON file), every figure is saved there as it is
    scored and figures already there for the same model, weights, split and image count are reused."""
    kind = model_kind(weights)
    print(f"\n=== {name} ({kind}): {weights} on {split}, {len(corruptions)} corruptions ===", flush=True)
    identity = {"weights": str(weights), "split": split, "max_images": max_images}
    saved = read_partial(partial) if partial is not None else {}
    mine = saved.get(name) if saved.get(name, {}).get("identity") == identity else None
    mine = mine or {"identity": identity, "clean": None, "scores": []}
    done = {(c["name"], c["severity"]): c for c in mine["scores"]}
    if done or mine["clean"]:
        print(f"resuming from {partial}: clean {'scored' if mine['clean'] else 'to score'}, {len(done)} of "
              f"{len(corruptions)} corruptions scored", flush=True)

    def save() -> None:
        if partial is not None:
            saved[name] = mine
            write_text_atomic(partial, json.dumps(json_safe(saved), indent=1))

    run, config = scorer(weights, kind, split, max_images)
    if mine["clean"] is None:
        metrics = run(None)
        mine["clean"] = {m: metrics[m] for m in ("AP", "AP50")}
        save()
    clean = mine["clean"]
    print(f"clean AP {clean['AP']:.3f} AP50 {clean['AP50']:.3f}", flush=True)

    def keep(key: tuple[str, int], figures: dict) -> None:
        mine["scores"].append({"name": key[0], "severity": key[1], **figures})
        save()

    scores = score_corruptions(run, corruptions, done=done, on_score=keep)
    augment, trained_on = config.augment, trained_corruptions(config.augment)
    return {"kind": kind, "weights": str(weights), "split": split, "max_images": max_images,
            "weather": {"p": augment.weather, "corruptions": list(trained_on), "max_severity": augment.weather_max_severity}
            if trained_on else None, **summarize(clean, scores, trained_on)}


def read_partial(path: Path) -> dict[str, Any]:
    """The figures an interrupted run saved ({} when there is no such file); one sentence when it is unreadable."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DetectorError(f"{path}: cannot read the figures of an interrupted run ({error}); delete it to score "
                            "from the start") from None
    if not isinstance(saved, dict) or not all(isinstance(entry, dict) for entry in saved.values()):
        raise DetectorError(f"{path}: expected a JSON object of models (an interrupted run's figures); delete it to "
                            "score from the start")
    return saved


def _drop_partial(path: Path, name: str) -> None:
    """Forget the interrupted-run figures of ``name`` (now in robustness.json); the file goes with its last model."""
    saved = read_partial(path)
    saved.pop(name, None)
    if saved:
        write_text_atomic(path, json.dumps(json_safe(saved), indent=1))
    else:
        path.unlink(missing_ok=True)


def _mean_ap(summary: dict, name: str, metric: str = "AP") -> float | None:
    values = [c[metric] for c in summary["corruptions"] if c["name"] == name]
    return sum(values) / len(values) if values else None


def _group_cell(summary: dict, group: list[str]) -> str:
    """'mPC / rPC' of one model over the corruptions in ``group`` (robustness.group_figures), or a dash."""
    scores = {(c["name"], c["severity"]): c for c in summary["corruptions"]}
    figures = group_figures(summary["clean"], scores, group, metrics=("AP",))
    if not figures:
        return "–"
    rpc = figures["rPC_AP"]
    return f"{figures['mPC_AP']:.3f} / " + ("–" if rpc is None else f"{rpc:.3f}")


def markdown(report: dict) -> str:
    models = report["models"]
    names = list(models)
    corruptions = list(dict.fromkeys(c["name"] for s in models.values() for c in s["corruptions"]))

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [f"# Corruption benchmark ({report['split']} split)", "", f"`{report['command']}`", "",
             f"{report['date']}, {report['machine']['platform']}, {report['machine']['threads']} threads; "
             f"torch {report['versions']['torch']}, albumentations {report['versions']['albumentations']}.", "",
             "COCO AP per corruption (mean over the severities scored), clean AP, mPC and rPC:", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| clean | " + " | ".join(cell(models[n]["clean"]["AP"]) for n in names) + " |")
    for corruption in corruptions:
        marks = {n: "*" if corruption in (models[n].get("trained_on") or ()) else "" for n in names}
        lines.append(f"| {corruption} | " + " | ".join(cell(_mean_ap(models[n], corruption)) + marks[n]
                                                       for n in names) + " |")
    for label, key in (("**mPC**", "mPC_AP"), ("**rPC**", "rPC_AP"), ("mPC AP50", "mPC_AP50"), ("rPC AP50", "rPC_AP50")):
        lines.append(f"| {label} | " + " | ".join(cell(models[n].get(key)) for n in names) + " |")
    trained = next((models[n]["trained_on"] for n in names if models[n].get("trained_on")), None)
    if trained:  # every model over the same two groups: the robust model's training corruptions and the rest
        for label, group in (("trained-on", [c for c in corruptions if c in trained]),
                             ("held-out", [c for c in corruptions if c not in trained])):
            lines.append(f"| mPC / rPC, {label} corruptions | " + " | ".join(
                _group_cell(models[n], group) for n in names) + " |")
        lines += ["", f"\\* a corruption the model was trained with (augment.weather: {', '.join(trained)}); the "
                  "others are held out. The group rows score every model over the same corruptions."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Grouped bars: AP per corruption (mean over severities), one bar per model, its clean AP as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = report["models"]
    corruptions = list(dict.fromkeys(c["name"] for s in models.values() for c in s["corruptions"]))
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(7.0, 0.75 * len(corruptions) + 2), 4.2))
    positions = np.arange(len(corruptions))
    for index, (name, summary) in enumerate(models.items()):
        values = [_mean_ap(summary, c) or 0.0 for c in corruptions]
        bars = axes.bar(positions + (index - (len(models) - 1) / 2) * width, values, width,
                        label=f"{name} (mPC {summary['mPC_AP']:.3f}, rPC {summary['rPC_AP'] or 0:.2f})")
        axes.axhline(summary["clean"]["AP"], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    axes.set_xticks(positions, [c.replace("_", "\n") for c in corruptions], fontsize=8)
    axes.set_ylabel(f"COCO AP, mean of severities, {report['split']} split")
    axes.set_title("AP under corruption (dashed: clean AP)", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # off the bars
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score trained models under named image corruptions: mPC, rPC.")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=WEIGHTS",
                        help="a `detector train` checkpoint or a peer.pt from scripts/benchmark.py (repeatable)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="the split of each model's config")
    parser.add_argument("--corrupt", default="all", help="corruptions: NAME:SEVERITY[,...], NAME or all")
    parser.add_argument("--out", required=True, help="results folder (robustness.json, .md, .png)")
    parser.add_argument("--max-images", type=int, default=0, help="score only the first N images (smoke runs)")
    parser.add_argument("--rerun", action="store_true", help="score models again even when --out holds them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/robustness.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        corruptions = parse_corruptions(args.corrupt)
        models = [parse_model(spec) for spec in args.model]
        if args.max_images < 0:
            raise DetectorError(f"--max-images must be 0 (all) or positive, got {args.max_images}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "robustness.json"
        previous = json.loads(path.read_text()).get("models", {}) if path.is_file() else {}
        report = _report_header(command, args.split)
        wanted = [{"name": n, "severity": v} for n, v in corruptions]
        for name, weights in models:
            kept = previous.get(name)
            if (not args.rerun and kept and kept["weights"] == str(weights) and kept["split"] == args.split
                    and kept.get("max_images", 0) == args.max_images
                    and [{k: c[k] for k in ("name", "severity")} for c in kept["corruptions"]] == wanted):
                print(f"=== {name}: kept from {path} (same weights, split and corruptions; --rerun scores again) ===")
                report["models"][name] = kept
            else:
                report["models"][name] = score_model(name, weights, args.split, corruptions, args.max_images,
                                                     partial=out / PARTIAL)
            write_text_atomic(path, json.dumps(json_safe(report), indent=2))  # after every model
            _drop_partial(out / PARTIAL, name)
        text = markdown(report)
        (out / "robustness.md").write_text(text)
        picture = plot(report, out / "robustness.png")
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n" + text)
    print(f"wrote {path}, {out / 'robustness.md'} and {picture}")
    return 0


def _report_header(command: str, split: str) -> dict[str, Any]:
    import albumentations

    return {"command": command, "split": split, "severities": list(SEVERITIES),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "albumentations": albumentations.__version__},
            "models": {}}


if __name__ == "__main__":
    sys.exit(main())
