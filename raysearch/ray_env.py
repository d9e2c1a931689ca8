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
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def quiet_env() -> None:
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect to `address` (a running cluster) or start a local Ray; no-op if already connected."""
    quiet_env()
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, log_to_driver=True,
                 include_dashboard=kwargs.pop("include_dashboard", None), **kwargs)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
