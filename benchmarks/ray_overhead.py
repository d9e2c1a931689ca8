"""Ray Train overhead: the same pre-training through TorchTrainer vs run plainly in one process.

    python benchmarks/ray_overhead.py [--data data] [--epochs 4] [--config search_spaces/mix.yaml]

Runs the pre-training loop (`raysearch.train_loop.run_loop`) three ways on the default data:
plainly in this process (same Ray Data dataset, no Train), through TorchTrainer with 1 worker, and
with 2 workers; prints wall times (driver's view: from the call until the checkpoint is stored) and
the ratios. Goal: TorchTrainer(1) / plain <= 1.25 at the default scale.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from raysearch.config import from_dict
from raysearch.pretrain import PretrainConfig, loop_config, pretrain, resolve, training_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    from data_prep.defaults import ensure_default_data
    from raysearch.data import open_split
    from raysearch.ray_env import ensure_ray
    from raysearch.train_loop import PlainEnv, run_loop

    ensure_ray(num_cpus=2)
    ensure_default_data(args.data, ["jetclass"], progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="rs-overhead-"))
    base = {"data_root": args.data, "dataset": "jetclass", "epochs": args.epochs, "batch_size": args.batch,
            "mix": {"cls": 1.0, "mpm": 1.0, "fm": 1.0}}

    cfg = from_dict(PretrainConfig, dict(base))
    split = open_split(args.data, "jetclass", "train")
    t0 = time.perf_counter()
    cfg = resolve(cfg, split)
    config = loop_config(cfg, split, None)
    torch.set_num_threads(cfg.threads_per_worker)
    summary = run_loop(config, PlainEnv(training_dataset(split), tmp / "plain_ckpt"))
    plain = time.perf_counter() - t0
    print(f"plain loop, 1 process:        {plain:7.1f} s  ({summary['step']} steps, "
          f"training itself {summary['wall_s']:.1f} s)")

    times = {}
    for workers in (1, 2):
        cfg = from_dict(PretrainConfig, {**base, "num_workers": workers})
        t0 = time.perf_counter()
        entry = pretrain(cfg, tmp / f"store{workers}", tmp / f"runs{workers}", verbose=False)
        times[workers] = time.perf_counter() - t0
        c = entry.record["compute"]
        print(f"TorchTrainer, {workers} worker(s):     {times[workers]:7.1f} s  ({c['steps']} steps, "
              f"training itself {c['train_wall_s']:.1f} s)")
    print(f"TorchTrainer(1) / plain = {times[1] / plain:.2f} (goal <= 1.25)")
    print(f"TorchTrainer(2) / TorchTrainer(1) = {times[2] / times[1]:.2f} "
          f"(2 workers split the same epochs; on 2 cores they also share the CPUs)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
