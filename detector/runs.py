"""Run folders and metric logs: `runs/<name>/` (never overwritten), metrics.jsonl, TensorBoard, PNG curves."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from detector.errors import DetectorError


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create `output_dir/name`, or `name-2`, `name-3`, ... if it exists: a run never overwrites another."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DetectorError(f"cannot create the output folder {root}: {error.strerror}") from None
    if not os.access(root, os.W_OK):
        raise DetectorError(f"the output folder {root} is not writable")
    for suffix in range(1, 10_000):
        candidate = root / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise DetectorError(f"cannot create the run folder {candidate}: {error.strerror}") from None
    raise DetectorError(f"too many runs named {name} in {root}")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """A user-named output folder: created if new, accepted if empty, refused otherwise (never overwrite)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DetectorError(f"the output folder {out_dir} is a file; expected a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise DetectorError(f"the output folder {out_dir} is not empty; choose a new --out (results are never overwritten)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DetectorError(f"cannot create the output folder {out_dir}: {error.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise DetectorError(f"the output folder {out_dir} is not writable")
    return out_dir


class MetricsLogger:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard.

    ``resume_step``: a run resumed from the checkpoint of that step drops the rows logged after it (they are logged
    again), in metrics.jsonl and TensorBoard (``purge_step``), so no step appears twice."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and resume_step is not None and self.path.is_file():
            kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            tmp.replace(self.path)
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge)
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(json_safe(row)) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats (undefined COCO metrics) by None so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and `os.replace`: a reader (or a run
    interrupted mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short (a run killed while writing) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_curves(run_dir: Path) -> Path | None:
    """Draw losses, learning rate and validation mAP from metrics.jsonl into curves.png."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "AP" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    loss_keys = sorted({k for r in train for k in r if k.startswith(("rpn_", "roi_")) or k == "loss"})
    for key in loss_keys:
        axes[0].plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label=key)
    axes[0].set_title("training losses")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].plot([r["step"] for r in train], [r.get("lr", 0) for r in train])
    axes[1].set_title("learning rate")
    for key in ("AP", "AP50", "AP75"):
        axes[2].plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=key)
    axes[2].set_title("validation mAP")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=8)
    for axis in axes:
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
