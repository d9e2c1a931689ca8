"""Top tagging: a binary classifier fine-tuned on a label budget of the top-tagging training split.

Validation selects the epoch; the test split (fixed, the same for every mix and budget) gives the
reported accuracy, ROC AUC and background rejection at 30% and 50% signal efficiency.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysearch.budgets import budget_indices
from raysearch.data import ArrayLoader, feature_stats, open_split, subset
from raysearch.metrics.classification import classification_metrics
from raysearch.model import ClassifierHead
from raysearch.tasks.base import (FinetuneConfig, Report, assemble, backbone_config, epochs_for,
                                  make_finetune_optimizer, optimizer_step, restore)


class TopTagging:
    name = "top_tagging"
    dataset = "top_tagging"
    metric = "val_auc"
    mode = "max"

    def load(self, data_root: str | Path, budget: int, seed: int):
        train = open_split(data_root, self.dataset, "train")
        a = train.load_arrays()
        idx = budget_indices(a["label"], budget, seed, len(train.info.label_names), where=f"budget {budget}")
        val = open_split(data_root, self.dataset, "val")
        test = open_split(data_root, self.dataset, "test")
        return train.info, subset(a, idx), val.load_arrays(), test.load_arrays()

    @torch.no_grad()
    def scores(self, model, arrays, info, features) -> tuple[np.ndarray, np.ndarray, float]:
        model.eval()
        out, labels, loss, n = [], [], 0.0, 0
        for b in ArrayLoader(arrays, info, 512, shuffle=False, features=features):
            logits = model.classify(b.particles, b.mask)
            loss += float(F.cross_entropy(logits, b.label, reduction="sum"))
            n += len(b)
            out.append(torch.softmax(logits, 1)[:, 1])
            labels.append(b.label)
        return torch.cat(labels).numpy(), torch.cat(out).numpy(), loss / max(n, 1)

    def run(self, cfg: FinetuneConfig, data_root, budget: int, seed: int, checkpoint, report: Report,
            resume: dict[str, Any] | None = None) -> dict[str, float]:
        info, train, val, test = self.load(data_root, budget, seed)
        model_cfg = backbone_config(cfg, checkpoint, features=info.particle_features, num_classes=2,
                                    max_particles=info.max_particles)
        torch.manual_seed(seed)
        model = assemble(model_cfg, (), checkpoint)
        model.heads["cls"] = ClassifierHead(model_cfg.width, 2)  # a new binary head
        if checkpoint is None:
            mean, std = feature_stats(train["particles"], train["n_particles"])
            model.backbone.set_normalization(torch.from_numpy(mean), torch.from_numpy(std))
        features = model_cfg.features
        opt = make_finetune_optimizer(model, cfg)
        loader = ArrayLoader(train, info, cfg.batch_size, shuffle=True, seed=seed, features=features)
        epochs, eval_every = epochs_for(cfg, len(train["label"]))
        best = {"val_auc": -1.0}
        best_state = None
        start = 0
        if resume is not None:
            best, best_state, start = restore(resume, model, opt)
            if start >= epochs:  # interrupted after its final report: report it again, train nothing
                report(resume["metrics"], resume)
                return resume["metrics"]
            loader.rng = np.random.default_rng([seed, start])
        for epoch in range(start, epochs):
            model.train()
            total, n = 0.0, 0
            for b in loader:
                loss = F.cross_entropy(model.classify(b.particles, b.mask), b.label)
                total += optimizer_step(model, opt, loss) * len(b)
                n += len(b)
            if not np.isfinite(total):
                raise FloatingPointError(f"top_tagging: training loss is {total} at epoch {epoch + 1}")
            if (epoch + 1) % eval_every and epoch + 1 < epochs:
                continue
            labels, s, val_loss = self.scores(model, val, info, features)
            m = classification_metrics(labels, s, prefix="val_")
            metrics = {"epoch": float(epoch + 1), "train_loss": total / max(n, 1), "val_loss": val_loss,
                       "val_auc": m["val_auc"], "val_acc": m["val_acc"]}
            if m["val_auc"] > best["val_auc"]:
                best = dict(metrics)
                best_state = copy.deepcopy(model.state_dict())
            final = epoch + 1 == epochs
            if final:
                model.load_state_dict(best_state)
                labels, s, test_loss = self.scores(model, test, info, features)
                metrics.update(classification_metrics(labels, s, prefix="test_"))
                metrics.update(best_epoch=best["epoch"], best_val_auc=best["val_auc"], test_loss=test_loss)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "best": best,
                     "best_state": best_state, "epoch": epoch + 1, "metrics": metrics}
            report(metrics, state)
        return metrics
