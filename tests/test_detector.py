"""The simple detector response behind `simulate --smear`: resolutions, thresholds, smeared samples."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.detector import DetectorResponse
from raysearch.data import open_split
from raysearch.schema import JET_FEATURES


def _particles(n, pt, eta, pid, charge, mass):
    phi = np.linspace(-3, 3, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta) * np.ones(n)
    e = np.sqrt(px ** 2 + py ** 2 + pz ** 2 + mass ** 2)
    return px, py, pz, e, np.full(n, charge), np.full(n, pid)


@pytest.mark.parametrize("kind, pid, charge, mass", [("track", 211, 1, 0.1396), ("photon", 22, 0, 0.0),
                                                     ("neutral hadron", 130, 0, 0.4976)])
def test_resolution_follows_the_formula_and_masses_are_kept(kind, pid, charge, mass):
    d = DetectorResponse()
    n, pt, eta = 20000, 50.0, 0.5
    px, py, pz, e, q, ids = _particles(n, pt, eta, pid, charge, mass)
    spx, spy, spz, se, keep = d.apply(px, py, pz, e, q, ids, np.random.default_rng(0))
    assert keep.all()
    e0 = e[0]
    if charge:
        measured = np.hypot(spx, spy) / pt - 1
        expected = np.hypot(d.track_pt_const, d.track_pt_slope * pt)
        angle = np.arcsinh(spz / np.hypot(spx, spy)) - eta
        assert np.abs(angle).max() < 1e-9  # tracks keep their direction
    else:
        measured = se / e0 - 1
        stoch, const = (d.ecal_stochastic, d.ecal_const) if pid == 22 else (d.hcal_stochastic, d.hcal_const)
        expected = np.hypot(stoch / np.sqrt(e0), const)
        width = d.ecal_angle if pid == 22 else d.hcal_angle
        assert np.std(np.arcsinh(spz / np.hypot(spx, spy)) - eta) == pytest.approx(width, rel=0.05)
    assert abs(np.mean(measured)) < 3 * expected / np.sqrt(n) + 1e-3
    assert np.std(measured) == pytest.approx(expected, rel=0.05), kind
    m2 = se ** 2 - spx ** 2 - spy ** 2 - spz ** 2
    np.testing.assert_allclose(np.sqrt(np.clip(m2, 0, None)), mass, atol=1e-3 * e0)


def test_thresholds_drop_soft_particles_and_a_seed_fixes_the_result():
    d = DetectorResponse()
    # Thresholds apply to what is measured: 0.2 GeV photons (3% / sqrt(E) resolution) never pass 0.5 GeV.
    px, py, pz, e, q, ids = _particles(100, 0.2, 0.0, 22, 0, 0.0)
    assert not d.apply(px, py, pz, e, q, ids, np.random.default_rng(0))[4].any()
    px, py, pz, e, q, ids = _particles(4, 0.1, 0.0, 211, 1, 0.1396)  # 100 MeV tracks
    assert not d.apply(px, py, pz, e, q, ids, np.random.default_rng(0))[4].any()
    args = _particles(50, 20.0, 1.0, 22, 0, 0.0)
    one, two = (d.apply(*args, np.random.default_rng(5)) for _ in range(2))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_smeared_sample_is_recorded_and_still_physical(tmp_path, ray_session):
    from data_prep.simulate import simulate

    per_class = {"train": 30, "val": 0, "test": 0}
    simulate(tmp_path, "top_tagging", per_class, seed=3, chunk_size=30, progress=False)
    plain = open_split(tmp_path, "top_tagging", "train")
    assert "detector" not in plain.info.provenance
    plain_n = plain.load_arrays()["n_particles"]
    simulate(tmp_path, "top_tagging", per_class, seed=3, chunk_size=30, progress=False, smear=True)
    smeared = open_split(tmp_path, "top_tagging", "train")
    assert smeared.info.provenance["detector"] == DetectorResponse().as_dict()
    assert smeared.fingerprint != plain.fingerprint  # simulated again, not taken from the cache
    a = smeared.load_arrays()
    sd = a["jet"][:, JET_FEATURES.index("jet_sdmass")]
    assert 130 < np.median(sd[a["label"] == 1]) < 210 and np.median(sd[a["label"] == 0]) < 100
    # Thresholds remove soft particles: fewer constituents than at particle level.
    assert a["n_particles"].mean() < plain_n.mean()
