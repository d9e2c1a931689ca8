"""Supervised classification: cross-entropy of the class-token logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysearch.batch import JetBatch


def classification_loss(model, batch: JetBatch, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy; `class_weights` (C,) re-weights classes (class-balanced option)."""
    logits = model.classify(batch.particles, batch.mask)
    return F.cross_entropy(logits, batch.label, weight=class_weights)
