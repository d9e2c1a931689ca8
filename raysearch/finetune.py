"""Fine-tune a downstream task on a label budget, from a pre-trained backbone or from scratch.

    python -m raysearch.finetune --task top_tagging --budget 1000 --checkpoint <model dir | none>
    python -m raysearch.finetune --task generation  --budget 500  --checkpoint none

The same function runs plainly (metrics printed per epoch) and as a Ray Tune trial (metrics and a
checkpoint reported per epoch, so schedulers can stop it and an interrupted sweep resumes it).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raysearch.config import apply_overrides, from_dict, load_yaml
from raysearch.errors import cli_main
from raysearch.tasks import get_task
from raysearch.tasks.base import FinetuneConfig

TRIAL_STATE = "finetune_state.pt"


def run_finetune(task_name: str, budget: int, seed: int, checkpoint: str | Path | None,
                 cfg: FinetuneConfig, data_root: str | Path, report=None, resume=None) -> dict[str, float]:
    """Train and evaluate; `report(metrics, state)` is called after every evaluated epoch."""
    task = get_task(task_name)
    if checkpoint is not None and str(checkpoint).lower() == "none":
        checkpoint = None
    return task.run(cfg, data_root, budget, seed, checkpoint, report or (lambda m, s: None), resume)


def tune_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trial: one (checkpoint or scratch) x task x budget x seed."""
    import ray.tune

    from raysearch.ray_env import silence_noisy_loggers

    silence_noisy_loggers()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    cfg = from_dict(FinetuneConfig, config["finetune"])
    resume = None
    ckpt = ray.tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / TRIAL_STATE, weights_only=False)
    t0 = time.time()
    node_id = ray.get_runtime_context().get_node_id()
    writer = None
    if config.get("tensorboard_dir"):
        # One TensorBoard run per fine-tune, named like the trial (task-budget-mix-seed).
        from torch.utils.tensorboard import SummaryWriter

        name = ray.tune.get_context().get_trial_name()
        writer = SummaryWriter(str(Path(config["tensorboard_dir"]) / name),
                               purge_step=int(resume["epoch"]) + 1 if resume else None)

    def report(metrics: dict[str, float], state: dict) -> None:
        clean: dict[str, Any] = {k: float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        clean["trial_wall_s"] = time.time() - t0
        if writer is not None:
            for k, v in clean.items():
                if k not in ("epoch", "trial_wall_s") and not k.endswith(("_err", "_lower_bound")):
                    writer.add_scalar(f"{'test' if k.startswith('test_') else 'finetune'}/{k}", v, int(clean["epoch"]))
            writer.flush()
        clean["node_id"] = node_id  # where the trial ran (the map records trial placement)
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / TRIAL_STATE)
            ray.tune.report(clean, checkpoint=ray.tune.Checkpoint.from_directory(d))

    trial = config.get("trial", config)  # the sweep nests the trial spec under "trial"
    run_finetune(trial["task"], int(trial["budget"]), int(trial["seed"]), trial.get("checkpoint"),
                 cfg, config["data_root"], report, resume)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysearch.finetune", description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--budget", type=int, required=True, help="labelled training jets")
    ap.add_argument("--checkpoint", default="none", help="pre-trained model directory, or none (from scratch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="data", help="dataset root (default data/, simulated if missing)")
    ap.add_argument("--config", default=None, help="YAML with FinetuneConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = from_dict(FinetuneConfig, apply_overrides(load_yaml(args.config) if args.config else {}, args.set))
    task = get_task(args.task)
    from data_prep.defaults import ensure_default_data
    ensure_default_data(args.data, [task.dataset])
    torch.set_num_threads(2)

    def report(m, _state):
        shown = {k: round(v, 4) for k, v in m.items() if not k.startswith("test_") and not k.endswith("_err")}
        print("  " + "  ".join(f"{k}={v}" for k, v in shown.items()))

    t0 = time.time()
    final = run_finetune(args.task, args.budget, args.seed, args.checkpoint, cfg, args.data, report)
    print(f"{args.task}, budget {args.budget}, seed {args.seed}, "
          f"{'from scratch' if args.checkpoint.lower() == 'none' else 'from ' + args.checkpoint} "
          f"({time.time() - t0:.1f} s) — test metrics:")
    for k, v in final.items():
        if k.startswith("test_") and not k.endswith("_err") and not k.endswith("lower_bound"):
            err = final.get(f"{k}_err")
            bound = final.get(f"{k}_lower_bound")
            print(f"  {k[5:]:8s} {v:.4g}" + (f" ± {err:.2g}" if err is not None else "")
                  + (" (lower bound: no background passed)" if bound else ""))
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
