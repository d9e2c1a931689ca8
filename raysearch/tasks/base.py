"""What every downstream task shares: the fine-tune config, model assembly and the optimiser."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from raysearch.checkpoint import load_backbone, read_model_config
from raysearch.errors import fail
from raysearch.model import JetModel, ModelConfig

Report = Callable[[dict[str, float]], None]


@dataclass
class FinetuneConfig:
    """How a downstream task is trained from a backbone (or from scratch)."""

    epochs: int = 20
    """Passes over the labelled subset."""
    batch_size: int = 64
    """Jets per step."""
    lr: float = 1e-3
    """Learning rate of the new layers (head)."""
    backbone_lr_factor: float = 0.3
    """Backbone learning rate = lr x this factor (pre-trained weights move more gently)."""
    freeze_backbone: bool = False
    """Train only the new head (a linear/MLP probe of the backbone)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    min_steps: int = 100
    """At least this many optimiser steps, so small budgets are not starved (epochs grow to reach it)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone used when training from scratch (a checkpoint brings its own)."""
    gen_samples: int = 1000
    """Generation: jets generated for the final metrics (JetNet recommends 50k on a GPU)."""
    gen_eval_samples: int = 200
    """Generation: jets generated for the per-epoch validation metric."""
    ode_steps: int = 16
    """Generation: ODE steps of the sampler."""
    solver: str = "midpoint"
    """Generation: euler or midpoint."""
    bootstrap: int = 5
    """Generation: bootstrap resamples for metric means and errors."""
    eval_every: int = 1
    """Epochs between validation reports."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                fail(f"finetune.{name}: expected a whole number >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            fail(f"finetune.lr: expected > 0, got {self.lr}")


class Task(Protocol):
    name: str
    dataset: str
    metric: str
    """Primary validation metric reported every epoch (what schedulers and the map compare)."""
    mode: str
    """max or min."""

    def run(self, cfg: FinetuneConfig, data_root: str | Path, budget: int, seed: int,
            checkpoint: str | Path | None, report: Report, resume: Any = None) -> dict[str, float]: ...


def backbone_config(cfg: FinetuneConfig, checkpoint: str | Path | None, **data_fields) -> ModelConfig:
    """The checkpoint's model config, or the scratch config completed with the data's fields."""
    if checkpoint is not None:
        mc, _ = read_model_config(checkpoint)
        return mc
    d = cfg.model.to_dict()
    for k, v in data_fields.items():
        if not d.get(k) or k in ("num_classes", "max_particles"):
            d[k] = v
    return ModelConfig(**d)


def assemble(model_cfg: ModelConfig, heads: tuple[str, ...], checkpoint: str | Path | None) -> JetModel:
    model = JetModel(model_cfg, heads)
    if checkpoint is not None:
        load_backbone(model, checkpoint)
    return model


def make_finetune_optimizer(model: JetModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with the backbone at lr x backbone_lr_factor (or frozen) and the heads at lr."""
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        groups = [{"params": list(model.heads.parameters()), "lr": cfg.lr}]
    else:
        groups = [{"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_factor},
                  {"params": list(model.heads.parameters()), "lr": cfg.lr}]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def epochs_for(cfg: FinetuneConfig, n_train: int) -> tuple[int, int]:
    """(epochs, evaluate every k epochs): small budgets get more epochs to reach `min_steps`, and
    evaluate proportionally less often, so every budget is evaluated about `epochs / eval_every` times."""
    steps_per_epoch = max(1, -(-n_train // cfg.batch_size))
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    return epochs, max(cfg.eval_every, epochs // cfg.epochs)


def optimizer_step(model: JetModel, opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One fine-tuning step (gradient norm clipped at 1); returns the loss value."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def restore(resume: dict[str, Any], model: JetModel, opt: torch.optim.Optimizer) -> tuple[dict, Any, int]:
    """Load a fine-tune checkpoint; returns (best metrics, best weights, next epoch)."""
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])
    return resume["best"], resume["best_state"], resume["epoch"]
