"""Data layer: simulation physics, determinism, schema, validation errors, loaders and budgets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from data_prep.pythia_jets import generate_jets
from data_prep.samples import SAMPLES
from raysearch.budgets import budget_indices
from raysearch.data import ArrayLoader, open_split, ray_batches
from raysearch.errors import UserError
from raysearch.schema import JET_FEATURES, JETCLASS_FEATURES


def _jetclass_arrays(root, dataset, split):
    return open_split(root, dataset, split).load_arrays()


def test_top_and_qcd_masses(data_root):
    a = _jetclass_arrays(data_root, "top_tagging", "train")
    sd = a["jet"][:, JET_FEATURES.index("jet_sdmass")]
    top, qcd = sd[a["label"] == 1], sd[a["label"] == 0]
    assert 150 < np.median(top) < 200, np.median(top)
    assert np.median(qcd) < 100 and np.median(qcd) < np.median(top) - 60
    pt = a["jet"][:, 0]
    assert pt.min() >= 550 and pt.max() <= 650


def test_jetclass_resonance_masses(data_root):
    a = _jetclass_arrays(data_root, "jetclass", "train")
    sd = a["jet"][:, JET_FEATURES.index("jet_sdmass")]
    names = SAMPLES["jetclass"].label_names
    med = {n: np.median(sd[a["label"] == i]) for i, n in enumerate(names)}
    assert 65 < med["Wqq"] < 95, med
    assert 80 < med["Zqq"] < 105, med
    assert 110 < med["Hbb"] < 135, med
    assert 150 < med["Tbqq"] < 200, med
    assert med["QCD"] < 60, med
    assert set(np.unique(a["label"])) == set(range(10))


def test_constituents_sum_to_the_jet(data_root):
    """Rebuild four-momenta from (deta, dphi, log pT, log E) and compare with the stored jet."""
    a = _jetclass_arrays(data_root, "top_tagging", "train")
    f = {n: i for i, n in enumerate(JETCLASS_FEATURES)}
    full = a["jet"][:, JET_FEATURES.index("jet_nparticles")] == a["n_particles"]
    assert full.sum() > 20
    for p, n, jet in zip(a["particles"][full][:30], a["n_particles"][full][:30], a["jet"][full][:30]):
        pt_j, eta_j, phi_j, e_j, m_j = jet[:5]
        x = p[:n].astype(np.float64)
        eta = eta_j + x[:, f["deta"]] * np.sign(eta_j)
        phi = phi_j + x[:, f["dphi"]]
        pt, e = np.exp(x[:, f["log_pt"]]), np.exp(x[:, f["log_e"]])
        px, py, pz = (pt * np.cos(phi)).sum(), (pt * np.sin(phi)).sum(), (pt * np.sinh(eta)).sum()
        assert np.hypot(px, py) == pytest.approx(pt_j, rel=1e-3)
        assert e.sum() == pytest.approx(e_j, rel=1e-3)
        assert np.sqrt(max(e.sum() ** 2 - px ** 2 - py ** 2 - pz ** 2, 0)) == pytest.approx(m_j, rel=2e-2, abs=0.5)
        assert np.all(np.diff(pt) <= 1e-3 * pt[:-1])  # pT-ordered
        assert np.all(p[n:] == 0)


def test_jetnet_sample(data_root):
    a = _jetclass_arrays(data_root, "jetnet", "test")
    assert a["particles"].shape[1:] == (30, 3)
    ptrel = a["particles"][..., 2]
    # The 30 leading particles carry most of the jet's pT along its axis.
    along_axis = (ptrel * np.cos(a["particles"][..., 1])).sum(1)
    assert np.all(along_axis <= 1.0001) and np.median(along_axis) > 0.8
    real = np.arange(30)[None] < a["n_particles"][:, None]
    dr = np.hypot(a["particles"][..., 0], a["particles"][..., 1])[real]
    # Clustering uses rapidity, the features pseudorapidity: soft massive hadrons may stick out a bit.
    assert np.mean(dr < 0.8) > 0.99 and np.all(dr < 3.0)
    assert set(np.unique(a["label"])) == set(range(5))


def test_simulation_is_deterministic():
    s = SAMPLES["top_tagging"]
    one, two, other = (generate_jets(s, 1, 4, seed) for seed in (11, 11, 12))
    for k in ("particles", "n_particles", "jet"):
        np.testing.assert_array_equal(one[k], two[k])
    assert not np.array_equal(one["jet"], other["jet"])


def test_manifest_and_metadata(data_root):
    s = open_split(data_root, "top_tagging", "train", verify_checksums=True)
    m = json.loads((s.path / "manifest.json").read_text())
    assert m["rows"] == 240 and m["class_counts"] == {"QCD": 120, "top": 120}
    assert m["info"]["particle_features"] == list(JETCLASS_FEATURES)
    assert m["info"]["provenance"]["mpi"] is False
    assert s.fingerprint != open_split(data_root, "top_tagging", "val").fingerprint


def test_fingerprint_changes_with_content(tmp_path, data_root):
    from data_prep.shards import write_arrays

    s = open_split(data_root, "top_tagging", "val")
    a = s.load_arrays()
    m1 = write_arrays(tmp_path, s.info, "val", a)
    assert m1.fingerprint == s.fingerprint  # same content, same fingerprint
    a2 = dict(a, particles=a["particles"].copy())
    a2["particles"][0, 0, 0] += 0.5
    assert write_arrays(tmp_path, s.info, "val", a2).fingerprint != s.fingerprint


@pytest.fixture
def copied_split(tmp_path, data_root):
    src = data_root / "top_tagging" / "val"
    dst = tmp_path / "top_tagging" / "val"
    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_is_named(copied_split):
    shard = copied_split / "part-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"part-00000\.parquet.*(truncated|size)"):
        open_split(copied_split.parents[1], "top_tagging", "val")


def test_corrupt_and_missing_shards_are_named(copied_split):
    shard = copied_split / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"part-00000\.parquet.*checksum"):
        open_split(copied_split.parents[1], "top_tagging", "val", verify_checksums=True)
    shard.unlink()
    with pytest.raises(UserError, match=r"part-00000\.parquet.*missing"):
        open_split(copied_split.parents[1], "top_tagging", "val")
    (copied_split / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest"):
        open_split(copied_split.parents[1], "top_tagging", "val")


def test_ray_and_array_loaders_agree(data_root):
    s = open_split(data_root, "top_tagging", "val")
    a = s.load_arrays()
    feats = ["dphi", "deta", "not_in_data"]
    via_ray = list(ray_batches(s.ray_dataset(), s.info, batch_size=16, features=feats))
    via_mem = list(ArrayLoader(a, s.info, batch_size=16, shuffle=False, features=feats))
    def cat(bs, k):
        # Batches are trimmed to their longest jet: pad back to the stored width to compare.
        parts = [getattr(b, k).numpy() for b in bs]
        if k in ("particles", "mask"):
            parts = [np.pad(p, [(0, 0), (0, s.info.max_particles - p.shape[1])] + [(0, 0)] * (p.ndim - 2))
                     for p in parts]
        return np.concatenate(parts)
    assert all(b.particles.shape[1] == int(b.mask.sum(1).max()) for b in via_mem + via_ray)
    # Ray Data may hand out batches in any order: compare jets sorted by a unique key.
    o_ray, o_mem = np.argsort(cat(via_ray, "jet")[:, 0]), np.argsort(cat(via_mem, "jet")[:, 0])
    for k in ("particles", "mask", "label", "jet"):
        np.testing.assert_array_equal(cat(via_ray, k)[o_ray], cat(via_mem, k)[o_mem])
    p = cat(via_mem, "particles")
    assert p.shape[2] == 3 and np.all(p[..., 2] == 0)
    np.testing.assert_array_equal(p[..., 0], a["particles"][..., 1])
    mask = cat(via_mem, "mask")
    assert np.array_equal(mask.sum(1), a["n_particles"])


def test_shuffled_loader_covers_every_jet_once(data_root):
    s = open_split(data_root, "top_tagging", "val")
    a = s.load_arrays()
    jets = np.concatenate([b.jet.numpy() for b in ray_batches(s.ray_dataset(), s.info, 8, shuffle_buffer=32, seed=3)])
    assert sorted(jets[:, 0].tolist()) == sorted(a["jet"][:, 0].tolist())
    assert not np.array_equal(jets[:, 0], a["jet"][:, 0])


def test_budgets_are_nested_balanced_and_fixed():
    labels = np.repeat([0, 1], [500, 700])
    small, large = budget_indices(labels, 100, seed=5), budget_indices(labels, 400, seed=5)
    assert set(small) <= set(large)
    assert np.bincount(labels[small]).tolist() == [50, 50]
    assert np.bincount(labels[large]).tolist() == [200, 200]
    np.testing.assert_array_equal(small, budget_indices(labels, 100, seed=5))
    assert not np.array_equal(small, budget_indices(labels, 100, seed=6))
    with pytest.raises(UserError, match="2000 jets requested.*only 1200"):
        budget_indices(labels, 2000, seed=5)
    with pytest.raises(UserError, match="class 0"):
        budget_indices(labels, 1100, seed=5)
