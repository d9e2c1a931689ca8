"""Flow matching on a linear path, and the ODE sampler that generates particles with it.

Path x_t = (1 - t) x + t eps, t ~ U(0, 1) per jet, eps ~ N(0, 1) in the head's standardised feature
space (i.e. a Gaussian source matched to the data's per-feature means and widths); the velocity
target is eps - x and the loss is the MSE over real particles. Sampling integrates dx/dt = v from
t = 1 (noise) to t = 0 (data) with Euler or midpoint steps.
"""

from __future__ import annotations

import torch

from raysearch.batch import JetBatch
from raysearch.errors import fail

SOLVERS = ("euler", "midpoint")


def fm_loss(model, batch: JetBatch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow-matching loss of a batch in the model's input features."""
    jet = batch.jet[:, model.jet_condition_index()] if model.heads["fm"].jet_conditions else None
    return flow_matching_loss(model, batch.particles[..., model.fm_index()], batch.mask, batch.label, generator, jet)


def flow_matching_loss(model, x_raw: torch.Tensor, mask: torch.Tensor, label: torch.Tensor,
                       generator: torch.Generator | None = None, jet: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-matching loss of particles already given in the head's features (B, N, F_fm).

    `jet` (B, K) holds the head's jet-level conditions (`head.jet_conditions`), if it has any.
    """
    head = model.heads["fm"]
    m = mask.unsqueeze(-1)
    x = (x_raw - head.feat_mean) / head.feat_std * m
    t = torch.rand(x.shape[0], generator=generator, device=x.device)
    eps = torch.randn(x.shape, generator=generator, device=x.device) * m
    tt = t.view(-1, 1, 1)
    x_t = (1 - tt) * x + tt * eps
    v = head.velocity(model.backbone, x_t, t, mask, label, jet)
    return ((v - (eps - x)) ** 2 * m).sum() / (m.sum() * x.shape[-1]).clamp(min=1)


@torch.no_grad()
def sample(model, label: torch.Tensor, n_particles: torch.Tensor, max_particles: int, steps: int = 32,
           solver: str = "midpoint", generator: torch.Generator | None = None,
           jet: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate jets of the given classes and multiplicities (and jet-level conditions `jet`, (B, K)
    in the order of the head's `jet_conditions`, when it has them).

    Returns (particles (B, max_particles, F_fm) in raw feature units, zero at padding; mask (B, N)).
    """
    if solver not in SOLVERS:
        fail(f"solver: unknown ODE solver {solver!r}, expected one of {SOLVERS}")
    if steps < 1:
        fail(f"steps: expected at least 1 ODE step, got {steps}")
    head = model.heads["fm"]
    device = head.feat_mean.device
    mask = torch.arange(max_particles, device=device).unsqueeze(0) < n_particles.to(device).unsqueeze(1)
    m = mask.unsqueeze(-1)
    x = torch.randn((len(label), max_particles, len(head.feat_mean)), generator=generator, device=device) * m
    label = label.to(device)
    jet = jet.to(device) if jet is not None else None
    v = lambda x_, t_: head.velocity(model.backbone, x_, torch.full((len(label),), t_, device=device), mask, label, jet)
    dt = 1.0 / steps
    for i in range(steps):
        t = 1.0 - i * dt
        if solver == "euler":
            x = x - dt * v(x, t)
        else:
            x_mid = x - 0.5 * dt * v(x, t)
            x = x - dt * v(x_mid, t - 0.5 * dt)
    return (x * head.feat_std + head.feat_mean) * m, mask
