"""k-nearest-neighbour accuracy of backbone embeddings: a cheap fidelity signal during pre-training."""

from __future__ import annotations

import numpy as np
import torch

from raysearch.data import ArrayLoader


@torch.no_grad()
def embed(model, loader: ArrayLoader) -> tuple[np.ndarray, np.ndarray]:
    """Class-token embeddings (clean input) and labels of every jet in `loader`."""
    model.eval()
    bb = model.backbone
    out, labels = [], []
    for b in loader:
        x = bb.standardize(b.particles, b.mask)
        out.append(bb.encode(bb.embed_particles(x, b.mask), b.mask)[:, 0])
        labels.append(b.label)
    return torch.cat(out).numpy(), torch.cat(labels).numpy()


def knn_accuracy(emb: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy (cosine similarity, majority vote) of labelled embeddings."""
    if len(labels) < 2:
        return float("nan")
    z = torch.nn.functional.normalize(torch.from_numpy(emb).float(), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-2.0)
    k = min(k, len(labels) - 1)
    idx = sim.topk(k, dim=1).indices.numpy()
    votes = labels[idx]
    n_classes = int(labels.max()) + 1
    counts = np.stack([(votes == c).sum(1) for c in range(n_classes)], axis=1)
    return float((counts.argmax(1) == labels).mean())
