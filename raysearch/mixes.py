"""Which objective mixes to try: simplex lattices, explicit points, uniform random, and the exact
parametrisation of the simplex that the adaptive searcher explores.

The map (u, v) in [0, 1]^2 -> (1 - sqrt(u), sqrt(u) (1 - v), sqrt(u) v) sends the uniform measure on
the unit square to the uniform measure on the 2-simplex and covers every point of it, so a searcher
working on (u, v) sees every mix exactly once with no renormalisation of independent weights.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from raysearch.objectives import Mix


def lattice(degree: int, centroid: bool = False) -> list[Mix]:
    """All mixes (i, j, k) / degree with i + j + k = degree; plus the centroid if asked and absent."""
    pts = [(i / degree, j / degree, (degree - i - j) / degree)
           for i, j in itertools.product(range(degree + 1), repeat=2) if i + j <= degree]
    mixes = [Mix(*p) for p in sorted(pts, key=lambda p: (-p[0], -p[1]))]
    if centroid and degree % 3:
        mixes.append(Mix(1 / 3, 1 / 3, 1 / 3))
    return mixes


def from_unit_square(u: float, v: float) -> Mix:
    """Exact uniform parametrisation of the simplex (see module docstring)."""
    r = math.sqrt(min(max(u, 0.0), 1.0))
    v = min(max(v, 0.0), 1.0)
    w = (1 - r, r * (1 - v), r * v)
    return Mix(*(round(x, 6) for x in w))


def to_unit_square(mix: Mix) -> tuple[float, float]:
    n = mix.normalized()
    r = 1 - n.cls
    return r * r, (n.fm / r if r > 0 else 0.0)


def random_mixes(n: int, seed: int) -> list[Mix]:
    rng = np.random.default_rng(seed)
    return [from_unit_square(*rng.random(2)) for _ in range(n)]


def dedupe(mixes: list[Mix]) -> list[Mix]:
    seen, out = set(), []
    for m in mixes:
        key = tuple(round(x, 6) for x in m.normalized().as_dict().values())
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out
