"""The transfer map: per task and label budget, every mix's test metric over seeds, the best mix,
its gain over from-scratch training, whether it is distinguishable from the runner-up, and the
pre-training compute each mix used. Written as CSV, Markdown and PNG plots, and into TensorBoard.

    python -m raysearch.report experiments/<name>      # rebuild the map from stored results
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysearch.errors import cli_main, fail

RESULTS_FILE = "results.jsonl"
# The test metric that ranks mixes, per task, and whether larger is better.
PRIMARY = {"top_tagging": ("test_auc", "max"), "generation": ("test_w1m", "min")}
SECONDARY = {"top_tagging": ("test_acc", "test_rej30", "test_rej50"),
             "generation": ("test_w1p", "test_w1efp", "test_fpd", "test_kpd")}


@dataclass
class Cell:
    task: str
    budget: int
    source: str
    """Mix name or 'scratch'."""
    mix: dict | None
    values: list[float]
    """Primary test metric of each completed seed."""
    secondary: dict[str, list[float]]
    n_seeds: int
    failed: list[str]
    """Messages of seeds that failed (errored trials)."""
    stopped: int
    """Seeds stopped early by the scheduler (no test metric)."""
    compute: dict

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0 if self.values else math.nan


def read_results(exp_dir: str | Path) -> list[dict]:
    path = Path(exp_dir) / RESULTS_FILE
    if not path.is_file():
        fail(f"{path}: no results (has the sweep's fine-tuning stage run in {exp_dir}?)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                fail(f"{path}: line {i + 1} is not JSON ({err.msg})")
    return rows


def build_cells(rows: list[dict]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for r in rows:
        key = (r["task"], int(r["budget"]), r["source"])
        metric, _ = PRIMARY[r["task"]]
        c = cells.setdefault(key, Cell(r["task"], int(r["budget"]), r["source"], r.get("mix"), [],
                                       {m: [] for m in SECONDARY[r["task"]]}, 0, [], 0,
                                       r.get("pretrain_compute") or {}))
        c.n_seeds += 1
        m = r.get("metrics") or {}
        if r["status"] == "error":
            c.failed.append(r.get("error", "failed"))
        elif metric in m and math.isfinite(m[metric]):
            c.values.append(float(m[metric]))
            for s in c.secondary:
                if s in m:
                    c.secondary[s].append(float(m[s]))
        else:
            c.stopped += 1
    return sorted(cells.values(), key=lambda c: (c.task, c.budget, c.source == "scratch", c.source))


def summarize(cells: list[Cell]) -> list[dict]:
    """One row per (task, budget): best mix, gain over scratch, separation from the runner-up."""
    out = []
    for (task, budget) in sorted({(c.task, c.budget) for c in cells}):
        metric, mode = PRIMARY[task]
        group = [c for c in cells if c.task == task and c.budget == budget]
        sign = 1 if mode == "max" else -1
        ranked = sorted([c for c in group if c.source != "scratch" and c.values], key=lambda c: -sign * c.mean)
        scratch = next((c for c in group if c.source == "scratch"), None)
        row = {"task": task, "budget": budget, "metric": metric, "mode": mode,
               "best": ranked[0].source if ranked else "n/a", "best_mean": ranked[0].mean if ranked else math.nan,
               "best_std": ranked[0].std if ranked else math.nan,
               "scratch_mean": scratch.mean if scratch else math.nan,
               "runner_up": ranked[1].source if len(ranked) > 1 else "n/a",
               "missing": sum(len(c.failed) for c in group)}
        row["gain_over_scratch"] = sign * (row["best_mean"] - row["scratch_mean"])
        if len(ranked) > 1:
            a, b = ranked[0], ranked[1]
            se = math.sqrt((a.std ** 2) / max(len(a.values), 1) + (b.std ** 2) / max(len(b.values), 1))
            gap = abs(a.mean - b.mean)
            # Distinguishable: the gap exceeds twice its standard error over seeds (needs >= 2 seeds).
            row["distinguishable"] = ("yes" if se > 0 and gap > 2 * se else
                                      "no" if se > 0 else "n/a (1 seed)")
        else:
            row["distinguishable"] = "n/a"
        out.append(row)
    return out


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def write_map(exp_dir: str | Path, rows: list[dict], tensorboard: bool = True) -> str:
    """Write transfer_map.{csv,md} and PNG plots into `exp_dir`; return the Markdown."""
    exp = Path(exp_dir)
    cells = build_cells(rows)
    summary = summarize(cells)
    with open(exp / "transfer_map.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "budget", "source", "alpha_cls", "alpha_mpm", "alpha_fm", "metric", "mean", "std",
                    "n_completed", "n_seeds", "n_stopped_early", "n_failed", "secondary",
                    "pretrain_steps", "pretrain_forward_passes", "pretrain_wall_s"])
        for c in cells:
            metric, _ = PRIMARY[c.task]
            mix = c.mix or {}
            tot = sum(mix.values()) or 1.0
            w.writerow([c.task, c.budget, c.source, *(_fmt(mix.get(k, 0) / tot, 3) if c.mix else "" for k in ("cls", "mpm", "fm")),
                        metric, _fmt(c.mean, 6), _fmt(c.std, 3), len(c.values), c.n_seeds, c.stopped,
                        len(c.failed), json.dumps({k: float(np.mean(v)) for k, v in c.secondary.items() if v}),
                        c.compute.get("steps", ""), c.compute.get("forward_passes", ""),
                        _fmt(c.compute.get("train_wall_s", math.nan), 3)])
    lines = ["# Transfer map", "",
             "Best pre-training mix per task and label budget (test metric, mean ± std over seeds).", "",
             "| task | budget | metric | best mix | best | from scratch | gain | distinguishable from runner-up | runner-up | missing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['task']} | {s['budget']} | {s['metric']} ({s['mode']}) | **{s['best']}** | "
                     f"{_fmt(s['best_mean'])} ± {_fmt(s['best_std'], 2)} | {_fmt(s['scratch_mean'])} | "
                     f"{_fmt(s['gain_over_scratch'], 3)} | {s['distinguishable']} | {s['runner_up']} | "
                     f"{s['missing'] or ''} |")
    for (task, budget) in sorted({(c.task, c.budget) for c in cells}):
        metric, mode = PRIMARY[task]
        header = ["mix", "α_cls", "α_mpm", "α_fm", metric, "seeds", *SECONDARY[task], "pre-train steps",
                  "forward passes", "wall s"]
        lines += ["", f"## {task}, budget {budget}: {metric} ({'higher' if mode == 'max' else 'lower'} is better)", "",
                  "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for c in [c for c in cells if c.task == task and c.budget == budget]:
            mix = c.mix or {}
            tot = sum(mix.values()) or 1.0
            alphas = [f"{mix.get(k, 0) / tot:.2f}" if c.mix else "–" for k in ("cls", "mpm", "fm")]
            seeds = f"{len(c.values)}/{c.n_seeds}"
            if c.stopped:
                seeds += f" ({c.stopped} stopped early)"
            if c.failed:
                seeds += f" (**{len(c.failed)} failed**: {c.failed[0][:80]})"
            sec = [_fmt(float(np.mean(c.secondary[s]))) if c.secondary[s] else "–" for s in SECONDARY[task]]
            lines.append(f"| {c.source} | {' | '.join(alphas)} | {_fmt(c.mean)} ± {_fmt(c.std, 2)} | {seeds} | "
                         f"{' | '.join(sec)} | {c.compute.get('steps', '–')} | {c.compute.get('forward_passes', '–')} | "
                         f"{_fmt(c.compute.get('train_wall_s', math.nan), 3)} |")
    md = "\n".join(lines) + "\n"
    (exp / "transfer_map.md").write_text(md)
    images = plot_map(exp, cells)
    if tensorboard:
        _images_to_tensorboard(exp, images, md)
    return md


def plot_map(exp: Path, cells: list[Cell]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = exp / "plots"
    out_dir.mkdir(exist_ok=True)
    paths = []
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # cls, mpm, fm
    for (task, budget) in sorted({(c.task, c.budget) for c in cells}):
        metric, mode = PRIMARY[task]
        group = [c for c in cells if c.task == task and c.budget == budget and c.mix and c.values]
        if not group:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        ax.plot(*np.vstack([corners, corners[:1]]).T, color="0.6", lw=1)
        for (x, y), name, off, ha in zip(corners, ("α_cls = 1", "α_mpm = 1", "α_fm = 1"),
                                         ((-16, -16), (16, -16), (0, 24)), ("right", "left", "center")):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=off, ha=ha, fontsize=9, color="0.3")
        w = np.array([[c.mix[k] for k in ("cls", "mpm", "fm")] for c in group], dtype=float)
        w /= w.sum(1, keepdims=True)
        xy = w @ corners
        vals = np.array([c.mean for c in group])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=260, cmap="viridis" if mode == "max" else "viridis_r",
                        edgecolors="k")
        for (x, y), v in zip(xy, vals):
            ax.annotate(f"{v:.3g}", (x, y), textcoords="offset points", xytext=(14, 6), ha="left", fontsize=8)
        scratch = next((c for c in cells if c.task == task and c.budget == budget and c.source == "scratch"), None)
        title = f"{task}, budget {budget}: {metric}"
        if scratch and scratch.values:
            title += f"\n(from scratch: {scratch.mean:.3g})"
        ax.set_title(title, fontsize=10, pad=28)
        ax.set_xlim(-0.25, 1.25)
        ax.set_ylim(-0.12, 1.0)
        fig.colorbar(sc, ax=ax, shrink=0.8)
        ax.set_aspect("equal")
        ax.axis("off")
        p = out_dir / f"ternary_{task}_b{budget}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    for task in sorted({c.task for c in cells}):
        metric, _ = PRIMARY[task]
        fig, ax = plt.subplots(figsize=(6, 4))
        for source in sorted({c.source for c in cells if c.task == task}):
            pts = sorted((c.budget, c.mean, c.std) for c in cells if c.task == task and c.source == source and c.values)
            if pts:
                b, m, s = map(np.array, zip(*pts))
                ax.errorbar(b, m, yerr=s, marker="o", capsize=3, label=source,
                            ls="--" if source == "scratch" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("label budget (jets)")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric} vs label budget")
        ax.legend(fontsize=7)
        p = out_dir / f"budget_{task}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def _images_to_tensorboard(exp: Path, images: list[Path], md: str) -> None:
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(exp / "tensorboard" / "transfer_map"))
    for p in images:
        img = np.asarray(Image.open(p).convert("RGB"))
        w.add_image(f"transfer_map/{p.stem}", img, 0, dataformats="HWC")
    w.add_text("transfer_map", md, 0)
    w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysearch.report", description=__doc__.split("\n")[0])
    ap.add_argument("experiment_dir")
    args = ap.parse_args(argv)
    md = write_map(args.experiment_dir, read_results(args.experiment_dir))
    print(md)
    print(f"written: {Path(args.experiment_dir) / 'transfer_map.md'}, transfer_map.csv, plots/")
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
