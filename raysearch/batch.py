"""The batch layout shared by the data layer and the model: the only contract between them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class JetBatch:
    """A batch of jets as the model sees them."""

    particles: torch.Tensor
    """(B, N, F) float32 per-particle features, zero in padded slots."""
    mask: torch.Tensor
    """(B, N) bool, True where a slot holds a real particle."""
    label: torch.Tensor
    """(B,) int64 class label."""
    jet: torch.Tensor
    """(B, J) float32 jet-level features (see the dataset's `jet_features`)."""

    def to(self, device: torch.device | str) -> "JetBatch":
        return JetBatch(*(t.to(device, non_blocking=True) for t in
                          (self.particles, self.mask, self.label, self.jet)))

    def __len__(self) -> int:
        return self.particles.shape[0]

    def slice(self, sl: slice) -> "JetBatch":
        return JetBatch(self.particles[sl], self.mask[sl], self.label[sl], self.jet[sl])
