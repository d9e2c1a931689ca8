"""Optimiser, learning-rate schedule (linear warm-up then cosine) and EMA of weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raysearch.errors import fail

OPTIMIZERS = ("adamw", "lion")


@dataclass
class OptimConfig:
    """Optimiser and schedule."""

    name: str = "adamw"
    """adamw or lion."""
    lr: float = 1e-3
    """Peak learning rate (Lion usually wants 3-10x less than AdamW)."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    warmup_fraction: float = 0.05
    """Share of the total steps spent warming the learning rate up linearly from 0."""
    min_lr_ratio: float = 0.05
    """Cosine decay ends at this fraction of the peak learning rate."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            fail(f"optimizer.name: unknown optimizer {self.name!r}, expected one of {list(OPTIMIZERS)}")
        if not self.lr > 0:
            fail(f"optimizer.lr: expected a learning rate > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            fail(f"optimizer.warmup_fraction: expected a fraction in [0, 1), got {self.warmup_fraction}")


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = max(1, int(cfg.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_ema(model: torch.nn.Module, decay: float):
    """Exponential moving average of parameters and buffers (None when decay is 0)."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
