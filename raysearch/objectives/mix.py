"""The objective mix L = a_cls * L_cls + a_mpm * L_mpm + a_fm * L_fm."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raysearch.batch import JetBatch
from raysearch.errors import fail
from raysearch.objectives.classification import classification_loss
from raysearch.objectives.flow_matching import fm_loss
from raysearch.objectives.masked_particles import mpm_loss


@dataclass(frozen=True)
class Mix:
    """Weights of the three pre-training objectives (normalised or not: they are used as given)."""

    cls: float = 0.0
    """Weight of supervised classification."""
    mpm: float = 0.0
    """Weight of masked particle modeling."""
    fm: float = 0.0
    """Weight of flow-matching generation."""

    def __post_init__(self):
        for name in ("cls", "mpm", "fm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                fail(f"mix.{name}: expected a finite number, got {v!r}")
            if v < 0:
                fail(f"mix.{name}: weights must be >= 0, got {v}")
        if self.cls == self.mpm == self.fm == 0:
            fail("mix: weights must be >= 0 and not all 0")

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads this mix trains (a head whose weight is 0 is not built)."""
        return tuple(n for n in ("cls", "mpm", "fm") if getattr(self, n) > 0)

    def as_dict(self) -> dict[str, float]:
        return {"cls": float(self.cls), "mpm": float(self.mpm), "fm": float(self.fm)}

    def normalized(self) -> "Mix":
        s = self.cls + self.mpm + self.fm
        return Mix(self.cls / s, self.mpm / s, self.fm / s)

    @property
    def name(self) -> str:
        """Short readable name, e.g. `cls+mpm` or `cls0.67+mpm0.33`."""
        n = self.normalized()
        active = [(k, getattr(n, k)) for k in ("cls", "mpm", "fm") if getattr(n, k) > 0]
        equal = all(abs(w - active[0][1]) < 1e-9 for _, w in active)
        return "+".join(k if equal else f"{k}{w:.2f}" for k, w in active)


@dataclass
class ObjectiveConfig:
    """Settings of the objectives themselves (not their weights)."""

    mask_fraction: float = 0.4
    """Fraction of real particles hidden per jet by masked particle modeling."""
    balanced_classes: bool = False
    """Weight the classification loss by inverse class frequency."""

    def __post_init__(self):
        if not 0 < self.mask_fraction < 1:
            fail(f"objectives.mask_fraction: expected a fraction in (0, 1), got {self.mask_fraction}")


@dataclass
class LossOutput:
    total: torch.Tensor
    raw: dict[str, torch.Tensor]
    """Each active objective's loss before weighting."""
    weighted: dict[str, torch.Tensor]
    """Each active objective's loss times its weight."""
    forward_passes: int
    """Backbone forward passes this step took (one per active objective)."""


def mix_loss(model, batch: JetBatch, mix: Mix, cfg: ObjectiveConfig = ObjectiveConfig(),
             class_weights: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput:
    raw: dict[str, torch.Tensor] = {}
    if mix.cls > 0:
        raw["cls"] = classification_loss(model, batch, class_weights if cfg.balanced_classes else None)
    if mix.mpm > 0:
        raw["mpm"] = mpm_loss(model, batch, cfg.mask_fraction, generator)
    if mix.fm > 0:
        raw["fm"] = fm_loss(model, batch, generator)
    weighted = {k: getattr(mix, k) * v for k, v in raw.items()}
    total = sum(weighted.values())  # = a_cls * L_cls + a_mpm * L_mpm + a_fm * L_fm
    return LossOutput(total, raw, weighted, forward_passes=len(raw))
