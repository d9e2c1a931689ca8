"""The cluster: cluster.yaml against Ray's schema; a two-node Ray cluster on this machine; resuming
a sweep whose driver was killed."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import descendants, kill, pids_with

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(copy.deepcopy(cfg))
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    import ray
    assert ray.__version__ in cfg["docker"]["image"]  # the image matches our Ray version
    assert any("pip install" in c and "raysearch" in c for c in cfg["setup_commands"])


def _study_yaml(path: Path, data_root, storage: Path, name: str, seeds=(0,)) -> Path:
    path.write_text(yaml.safe_dump({
        "experiment": name, "storage_path": str(storage),
        "data": {"root": str(data_root), "simulate_if_missing": False},
        "model": {"size": "tiny", "depth": 2},
        "pretrain": {"epochs": 1, "batch_size": 50, "probe_jets": 50},
        "mixes": {"strategy": "points", "points": [{"cls": 1.0}]},
        "tasks": [{"name": "top_tagging", "budgets": [40, 60]}],
        "seeds": list(seeds), "scheduler": {"type": "none"},
        "finetune": {"epochs": 3, "min_steps": 6},
    }))
    return path


@pytest.mark.slow
def test_two_node_cluster_runs_the_sweep_on_both_nodes(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("n")  # short: Ray's socket paths must stay under 107 bytes
    port = 26379 + os.getpid() % 1000
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    started = []
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={tmp}",
                        "--include-dashboard=false", "--disable-usage-stats"], check=True, env=env,
                       capture_output=True, timeout=120)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
        started = pids_with(str(tmp))
        spec = _study_yaml(tmp / "s.yaml", data_root, tmp / "exp", "two", seeds=(0, 1))
        r = subprocess.run([sys.executable, "-m", "raysearch.sweep", str(spec), "--address", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = [json.loads(l) for l in (tmp / "exp" / "two" / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * 2 * 2 and all(row["status"] == "completed" for row in rows)
        nodes = {row["node_id"] for row in rows}
        assert len(nodes) == 2, nodes  # fine-tunes landed on both nodes
    finally:
        kill(set(started) | set(pids_with(str(tmp))))


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k")
    spec = _study_yaml(tmp / "s.yaml", data_root, tmp / "exp", "kill", seeds=(0, 1, 2))
    exp = tmp / "exp" / "kill"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "raysearch.sweep", str(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    finished_before: dict[str, float] = {}
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            done = {str(p.parent): p.read_text() for p in (exp / "finetune").glob("*/result.json")
                    if p.stat().st_size and '"test_auc"' in p.read_text()}
            if len(done) >= 2:
                finished_before = done
                break
            time.sleep(0.5)
        assert finished_before, "stage 2 never started"
        family = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver, by pid, mid-stage-2
        proc.wait()
        kill(family)  # the Ray processes that driver started
    finally:
        if proc.poll() is None:
            proc.kill()
    t0 = time.time()
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    took = time.time() - t0
    rows = [json.loads(l) for l in (exp / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3 and all(row["status"] == "completed" for row in rows)
    def reports(text):
        return [(r["epoch"], r.get("test_auc")) for r in map(json.loads, text.splitlines())]

    for trial_dir, text in finished_before.items():
        # A trial that had finished training was not trained again. If the driver died between its
        # final report and Tune marking it done, that final report is replayed from its checkpoint.
        before, after = reports(text), reports((Path(trial_dir) / "result.json").read_text())
        assert after in (before, before + before[-1:]), trial_dir
    assert "| top_tagging | 60 |" in (exp / "transfer_map.md").read_text()
    print(f"resume took {took:.1f} s; {len(finished_before)} finished trials kept")
