"""Optimizers, the learning-rate schedule (linear warmup, then cosine or step decay) and weight EMA."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from detector.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over trainable parameters; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


def lr_factor(iteration: int, total_iters: int, train: TrainConfig, time_fraction: float = 0.0) -> float:
    """Multiplier of the base learning rate at `iteration` (0-based) of `total_iters` optimizer steps.

    With a time budget, `time_fraction` (share of the budget used) advances the decay too, so a run
    stopped by the clock still ends at a low learning rate."""
    if iteration < train.warmup_iters:
        alpha = iteration / max(train.warmup_iters, 1)
        warmup = train.warmup_factor * (1 - alpha) + alpha
    else:
        warmup = 1.0
    progress = min(max(iteration / max(total_iters, 1), time_fraction), 1.0)
    if train.scheduler == "step":
        decay = train.step_gamma ** sum(progress >= m for m in train.step_milestones)
    else:
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    return warmup * decay


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_iters: int,
                    clock: Callable[[], float] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule; its state is just the step count, so a resumed run may change `total_iters`.
    `clock` returns the share of a time budget used (see `lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total_iters, train, clock() if clock else 0.0)
    )


class ModelEMA:
    """Exponential moving average of a model's weights (and buffers), used for evaluation.

    The decay ramps up as ``decay * (1 - exp(-updates / 2000))`` so early averages are not dominated
    by the random initial head."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / 2000))
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[name].detach(), alpha=1 - decay)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
