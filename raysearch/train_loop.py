"""The pre-training loop. It runs in every Ray Train worker, or plainly in one process.

`run_loop(config, env)` is the loop; `env` is how it reaches its data, peers and checkpoints:
`RayTrainEnv` inside a TorchTrainer worker (DDP over gloo/NCCL, Ray Data shard, ray.train.report),
`PlainEnv` in one process (the same Ray Data dataset iterated directly, checkpoints in a folder).
One loop for both is what makes `benchmarks/ray_overhead.py` a fair comparison.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysearch.checkpoint import load_model, save_model
from raysearch.config import from_dict
from raysearch.data import ArrayLoader, open_split, ray_batches
from raysearch.model import JetModel
from raysearch.objectives import Mix
from raysearch.optim import make_ema, make_optimizer, make_schedule
from raysearch.probe import embed, knn_accuracy

STATE_FILE = "train_state.pt"


class PlainEnv:
    """One process, no Ray Train: data from a Ray Data dataset, checkpoints in `ckpt_dir`."""

    rank, world_size = 0, 1

    def __init__(self, dataset, ckpt_dir: str | Path):
        self.dataset, self.ckpt_dir = dataset, Path(ckpt_dir)
        self.reports: list[dict] = []

    def data(self):
        return self.dataset

    def wrap(self, model):
        return model

    def latest_checkpoint(self) -> Path | None:
        return self.ckpt_dir if (self.ckpt_dir / STATE_FILE).is_file() else None

    def report(self, metrics: dict, ckpt_dir: Path | None) -> None:
        self.reports.append(metrics)
        if ckpt_dir is not None:
            import shutil
            tmp = self.ckpt_dir.with_name(self.ckpt_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(ckpt_dir, tmp)
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            tmp.rename(self.ckpt_dir)


class RayTrainEnv:
    """Inside a TorchTrainer worker."""

    def __init__(self):
        import ray.train

        self.ctx = ray.train.get_context()
        self.rank, self.world_size = self.ctx.get_world_rank(), self.ctx.get_world_size()
        self._ckpt = ray.train.get_checkpoint()
        self._ckpt_dir = None
        # Every rank logs "Reporting training result" otherwise (RAY.md); that logger is named
        # after its module's file.
        from ray.train.v2._internal.execution import context as train_context
        for name in ("ray.train", "ray.train.v2", train_context.__file__):
            logging.getLogger(name).setLevel(logging.WARNING)

    def data(self):
        import ray.train

        return ray.train.get_dataset_shard("train")

    def wrap(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    def latest_checkpoint(self) -> Path | None:
        if self._ckpt is None:
            return None
        if self._ckpt_dir is None:
            self._ckpt_dir = Path(self._ckpt.to_directory())
        return self._ckpt_dir

    def report(self, metrics: dict, ckpt_dir: Path | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)


def _device(env, use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        if isinstance(env, RayTrainEnv):
            import ray.train.torch
            return ray.train.torch.get_device()
        return torch.device("cuda")
    return torch.device("cpu")


def run_loop(config: dict[str, Any], env) -> dict[str, Any]:
    """Pre-train one mix. Returns a summary: status ('ok' or 'nan'), message, final metrics, compute."""
    from raysearch.pretrain import PretrainConfig  # the config type lives with the driver

    cfg: PretrainConfig = from_dict(PretrainConfig, config["cfg"])
    if cfg.threads_per_worker:
        torch.set_num_threads(cfg.threads_per_worker)
    device = _device(env, cfg.use_gpu)
    mix = cfg.mix
    torch.manual_seed(cfg.seed)
    model = JetModel(cfg.model, mix.heads)
    stats = config["stats"]
    model.backbone.set_normalization(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    if "fm" in model.heads:
        model.heads["fm"].set_normalization(torch.tensor(stats["fm_mean"]), torch.tensor(stats["fm_std"]),
                                            torch.tensor(stats["cond_mean"]), torch.tensor(stats["cond_std"]))
    model.to(device)
    opt = make_optimizer(model.parameters(), cfg.optimizer)
    total_steps = int(config["total_steps"])
    steps_per_epoch = int(config["steps_per_epoch"])
    sched = make_schedule(opt, cfg.optimizer, total_steps)
    ema = make_ema(model, cfg.ema_decay)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + env.rank)
    class_weights = torch.tensor(config["class_weights"], dtype=torch.float32, device=device)
    step = epoch = passes = 0
    wall = 0.0
    resumed_from = 0
    history: list[dict[str, float]] = []
    ckpt = env.latest_checkpoint()
    if ckpt is not None:
        saved = load_model(ckpt / "raw_model")
        model.load_state_dict(saved.state_dict())
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step, epoch, passes, wall = state["step"], state["epoch"], state["forward_passes"], state["wall_s"]
        resumed_from = step
        history = list(state.get("history", []))
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generators"][env.rank] if env.rank < len(state["generators"]) else state["generators"][0])
    ddp = env.wrap(model)
    info = config["info"]
    val = _ValidationSet(cfg, info) if env.rank == 0 and cfg.probe_jets > 0 else None
    writer = None
    if env.rank == 0 and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(config["tensorboard_dir"], purge_step=step or None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.precision in ("auto", "bf16")
                else torch.autocast("cpu", enabled=False))
    status, message = "ok", ""
    metrics: dict[str, float] = {}
    data = env.data()
    from raysearch.schema import DatasetInfo
    dinfo = DatasetInfo.from_dict(info)
    while step < total_steps and status == "ok":
        t_epoch = time.perf_counter()
        jets = 0
        sums: dict[str, float] = {}
        n_batches = 0
        batches = ray_batches(data, dinfo, cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer or None,
                              seed=cfg.seed + epoch, features=cfg.model.features, drop_last=True)
        for i, batch in enumerate(batches):
            if i >= steps_per_epoch or step >= total_steps:
                break
            batch = batch.to(device)
            model.train()
            with autocast:
                out = ddp(batch, mix, cfg.objectives, class_weights, gen)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            # Gradients are already averaged over ranks here, so every rank sees the same norm and
            # stops together on a non-finite value (no collective hang).
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip or float("inf"))
            bad = [k for k, v in out.raw.items() if not math.isfinite(v.item())]
            if bad or not math.isfinite(float(gnorm)):
                term = bad[0] if bad else "gradient"
                value = float(out.raw[term]) if bad else float(gnorm)
                status = "nan"
                message = f"step {step + 1}: loss term '{term}' is {value} (mix {mix.name})"
                break
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            passes += out.forward_passes
            jets += len(batch)
            n_batches += 1
            for k, v in out.raw.items():
                sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v.item()
                sums[f"weighted_{k}"] = sums.get(f"weighted_{k}", 0.0) + out.weighted[k].item()
            sums["loss"] = sums.get("loss", 0.0) + out.total.item()
            if writer is not None and step % cfg.log_every_steps == 0:
                for k, v in out.raw.items():
                    writer.add_scalar(f"train_step/loss_{k}", v.item(), step)
                writer.add_scalar("train_step/loss", out.total.item(), step)
                writer.add_scalar("train_step/lr", sched.get_last_lr()[0], step)
        if status != "ok":
            break
        epoch += 1
        dt = time.perf_counter() - t_epoch
        wall += dt
        metrics = {k: v / max(n_batches, 1) for k, v in sums.items()}
        metrics.update(epoch=float(epoch), step=float(step), forward_passes=float(passes),
                       lr=float(sched.get_last_lr()[0]), jets_per_s=float(jets * env.world_size / max(dt, 1e-9)),
                       wall_s=float(wall), total_steps=float(total_steps))
        eval_model = ema.module if ema is not None else model
        if val is not None:
            metrics.update(val.evaluate(eval_model, mix, cfg, device))
        history.append({k: float(v) for k, v in metrics.items()})
        if writer is not None:
            for k, v in metrics.items():
                if k not in ("epoch", "step", "total_steps"):
                    writer.add_scalar(f"pretrain/{k}", v, step)
            writer.flush()
        ckpt_dir = None
        if env.rank == 0:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="rs-ckpt-"))
            save_model(eval_model if ema is not None else model, ckpt_dir / "model")
            # The raw (non-EMA) weights are needed to continue training exactly.
            save_model(model, ckpt_dir / "raw_model")
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None, "step": step, "epoch": epoch,
                        "forward_passes": passes, "wall_s": wall, "torch_rng": torch.get_rng_state(), "history": history,
                        "generators": [gen.get_state()]}, ckpt_dir / STATE_FILE)
        env.report({k: float(v) for k, v in metrics.items()}, ckpt_dir)
    if writer is not None:
        if status == "ok":
            hparams = {f"alpha_{k}": v for k, v in mix.normalized().as_dict().items()}
            final = {f"hparam/{k}": v for k, v in metrics.items() if k.startswith(("val_", "probe"))}
            writer.add_hparams(hparams, final or {"hparam/loss": metrics.get("loss", float("nan"))}, run_name=".")
        writer.close()
    return {"status": status, "message": message, "metrics": metrics, "step": step, "epoch": epoch,
            "resumed_from_step": resumed_from, "history": history, "max_param_diff_across_ranks": _rank_divergence(model, env),
            "forward_passes": passes, "wall_s": wall, "world_size": env.world_size,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def _rank_divergence(model, env) -> float:
    """Largest difference of any parameter between rank 0 and the other ranks (0 when in sync)."""
    if env.world_size == 1:
        return 0.0
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


class _ValidationSet:
    """Held-out jets for validation losses and the k-NN probe (rank 0 only; small by design)."""

    def __init__(self, cfg, info: dict):
        split = open_split(cfg.data_root, cfg.dataset, "val")
        a = split.load_arrays()
        n = min(cfg.probe_jets, len(a["label"]))
        idx = np.random.default_rng(0).permutation(len(a["label"]))[:n]
        arrays = {k: v[idx] for k, v in a.items()}
        self.loader = ArrayLoader(arrays, split.info, 256, shuffle=False, features=cfg.model.features)

    @torch.no_grad()
    def evaluate(self, model, mix: Mix, cfg, device) -> dict[str, float]:
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        gen = torch.Generator().manual_seed(1234)  # the same masks and noise at every evaluation
        for b in self.loader:
            out = model(b.to(device), mix, cfg.objectives, None, gen)
            for k, v in out.raw.items():
                sums[f"val_loss_{k}"] = sums.get(f"val_loss_{k}", 0.0) + float(v) * len(b)
            sums["val_loss"] = sums.get("val_loss", 0.0) + float(out.total) * len(b)
            n += len(b)
        res = {k: v / max(n, 1) for k, v in sums.items()}
        emb, labels = embed(model, self.loader)
        res["probe_knn_acc"] = knn_accuracy(emb, labels)
        return res


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Entry point for TorchTrainer."""
    return run_loop(config, RayTrainEnv())
