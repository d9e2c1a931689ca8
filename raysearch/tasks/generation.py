"""JetNet-style conditional generation with the flow-matching head.

JetNet particles (etarel, phirel, ptrel) are modelled as (deta, dphi, log ptrel): the flow-matching
head's own features, so a head pre-trained on JetClass-like jets is reused as it is (its jet-type
embedding is re-learned: JetNet has other classes). Jets are generated conditioned on the head's
conditions (`model.fm_conditions`: type and multiplicity by default, optionally jet pT and mass) taken
from held-out real jets, then compared with them by the JetNet metrics.
The label budget is the number of training jets (class-balanced).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysearch.budgets import budget_indices
from raysearch.checkpoint import load_head, read_model_config
from raysearch.data import feature_stats, open_split, subset
from raysearch.errors import fail
from raysearch.metrics.generation import generation_metrics
from raysearch.model import FlowMatchingHead, condition_stats, jet_condition_index
from raysearch.objectives.flow_matching import flow_matching_loss, sample
from raysearch.tasks.base import (FinetuneConfig, Report, assemble, backbone_config, epochs_for,
                                  make_finetune_optimizer, optimizer_step, restore)

FM_FEATURES = ("deta", "dphi", "log_pt_rel")


def to_fm(particles: np.ndarray, n: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """JetNet (etarel, phirel, ptrel) -> (deta, dphi, log ptrel) tensors and the mask."""
    mask = np.arange(particles.shape[1])[None] < n[:, None]
    x = particles.astype(np.float32).copy()
    x[..., 2] = np.log(np.clip(x[..., 2], 1e-8, None))
    x[~mask] = 0
    return torch.from_numpy(x), torch.from_numpy(mask)


def from_fm(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    out = x.numpy().copy()
    out[..., 2] = np.exp(out[..., 2])
    out[~mask.numpy()] = 0
    return out


class Generation:
    name = "generation"
    dataset = "jetnet"
    metric = "val_w1m"
    mode = "min"

    def run(self, cfg: FinetuneConfig, data_root, budget: int, seed: int, checkpoint, report: Report,
            resume: dict[str, Any] | None = None) -> dict[str, float]:
        train_split = open_split(data_root, self.dataset, "train")
        info = train_split.info
        a = train_split.load_arrays()
        idx = budget_indices(a["label"], budget, seed, len(info.label_names), where=f"budget {budget}")
        train = subset(a, idx)
        test = open_split(data_root, self.dataset, "test").load_arrays()
        if checkpoint is not None:
            mc, _ = read_model_config(checkpoint)
            if tuple(mc.fm_features) != FM_FEATURES:
                fail(f"{checkpoint}: its flow-matching features {list(mc.fm_features)} are not "
                     f"{list(FM_FEATURES)}, which JetNet-style generation needs")
        model_cfg = backbone_config(cfg, checkpoint, features=FM_FEATURES, fm_features=FM_FEATURES,
                                    num_classes=len(info.label_names), max_particles=info.max_particles,
                                    jet_features=info.jet_features)
        torch.manual_seed(seed)
        model = assemble(model_cfg, (), checkpoint)
        head = FlowMatchingHead(model_cfg, len(info.label_names))
        model.heads["fm"] = head
        # A pre-trained head is reused (its jet-type embedding only where the class count matches).
        pretrained_head = checkpoint is not None and (Path(checkpoint) / "head_fm.pt").is_file()
        if pretrained_head:
            load_head(model, checkpoint, "fm")
        x_train, m_train = to_fm(train["particles"], train["n_particles"])
        jet_index = jet_condition_index(head.jet_conditions, info.jet_features, f"{self.dataset} data")
        jet_train = torch.from_numpy(train["jet"][:, jet_index].astype(np.float32))
        if not pretrained_head:  # a pre-trained head keeps its own units
            mean, std = feature_stats(x_train.numpy(), train["n_particles"])
            cmean, cstd = condition_stats(model_cfg.fm_conditions, train["n_particles"], train["jet"],
                                          info.jet_features)
            head.set_normalization(*(torch.from_numpy(a) for a in (mean, std, cmean, cstd)))
        labels = torch.from_numpy(train["label"].astype(np.int64))
        opt = make_finetune_optimizer(model, cfg)
        epochs, eval_every = epochs_for(cfg, len(labels))
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        # Validation: a fixed half of the held-out jets; the other half is the final test set.
        order = np.random.default_rng(0).permutation(len(test["label"]))
        val, tst = subset(test, np.sort(order[: len(order) // 2])), subset(test, np.sort(order[len(order) // 2:]))
        best, best_state, start = {"val_w1m": float("inf")}, None, 0
        if resume is not None:
            best, best_state, start = restore(resume, model, opt)
            if start >= epochs:  # interrupted after its final report: report it again, train nothing
                report(resume["metrics"], resume)
                return resume["metrics"]
            rng = np.random.default_rng([seed, start])
        for epoch in range(start, epochs):
            model.train()
            perm = rng.permutation(len(labels))
            total, n = 0.0, 0
            for i in range(0, len(perm), cfg.batch_size):
                j = torch.from_numpy(perm[i:i + cfg.batch_size])
                loss = flow_matching_loss(model, x_train[j], m_train[j], labels[j], gen,
                                          jet_train[j] if jet_index else None)
                total += optimizer_step(model, opt, loss) * len(j)
                n += len(j)
            if not np.isfinite(total):
                raise FloatingPointError(f"generation: training loss is {total} at epoch {epoch + 1}")
            final = epoch + 1 == epochs
            if (epoch + 1) % eval_every and not final:
                continue
            metrics = {"epoch": float(epoch + 1), "train_loss": total / max(n, 1)}
            metrics.update(self.evaluate(model, val, jet_index, cfg, cfg.gen_eval_samples, seed, "val_", n_boot=2))
            if metrics["val_w1m"] < best["val_w1m"]:
                best, best_state = dict(metrics), copy.deepcopy(model.state_dict())
            if final:
                model.load_state_dict(best_state)
                metrics.update(self.evaluate(model, tst, jet_index, cfg, cfg.gen_samples, seed + 1, "test_",
                                             cfg.bootstrap))
                metrics.update(best_epoch=best["epoch"], best_val_w1m=best["val_w1m"],
                               pretrained_fm_head=float(pretrained_head))
            report(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(), "best": best,
                             "best_state": best_state, "epoch": epoch + 1, "metrics": metrics})
        return metrics

    @torch.no_grad()
    def evaluate(self, model, real: dict, jet_index: list[int], cfg: FinetuneConfig, n_gen: int, seed: int,
                 prefix: str, n_boot: int) -> dict[str, float]:
        """Generate jets with the real jets' conditions (type, multiplicity, ...); JetNet metrics against them."""
        model.eval()
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(real["label"]), n_gen)
        label = torch.from_numpy(real["label"][pick].astype(np.int64))
        n = torch.from_numpy(real["n_particles"][pick].astype(np.int64))
        jet = torch.from_numpy(real["jet"][pick][:, jet_index].astype(np.float32)) if jet_index else None
        max_p = real["particles"].shape[1]
        xs, ms = [], []
        g = torch.Generator().manual_seed(seed)
        for i in range(0, n_gen, 512):
            x, m = sample(model, label[i:i + 512], n[i:i + 512], max_p, cfg.ode_steps, cfg.solver, g,
                          None if jet is None else jet[i:i + 512])
            xs.append(x)
            ms.append(m)
        x, m = torch.cat(xs), torch.cat(ms)
        gen = from_fm(x, m)
        real_mask = np.arange(max_p)[None] < real["n_particles"][:, None]
        return generation_metrics(real["particles"], real_mask, gen, m.numpy(), n_boot=n_boot, seed=seed,
                                  prefix=prefix)
