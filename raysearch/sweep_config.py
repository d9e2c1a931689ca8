"""The search-space YAML schema: typed, validated, with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysearch.config import from_dict, load_yaml
from raysearch.errors import UserError, fail
from raysearch.mixes import dedupe, lattice, random_mixes
from raysearch.model import ModelConfig
from raysearch.objectives import Mix
from raysearch.tasks import TASKS
from raysearch.tasks.base import FinetuneConfig

STRATEGIES = ("lattice", "points", "random", "hyperopt")


@dataclass
class DataSection:
    """Where the jets come from."""

    root: str = "data"
    """Dataset root with `<dataset>/<split>/` shards (a shared path or mount on a cluster)."""
    pretrain_dataset: str = "jetclass"
    """Dataset the backbone is pre-trained on."""
    simulate_if_missing: bool = True
    """Simulate the default samples (jetclass, top_tagging, jetnet) when they are not on disk."""
    per_class: dict[str, dict[str, int]] | None = None
    """Jets per class and split to simulate, per sample (default: data_prep.defaults)."""
    smear: bool = False
    """Simulate with a simple detector response (data_prep/detector.py) instead of particle level."""


@dataclass
class MixSection:
    """Which mixes to pre-train."""

    strategy: str = "lattice"
    """lattice, points, random or hyperopt."""
    degree: int = 2
    """lattice: points (i, j, k) / degree on the simplex."""
    centroid: bool = True
    """lattice: add the equal mix (1/3, 1/3, 1/3) (with degree 2: the paper's 7 variants)."""
    points: list[dict[str, float]] = field(default_factory=list)
    """points: explicit mixes, e.g. {cls: 1, mpm: 1, fm: 0}."""
    samples: int = 8
    """random: number of mixes; hyperopt: number of mixes the searcher proposes."""
    seed: int = 0
    """random/hyperopt: seed."""
    target_task: str = "top_tagging"
    """hyperopt: the task whose validation metric the searcher optimises."""
    target_budget: int = 100
    """hyperopt: the label budget of that task."""
    max_concurrent: int = 2
    """hyperopt: proposals evaluated at once (TPE adapts between them)."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            fail(f"mixes.strategy: expected one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "lattice" and self.degree < 1:
            fail(f"mixes.degree: expected a whole number >= 1, got {self.degree}")
        if self.strategy == "points" and not self.points:
            fail("mixes.points: give at least one mix, e.g. [{cls: 1, mpm: 0, fm: 0}]")
        for i, p in enumerate(self.points):
            unknown = set(p) - {"cls", "mpm", "fm"}
            if unknown:
                fail(f"mixes.points[{i}]: unknown weight(s) {sorted(unknown)}, expected cls, mpm, fm")
            try:
                Mix(**{k: p.get(k, 0.0) for k in ("cls", "mpm", "fm")})
            except UserError:
                fail(f"mixes.points[{i}]: weights must be >= 0 and not all 0, got {p}")
        if self.strategy in ("random", "hyperopt") and self.samples < 1:
            fail(f"mixes.samples: expected a whole number >= 1, got {self.samples}")

    def fixed_mixes(self) -> list[Mix]:
        """The mixes of a non-adaptive strategy (hyperopt proposes its own)."""
        if self.strategy == "lattice":
            return lattice(self.degree, self.centroid)
        if self.strategy == "points":
            return dedupe([Mix(**{k: float(p.get(k, 0.0)) for k in ("cls", "mpm", "fm")}) for p in self.points])
        if self.strategy == "random":
            return dedupe(random_mixes(self.samples, self.seed))
        return []


@dataclass
class TaskSection:
    """One downstream task and its label budgets."""

    name: str = "top_tagging"
    """top_tagging or generation."""
    budgets: list[int] = field(default_factory=lambda: [100])
    """Labelled training jets per fine-tune (nested, class-balanced subsets)."""

    def __post_init__(self):
        if self.name not in TASKS:
            fail(f"tasks: unknown task {self.name!r}, expected one of {sorted(TASKS)}")
        if not self.budgets or any(b < 1 for b in self.budgets):
            fail(f"tasks.{self.name}.budgets: expected whole numbers >= 1, got {self.budgets}")


@dataclass
class SchedulerSection:
    """Early stopping of fine-tunes (ASHA within each task x budget group)."""

    type: str = "asha"
    """asha or none."""
    grace_period: int = 4
    """Epochs every fine-tune gets before it can be stopped."""
    reduction_factor: int = 3
    """ASHA keeps the best 1/reduction_factor at each rung."""

    def __post_init__(self):
        if self.type not in ("asha", "none"):
            fail(f"scheduler.type: expected asha or none, got {self.type!r}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            fail("scheduler: grace_period must be >= 1 and reduction_factor >= 2")


@dataclass
class ResourceSection:
    """What each pre-training and fine-tune asks of the cluster."""

    pretrain_workers: int = 1
    """Ray Train workers (DDP ranks) per pre-training."""
    pretrain_cpus_per_worker: float = 1.0
    """CPUs per pre-training worker."""
    pretrain_use_gpu: bool = False
    """One GPU per pre-training worker."""
    finetune_cpus: float = 1.0
    """CPUs per fine-tune trial."""
    finetune_gpus: float = 0.0
    """GPUs per fine-tune trial (fractions share a GPU)."""
    max_concurrent_pretrain: int | None = None
    """Pre-trainings at once (default: as many as the cluster's CPUs/GPUs hold)."""


@dataclass
class SweepConfig:
    """A whole study: data, model, pre-training, mixes, tasks, fine-tuning, scheduling, resources."""

    experiment: str = "default"
    """Experiment name: results go to `<storage_path>/<experiment>/`."""
    storage_path: str = "experiments"
    """Where experiments and the shared pre-training store live (shared storage on a cluster)."""
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone size for pre-training and for the from-scratch baselines."""
    pretrain: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig fields (epochs, batch_size, optimizer, ...) shared by every mix."""
    mixes: MixSection = field(default_factory=MixSection)
    tasks: list[TaskSection] = field(default_factory=lambda: [TaskSection()])
    seeds: list[int] = field(default_factory=lambda: [0])
    """Fine-tune seeds (each seed: its own label subset and initialisation)."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    resources: ResourceSection = field(default_factory=ResourceSection)

    def __post_init__(self):
        if not self.seeds:
            fail("seeds: give at least one seed")
        # The from-scratch baseline must be the architecture the mixes pre-train.
        if self.finetune.model != ModelConfig() and self.finetune.model != self.model:
            fail("finetune.model: set the backbone once, in the sweep's `model` section (the scratch "
                 "baseline uses it too)")
        self.finetune.model = self.model
        reserved = {"mix", "dataset", "data_root", "model", "num_workers", "use_gpu", "cpus_per_worker"}
        clash = sorted(set(self.pretrain) & reserved)
        if clash:
            fail(f"pretrain.{clash[0]}: set this through the sweep's own sections (mixes, data, model, resources)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            fail(f"tasks: each task once, got {names}")
        if self.mixes.strategy == "hyperopt":
            t = [t for t in self.tasks if t.name == self.mixes.target_task]
            if not t or self.mixes.target_budget not in t[0].budgets:
                fail(f"mixes.target_task/target_budget: ({self.mixes.target_task}, {self.mixes.target_budget}) "
                     f"must be one of the tasks' budgets")


def load_sweep(path: str | Path) -> SweepConfig:
    cfg = from_dict(SweepConfig, load_yaml(path))
    from raysearch.pretrain import PretrainConfig
    from_dict(PretrainConfig, {k: v for k, v in cfg.pretrain.items()}, "pretrain")  # validate early
    return cfg
