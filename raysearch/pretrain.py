"""Pre-train one objective mix on Ray Train, or return it from the store if it was trained before.

    python -m raysearch.pretrain --config configs/pretrain.yaml [--set mix.cls=1 --set mix.fm=0]

Prints where the stored checkpoint and the TensorBoard logs are.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raysearch.config import apply_overrides, from_dict, load_yaml, to_dict
from raysearch.data import Split, feature_stats, open_split
from raysearch.errors import UserError, cli_main, fail
from raysearch.model import ModelConfig, condition_stats, jet_condition_index, jet_conditions
from raysearch.objectives import Mix, ObjectiveConfig
from raysearch.optim import OptimConfig
from raysearch.store import PretrainStore, StoreEntry, store_key

PRECISIONS = ("auto", "fp32", "bf16")
# Fields that do not change what is learned: left out of the store key.
_NOT_IN_KEY = ("data_root", "max_failures", "log_every_steps", "probe_jets", "threads_per_worker",
               "cpus_per_worker")


class NonFiniteLossError(UserError):
    """A pre-training produced a NaN or infinite loss; the message names the step and term."""


@dataclass
class PretrainConfig:
    """One pre-training run: data, model, objectives and their mix, optimisation, budget, resources."""

    mix: Mix = field(default_factory=lambda: Mix(1.0, 1.0, 1.0))
    """The objective weights a_cls, a_mpm, a_fm."""
    dataset: str = "jetclass"
    """Dataset name under `data_root` (its train and val splits are used)."""
    data_root: str = "data"
    """Folder holding `<dataset>/<split>/` shards; every node must be able to read it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone size; `features`, `num_classes` and `max_particles` are filled from the data."""
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Settings of the objectives (MPM mask fraction, class balancing)."""
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    batch_size: int = 64
    """Jets per step per worker."""
    epochs: int = 2
    """Passes over the training split (the budget, unless a cap below is reached first)."""
    max_steps: int | None = None
    """Optional cap on optimiser steps."""
    max_forward_passes: int | None = None
    """Optional cap on backbone forward passes: compares mixes at equal compute (a mix with more
    objectives takes more passes per step, so it gets fewer steps)."""
    ema_decay: float = 0.99
    """Decay of the exponential moving average of weights (0 = off); the stored model is the EMA."""
    precision: str = "auto"
    """auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16."""
    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); CPU workers use gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    threads_per_worker: int | None = None
    """torch threads per worker (default: cpus_per_worker)."""
    max_failures: int = 2
    """Worker-group restarts from the latest checkpoint before the run fails."""
    shuffle_buffer: int = 2048
    """Rows in Ray Data's local shuffle buffer (0 = no shuffling)."""
    probe_jets: int = 1000
    """Validation jets for validation losses and the k-NN probe each epoch (0 = off)."""
    log_every_steps: int = 10
    """TensorBoard step-level logging interval."""
    seed: int = 0
    """Seed of initialisation, masks and noise."""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            fail(f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "epochs", "num_workers"):
            if getattr(self, name) < 1:
                fail(f"{name}: expected a whole number >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_forward_passes"):
            v = getattr(self, name)
            if v is not None and v < 1:
                fail(f"{name}: expected a whole number >= 1 or null, got {v}")
        if self.threads_per_worker is None:
            self.threads_per_worker = max(1, int(self.cpus_per_worker))

    def key_fields(self) -> dict[str, Any]:
        d = to_dict(self)
        for k in _NOT_IN_KEY + ("mix",):
            d.pop(k, None)
        return d


def resolve(cfg: PretrainConfig, split: Split) -> PretrainConfig:
    """Fill the model's data-dependent fields from the training split."""
    info = split.info
    # Workers run in their own working directories: give them an absolute data path.
    cfg.data_root = str(Path(cfg.data_root).resolve())
    m = cfg.model
    # An explicit feature list is kept (features the data lacks are zero-filled by the loader).
    cfg.model = ModelConfig(**{**m.to_dict(), "features": m.features or info.particle_features,
                               "num_classes": len(info.label_names), "max_particles": info.max_particles,
                               "jet_features": info.jet_features})
    if "fm" in cfg.mix.heads:
        missing = [f for f in cfg.model.fm_features if f not in cfg.model.features]
        if missing:
            fail(f"model.fm_features: {missing} are not among the data's features {list(cfg.model.features)}")
        jet_condition_index(jet_conditions(cfg.model.fm_conditions), info.jet_features, "model.fm_conditions")
    return cfg


def plan_steps(cfg: PretrainConfig, rows: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for the budget; equal on every worker (drop_last)."""
    per_worker = rows // cfg.num_workers
    steps_per_epoch = per_worker // cfg.batch_size
    if steps_per_epoch < 1:
        fail(f"batch_size: {cfg.batch_size} jets per worker x {cfg.num_workers} workers exceeds the "
             f"{rows} training jets")
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if cfg.max_forward_passes:
        total = min(total, max(1, cfg.max_forward_passes // len(cfg.mix.heads)))
    return steps_per_epoch, total


def loop_config(cfg: PretrainConfig, split: Split, tensorboard_dir: str | None) -> dict[str, Any]:
    """Everything a worker needs, as plain data (computed once on the driver)."""
    a = split.load_arrays() if split.manifest.rows <= 50_000 else None
    if a is None:  # large data: standardise on a sample of the first shard
        import pyarrow.parquet as pq
        from raysearch.data import table_to_arrays
        a = table_to_arrays(pq.read_table(split.files[0]), split.info)
    from raysearch.data import FeatureMap
    particles = FeatureMap(split.info.particle_features, cfg.model.features)(a["particles"][:20_000])
    mean, std = feature_stats(particles, a["n_particles"][:20_000])
    fm_idx = [cfg.model.features.index(f) for f in cfg.model.fm_features if f in cfg.model.features]
    cond_mean, cond_std = condition_stats(cfg.model.fm_conditions, a["n_particles"][:20_000],
                                          a["jet"][:20_000], split.info.jet_features)
    counts = np.array([split.manifest.class_counts.get(n, 0) for n in split.info.label_names], dtype=np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / len(counts)
    steps_per_epoch, total = plan_steps(cfg, split.manifest.rows)
    return {"cfg": to_dict(cfg), "info": to_dict(split.info), "tensorboard_dir": tensorboard_dir,
            "stats": {"mean": mean.tolist(), "std": std.tolist(), "fm_mean": mean[fm_idx].tolist(),
                      "fm_std": std[fm_idx].tolist(), "cond_mean": cond_mean.tolist(),
                      "cond_std": cond_std.tolist()},
            "class_weights": weights.tolist(), "steps_per_epoch": steps_per_epoch, "total_steps": total}


MATERIALIZE_LIMIT_BYTES = 4 << 30


def training_dataset(split: Split):
    """The training split as a Ray Dataset, read into the object store up front when it fits.

    Reading before the trainer starts matters on small clusters: once the Train workers hold every
    CPU, Ray Data has none left for its read tasks and streaming ingest would wait for ever. It also
    saves re-reading the Parquet files every epoch. Larger data streams (clusters have spare CPUs).
    """
    ds = split.ray_dataset()
    size = sum(f["bytes"] for f in split.manifest.files)
    return ds.materialize() if size <= MATERIALIZE_LIMIT_BYTES else ds


def _ordered_ingest():
    """Ray Data hands blocks to the workers in a fixed order, so a seed reproduces a pre-training
    (otherwise block arrival order varies from run to run and so do the batches)."""
    import copy

    import ray.data
    import ray.train

    # Train's defaults are the DataContext's options; copied rather than rebuilt, as rebuilding
    # them passes a deprecated argument (a warning for the user).
    options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return ray.train.DataConfig(execution_options={"train": options})


def _root_cause(err: BaseException) -> str:
    seen = err
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else seen.__class__.__name__


def stored_entry(cfg: PretrainConfig, store_dir: str | Path) -> StoreEntry | None:
    """The store entry for `cfg` if it was trained before, else None (never trains)."""
    split = open_split(cfg.data_root, cfg.dataset, "train")
    cfg = resolve(cfg, split)
    return PretrainStore(store_dir).get(store_key(cfg.mix.as_dict(), cfg.key_fields(), split.fingerprint))


def pretrain(cfg: PretrainConfig, store_dir: str | Path, runs_dir: str | Path, verbose: bool = True,
             report_to_tune: bool = False) -> StoreEntry:
    """Return the store entry for `cfg`, training it on Ray Train first if it is not stored yet.

    `report_to_tune` (inside a Tune trial): every epoch's metrics become one of the trial's results,
    so Tune's progress files and callbacks follow the pre-training as it runs.
    """
    split = open_split(cfg.data_root, cfg.dataset, "train")
    cfg = resolve(cfg, split)
    store = PretrainStore(store_dir)
    key = store_key(cfg.mix.as_dict(), cfg.key_fields(), split.fingerprint)
    entry = store.get(key)
    if entry is not None:
        return entry
    with store.lock(key):
        entry = store.get(key)  # another process may have finished it while we waited
        if entry is not None:
            return entry
        return _train_and_store(cfg, split, store, key, Path(runs_dir), verbose, report_to_tune)


def _train_and_store(cfg: PretrainConfig, split: Split, store: PretrainStore, key: str, runs_dir: Path,
                     verbose: bool, report_to_tune: bool = False) -> StoreEntry:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from raysearch.ray_env import ensure_ray
    from raysearch.train_loop import train_loop_per_worker

    ensure_ray()
    run_name = f"pretrain-{cfg.mix.name}-{key[:10]}".replace("+", "_")
    tb_dir = runs_dir / run_name / "tensorboard"
    config = loop_config(cfg, split, str(tb_dir))
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback
        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(runs_dir.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"), callbacks=callbacks),
        datasets={"train": training_dataset(split)}, dataset_config=_ordered_ingest())
    t0 = time.time()
    try:
        result = trainer.fit()
    except Exception as err:  # TrainingFailedError and friends: keep the cause, drop the traceback
        raise RuntimeError(f"pre-training {cfg.mix.name} failed: {_root_cause(err)}") from err
    summary = result.return_value
    if summary is None:
        raise RuntimeError(f"pre-training {cfg.mix.name}: the training function returned nothing")
    if summary["status"] == "nan":
        raise NonFiniteLossError(f"pre-training {cfg.mix.name} stopped: {summary['message']}")
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError(f"pre-training {cfg.mix.name}: no checkpoint was reported")
    record = {
        "mix": cfg.mix.as_dict(), "mix_name": cfg.mix.name, "config": to_dict(cfg),
        "dataset": cfg.dataset, "data_fingerprint": split.fingerprint, "metrics": summary["metrics"],
        "history": summary["history"],
        "compute": {"steps": summary["step"], "epochs": summary["epoch"],
                    "forward_passes": summary["forward_passes"], "train_wall_s": summary["wall_s"],
                    "total_wall_s": time.time() - t0, "jets_seen": summary["step"] * cfg.batch_size * cfg.num_workers,
                    "num_workers": summary["world_size"], "device": summary["device"],
                    "resumed_from_step": summary["resumed_from_step"]},
        "max_param_diff_across_ranks": summary["max_param_diff_across_ranks"],
        "tensorboard": str(tb_dir), "ray_train_run": str(runs_dir / run_name),
    }
    with ckpt.as_directory() as d:
        return store.put(key, Path(d) / "model", record)


def load_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    data = load_yaml(path) if path else {}
    return from_dict(PretrainConfig, apply_overrides(data, overrides))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysearch.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="YAML with PretrainConfig fields (default: all defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. mix.fm=0")
    ap.add_argument("--store", default="experiments/store", help="pre-training store folder")
    ap.add_argument("--runs", default="experiments/pretrain_runs", help="Ray Train run folder (checkpoints, TensorBoard)")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    from data_prep.defaults import ensure_default_data
    from raysearch.ray_env import ensure_ray

    ensure_ray(args.address)
    ensure_default_data(cfg.data_root, [cfg.dataset])
    t0 = time.time()
    entry = pretrain(cfg, args.store, args.runs)
    took = time.time() - t0
    m = entry.record["metrics"]
    print(f"mix {entry.record['mix_name']}: {entry.record['compute']['steps']} steps, "
          f"{entry.record['compute']['forward_passes']} forward passes, loss {m.get('loss', float('nan')):.4f}, "
          f"k-NN probe accuracy {m.get('probe_knn_acc', float('nan')):.3f} ({took:.1f} s)")
    print(f"checkpoint:  {entry.model_dir}")
    print(f"tensorboard: tensorboard --logdir {entry.record['tensorboard']}")
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
