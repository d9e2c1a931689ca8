"""JetNet generation metrics from their definitions (arXiv:2106.11535, 2211.10295).

- W1M: 1-Wasserstein distance of the relative jet mass m/pT (particles treated as massless).
- W1P: mean over (etarel, phirel, ptrel) of the W1 distance of all real particles' features.
- W1EFP: mean over the 5 energy flow polynomials with 4 vertices and 4 edges (beta = 1, hadronic
  measure: z_i = pT_i / sum pT, theta_ij = Delta R_ij) of their W1 distances, as in JetNet.
- FPD: Frechet distance of Gaussians fitted to the EFPs of real and generated jets.
- KPD: unbiased squared MMD of the EFPs with the cubic polynomial kernel (x.y/d + 1)^3.
Every metric is a bootstrap mean with its standard deviation over resamples.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.stats import wasserstein_distance

from data_prep.features import relative_mass_from_jetnet


def efps(particles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 5) EFPs of jets given as (etarel, phirel, ptrel) with a real-particle mask."""
    pt = particles[..., 2] * mask
    z = pt / np.clip(pt.sum(1, keepdims=True), 1e-12, None)
    d_eta = particles[:, :, None, 0] - particles[:, None, :, 0]
    d_phi = particles[:, :, None, 1] - particles[:, None, :, 1]
    d_phi = (d_phi + np.pi) % (2 * np.pi) - np.pi
    th = np.hypot(d_eta, d_phi)
    a = th * z[:, None, :]                       # A_kj = theta_kj z_j
    s = a.sum(-1)                                # s_k = sum_l z_l theta_kl
    u = (th ** 2 * z[:, None, :]).sum(-1)        # u_k = sum_l z_l theta_kl^2
    aa = a @ a
    cycle = np.einsum("nii->n", aa @ aa)                                     # 4-cycle
    tri = (aa * th).sum(-1)                                                  # triangle through k
    tri_pendant = (z * tri * s).sum(1)                                       # triangle + pendant
    zz_th = z[:, :, None] * z[:, None, :] * th
    end_doubled = np.einsum("njk,nj,nk->n", zz_th, u, s)                    # path, end edge doubled
    mid_doubled = np.einsum("njk,nj,nk->n", zz_th * th, s, s)               # path, middle edge doubled
    star_doubled = (z * u * s ** 2).sum(1)                                  # star, one edge doubled
    return np.stack([cycle, tri_pendant, end_doubled, mid_doubled, star_doubled], axis=1)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def kernel_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _bootstrap(fn, real, gen, n_boot: int, size: int, rng) -> tuple[float, float]:
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(real), size)
        j = rng.integers(0, len(gen), size)
        vals.append(fn(real[i], gen[j]))
    return float(np.mean(vals)), float(np.std(vals))


def generation_metrics(real: np.ndarray, real_mask: np.ndarray, gen: np.ndarray, gen_mask: np.ndarray,
                       n_boot: int = 5, seed: int = 0, prefix: str = "") -> dict[str, float]:
    """All JetNet metrics (mean and _err) between real and generated jets (etarel, phirel, ptrel)."""
    rng = np.random.default_rng(seed)
    size = min(len(real), len(gen))
    out: dict[str, float] = {}

    def put(name, value):
        out[f"{prefix}{name}"], out[f"{prefix}{name}_err"] = value

    mr, mg = relative_mass_from_jetnet(real, real_mask), relative_mass_from_jetnet(gen, gen_mask)
    put("w1m", _bootstrap(wasserstein_distance, mr, mg, n_boot, size, rng))
    w1p = [_bootstrap(wasserstein_distance, real[..., f][real_mask.astype(bool)], gen[..., f][gen_mask.astype(bool)],
                      n_boot, min(real_mask.sum(), gen_mask.sum()), rng) for f in range(3)]
    put("w1p", (float(np.mean([v[0] for v in w1p])), float(np.mean([v[1] for v in w1p]))))
    er, eg = efps(real, real_mask), efps(gen, gen_mask)
    w1e = [_bootstrap(wasserstein_distance, er[:, f], eg[:, f], n_boot, size, rng) for f in range(er.shape[1])]
    put("w1efp", (float(np.mean([v[0] for v in w1e])), float(np.mean([v[1] for v in w1e]))))
    put("fpd", _bootstrap(frechet_distance, er, eg, n_boot, size, rng))
    put("kpd", _bootstrap(kernel_distance, er, eg, n_boot, size, rng))
    return out
