"""Pre-training on Ray Train: DDP sync, learning, worker-fault recovery, NaN stop, the store."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from procs import cmdline, descendants

from raysearch.config import from_dict
from raysearch.data import open_split
from raysearch.errors import UserError
from raysearch.pretrain import NonFiniteLossError, PretrainConfig, pretrain
from raysearch.store import PretrainStore, store_key

pytestmark = pytest.mark.slow


def cfg_for(root, **kw) -> PretrainConfig:
    base = {"data_root": str(root), "dataset": "jetclass", "batch_size": 25, "epochs": 3,
            "probe_jets": 100, "mix": {"cls": 1.0, "mpm": 1.0, "fm": 0.0},
            "optimizer": {"lr": 3e-3}, "model": {"depth": 2}}
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return from_dict(PretrainConfig, base)


def test_two_workers_stay_in_sync_and_learn(data_root, tmp_path):
    cfg = cfg_for(data_root, num_workers=2, epochs=4)
    entry = pretrain(cfg, tmp_path / "store", tmp_path / "runs", verbose=False)
    rec = entry.record
    assert rec["compute"]["num_workers"] == 2
    assert rec["max_param_diff_across_ranks"] == 0.0
    first, last = rec["history"][0], rec["history"][-1]
    assert last["loss"] < first["loss"]
    assert rec["compute"]["forward_passes"] == 2 * rec["compute"]["steps"]  # cls + mpm
    assert (entry.model_dir / "backbone.pt").is_file() and (entry.model_dir / "head_mpm.pt").is_file()
    assert not (entry.model_dir / "head_fm.pt").exists()  # a head whose weight is 0 is not built
    tb = Path(rec["tensorboard"])
    assert any(p.name.startswith("events.out.tfevents") for p in tb.rglob("*"))


def test_store_returns_a_finished_pretraining_without_training(data_root, tmp_path):
    cfg = cfg_for(data_root, epochs=1)
    first = pretrain(cfg, tmp_path / "store", tmp_path / "runs", verbose=False)
    runs_before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    t0 = time.time()
    again = pretrain(cfg_for(data_root, epochs=1), tmp_path / "store", tmp_path / "runs", verbose=False)
    assert time.time() - t0 < 5
    assert again.key == first.key and again.record["stored_at"] == first.record["stored_at"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs_before
    assert len(PretrainStore(tmp_path / "store").entries()) == 1
    assert not list((tmp_path / "store").glob(".tmp-*"))
    # Trained again from nothing (another store), the same config gives the same run, step for step.
    twin = pretrain(cfg_for(data_root, epochs=1), tmp_path / "store2", tmp_path / "runs2", verbose=False)
    timing = ("jets_per_s", "wall_s")
    drop = lambda h: [{k: v for k, v in e.items() if k not in timing} for e in h]  # noqa: E731
    assert twin.key == first.key and drop(twin.record["history"]) == drop(first.record["history"])


def test_store_key_changes_with_mix_config_and_data():
    cfg = {"epochs": 2, "model": {"size": "tiny"}}
    k = store_key({"cls": 1.0, "mpm": 0.0, "fm": 0.0}, cfg, "abc")
    assert k == store_key({"cls": 1.0, "mpm": 0.0, "fm": 0.0}, dict(cfg), "abc")
    assert k != store_key({"cls": 1.0, "mpm": 0.1, "fm": 0.0}, cfg, "abc")
    assert k != store_key({"cls": 1.0, "mpm": 0.0, "fm": 0.0}, cfg, "abd")
    assert k != store_key({"cls": 1.0, "mpm": 0.0, "fm": 0.0}, {**cfg, "epochs": 3}, "abc")


def _train_worker_pids() -> list[int]:
    return [p for p in descendants(os.getpid()) if "RayTrainWorker" in cmdline(p)]


def test_killed_worker_resumes_from_its_checkpoint(data_root, tmp_path):
    cfg = cfg_for(data_root, epochs=8, batch_size=10, max_failures=2, probe_jets=0)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(entry=pretrain(cfg, tmp_path / "store", tmp_path / "runs")))
    t.start()
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and killed is None and t.is_alive():
        ckpts = list((tmp_path / "runs").glob("*/checkpoint_*"))
        pids = _train_worker_pids()
        if len(ckpts) >= 2 and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)  # a process this test's Ray started, by pid
        time.sleep(0.3)
    t.join(timeout=300)
    assert killed is not None, "no checkpoint/worker seen to kill"
    rec = box["entry"].record
    assert rec["compute"]["resumed_from_step"] > 0  # continued from a checkpoint, not step 0
    assert rec["compute"]["steps"] == rec["metrics"]["total_steps"]
    assert [h["epoch"] for h in rec["history"]][-1] == 8


def test_nan_loss_stops_with_the_step_and_term(data_root, tmp_path):
    from data_prep.shards import write_arrays
    from raysearch.data import open_split

    for split in ("train", "val"):
        s = open_split(data_root, "jetclass", split)
        a = s.load_arrays()
        a["particles"] = a["particles"].copy()
        a["particles"][:, 0, 2] = np.nan  # a NaN log pT in the leading particle of every jet
        write_arrays(tmp_path / "data", s.info, split, a)
    cfg = cfg_for(tmp_path / "data", epochs=1, mix={"cls": 1.0, "mpm": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"step 1: loss term 'cls' is nan"):
        pretrain(cfg, tmp_path / "store", tmp_path / "runs")
    assert PretrainStore(tmp_path / "store").entries() == []


def test_generation_conditioned_on_jet_pt_and_mass_transfers_to_jetnet(data_root, tmp_path):
    import torch

    from raysearch.tasks.base import FinetuneConfig
    from raysearch.tasks.generation import Generation

    cfg = cfg_for(data_root, epochs=1, mix={"cls": 0.0, "mpm": 0.0, "fm": 1.0},
                  model={"fm_conditions": ["type", "multiplicity", "jet_pt", "jet_mass"]})
    entry = pretrain(cfg, tmp_path / "store", tmp_path / "runs", verbose=False)
    head = torch.load(entry.model_dir / "head_fm.pt", weights_only=True)
    split = open_split(data_root, "jetclass", "train")
    jets, names = split.load_arrays(), split.info.jet_features
    # The head keeps the pre-training data's condition units: (multiplicity, jet pT, jet mass) means.
    expected = [jets["n_particles"].mean(), jets["jet"][:, names.index("jet_pt")].mean(),
                jets["jet"][:, names.index("jet_mass")].mean()]
    np.testing.assert_allclose(head["cond_mean"].numpy(), expected, rtol=0.05)
    ft = FinetuneConfig(epochs=1, batch_size=32, min_steps=5, gen_samples=60, gen_eval_samples=30, ode_steps=2,
                        bootstrap=2)
    final = Generation().run(ft, data_root, 100, 0, entry.model_dir, lambda m, s: None)
    assert final["pretrained_fm_head"] == 1.0 and np.isfinite(final["test_w1m"])


def test_bad_config_names_the_field(data_root):
    with pytest.raises(UserError, match=r"optimizer\.name: unknown optimizer 'sgd'"):
        cfg_for(data_root, optimizer={"name": "sgd"})
    with pytest.raises(UserError, match=r"mix\.fm: weights must be >= 0"):
        cfg_for(data_root, mix={"fm": -1.0})
    with pytest.raises(UserError, match=r"epochss: unknown field"):
        from_dict(PretrainConfig, {"epochss": 3})
