"""The embedded default data: small simulated samples made on first use and cached on disk."""

from __future__ import annotations

from pathlib import Path

from raysearch.errors import fail

# Jets per class and split. Sized so that the default study (search_spaces/mix.yaml) has enough
# jets of every class and simulating all three takes a few minutes on 2 cores.
DEFAULT_PER_CLASS = {
    "jetclass": {"train": 150, "val": 30, "test": 0},
    "top_tagging": {"train": 1000, "val": 200, "test": 500},
    "jetnet": {"train": 300, "val": 0, "test": 200},
}
DEFAULT_SEED = 1


def ensure_default_data(root: str | Path, datasets, per_class: dict | None = None, seed: int = DEFAULT_SEED,
                        progress: bool = True, smear: bool = False) -> None:
    """Simulate any of `datasets` that is a simulated sample and not yet (identically) on disk.

    Datasets that are not simulated samples (converted real data) must already exist.
    """
    from data_prep.simulate import simulate

    per_class = per_class or DEFAULT_PER_CLASS
    for name in datasets:
        if name in per_class:
            simulate(root, name, per_class[name], seed=seed, progress=progress, smear=smear)
        elif not (Path(root) / name).is_dir():
            fail(f"data: dataset {name!r} is not in {root} and is not a simulated sample "
                 f"({sorted(per_class)}); convert it with `python -m data_prep.convert`")
