"""Run a whole study: pre-train every mix, fine-tune every (mix | scratch) x task x budget x seed,
and write the transfer map. Both stages are Ray Tune experiments on the cluster Ray points at.

    python -m raysearch.sweep search_spaces/mix.yaml [--dry-run] [--address HOST:PORT] [--resume]

Rerunning the same command on the same experiment continues it: pre-trainings come from the store
(an interrupted one continues from its Ray Train checkpoint), finished fine-tunes are not run again,
unfinished ones continue from their last checkpoint and errored ones are retried.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from raysearch.config import from_dict, to_dict
from raysearch.errors import cli_main, fail
from raysearch.mixes import from_unit_square
from raysearch.objectives import Mix
from raysearch.report import PRIMARY, RESULTS_FILE, write_map
from raysearch.sweep_config import SweepConfig, load_sweep
from raysearch.tasks import get_task

STATE_FILE = "state.json"
# CPU held by a pre-training trial itself; its TorchTrainer's workers hold the real resources.
TRIAL_CPU = 0.01


# --- planning --------------------------------------------------------------------------------------

def pretrain_config(cfg: SweepConfig, mix: Mix):
    from raysearch.pretrain import PretrainConfig

    r = cfg.resources
    # The trial's own sliver of CPU comes out of its workers' share, so that N single-CPU
    # pre-trainings fit N CPUs exactly (otherwise the last worker group waits for ever).
    worker_cpus = r.pretrain_cpus_per_worker - TRIAL_CPU / r.pretrain_workers
    return from_dict(PretrainConfig, {
        "threads_per_worker": max(1, int(r.pretrain_cpus_per_worker)), **cfg.pretrain, "mix": mix.as_dict(), "dataset": cfg.data.pretrain_dataset,
        "data_root": str(Path(cfg.data.root).resolve()),  # trials run in their own working directory
        "model": cfg.model.to_dict(), "num_workers": r.pretrain_workers, "use_gpu": r.pretrain_use_gpu,
        "cpus_per_worker": worker_cpus})


def finetune_specs(cfg: SweepConfig, sources: list[tuple[str, dict | None, str | None, dict]]) -> list[dict]:
    """One trial spec per (source, task, budget, seed); a source is (name, mix, model dir, compute)."""
    specs = []
    for task in cfg.tasks:
        for budget in task.budgets:
            for name, mix, ckpt, compute in sources:
                for seed in cfg.seeds:
                    specs.append({"source": name, "mix": mix, "checkpoint": ckpt, "task": task.name,
                                  "budget": budget, "seed": seed, "group": f"{task.name}/b{budget}",
                                  "pretrain_compute": compute})
    return specs


def describe_plan(cfg: SweepConfig) -> str:
    mixes = cfg.mixes.fixed_mixes()
    n_mix = len(mixes) if cfg.mixes.strategy != "hyperopt" else cfg.mixes.samples
    n_tb = sum(len(t.budgets) for t in cfg.tasks)
    lines = [f"experiment {cfg.experiment} in {Path(cfg.storage_path) / cfg.experiment}",
             f"data: {cfg.data.root} (pre-training on {cfg.data.pretrain_dataset}; "
             f"simulate if missing: {cfg.data.simulate_if_missing})",
             f"model: {cfg.model.size} (width {cfg.model.width}, depth {cfg.model.depth}, heads {cfg.model.heads})",
             f"mixes ({cfg.mixes.strategy}): {n_mix}"]
    if mixes:
        lines += [f"  {m.name:22s} cls {m.normalized().cls:.3f}  mpm {m.normalized().mpm:.3f}  fm {m.normalized().fm:.3f}"
                  for m in mixes]
    else:
        lines.append(f"  proposed adaptively by HyperOpt TPE, optimising {cfg.mixes.target_task} budget "
                     f"{cfg.mixes.target_budget} ({len(cfg.seeds)} seed(s) per proposal)")
    lines.append("tasks × budgets: " + "; ".join(f"{t.name} {t.budgets}" for t in cfg.tasks))
    lines.append(f"seeds: {cfg.seeds}")
    n_ft = (n_mix + 1) * n_tb * len(cfg.seeds)
    lines.append(f"stage 1: {n_mix} pre-training trial(s), {cfg.resources.pretrain_workers} worker(s) each")
    lines.append(f"stage 2: ({n_mix} mixes + scratch) × {n_tb} task-budgets × {len(cfg.seeds)} seeds = "
                 f"{n_ft} fine-tune trials; scheduler {cfg.scheduler.type}")
    return "\n".join(lines)


# --- Tune pieces -----------------------------------------------------------------------------------

def _pretrain_trial(config: dict[str, Any]) -> None:
    import ray.tune

    from raysearch.pretrain import PretrainConfig, pretrain

    cfg = from_dict(PretrainConfig, config["pretrain"])
    entry = pretrain(cfg, config["store"], config["runs"], verbose=False, report_to_tune=True)
    m = {k: float(v) for k, v in entry.record["metrics"].items() if isinstance(v, (int, float))}
    ray.tune.report({**m, "stored": 1.0, "train_wall_s": float(entry.record["compute"]["train_wall_s"])})


def _hyperopt_trial(config: dict[str, Any]) -> None:
    """Adaptive mode: pre-train the proposed mix, fine-tune the target, feed the score back."""
    import ray.tune
    import torch

    from raysearch.finetune import run_finetune
    from raysearch.pretrain import PretrainConfig, pretrain
    from raysearch.tasks.base import FinetuneConfig

    mix = from_unit_square(config["u"], config["v"])
    cfg = from_dict(PretrainConfig, {**config["pretrain"], "mix": mix.as_dict()})
    entry = pretrain(cfg, config["store"], config["runs"], verbose=False)
    torch.set_num_threads(1)
    task = get_task(config["target_task"])
    best_key = "best_" + task.metric
    scores = [run_finetune(task.name, config["target_budget"], seed, entry.model_dir,
                           from_dict(FinetuneConfig, config["finetune"]), config["data_root"])[best_key]
              for seed in config["seeds"]]
    ray.tune.report({"target": float(sum(scores) / len(scores)), "cls": mix.cls, "mpm": mix.mpm, "fm": mix.fm})


def grouped_asha(cfg: SweepConfig, max_t: int):
    """ASHA that compares a fine-tune only with trials of the same task and budget."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    class GroupedASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.groups: dict[str, AsyncHyperBandScheduler] = {}

        def _sub(self, trial) -> AsyncHyperBandScheduler:
            g = trial.config["trial"]["group"]
            if g not in self.groups:
                task = get_task(trial.config["trial"]["task"])
                self.groups[g] = AsyncHyperBandScheduler(
                    time_attr="epoch", metric=task.metric, mode=task.mode, max_t=max_t,
                    grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor)
            return self.groups[g]

        def set_search_properties(self, metric, mode, **spec) -> bool:
            return True

        def on_trial_add(self, tune_controller, trial):
            self._sub(trial).on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            return self._sub(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            self._sub(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            self._sub(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return f"GroupedASHA over {len(self.groups)} task/budget groups"

    return GroupedASHA()


def progress_callback(stage: str, total: int):
    """A compact live status line instead of Tune's wall of logs."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.t0 = time.time()
            self.last = 0.0
            self.done = self.errored = 0
            self.running: set[str] = set()

        def _show(self, force=False):
            now = time.time()
            if force or now - self.last > 5:
                self.last = now
                msg = (f"\r[{stage}] {self.done}/{total} finished, {len(self.running)} running, "
                       f"{self.errored} failed  ({now - self.t0:.0f} s)")
                print(msg, end="", file=sys.stderr, flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.add(trial.trial_id)
            self._show()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._show()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.done += 1
            self._show(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.errored += 1
            self._show(force=True)

        def on_experiment_end(self, trials, **info):
            self._show(force=True)
            print(file=sys.stderr)

    return Progress()


def _result_loggers() -> list:
    """Tune's JSON and CSV result files, without its TensorBoard logger: that one would add a second,
    unlabelled HParams row per trial (trials write their own event files with readable names)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _trial_name(trial) -> str:
    t = trial.config["trial"]
    return f"{t['task']}-b{t['budget']}-{t['source']}-s{t['seed']}"


# --- the stages ------------------------------------------------------------------------------------

class Sweep:
    def __init__(self, cfg: SweepConfig, source_path: str | None = None):
        self.cfg = cfg
        self.exp = (Path(cfg.storage_path) / cfg.experiment).resolve()
        self.store = (Path(cfg.storage_path) / "store").resolve()
        self.runs = self.exp / "pretrain_runs"
        self.source_path = source_path
        self.pretrain_errors: dict[str, str] = {}

    # state file: which stage is done, the resolved config, code version, data fingerprints
    def read_state(self) -> dict:
        p = self.exp / STATE_FILE
        return json.loads(p.read_text()) if p.is_file() else {}

    def write_state(self, **updates) -> None:
        state = self.read_state()
        state.update(updates)
        tmp = self.exp / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.exp / STATE_FILE)

    def check_experiment(self, overwrite: bool) -> None:
        state = self.read_state()
        resolved = to_dict(self.cfg)
        if state and state.get("config") != resolved and not overwrite:
            fail(f"{self.exp}: this experiment exists with a different configuration; choose another "
                 f"`experiment:` name or pass --overwrite to start it again")
        if state and overwrite:
            import shutil
            shutil.rmtree(self.exp)
        self.exp.mkdir(parents=True, exist_ok=True)
        self.write_state(config=resolved, code_version=_code_version(),
                         started=state.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
                         search_space_file=self.source_path)

    def prepare_data(self) -> dict[str, str]:
        from data_prep.defaults import ensure_default_data
        from raysearch.data import open_split

        datasets = [self.cfg.data.pretrain_dataset] + [get_task(t.name).dataset for t in self.cfg.tasks]
        if self.cfg.data.simulate_if_missing:
            ensure_default_data(self.cfg.data.root, datasets, self.cfg.data.per_class, smear=self.cfg.data.smear)
        fps = {}
        for d in dict.fromkeys(datasets):
            for split in ("train", "val", "test"):
                p = Path(self.cfg.data.root) / d / split
                if p.is_dir():
                    fps[f"{d}/{split}"] = open_split(self.cfg.data.root, d, split).fingerprint
        self.write_state(data_fingerprints=fps)
        return fps

    def _pretrain_resources(self) -> tuple[dict, int]:
        import ray

        r = self.cfg.resources
        cluster = ray.cluster_resources()
        if r.pretrain_use_gpu:
            fits = int(cluster.get("GPU", 0) // r.pretrain_workers)
            if fits < 1:
                fail(f"resources.pretrain_use_gpu: the cluster has {cluster.get('GPU', 0):g} GPUs, "
                     f"a pre-training needs {r.pretrain_workers}")
        else:
            fits = int(cluster.get("CPU", 0) // (r.pretrain_workers * r.pretrain_cpus_per_worker))
            if fits < 1:
                fail(f"resources: a pre-training needs {r.pretrain_workers * r.pretrain_cpus_per_worker:g} CPUs, "
                     f"the cluster has {cluster.get('CPU', 0):g}")
        # The trial itself holds almost nothing; its TorchTrainer's workers hold the real resources.
        # Concurrency is capped by what the workers need, so trials never starve their own workers.
        return {"cpu": TRIAL_CPU}, max(1, min(fits, r.max_concurrent_pretrain or fits))

    def stage_pretrain(self) -> list[tuple[Mix, Any]]:
        """Pre-train every mix (or run the adaptive search); return (mix, store entry or error)."""
        import ray.tune

        from raysearch.pretrain import PretrainConfig, stored_entry

        trial_res, concurrency = self._pretrain_resources()
        base = to_dict(pretrain_config(self.cfg, Mix(1, 0, 0)))
        common = {"store": str(self.store), "runs": str(self.runs)}
        if self.cfg.mixes.strategy == "hyperopt":
            mixes = self._hyperopt(base, common, concurrency)
        else:
            mixes = self.cfg.mixes.fixed_mixes()
            tuner = ray.tune.Tuner(
                ray.tune.with_resources(_pretrain_trial, trial_res),
                param_space={**common, "pretrain": ray.tune.grid_search([{**base, "mix": m.as_dict()} for m in mixes])},
                tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency,
                                                trial_name_creator=lambda t: "pretrain-" + Mix(**t.config["pretrain"]["mix"]).name,
                                                trial_dirname_creator=lambda t: "pretrain-" + Mix(**t.config["pretrain"]["mix"]).name),
                run_config=ray.tune.RunConfig(name="pretrain", storage_path=str(self.exp), verbose=0,
                                              callbacks=[progress_callback("pre-training", len(mixes)),
                                                         *_result_loggers()]))
            for res in tuner.fit():
                if res.error is not None:
                    self.pretrain_errors[Mix(**res.config["pretrain"]["mix"]).name] = _one_line(res.error)
        out = []
        for m in mixes:
            pcfg = from_dict(PretrainConfig, {**base, "mix": m.as_dict()})
            out.append((m, stored_entry(pcfg, self.store)))
        self.write_state(stage_pretrain_done=True)
        return out

    def _hyperopt(self, base: dict, common: dict, concurrency: int) -> list[Mix]:
        import ray.tune
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.hyperopt import HyperOptSearch

        m = self.cfg.mixes
        mode = get_task(m.target_task).mode
        path = self.exp / "search"
        trainable = ray.tune.with_resources(_hyperopt_trial, {"cpu": TRIAL_CPU})
        if ray.tune.Tuner.can_restore(str(path)):
            tuner = ray.tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            searcher = ConcurrencyLimiter(HyperOptSearch(metric="target", mode=mode, random_state_seed=m.seed),
                                          max_concurrent=min(m.max_concurrent, concurrency))
            tuner = ray.tune.Tuner(
                trainable,
                param_space={**common, "u": ray.tune.uniform(0, 1), "v": ray.tune.uniform(0, 1), "pretrain": base,
                             "target_task": m.target_task, "target_budget": m.target_budget,
                             "seeds": self.cfg.seeds, "finetune": to_dict(self.cfg.finetune),
                             "data_root": str(Path(self.cfg.data.root).resolve())},
                tune_config=ray.tune.TuneConfig(search_alg=searcher, num_samples=m.samples),
                run_config=ray.tune.RunConfig(name="search", storage_path=str(self.exp), verbose=0,
                                              callbacks=[progress_callback("adaptive search", m.samples),
                                                         *_result_loggers()]))
        grid = tuner.fit()
        mixes = [from_unit_square(r.config["u"], r.config["v"]) for r in grid if r.error is None]
        return list(dict.fromkeys(mixes))

    def stage_finetune(self, pretrained: list[tuple[Mix, Any]]) -> list[dict]:
        import ray.tune

        from raysearch.finetune import tune_trainable

        sources = [("scratch", None, None, {})]
        for mix, entry in pretrained:
            if entry is not None:
                sources.append((mix.name, mix.as_dict(), str(entry.model_dir), entry.record["compute"]))
        specs = finetune_specs(self.cfg, sources)
        failed_mixes = [m for m, e in pretrained if e is None]
        done_rows = self._finished_rows()
        if done_rows is not None:
            return done_rows
        r = self.cfg.resources
        trainable = ray.tune.with_resources(tune_trainable, {"cpu": r.finetune_cpus, "gpu": r.finetune_gpus})
        path = self.exp / "finetune"
        max_t = max(self.cfg.finetune.epochs, 1) * 10
        if ray.tune.Tuner.can_restore(str(path)):
            tuner = ray.tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
        else:
            scheduler = grouped_asha(self.cfg, max_t) if self.cfg.scheduler.type == "asha" else None
            tuner = ray.tune.Tuner(
                trainable,
                param_space={"trial": ray.tune.grid_search(specs), "finetune": to_dict(self.cfg.finetune),
                             "data_root": str(Path(self.cfg.data.root).resolve()), "threads": int(r.finetune_cpus) or 1,
                             "tensorboard_dir": str(self.exp / "tensorboard" / "finetune")},
                # Reused worker processes skip a Python + torch start per trial (dozens of short trials).
                tune_config=ray.tune.TuneConfig(scheduler=scheduler, trial_name_creator=_trial_name,
                                                trial_dirname_creator=_trial_name, reuse_actors=True),
                run_config=ray.tune.RunConfig(
                    name="finetune", storage_path=str(self.exp), verbose=0,
                    failure_config=ray.tune.FailureConfig(max_failures=0),
                    checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[progress_callback("fine-tuning", len(specs)), *_result_loggers()]))
        grid = tuner.fit()
        rows = []
        for res in grid:
            t = res.config["trial"]
            metrics = {k: v for k, v in (res.metrics or {}).items() if isinstance(v, (int, float))}
            primary, _ = PRIMARY[t["task"]]
            status = "error" if res.error is not None else ("completed" if primary in metrics else "stopped")
            rows.append({"source": t["source"], "mix": t["mix"], "task": t["task"], "budget": t["budget"],
                         "seed": t["seed"], "status": status, "metrics": metrics,
                         "error": _one_line(res.error) if res.error is not None else None,
                         "pretrain_compute": t["pretrain_compute"], "trial_dir": str(res.path),
                         "node_id": (res.metrics or {}).get("node_id")})
        for m in failed_mixes:
            for task in self.cfg.tasks:
                for b in task.budgets:
                    for s in self.cfg.seeds:
                        rows.append({"source": m.name, "mix": m.as_dict(), "task": task.name, "budget": b, "seed": s,
                                     "status": "error", "metrics": {},
                                     "error": "pre-training failed: " + self.pretrain_errors.get(m.name, "see pretrain/ trial logs"),
                                     "pretrain_compute": {}})
        with open(self.exp / RESULTS_FILE, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        self._hparams(rows)
        self.write_state(stage_finetune_done=True)
        return rows

    def _finished_rows(self) -> list[dict] | None:
        """Rows of a fine-tuning stage that already finished with no failed trial (nothing to redo)."""
        path = self.exp / RESULTS_FILE
        if not (self.read_state().get("stage_finetune_done") and path.is_file()):
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return None if any(r["status"] == "error" for r in rows) else rows

    def _hparams(self, rows: list[dict]) -> None:
        """One TensorBoard HParams run per fine-tune: the mix weights, task and budget vs final metrics."""
        from torch.utils.tensorboard import SummaryWriter

        for row in rows:
            if row["status"] != "completed":
                continue
            mix = Mix(**row["mix"]).normalized().as_dict() if row["mix"] else {"cls": 0.0, "mpm": 0.0, "fm": 0.0}
            name = f"{row['task']}-b{row['budget']}-{row['source']}-s{row['seed']}"
            w = SummaryWriter(str(self.exp / "tensorboard" / "hparams" / name))
            hp = {"alpha_cls": mix["cls"], "alpha_mpm": mix["mpm"], "alpha_fm": mix["fm"], "task": row["task"],
                  "budget": row["budget"], "seed": row["seed"], "pretrained": row["source"] != "scratch"}
            final = {f"final/{k}": v for k, v in row["metrics"].items()
                     if k.startswith("test_") and not k.endswith(("_err", "_lower_bound")) and math.isfinite(v)}
            w.add_hparams(hp, final, run_name=".")
            w.close()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msgs = [l for l in text if "Error" in l and ":" in l]
    return (msgs[-1] if msgs else text[-1] if text else err.__class__.__name__)[:300]


def _code_version() -> str:
    from raysearch import __version__

    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}" + (f" ({rev})" if rev else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysearch.sweep", description=__doc__.split("\n")[0])
    ap.add_argument("search_space", help="search-space YAML, e.g. search_spaces/mix.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted sweep (rerunning the same command does the same)")
    ap.add_argument("--overwrite", action="store_true", help="start an existing experiment again from nothing")
    args = ap.parse_args(argv)
    cfg = load_sweep(args.search_space)
    print(describe_plan(cfg))
    if args.dry_run:
        return 0
    sweep = Sweep(cfg, args.search_space)
    if args.resume and not (sweep.exp / STATE_FILE).is_file():
        fail(f"--resume: no experiment to resume at {sweep.exp}")
    t0 = time.time()
    from raysearch.ray_env import ensure_ray

    ensure_ray(args.address)
    sweep.check_experiment(args.overwrite)
    sweep.prepare_data()
    pretrained = sweep.stage_pretrain()
    for mix, entry in pretrained:
        if entry is None:
            print(f"pre-training {mix.name} failed ({sweep.pretrain_errors.get(mix.name, 'see its trial log')}); "
                  f"its fine-tunes are marked missing in the map", file=sys.stderr)
    rows = sweep.stage_finetune(pretrained)
    md = write_map(sweep.exp, rows)
    print(md)
    took = time.time() - t0
    sweep.write_state(wall_s=took)
    print(f"sweep finished in {took / 60:.1f} min")
    print(f"transfer map: {sweep.exp / 'transfer_map.md'} (csv and plots beside it)")
    print(f"tensorboard:  tensorboard --logdir {sweep.exp}")
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
