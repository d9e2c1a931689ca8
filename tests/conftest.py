"""Shared fixtures: one local Ray for the session, and small simulated datasets made once."""

from __future__ import annotations

import os

import pytest

from raysearch.ray_env import quiet_env

quiet_env()
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small but real: a few hundred Pythia jets per sample, simulated once per test session.
SMALL = {
    "jetclass": {"train": 30, "val": 10, "test": 0},
    "top_tagging": {"train": 120, "val": 40, "test": 60},
    "jetnet": {"train": 40, "val": 0, "test": 40},
}


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    if not ray.is_initialized():
        tmp = tmp_path_factory.mktemp("ray")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), logging_level="ERROR",
                 configure_logging=False)
    from raysearch.ray_env import ensure_ray
    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, ray_session):
    from data_prep.simulate import simulate

    root = tmp_path_factory.mktemp("data")
    for name, per_class in SMALL.items():
        simulate(root, name, per_class, seed=7, chunk_size=40, progress=False)
    return root
