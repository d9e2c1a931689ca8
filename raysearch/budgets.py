"""Label budgets: fixed, class-balanced, nested subsets of a training split chosen by a seed.

Each class's jets are put in one seeded random order; a budget of B jets over C classes takes the
first B // C jets of every class's order (the remainder goes to the first classes). A smaller budget
is therefore always a subset of a larger one, and the subset depends only on (labels, budget, seed):
never on the mix, the epoch or anything else.
"""

from __future__ import annotations

import numpy as np

from raysearch.errors import fail


def budget_indices(labels: np.ndarray, budget: int, seed: int, n_classes: int | None = None,
                   where: str = "budget") -> np.ndarray:
    """Sorted row indices of the class-balanced nested subset of size `budget`."""
    labels = np.asarray(labels)
    n_classes = int(n_classes if n_classes is not None else labels.max() + 1)
    if not isinstance(budget, (int, np.integer)) or budget <= 0:
        fail(f"{where}: expected a whole number of jets > 0, got {budget!r}")
    if budget > len(labels):
        fail(f"{where}: {budget} jets requested but the training split has only {len(labels)}")
    per_class = [budget // n_classes + (1 if c < budget % n_classes else 0) for c in range(n_classes)]
    chosen = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        if per_class[c] > len(rows):
            fail(f"{where}: {budget} jets need {per_class[c]} of class {c} but the training split "
                 f"has only {len(rows)}")
        # One order per (seed, class): independent of the budget, so budgets nest.
        order = np.random.default_rng([seed, c]).permutation(len(rows))
        chosen.append(rows[order[:per_class[c]]])
    return np.sort(np.concatenate(chosen))
