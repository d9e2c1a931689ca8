"""A simple parametrised detector response for simulated particles (`simulate --smear`).

JetClass was made with Delphes (CMS card); ours is the same idea reduced to its main effects, applied
to each visible final-state particle before jet clustering, as a particle-flow reconstruction would
see it:
- tracks (charged hadrons, electrons, muons): pT smeared with sigma/pT = a (+) b pT, direction kept;
- photons (ECAL): energy smeared with sigma/E = s / sqrt(E) (+) c, direction smeared by the cell size;
- neutral hadrons (HCAL): the same with the coarser, much worse hadron calorimeter;
- particles below the reconstruction thresholds are lost.
Each particle keeps its mass (E is recomputed from the smeared momentum, or |p| from the smeared
energy). The response is a pure function of the particles and a numpy Generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DetectorResponse:
    """Resolutions and thresholds (CMS-like orders of magnitude); (+) is a sum in quadrature."""

    track_pt_const: float = 0.015
    """Tracks: constant term of sigma(pT)/pT."""
    track_pt_slope: float = 1.5e-4
    """Tracks: sigma(pT)/pT grows by this per GeV of pT (curvature resolution)."""
    ecal_stochastic: float = 0.03
    """Photons: stochastic term of sigma(E)/E, in sqrt(GeV)."""
    ecal_const: float = 0.005
    """Photons: constant term of sigma(E)/E."""
    hcal_stochastic: float = 1.0
    """Neutral hadrons: stochastic term of sigma(E)/E, in sqrt(GeV)."""
    hcal_const: float = 0.05
    """Neutral hadrons: constant term of sigma(E)/E."""
    ecal_angle: float = 0.005
    """Photons: Gaussian smearing of eta and phi (about an ECAL cell of 0.0174 / sqrt(12))."""
    hcal_angle: float = 0.025
    """Neutral hadrons: Gaussian smearing of eta and phi (about an HCAL cell of 0.087 / sqrt(12))."""
    track_min_pt: float = 0.3
    """Tracks below this pT (GeV) are not reconstructed."""
    photon_min_e: float = 0.5
    """Photons below this energy (GeV) are lost."""
    neutral_hadron_min_e: float = 1.0
    """Neutral hadrons below this energy (GeV) are lost."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def apply(self, px, py, pz, e, charge, pid, rng: np.random.Generator):
        """Smeared (px, py, pz, e) of the kept particles and the boolean mask of which were kept."""
        px, py, pz, e = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, e))
        charged = np.asarray(charge) != 0
        photon = ~charged & (np.abs(np.asarray(pid)) == 22)
        pt = np.hypot(px, py)
        eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
        phi = np.arctan2(py, px)
        mass2 = np.maximum(e ** 2 - px ** 2 - py ** 2 - pz ** 2, 0.0)
        noise = rng.standard_normal((3, len(px)))

        # Tracks: pT smeared, direction kept.
        sigma_track = np.hypot(self.track_pt_const, self.track_pt_slope * pt)
        new_pt = np.where(charged, pt * (1 + sigma_track * noise[0]), pt)
        # Calorimeter clusters: energy smeared, direction smeared by the cell size.
        stoch = np.where(photon, self.ecal_stochastic, self.hcal_stochastic)
        const = np.where(photon, self.ecal_const, self.hcal_const)
        sigma_cal = np.hypot(stoch / np.sqrt(np.maximum(e, 1e-12)), const)
        new_e = np.where(charged, e, e * (1 + sigma_cal * noise[0]))
        angle = np.where(charged, 0.0, np.where(photon, self.ecal_angle, self.hcal_angle))
        eta = eta + angle * noise[1]
        phi = phi + angle * noise[2]

        # Neutral: |p| from the smeared energy and the mass; charged: E from the smeared momentum.
        p_neutral = np.sqrt(np.maximum(new_e ** 2 - mass2, 0.0))
        new_pt = np.where(charged, new_pt, p_neutral / np.cosh(eta))
        keep = np.where(charged, new_pt > self.track_min_pt,
                        new_e > np.where(photon, self.photon_min_e, self.neutral_hadron_min_e))
        keep &= new_pt > 0
        out_px, out_py, out_pz = new_pt * np.cos(phi), new_pt * np.sin(phi), new_pt * np.sinh(eta)
        p2 = out_px ** 2 + out_py ** 2 + out_pz ** 2
        out_e = np.where(charged, np.sqrt(p2 + mass2), np.maximum(new_e, np.sqrt(p2)))
        return out_px[keep], out_py[keep], out_pz[keep], out_e[keep], keep
