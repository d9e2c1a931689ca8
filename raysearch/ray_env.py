"""Start or join Ray quietly, the same way for every entry point and test."""

from __future__ import annotations

import logging
import os

# Quieter runs (RAY.md): no per-op progress bars, no V2 migration chatter, no preemption watcher.
_QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "1",
    # The sweep chooses Tune's result loggers itself (raysearch.sweep._result_loggers).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # Tune's new console output prints a configuration box and hints even at verbose=0; the sweep
    # shows its own compact progress line instead.
    "RAY_AIR_NEW_OUTPUT": "0",
}

# Also for every Ray worker process (inherited locally, passed as the job's runtime_env on a cluster):
# Ray Data's actors otherwise print "Progress bars disabled" and "Dataset ... execution finished" for
# each pre-training, and Ray's own internals raise deprecation warnings. Set either variable
# yourself to see them again (e.g. RAY_DATA_LOG_LEVEL=INFO).
_QUIET_WORKER_ENV = {
    "RAY_DATA_LOG_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}

# Per-checkpoint and snapshot chatter that would drown the progress line.
NOISY_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage",
                 "ray.tune.execution.experiment_state", "ray.tune.tune", "ray.tune.impl.tuner_internal")


def silence_noisy_loggers() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_env() -> None:
    for k, v in {**_QUIET_ENV, **_QUIET_WORKER_ENV}.items():
        os.environ.setdefault(k, v)


def worker_env() -> dict[str, str]:
    """The quiet settings as this process has them (a user's own values win)."""
    return {k: os.environ[k] for k in _QUIET_WORKER_ENV if k in os.environ}


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect to `address` (a running cluster) or start a local Ray; no-op if already connected."""
    quiet_env()
    import ray

    if not ray.is_initialized():
        _init(address, num_cpus, **kwargs)
    # Also inside Tune trials (Ray already up): the DataContext is per process.
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING").upper())
    silence_noisy_loggers()


def _init(address: str | None, num_cpus: int | None, **kwargs) -> None:
    import ray

    if address:
        env = kwargs.pop("runtime_env", None) or {}
        env = {**env, "env_vars": {**worker_env(), **env.get("env_vars", {})}}
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=env, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, log_to_driver=True,
                 include_dashboard=kwargs.pop("include_dashboard", None), **kwargs)
