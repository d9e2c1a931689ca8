"""Converters: small files written in the real layouts (FORMATS.md), checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.convert import (convert, convert_jetclass_file, convert_jetnet_file,
                               convert_omnilearned_file, convert_top_tagging_file)
from raysearch.data import open_split
from raysearch.errors import UserError
from raysearch.schema import JET_FEATURES, JETCLASS_FEATURES, JETCLASS_LABELS

F = {n: i for i, n in enumerate(JETCLASS_FEATURES)}


def _particles(rng, n_jets, max_n=20):
    """Jets of massless particles around an axis; returns per-jet (px, py, pz, e) lists."""
    jets = []
    for _ in range(n_jets):
        k = rng.integers(3, max_n)
        pt = rng.exponential(50, k) + 1
        eta = rng.normal(rng.uniform(-1.5, 1.5), 0.2, k)
        phi = rng.normal(rng.uniform(-3, 3), 0.2, k)
        jets.append(np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], 1))
    return jets


def _axis(p):
    s = p.sum(0)
    pt = np.hypot(s[0], s[1])
    return pt, np.arcsinh(s[2] / pt), np.arctan2(s[1], s[0]), s[3]


def write_jetclass_root(path, rng, n=6):
    import awkward as ak
    import uproot

    jets = _particles(rng, n)
    cols = {b: [] for b in ("part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi", "part_charge",
                            "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron",
                            "part_isMuon", "part_d0val", "part_d0err", "part_dzval", "part_dzerr")}
    jet = {b: [] for b in ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass",
                           "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4")}
    for p in jets:
        pt, eta, phi, e = _axis(p)
        ppt = np.hypot(p[:, 0], p[:, 1])
        peta, pphi = np.arcsinh(p[:, 2] / ppt), np.arctan2(p[:, 1], p[:, 0])
        for b, v in zip(("part_px", "part_py", "part_pz", "part_energy"), p.T):
            cols[b].append(v)
        cols["part_deta"].append((peta - eta) * np.sign(eta))
        cols["part_dphi"].append((pphi - phi + np.pi) % (2 * np.pi) - np.pi)
        q = rng.integers(-1, 2, len(p)).astype(float)
        cols["part_charge"].append(q)
        ph = (q == 0) & (rng.random(len(p)) < 0.5)
        cols["part_isChargedHadron"].append((q != 0).astype(int))
        cols["part_isNeutralHadron"].append(((q == 0) & ~ph).astype(int))
        cols["part_isPhoton"].append(ph.astype(int))
        for b in ("part_isElectron", "part_isMuon", "part_d0val", "part_d0err", "part_dzval", "part_dzerr"):
            cols[b].append(np.zeros(len(p)))
        for b, v in (("jet_pt", pt), ("jet_eta", eta), ("jet_phi", phi), ("jet_energy", e),
                     ("jet_nparticles", len(p)), ("jet_sdmass", 80.0)):
            jet[b].append(v)
        for b in ("jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4"):
            jet[b].append(0.1)
    labels = rng.integers(0, 10, n)
    data = {b: ak.Array([np.asarray(x, np.float32) for x in v]) for b, v in cols.items()}
    data.update({b: np.asarray(v, np.float32) for b, v in jet.items()})
    # Mixed label dtypes as in the real files: float, bool and int32 branches.
    for i, c in enumerate(JETCLASS_LABELS):
        v = labels == i
        data[f"label_{c}"] = v.astype(np.float32) if c == "QCD" else v if c.startswith("H") else v.astype(np.int32)
    with uproot.recreate(path) as f:
        f.mktree("tree", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f["tree"].extend(data)
    return jets, labels


def test_jetclass_root(tmp_path):
    rng = np.random.default_rng(0)
    jets, labels = write_jetclass_root(tmp_path / "HToBB_000.root", rng)
    out = convert_jetclass_file(str(tmp_path / "HToBB_000.root"))
    np.testing.assert_array_equal(out["label"], labels)
    for k, p in enumerate(jets):
        pt, eta, phi, e = _axis(p)
        n = out["n_particles"][k]
        assert n == len(p)
        ppt = np.hypot(p[:, 0], p[:, 1])
        order = np.argsort(-ppt)
        x = out["particles"][k, :n]
        np.testing.assert_allclose(np.exp(x[:, F["log_pt"]]), ppt[order], rtol=1e-4)
        peta = np.arcsinh(p[:, 2] / ppt)[order]
        np.testing.assert_allclose(x[:, F["deta"]], (peta - eta) * np.sign(eta), atol=1e-4)
        np.testing.assert_allclose(x[:, F["log_e_rel"]], np.log(p[order, 3] / e), atol=1e-4)
        assert out["jet"][k, JET_FEATURES.index("jet_mass")] == pytest.approx(
            np.sqrt(max(e ** 2 - (pt * np.cosh(eta)) ** 2, 0)), rel=1e-2, abs=0.5)


def test_jetclass_root_missing_branch(tmp_path):
    import uproot
    with uproot.recreate(tmp_path / "bad.root") as f:
        f.mktree("tree", {"jet_pt": np.float32})
        f["tree"].extend({"jet_pt": np.ones(3, np.float32)})
    with pytest.raises(UserError, match=r"bad\.root: missing JetClass branches \['part_px'"):
        convert_jetclass_file(str(tmp_path / "bad.root"))


def write_top_tagging_h5(path, rng, n=8):
    import pandas as pd

    jets = _particles(rng, n)
    cols = {}
    for c, j in (("E", 3), ("PX", 0), ("PY", 1), ("PZ", 2)):
        arr = np.zeros((n, 200))
        for k, p in enumerate(jets):
            arr[k, :len(p)] = p[:, j]
        for i in range(200):
            cols[f"{c}_{i}"] = arr[:, i]
    for c in ("truthE", "truthPX", "truthPY", "truthPZ", "ttv"):
        cols[c] = np.zeros(n)
    labels = rng.integers(0, 2, n)
    cols["is_signal_new"] = labels
    pd.DataFrame(cols).to_hdf(path, key="table", format="table")
    return jets, labels


def test_top_tagging_h5(tmp_path):
    rng = np.random.default_rng(1)
    jets, labels = write_top_tagging_h5(tmp_path / "train.h5", rng)
    out = convert_top_tagging_file(str(tmp_path / "train.h5"))
    np.testing.assert_array_equal(out["label"], labels)
    for k, p in enumerate(jets):
        pt, eta, phi, e = _axis(p)
        assert out["jet"][k, 0] == pytest.approx(pt, rel=1e-5)
        x = out["particles"][k, : out["n_particles"][k]]
        assert len(x) == len(p)
        np.testing.assert_allclose(np.sort(np.exp(x[:, F["log_pt_rel"]])), np.sort(np.hypot(p[:, 0], p[:, 1]) / pt), rtol=1e-4)
        assert np.all(x[:, F["charge"]:] == 0)  # four-momenta only: no PID


def test_top_tagging_wrong_layout(tmp_path):
    import pandas as pd
    pd.DataFrame({"E_0": [1.0]}).to_hdf(tmp_path / "x.h5", key="table", format="table")
    with pytest.raises(UserError, match=r"x\.h5: missing Top Tagging columns"):
        convert_top_tagging_file(str(tmp_path / "x.h5"))
    pd.DataFrame({"E_0": [1.0]}).to_hdf(tmp_path / "y.h5", key="other", format="table")
    with pytest.raises(UserError, match=r"y\.h5: not a Top Tagging h5 with key 'table'"):
        convert_top_tagging_file(str(tmp_path / "y.h5"))


def test_jetnet_h5_and_end_to_end_conversion(tmp_path, ray_session):
    import h5py

    rng = np.random.default_rng(2)
    for name in ("g", "t"):
        pf = rng.normal(0, 0.1, (5, 30, 4)).astype(np.float32)
        pf[..., 2] = np.abs(pf[..., 2])
        n = rng.integers(5, 31, 5)
        pf[..., 3] = np.arange(30)[None] < n[:, None]
        pf[pf[..., 3] == 0] = 0
        with h5py.File(tmp_path / f"{name}.hdf5", "w") as f:
            f["particle_features"] = pf
            f["jet_features"] = rng.random((5, 4)).astype(np.float32)
    out = convert_jetnet_file(str(tmp_path / "t.hdf5"))
    assert out["particles"].shape == (5, 30, 3) and np.all(out["label"] == 2)
    m = convert(kind="jetnet", files=[str(tmp_path / "g.hdf5"), str(tmp_path / "t.hdf5")], out=tmp_path / "d", split="train")
    assert m.rows == 10 and m.class_counts["g"] == 5 and m.class_counts["t"] == 5
    assert open_split(tmp_path / "d", "jetnet", "train", verify_checksums=True).load_arrays()["particles"].shape == (10, 30, 3)
    with h5py.File(tmp_path / "w.hdf5", "w") as f:
        f["particle_features"] = np.zeros((2, 30, 3))
        f["jet_features"] = np.zeros((2, 4))
    with pytest.raises(UserError, match=r"w\.hdf5: particle_features has shape \(2, 30, 3\), expected \(N, 30\|150, 4\)"):
        convert_jetnet_file(str(tmp_path / "w.hdf5"))


def test_omnilearned_h5(tmp_path):
    import h5py

    rng = np.random.default_rng(3)
    data = np.zeros((4, 10, 5), np.float32)
    n = [3, 10, 5, 1]
    for k in range(4):
        data[k, :n[k], 0:2] = rng.normal(0, 0.2, (n[k], 2))
        data[k, :n[k], 2] = rng.uniform(0.5, 4, n[k])     # log pT (never 0 for real particles)
        data[k, :n[k], 3] = data[k, :n[k], 2] + 0.3        # log E
        data[k, :n[k], 4] = 1                               # PID code
    (tmp_path / "ds" / "train").mkdir(parents=True)
    with h5py.File(tmp_path / "ds" / "train" / "a.h5", "w") as f:
        f["data"] = data
        f["pid"] = np.array([0, 1, 1, 0])
    out = convert_omnilearned_file(str(tmp_path / "ds" / "train" / "a.h5"))
    assert out["n_particles"].tolist() == n
    for k in range(4):
        order = np.argsort(-data[k, :n[k], 2])
        np.testing.assert_allclose(out["particles"][k, :n[k], F["log_pt"]], data[k, order, 2], atol=1e-5)
        np.testing.assert_allclose(out["particles"][k, :n[k], F["deta"]], data[k, order, 0], atol=1e-6)
    np.testing.assert_array_equal(out["label"], [0, 1, 1, 0])
