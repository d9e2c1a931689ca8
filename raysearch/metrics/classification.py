"""Top-tagging metrics: accuracy, ROC AUC, background rejection at fixed signal efficiency."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def rejection_at(labels: np.ndarray, scores: np.ndarray, signal_eff: float) -> tuple[float, bool]:
    """1 / background efficiency at `signal_eff`, interpolated on the ROC curve.

    Returns (rejection, lower_bound). When no background jet passes at that signal efficiency the
    rejection is only bounded from below by the number of background jets: that bound is returned
    with lower_bound=True.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)  # exact points to interpolate
    # First ROC point reaching the efficiency, interpolated linearly from the point before it
    # (a flat stretch of the ROC at exactly that efficiency takes its lowest background rate).
    i = int(np.searchsorted(tpr, signal_eff, side="left"))
    if i == 0 or tpr[i] == signal_eff:
        eps_b = float(fpr[i])
    else:
        w = (signal_eff - tpr[i - 1]) / (tpr[i] - tpr[i - 1])
        eps_b = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
    n_bkg = int(np.sum(labels == 0))
    if eps_b * n_bkg < 1.0:  # fewer than one background jet passes: only a bound is measurable
        return float(n_bkg), True
    return 1.0 / eps_b, False


def classification_metrics(labels: np.ndarray, scores: np.ndarray, prefix: str = "") -> dict[str, float]:
    """accuracy (score > 0.5), auc, rej30, rej50 (+ *_lower_bound flags as 0/1)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    out = {f"{prefix}acc": float(np.mean((scores > 0.5) == labels)),
           f"{prefix}auc": float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")}
    for eff in (0.3, 0.5):
        rej, bound = rejection_at(labels, scores, eff)
        tag = f"rej{int(eff * 100)}"
        out[f"{prefix}{tag}"] = rej
        out[f"{prefix}{tag}_lower_bound"] = float(bound)
    return out
