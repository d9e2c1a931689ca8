"""The sweep: search-space validation, mix strategies, the plan, and a whole small study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raysearch.config import from_dict
from raysearch.errors import UserError
from raysearch.mixes import from_unit_square, lattice, to_unit_square
from raysearch.sweep_config import SweepConfig, load_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_lattice_degree_two_plus_centroid_is_the_papers_seven_variants():
    names = [m.name for m in lattice(2, centroid=True)]
    assert sorted(names) == sorted(["cls", "mpm", "fm", "cls+mpm", "cls+fm", "mpm+fm", "cls+mpm+fm"])
    assert len(lattice(3)) == 10 and len(lattice(3, centroid=True)) == 10  # the centroid is on it


def test_unit_square_parametrisation_is_exact_and_uniform():
    rng = np.random.default_rng(0)
    uv = rng.random((20000, 2))
    w = np.array([[m.cls, m.mpm, m.fm] for m in (from_unit_square(u, v) for u, v in uv)])
    assert np.allclose(w.sum(1), 1) and (w >= 0).all()
    # Uniform on the simplex: each weight has mean 1/3, and P(w_cls > 1/2) = 1/4.
    assert np.allclose(w.mean(0), 1 / 3, atol=0.01)
    assert abs(np.mean(w[:, 0] > 0.5) - 0.25) < 0.015
    for u, v in uv[:50]:
        m = from_unit_square(u, v)
        assert np.allclose(to_unit_square(m), (u, v), atol=1e-4)


@pytest.mark.parametrize("text, message", [
    ("mixes: {strategy: points, points: [{cls: 1}, {cls: -1, mpm: 1}]}",
     r"mixes\.points\[1\]: weights must be >= 0 and not all 0"),
    ("mixes: {strategy: points, points: [{cls: 0, mpm: 0, fm: 0}]}", r"mixes\.points\[0\]"),
    ("mixes: {strategy: grid}", r"mixes\.strategy: expected one of"),
    ("tasks: [{name: top_tagging, budget: [1]}]", r"tasks\[0\]\.budget: unknown field"),
    ("tasks: [{name: tagging}]", r"unknown task 'tagging'"),
    ("seeds: 3", r"seeds: expected a list"),
    ("pretrain: {epochs: zero}", r"pretrain\.epochs: expected a whole number"),
    ("pretrain: {mix: {cls: 1}}", r"pretrain\.mix: set this through the sweep's own sections"),
    ("mixes: [\n", r"malformed YAML"),
])
def test_bad_search_spaces_name_the_field(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=message):
        load_sweep(p)


def test_cli_error_is_one_line_and_dry_run_prints_the_plan(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixes: {strategy: points, points: [{cls: -1}]}\n")
    r = subprocess.run([sys.executable, "-m", "raysearch.sweep", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: mixes.points[0]: weights must be >= 0 and not all 0, got {'cls': -1.0}"]
    r = subprocess.run([sys.executable, "-m", "raysearch.sweep", "search_spaces/mix.yaml", "--dry-run"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "(7 mixes + scratch) × 3 task-budgets × 2 seeds = 48 fine-tune trials" in r.stdout
    for f in ("smoke.yaml", "paper.yaml"):
        load_sweep(ROOT / "search_spaces" / f)


def small_study(data_root, tmp_path, **over) -> SweepConfig:
    d = {"experiment": "t", "storage_path": str(tmp_path / "exp"),
         "data": {"root": str(data_root), "simulate_if_missing": False},
         "model": {"size": "tiny", "depth": 2},
         "pretrain": {"epochs": 1, "batch_size": 50, "probe_jets": 50},
         "mixes": {"strategy": "points", "points": [{"cls": 1}, {"mpm": 1, "fm": 1}]},
         "tasks": [{"name": "top_tagging", "budgets": [60]}, {"name": "generation", "budgets": [50]}],
         "seeds": [0], "scheduler": {"type": "none"},
         "finetune": {"epochs": 2, "min_steps": 4, "gen_samples": 60, "gen_eval_samples": 40, "ode_steps": 4,
                      "bootstrap": 2}}
    d.update(over)
    return from_dict(SweepConfig, d)


@pytest.mark.slow
def test_small_study_end_to_end_and_rerun_recomputes_nothing(data_root, tmp_path, ray_session):
    from raysearch.report import write_map
    from raysearch.sweep import Sweep

    two_epochs = {"pretrain": {"epochs": 2, "batch_size": 50, "probe_jets": 50}}
    cfg = small_study(data_root, tmp_path, **two_epochs)
    sweep = Sweep(cfg)
    sweep.check_experiment(False)
    sweep.prepare_data()
    pre = sweep.stage_pretrain()
    assert all(e is not None for _, e in pre)
    # Tune followed each pre-training epoch by epoch (Train -> Tune reports), then its summary.
    results = list((sweep.exp / "pretrain").rglob("result.json"))
    assert len(results) == 2 and all(len(f.read_text().splitlines()) == 2 + 1 for f in results)
    rows = sweep.stage_finetune(pre)
    assert len(rows) == 3 * 2 and all(r["status"] == "completed" for r in rows), rows
    md = write_map(sweep.exp, rows)
    exp = sweep.exp
    assert "| top_tagging | 60 | test_auc (max) |" in md and "scratch" in md
    lines = md.splitlines()
    for header, rule in zip(lines, lines[1:]):
        if rule.startswith("|---"):
            assert rule.count("|") == header.count("|"), (header, rule)  # else Markdown shows no table
    assert (exp / "transfer_map.csv").is_file() and list((exp / "plots").glob("ternary_*.png"))
    assert list((exp / "tensorboard" / "hparams").rglob("events.out.tfevents*"))
    state = json.loads((exp / "state.json").read_text())
    assert state["stage_finetune_done"] and "jetclass/train" in state["data_fingerprints"]
    # A pre-trained generator head was reused downstream for the mix that has one.
    gen = [r for r in rows if r["task"] == "generation" and r["source"] == "mpm+fm"][0]
    assert gen["metrics"]["pretrained_fm_head"] == 1.0

    # Running the same study again trains and fine-tunes nothing.
    before = {p: p.read_text() for p in (exp / "finetune").rglob("result.json")}
    stored = {e.key: e.record["stored_at"] for _, e in pre}
    again = Sweep(small_study(data_root, tmp_path, **two_epochs))
    again.check_experiment(False)
    pre2 = again.stage_pretrain()
    assert {e.key: e.record["stored_at"] for _, e in pre2} == stored
    rows2 = again.stage_finetune(pre2)
    assert {p: p.read_text() for p in (exp / "finetune").rglob("result.json")} == before
    assert sorted(json.dumps(r["metrics"], sort_keys=True) for r in rows2) == \
        sorted(json.dumps(r["metrics"], sort_keys=True) for r in rows)


def test_changed_config_on_an_existing_experiment_is_refused(data_root, tmp_path):
    from raysearch.sweep import Sweep

    Sweep(small_study(data_root, tmp_path)).check_experiment(False)
    with pytest.raises(UserError, match="exists with a different configuration"):
        Sweep(small_study(data_root, tmp_path, seeds=[0, 1])).check_experiment(False)


@pytest.mark.slow
def test_failed_pretraining_is_recorded_and_the_map_marks_it(data_root, tmp_path, ray_session):
    """A mix whose pre-training hits a NaN fails alone: the sweep finishes and the map says so."""
    from data_prep.shards import write_arrays
    from raysearch.data import open_split
    from raysearch.report import write_map
    from raysearch.sweep import Sweep

    root = tmp_path / "data"
    for dataset, split in (("jetclass", "train"), ("jetclass", "val"), ("top_tagging", "train"),
                           ("top_tagging", "val"), ("top_tagging", "test")):
        s = open_split(data_root, dataset, split)
        a = s.load_arrays()
        if dataset == "jetclass":
            a["particles"] = a["particles"].copy()
            a["particles"][:, 0, 2] = np.nan  # every pre-training on this data diverges at step 1
        write_arrays(root, s.info, split, a)
    cfg = small_study(root, tmp_path, mixes={"strategy": "points", "points": [{"cls": 1}]},
                      tasks=[{"name": "top_tagging", "budgets": [60]}])
    sweep = Sweep(cfg)
    sweep.check_experiment(False)
    pre = sweep.stage_pretrain()
    assert pre[0][1] is None and "loss term 'cls' is nan" in sweep.pretrain_errors["cls"]
    rows = sweep.stage_finetune(pre)
    by_source = {r["source"]: r for r in rows}
    assert by_source["scratch"]["status"] == "completed"
    assert by_source["cls"]["status"] == "error" and "is nan" in by_source["cls"]["error"]
    md = write_map(sweep.exp, rows, tensorboard=False)
    assert "1 failed" in md and "| **scratch**" not in md


@pytest.mark.slow
def test_two_processes_asking_for_one_pretraining_train_it_once(data_root, tmp_path, ray_session):
    import threading

    from raysearch.pretrain import PretrainConfig, pretrain
    from raysearch.store import PretrainStore

    cfg = lambda: from_dict(PretrainConfig, {"data_root": str(data_root), "epochs": 1, "batch_size": 50,
                                             "probe_jets": 0, "mix": {"cls": 1.0}, "model": {"depth": 2}})
    got = []
    threads = [threading.Thread(target=lambda: got.append(pretrain(cfg(), tmp_path / "store", tmp_path / "runs")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and got[0].key == got[1].key
    assert got[0].record["stored_at"] == got[1].record["stored_at"]
    assert len(PretrainStore(tmp_path / "store").entries()) == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1  # trained once
