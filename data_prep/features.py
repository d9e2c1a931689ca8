"""Per-particle and jet-level features from constituent four-momenta (numpy, no event loop).

Shared by the simulation and the converters so that every dataset gets the same definitions.
"""

from __future__ import annotations

import numpy as np

from raysearch.schema import JET_FEATURES, JETCLASS_FEATURES, JETNET_FEATURES

_EPS = 1e-8


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Map angle differences to [-pi, pi)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def kinematics(px, py, pz, e):
    """pt, eta, phi of four-momenta (any shape)."""
    px, py, pz, e = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, e))
    pt = np.hypot(px, py)
    eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
    phi = np.arctan2(py, px)
    return pt, eta, phi


def jet_four_vector(px, py, pz, e) -> tuple[float, float, float, float, float]:
    """pt, eta, phi, energy, mass of the sum of the given constituents."""
    sx, sy, sz, se = (float(np.sum(a)) for a in (px, py, pz, e))
    pt = float(np.hypot(sx, sy))
    eta = float(np.arcsinh(sz / pt)) if pt > 0 else 0.0
    m2 = se * se - sx * sx - sy * sy - sz * sz
    return pt, eta, float(np.arctan2(sy, sx)), se, float(np.sqrt(max(m2, 0.0)))


def jetclass_particle_features(px, py, pz, e, charge, pdg_id, jet_pt, jet_eta, jet_phi, jet_e,
                               max_particles: int) -> tuple[np.ndarray, int]:
    """JetClass-style features (see `JETCLASS_FEATURES`) of one jet's constituents, pT-ordered.

    Returns a (max_particles, 13) float32 array zero-padded after the real particles, and the
    number of real particles kept. `pdg_id` may be None (no particle identification): the charge
    and type columns are then zero.
    """
    one = lambda a: None if a is None else np.asarray(a, dtype=np.float64)[None]
    feats, n = jetclass_features_batch(
        one(px), one(py), one(pz), one(e), np.ones((1, len(px)), bool), one(charge), one(pdg_id),
        np.array([jet_pt]), np.array([jet_eta]), np.array([jet_phi]), np.array([jet_e]), max_particles)
    return feats[0], int(n[0])


def jetclass_features_batch(px, py, pz, e, valid, charge, pdg_id, jet_pt, jet_eta, jet_phi, jet_e,
                            max_particles: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched JetClass-style features: inputs (B, M) with `valid` marking real particles.

    Particles are ordered by decreasing pT and cut to `max_particles`; returns (B, max_particles, 13)
    float32 and the number kept per jet. `charge`/`pdg_id` None leave the six PID columns zero.
    """
    pt, eta, phi = kinematics(px, py, pz, e)
    pt = np.where(valid, pt, -1.0)
    order = np.argsort(-pt, axis=1, kind="stable")[:, :max_particles]
    take = lambda a: np.take_along_axis(np.asarray(a, dtype=np.float64), order, axis=1)
    ok = take(valid).astype(bool)
    pt, eta, phi, e = take(pt), take(eta), take(phi), take(e)
    jet_pt, jet_eta, jet_phi, jet_e = (np.asarray(a, dtype=np.float64)[:, None]
                                       for a in (jet_pt, jet_eta, jet_phi, jet_e))
    deta = (eta - jet_eta) * np.where(jet_eta >= 0, 1.0, -1.0)
    dphi = wrap_phi(phi - jet_phi)
    safe_pt, safe_e = np.where(ok, pt, 1.0), np.where(ok, e, 1.0)
    cols = [deta, dphi, np.log(safe_pt + _EPS), np.log(safe_e + _EPS),
            np.log(safe_pt / jet_pt + _EPS), np.log(safe_e / jet_e + _EPS), np.hypot(deta, dphi)]
    if pdg_id is not None:
        q = take(charge)
        aid = np.abs(take(pdg_id))
        is_e, is_mu, is_gamma = aid == 11, aid == 13, aid == 22
        cols += [q, (q != 0) & ~is_e & ~is_mu, (q == 0) & ~is_gamma, is_gamma, is_e, is_mu]
    b, m = order.shape
    out = np.zeros((b, max_particles, len(JETCLASS_FEATURES)), dtype=np.float32)
    for i, c in enumerate(cols):
        out[:, :m, i] = np.where(ok, c, 0.0)
    return out, ok.sum(axis=1).astype(np.int32)


def jetnet_particle_features(px, py, pz, e, jet_pt, jet_eta, jet_phi,
                             max_particles: int = 30) -> tuple[np.ndarray, int]:
    """JetNet-style (etarel, phirel, ptrel) of the leading `max_particles` constituents."""
    pt, eta, phi = kinematics(px, py, pz, e)
    order = np.argsort(-pt, kind="stable")[:max_particles]
    n = len(order)
    out = np.zeros((max_particles, len(JETNET_FEATURES)), dtype=np.float32)
    out[:n, 0] = eta[order] - jet_eta
    out[:n, 1] = wrap_phi(phi[order] - jet_phi)
    out[:n, 2] = pt[order] / jet_pt
    return out, n


def jetclass_jet_features(pt, eta, phi, energy, mass, sdmass, n) -> np.ndarray:
    """The `JET_FEATURES` row of one jet."""
    row = np.array([pt, eta, phi, energy, mass, sdmass, n], dtype=np.float32)
    assert len(row) == len(JET_FEATURES)
    return row


def relative_mass_from_jetnet(particles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Jet mass / jet pT from (etarel, phirel, ptrel) particles, treating them as massless.

    This is the JetNet `jet_features` relative mass used by the W1M metric.
    """
    eta, phi, ptrel = particles[..., 0], particles[..., 1], particles[..., 2] * mask
    px, py = ptrel * np.cos(phi), ptrel * np.sin(phi)
    pz, e = ptrel * np.sinh(eta), ptrel * np.cosh(eta)
    m2 = e.sum(-1) ** 2 - px.sum(-1) ** 2 - py.sum(-1) ** 2 - pz.sum(-1) ** 2
    return np.sqrt(np.clip(m2, 0, None))
