"""Energy flow polynomials (Komiske, Metodiev, Thaler, arXiv:1712.07124) of JetNet-style jets.

EFP_G = sum over particles i_1..i_n of z_i1 ... z_in prod_{(k, l) in G} theta_{i_k i_l} for a multigraph G,
with the hadronic measure JetNet uses: z_i = pT_i / sum pT, theta_ij = Delta R_ij (beta = 1).
A disconnected graph's EFP is the product of its connected parts' EFPs.

Two sets follow JetNet's metrics (arXiv:2211.10295):
- `W1EFP_GRAPHS`: the 5 connected graphs with 4 vertices and 4 edges (its W1EFP);
- `FPD_GRAPHS`: every graph with at most 4 edges, the empty one included (36 EFPs; its FPD and KPD).
The graphs are enumerated here rather than listed by hand, and evaluated with `numpy.einsum`.
"""

from __future__ import annotations

import itertools
import string
from functools import lru_cache

import numpy as np

Graph = tuple[tuple[int, int], ...]
"""A connected multigraph as a sorted edge list on vertices 0..n-1; () is the single vertex."""


def _vertices(g: Graph) -> int:
    return 1 + max((max(e) for e in g), default=0)


def _connected(edges: Graph, n: int) -> bool:
    seen, todo = {0}, [0]
    while todo:
        v = todo.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == v and y not in seen:
                    seen.add(y)
                    todo.append(y)
    return len(seen) == n


def _canonical(edges: Graph, n: int) -> Graph:
    """The smallest relabelling of the graph: one representative per isomorphism class."""
    return min(tuple(sorted(tuple(sorted((p[a], p[b]))) for a, b in edges)) for p in itertools.permutations(range(n)))


@lru_cache(maxsize=None)
def connected_graphs(edges: int) -> tuple[Graph, ...]:
    """All connected multigraphs (no self-loops) with exactly `edges` edges, up to isomorphism."""
    if edges == 0:
        return ((),)
    found = set()
    for n in range(2, edges + 2):
        pairs = list(itertools.combinations(range(n), 2))
        for g in itertools.combinations_with_replacement(pairs, edges):
            if len({v for e in g for v in e}) == n and _connected(g, n):
                found.add(_canonical(g, n))
    return tuple(sorted(found, key=lambda g: (_vertices(g), g)))


def graphs_up_to(max_edges: int) -> tuple[tuple[Graph, ...], ...]:
    """Every EFP with at most `max_edges` edges, as a product (tuple) of connected graphs."""
    prime = [g for d in range(1, max_edges + 1) for g in connected_graphs(d)]
    out: list[tuple[Graph, ...]] = [((),)]
    for k in range(1, max_edges + 1):
        for combo in itertools.combinations_with_replacement(prime, k):
            if sum(len(g) for g in combo) <= max_edges:
                out.append(combo)
    return tuple(out)


W1EFP_GRAPHS = tuple((g,) for g in connected_graphs(4) if _vertices(g) == 4)
FPD_GRAPHS = graphs_up_to(4)


def _einsum_spec(g: Graph) -> str:
    letters = string.ascii_lowercase[1:]  # 'a' is the batch index
    n = _vertices(g)
    terms = [f"a{letters[v]}" for v in range(n)] + [f"a{letters[i]}{letters[j]}" for i, j in g]
    return ",".join(terms) + "->a"


def efps(particles: np.ndarray, mask: np.ndarray, graphs=W1EFP_GRAPHS) -> np.ndarray:
    """(N, len(graphs)) EFPs of jets given as (etarel, phirel, ptrel) with a real-particle mask."""
    pt = particles[..., 2] * mask
    z = pt / np.clip(pt.sum(1, keepdims=True), 1e-12, None)
    d_eta = particles[:, :, None, 0] - particles[:, None, :, 0]
    d_phi = particles[:, :, None, 1] - particles[:, None, :, 1]
    d_phi = (d_phi + np.pi) % (2 * np.pi) - np.pi
    theta = np.hypot(d_eta, d_phi)
    cache: dict[Graph, np.ndarray] = {}

    def value(g: Graph) -> np.ndarray:
        if g not in cache:
            operands = [z] * _vertices(g) + [theta] * len(g)
            cache[g] = np.einsum(_einsum_spec(g), *operands, optimize="greedy")
        return cache[g]

    return np.stack([np.prod([value(g) for g in product], axis=0) for product in graphs], axis=1)
