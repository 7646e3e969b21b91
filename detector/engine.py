"""Training and evaluation loops, checkpoints, resume, and clean stops.

`Trainer.fit()` trains a detector from a config into `runs/<name>/`: every epoch an atomic `last.pt`,
`best.pt` by validation AP, metrics.jsonl, TensorBoard events and curves.png. Ctrl-C / SIGTERM save a
resumable checkpoint (mid-epoch included) and exit; `--resume` restores model, optimizer, scheduler,
scaler, EMA, epoch, iteration and RNG states, so a resumed run gives the same weights as an
uninterrupted one (on CPU with deterministic settings). Under `torchrun` the same code runs DDP.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from detector import distributed as dist
from detector.errors import StopRequested
from detector.distributed import resolve_device
from detector.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from detector.config import Config
from detector.data.build import build_datasets
from detector.data.stats import report_datasets
from detector.data.dataset import DetectionDataset, build_loader
from detector.data.mosaic_augment import build_mosaic
from detector.data.repeat import describe as describe_repeats, repeat_factors
from detector.data.transforms import Transform, build_transform
from detector.detector import FastRCNN, build_detector
from detector.evaluation import COCOEvaluator, EvalResult
from detector.optim import ModelEMA, build_optimizer, build_scheduler
from detector.runs import MetricsLogger, new_run_dir, plot_curves
from detector.structures import Dataset, DetectorError
from detector.tta import build_tta


class EpochSampler(Sampler[int]):
    """Indices of one epoch, shuffled by (seed, epoch), sharded over ranks, optionally skipping the
    first `start` samples of this rank (to resume mid-epoch on exactly the same batches).

    repeat_factors: (size,) factors >= 1 from `detector.data.repeat` (shuffled epochs only). Each epoch image i is
    put floor(r_i) times in a pool, once more with probability frac(r_i) (Detectron2's stochastic rounding), and the
    epoch is the first `size` draws of the shuffled pool: rare images come more often, and an epoch keeps its
    length, so `train.epochs`, the schedule and the time budget mean what they meant without repeats."""

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 repeat_factors: np.ndarray | None = None) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.repeat_factors = None if repeat_factors is None else torch.as_tensor(repeat_factors, dtype=torch.float64)
        if self.repeat_factors is not None and (len(self.repeat_factors) != size or (self.repeat_factors < 1).any()):
            raise ValueError(f"repeat_factors must hold {size} factors of at least 1")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            if self.repeat_factors is None:
                order = torch.randperm(self.size, generator=generator).tolist()
            else:
                factors = self.repeat_factors
                copies = factors.floor().long() + (torch.rand(self.size, generator=generator, dtype=torch.float64)
                                                   < factors - factors.floor()).long()
                pool = torch.repeat_interleave(torch.arange(self.size), copies)  # (sum of copies,) >= size
                order = pool[torch.randperm(len(pool), generator=generator)][: self.size].tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world_size)
        order += order[: per_rank * self.world_size - self.size]  # pad so every rank gets as many
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size) - self.start


def training_sampler(config: Config, train_set: Dataset, rank: int = 0, world_size: int = 1) -> EpochSampler:
    """The shuffled sampler of a training set's epochs, with the config's repeat-factor sampling (train.repeat_*);
    ours (`Trainer`) and the benchmark's peer (scripts/peer.py) draw their batches from it."""
    train = config.train
    factors = (repeat_factors(train_set, train.repeat_threshold, train.repeat_long_side, config.data.max_size)
               if train.repeat_threshold else None)
    return EpochSampler(len(train_set.records), True, train.seed, rank, world_size, factors)


def training_dataset(config: Config, train_set: Dataset,
                     proposals: dict[str, np.ndarray] | None = None) -> DetectionDataset:
    """The training samples of ``train_set`` with the config's augmentation (mosaic included) and data seed; ours
    (`Trainer`) and the benchmark's peer (scripts/peer.py) train on it."""
    transform = build_transform(config.augment, config.data.max_size, train=True)
    mosaic = build_mosaic(config.augment)
    return DetectionDataset(train_set, transform, proposals, seed=config.train.seed, mosaic=mosaic)


def rng_state() -> dict[str, Any]:
    """All RNG states, as tensors and plain values so `torch.load(weights_only=True)` can read them."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_settings(threads: int, deterministic: bool) -> Iterator[None]:
    """torch's process-wide settings for a training block: ``threads`` intra-op threads (0 leaves them) and, with
    ``deterministic``, deterministic algorithms (warn only) without cuDNN autotuning. The caller's settings come back
    afterwards, so a notebook or script that trains keeps its own thread count and modes."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]


@dataclass
class EvalOutput:
    result: EvalResult
    evaluator: COCOEvaluator  # holds the detections: results JSON, confusion matrix
    losses: dict[str, float]

    def save(self, out_dir: Path, config: Config) -> dict[str, str]:
        """Write detections.json and the ground_truth.json it was scored against (the source dataset's image and
        category ids: pycocotools on the two files reproduces the table), pr_curves.png and confusion_matrix.png;
        returns their paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("detections.json", "ground_truth.json", "pr_curves.png",
                                                   "confusion_matrix.png")}
        self.evaluator.save_results_json(paths["detections.json"])
        self.evaluator.save_ground_truth_json(paths["ground_truth.json"])
        self.result.plot_pr_curves(paths["pr_curves.png"])
        self.evaluator.plot_confusion_matrix(paths["confusion_matrix.png"], config.eval.confusion_iou,
                                             config.eval.confusion_score_thresh)
        return {name: str(path) for name, path in paths.items()}


def file_proposals(config: Config) -> dict[str, np.ndarray] | None:
    """Precomputed proposals keyed by image file name when `model.proposals` is 'file', else None."""
    if config.model.proposals != "file":
        return None
    from detector.data.proposals_file import read_proposals_file

    return read_proposals_file(config.model.proposals_file)


@torch.no_grad()
def evaluate(model: FastRCNN, dataset: Dataset, config: Config, device: torch.device, with_loss: bool = True,
             progress: bool = True, wrap_transform: Callable[[Transform], Transform] | None = None) -> EvalOutput:
    """COCO metrics (and mean validation losses) of `model` on `dataset`, in original image pixels. Detections are
    kept down to `eval.score_thresh` (low, for complete PR curves), whatever `model.score_thresh` says.
    ``wrap_transform`` wraps each evaluation transform (e.g. `detector.robustness.CorruptedTransform`, which
    corrupts every image's pixels before it is resized)."""
    heads, deploy_thresh = model.roi_heads, model.roi_heads.score_thresh
    heads.score_thresh = config.eval.score_thresh  # mAP wants the low-score tail that model.score_thresh may cut
    try:
        with torch.random.fork_rng(devices=[]):  # validation losses sample proposals: keep the training RNG intact
            return _evaluate(model, dataset, config, device, with_loss, progress, wrap_transform)
    finally:
        heads.score_thresh = deploy_thresh


def _evaluate(model: FastRCNN, dataset: Dataset, config: Config, device: torch.device, with_loss: bool,
              progress: bool, wrap_transform: Callable[[Transform], Transform] | None = None) -> EvalOutput:
    """With `eval.tta` the detections are those of detector.tta (one loader per size, in step); the losses are
    then those of the data.max_size view (an extra pass; none when eval.tta_sizes leaves that size out)."""
    model.eval()
    tta = build_tta(config) if config.eval.tta else None
    sizes = tta.sizes if tta else (config.data.max_size,)
    proposals = file_proposals(config)
    wrap = wrap_transform or (lambda transform: transform)
    loaders = [build_loader(DetectionDataset(dataset, wrap(build_transform(None, size, train=False)), proposals),
                            config.eval.batch_size, False, min(config.data.num_workers, 2), config.train.seed)
               for size in sizes]
    loss_view = sizes.index(config.data.max_size) if with_loss and config.data.max_size in sizes else None
    evaluator = COCOEvaluator(list(config.model.class_names), dataset.category_ids)
    records = {r.image_id: r for r in dataset.records}
    loss_sums: dict[str, float] = {}
    batches = 0
    for views in tqdm(zip(*loaders), total=len(loaders[0]), desc="eval", unit="batch", disable=not progress,
                      leave=False):
        batch = views[0]  # every view holds the same images, in the same order
        losses = None
        if tta is not None:
            detections = tta.predict(model, [v.images for v in views], batch.original_sizes,
                                     [v.proposals for v in views])
            if loss_view is not None:
                losses = model(views[loss_view].images, views[loss_view].targets, views[loss_view].proposals)
        elif with_loss:  # one backbone pass for both
            detections, losses = model.predict_with_losses(batch.images, batch.targets, batch.original_sizes,
                                                           batch.proposals)
        else:
            detections = model.predict(batch.images, batch.original_sizes, batch.proposals)
        if losses is not None:
            for key, value in losses.items():
                loss_sums[key] = loss_sums.get(key, 0.0) + float(value)
            batches += 1
        originals = [records[i] for i in batch.image_ids]
        targets = [r.targets() for r in originals]
        evaluator.process(batch.image_ids, targets, [d.to("cpu") for d in detections])
    return EvalOutput(evaluator.evaluate(), evaluator, {f"val_{k}": v / max(batches, 1) for k, v in loss_sums.items()})


class Trainer:
    """Owns one training run: model, optimizer, schedule, loaders, logging and checkpoints."""

    def __init__(self, config: Config, run_dir: Path | None = None, resume: Path | None = None,
                 progress: bool = True) -> None:
        self.config, self.progress = config, progress
        with self.torch_settings():
            self._build(run_dir, resume)

    def torch_settings(self) -> contextlib.AbstractContextManager[None]:
        """`train.threads` and `train.deterministic` while this trainer builds and trains, the caller's after."""
        return torch_settings(self.config.train.threads, self.config.train.deterministic)

    def _build(self, run_dir: Path | None, resume: Path | None) -> None:
        config = self.config
        dist.init_from_env()
        self.device = resolve_device(config.train.device)
        seed_everything(config.train.seed)
        if not dist.is_main():
            dist.barrier()  # rank 0 renders synthetic scenes first; the others then read them
        self.train_set, self.val_set = build_datasets(config)
        if dist.is_main():
            dist.barrier()
        self.model = build_detector(config, pretrained=resume is None).to(self.device)
        if config.train.channels_last:  # before the optimizer, EMA and DDP take the weights as they are
            self.model.to(memory_format=torch.channels_last)
        if dist.is_distributed() and config.train.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, config.train)
        self.train_data = training_dataset(config, self.train_set, file_proposals(config))
        self.sampler = training_sampler(config, self.train_set, dist.rank(), dist.world_size())
        # the loader's own seeded generator leaves the global RNG (proposal sampling) alone, so a resumed
        # run replays it exactly; augmentation is seeded per (epoch, index) by the dataset
        self.loader = build_loader(self.train_data, config.train.batch_size, False, config.data.num_workers,
                                   config.train.seed, sampler=self.sampler)
        self.batches_per_epoch = math.ceil(len(self.sampler) / config.train.batch_size)
        steps_per_epoch = math.ceil(self.batches_per_epoch / config.train.accumulate)
        self.started = time.monotonic()
        self.seconds_before = 0.0  # training time of the invocations a resumed run continues (budget clock)
        self.scheduler = build_scheduler(self.optimizer, config.train, config.train.epochs * steps_per_epoch,
                                         clock=self.budget_fraction if config.train.time_budget_min else None)
        use_fp16 = config.train.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
        self.ema = ModelEMA(self.model, config.train.ema_decay) if config.train.ema else None
        self.epoch, self.batch_in_epoch, self.step, self.best_ap = 0, 0, 0, -1.0
        self.stop_signal: int | None = None
        if resume is not None:
            self.run_dir = Path(resume).parent
            self._restore(load_checkpoint(resume, map_location=self.device), resume)
        else:
            self.run_dir = run_dir or (new_run_dir(config.train.output_dir, config.train.name) if dist.is_main() else Path())
            self.run_dir = dist.broadcast_path(self.run_dir)
            if dist.is_main():
                config.save(self.run_dir / "config.yaml")
        if dist.is_main():
            report_datasets({"train": self.train_set, "val": self.val_set}, self.run_dir)
            if self.sampler.repeat_factors is not None:
                print(describe_repeats(self.sampler.repeat_factors.numpy()), flush=True)
            if config.data.train_on_val:
                print(f"data.train_on_val: the {len(self.val_set.records)} validation images train too (the final "
                      "fit); their AP is a training figure and chooses nothing", flush=True)
        # a resumed run continues the log after the checkpoint's step: rows of the interrupted tail are dropped
        self.logger = MetricsLogger(self.run_dir, enabled=dist.is_main(),
                                    resume_step=self.step if resume is not None else None)
        self.ddp_model = dist.wrap_ddp(self.model, self.device)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_ap": self.best_ap,
            "train_seconds": self.train_seconds(),
            "rng": rng_state(),
        }

    def save(self, name: str, model_state: dict | None = None) -> Path:
        """Write a checkpoint; ``model_state`` (the evaluated weights: EMA's when on) instead of the trained model's
        marks it as not resumable (``weights: ema``), since its "model" is not the state training continues from."""
        path = self.run_dir / name
        if dist.is_main():
            weights = "ema" if model_state is not None and self.ema is not None else "model"
            save_checkpoint(path, model_state or self.model.state_dict(), self.config, weights=weights, **self._state())
        return path

    def _restore(self, payload: dict[str, Any], path: Path) -> None:
        if payload.get("weights") == "ema":
            raise DetectorError(f"{path} holds the EMA weights used for evaluation, not the training state; resume from "
                                f"{Path(path).parent / 'last.pt'}")
        load_model_state(self.model, payload["model"], path)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        if self.ema and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        self.epoch, self.batch_in_epoch = payload["epoch"], payload["batch_in_epoch"]
        self.step, self.best_ap = payload["step"], payload["best_ap"]
        self.seconds_before = float(payload.get("train_seconds", 0.0))  # absent in checkpoints before it existed
        set_rng_state(payload["rng"])

    # ---- signals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_signals(self) -> Iterator[None]:
        def request_stop(signum: int, _frame: Any) -> None:
            self.stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # ---- loops -------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train to `train.epochs`; returns the run folder."""
        train = self.config.train
        self.started = time.monotonic()
        with self._catch_signals(), self.torch_settings():
            while self.epoch < train.epochs:
                over_budget = not self.train_one_epoch()
                if not over_budget:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                last_epoch = self.epoch == train.epochs or over_budget
                if (train.eval_every and self.epoch % train.eval_every == 0) or last_epoch:
                    self.validate()
                self.save("last.pt")  # after validation, so best_ap in it is current
                if over_budget:
                    break
        if dist.is_main():
            plot_curves(self.run_dir)
        self.logger.close()
        dist.check_weights_in_sync(self.model, self.run_dir)
        return self.run_dir

    def _forward_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        amp = self.config.train.amp
        enabled = amp != "none" and self.device.type == "cuda"
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=enabled):
            return self.ddp_model(batch.images, batch.targets, batch.proposals)

    def train_seconds(self) -> float:
        """Wall-clock seconds this run has trained (validation included), over all its invocations."""
        return self.seconds_before + time.monotonic() - self.started

    def budget_fraction(self) -> float:
        """Fraction of `train.time_budget_min` used by this run, a resumed run counting the time before its
        interruption (0 without a budget); rank 0's clock under DDP, so all ranks follow the same learning rate
        and stop together."""
        budget = self.config.train.time_budget_min * 60
        return dist.broadcast_float(self.train_seconds() / budget) if budget > 0 else 0.0

    def train_one_epoch(self) -> bool:
        """Train on the rest of the current epoch; False if the time budget ran out first."""
        train = self.config.train
        self.model.train()
        self.train_data.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * train.batch_size)
        bar = tqdm(total=self.batches_per_epoch, initial=self.batch_in_epoch, unit="it", dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{train.epochs}", disable=not (self.progress and dist.is_main()))
        for batch in self._batches():
            loss, stepped = self.train_step(batch)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if stepped and self._should_stop():
                bar.close()
                return False
        bar.close()
        return True

    def _batches(self) -> Iterator[Any]:
        """The loader's batches; a data error on any rank stops every rank at the same batch (no rank is left
        waiting in a collective), with the error of the rank that had it."""
        batches = iter(self.loader)
        while True:
            error: BaseException | None = None
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as caught:  # a corrupt image, a label error in a worker, ...
                error = caught
            if dist.any_rank(error is not None):
                raise error if error is not None else DetectorError("another rank hit a data error; see its output")
            yield batch

    def train_step(self, batch: Any) -> tuple[float, bool]:
        """One batch: forward, the non-finite check (agreed across ranks), backward; at an accumulation boundary
        the optimizer step, the snapshot and the log row. Returns (the batch's loss, whether the optimizer stepped)."""
        train = self.config.train
        losses = self._forward_losses(batch)
        loss = sum(losses.values())
        finite = bool(torch.isfinite(loss))
        if dist.any_rank(not finite):
            values = {k: round(float(v.detach()), 4) for k, v in losses.items()}
            raise DetectorError(
                f"non-finite loss{'' if not finite else ' on another rank'} at epoch {self.epoch + 1}, iteration "
                f"{self.step} ({values}); training stopped, the last good checkpoint is kept in {self.run_dir}"
            )
        self.scaler.scale(loss / train.accumulate).backward()
        self.batch_in_epoch += 1
        value = float(loss.detach())
        # accumulated gradients are not saved, so the run only stops (and checkpoints) at these boundaries
        if self.batch_in_epoch % train.accumulate and self.batch_in_epoch != self.batches_per_epoch:
            return value, False
        self._optimizer_step()
        self._maybe_snapshot()
        if self.step % train.log_every == 0:
            row = {k: float(v.detach()) for k, v in losses.items()}
            self.logger.log(self.step, epoch=self.epoch, loss=value, lr=self.optimizer.param_groups[0]["lr"], **row)
        return value, True

    def _should_stop(self) -> bool:
        """At an optimizer-step boundary: a signal on any rank saves last.pt and raises StopRequested on every rank;
        True when the time budget is spent."""
        if dist.any_rank(self.stop_signal is not None):  # every rank stops at the same step
            checkpoint = self.save("last.pt")
            raise StopRequested(self.stop_signal or signal.SIGTERM, checkpoint)
        return self.budget_fraction() >= 1.0

    def _maybe_snapshot(self) -> None:
        """At every multiple of `train.snapshot_every_min` minutes of training, the weights evaluation would use (EMA's
        when on) as snapshot_<minute mark>min.pt, for accuracy-against-time curves scored after training. A file is
        named by its minute mark, not the clock's reading, so names never collide however short the steps; a step
        that crosses several marks saves the last one; a resumed run keeps the marks already on disk."""
        every_min = self.config.train.snapshot_every_min
        if every_min <= 0:
            return
        mark = int(self.train_seconds() // (every_min * 60))
        path = self.run_dir / f"snapshot_{mark * every_min:06.2f}min.pt"
        if mark >= 1 and not path.exists():
            model = self.ema.module if self.ema else self.model
            self.save(path.name, model.state_dict())

    def _optimizer_step(self) -> None:
        clip = self.config.train.clip_grad_norm
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema:
            self.ema.update(self.model)

    def validate(self) -> EvalResult | None:
        """Validation mAP on rank 0; writes best.pt when AP improves."""
        if not dist.is_main():
            dist.barrier()
            return None
        model = self.ema.module if self.ema else self.model
        output = evaluate(model, self.val_set, self.config, self.device, progress=self.progress)
        metrics = {k: round(v, 5) for k, v in output.result.metrics.items() if isinstance(v, float)}
        self.logger.log(self.step, epoch=self.epoch, **metrics, **output.losses)
        ap = metrics.get("AP", float("nan"))
        # with data.train_on_val the validation images train too: their AP chooses nothing, best.pt is the latest
        if (not math.isnan(ap) and ap > self.best_ap) or not (self.run_dir / "best.pt").exists() \
                or self.config.data.train_on_val:
            self.best_ap = ap if not math.isnan(ap) else self.best_ap
            self.save("best.pt", model.state_dict())
        if self.progress:
            print(f"epoch {self.epoch}: AP {metrics.get('AP', 0):.4f}  AP50 {metrics.get('AP50', 0):.4f}  (best AP {self.best_ap:.4f})")
        dist.barrier()
        return output.result
