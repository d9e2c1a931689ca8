"""Masked particle modeling (MPM).

A fraction of each jet's real particles is hidden. A hidden particle keeps its angular position
(deta, dphi) as its cue (a learned mask token plus an embedding of the angles) and loses every other
feature, also towards its neighbours in the local block. The head reconstructs the hidden features:
standardised MSE for continuous ones, cross-entropy for the particle type where the data has it.

Why this is well posed for an unordered set: the question asked of each masked slot is "what is the
particle at this (deta, dphi)?", and no two particles share a position, so every target is identified
by its cue, whatever order the set is stored in. Asking for "the k-th particle" instead would have no
answer for a set (the same problem point-cloud masked autoencoders solve by keeping the centre).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysearch.batch import JetBatch


def choose_hidden(mask: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) bool: round(fraction * n) random real particles per jet (at least one)."""
    r = torch.rand(mask.shape, generator=generator, device=mask.device)
    r = r.masked_fill(~mask, 2.0)
    rank = r.argsort(dim=1).argsort(dim=1)
    n_hide = (mask.sum(1).float() * fraction).round().clamp(min=1).long()
    return (rank < n_hide.unsqueeze(1)) & mask


def mpm_loss(model, batch: JetBatch, fraction: float = 0.4,
             generator: torch.Generator | None = None) -> torch.Tensor:
    bb, head = model.backbone, model.heads["mpm"]
    x = bb.standardize(batch.particles, batch.mask)
    hidden = choose_hidden(batch.mask, fraction, generator)
    keep_cols = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    keep_cols[head.angle_index] = True
    x_in = torch.where(hidden.unsqueeze(-1) & ~keep_cols, torch.zeros_like(x), x)
    tokens = bb.embed_particles(x_in, batch.mask)
    cue = head.cue(x[..., head.angle_index]) + head.mask_token
    tokens = torch.where(hidden.unsqueeze(-1), cue, tokens)
    pred = head.out(bb.encode(tokens, batch.mask)[:, 1:])[hidden]
    target = x[hidden]
    n_reg = len(head.reg_index)
    loss = F.mse_loss(pred[:, :n_reg], target[:, head.reg_index])
    if head.type_index:
        onehot = batch.particles[hidden][:, head.type_index]
        known = onehot.sum(1) > 0.5  # data without particle identification has all-zero columns
        if known.any():
            loss = loss + F.cross_entropy(pred[known, n_reg:], onehot[known].argmax(1))
    return loss
