"""JetNet generation metrics from their definitions (arXiv:2106.11535, 2211.10295), with the
estimators of the JetNet library so that values compare with published ones:

- W1M: 1-Wasserstein distance of the relative jet mass m/pT (particles treated as massless).
- W1P: mean over (etarel, phirel, ptrel) of the W1 distance of all real particles' features.
- W1EFP: mean over the 5 energy flow polynomials with 4 vertices and 4 edges (beta = 1, hadronic
  measure) of their W1 distances. The W1s are means (and standard deviations) over resamples.
- FPD: Frechet distance of Gaussians fitted to the 36 EFPs with at most 4 edges, each feature divided
  by its largest absolute value in the real sample; measured at batch sizes evenly spaced in 1/N and
  extrapolated linearly to N = infinity (the intercept and its fit error), which removes the
  finite-sample bias that makes FD grow as samples shrink.
- KPD: unbiased squared MMD of the same normalised EFPs with the polynomial kernel (x.y/d + 1)^4:
  the median over batches, the error half the 16-84 percentile range.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.optimize import curve_fit
from scipy.stats import wasserstein_distance

from data_prep.features import relative_mass_from_jetnet
from raysearch.metrics.efp import FPD_GRAPHS, W1EFP_GRAPHS, efps


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # nearly singular product (a constant feature): regularise
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def kernel_distance(x: np.ndarray, y: np.ndarray, degree: int = 4) -> float:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^degree."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** degree  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def normalise_features(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide each feature by its largest absolute value in the real sample (JetNet's convention)."""
    scale = np.abs(real).max(0)
    scale[scale == 0] = 1
    return real / scale, gen / scale


def fpd_infinity(real: np.ndarray, gen: np.ndarray, min_samples: int = 20_000, max_samples: int = 50_000,
                 num_batches: int = 20, num_points: int = 10, seed: int = 0) -> tuple[float, float]:
    """FPD extrapolated to infinite samples: (intercept, its error) of FD against 1/N.

    Batch sizes default to JetNet's 20k-50k; smaller samples use the same 0.4-1 range of what there is.
    """
    x, y = normalise_features(real, gen)
    top = min(max_samples, len(x), len(y))
    low = max(min(min_samples, int(0.4 * top)), 3)
    sizes = (1 / np.linspace(1 / low, 1 / top, num_points)).astype(int)
    rng = np.random.default_rng(seed)
    values = [np.mean([frechet_distance(x[rng.integers(0, len(x), n)], y[rng.integers(0, len(y), n)])
                       for _ in range(num_batches)]) for n in sizes]
    line = lambda inv_n, intercept, slope: intercept + slope * inv_n  # noqa: E731
    params, cov = curve_fit(line, 1 / sizes, values, bounds=([0, 0], [np.inf, np.inf]))
    return float(params[0]), float(np.sqrt(cov[0, 0]))


def kpd_median(real: np.ndarray, gen: np.ndarray, num_batches: int = 10, batch_size: int = 5_000,
               seed: int = 0) -> tuple[float, float]:
    """KPD: median over batches of the unbiased MMD^2, error = half the 16-84 percentile range."""
    x, y = normalise_features(real, gen)
    n = min(batch_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    vals = [kernel_distance(x[rng.integers(0, len(x), n)], y[rng.integers(0, len(y), n)]) for _ in range(num_batches)]
    lo, hi = np.percentile(vals, [16.275, 83.725])
    return float(np.median(vals)), float((hi - lo) / 2)


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
    er, eg = efps(real, real_mask, W1EFP_GRAPHS), efps(gen, gen_mask, W1EFP_GRAPHS)
    w1e = [_bootstrap(wasserstein_distance, er[:, f], eg[:, f], n_boot, size, rng) for f in range(er.shape[1])]
    put("w1efp", (float(np.mean([v[0] for v in w1e])), float(np.mean([v[1] for v in w1e]))))
    fr, fg = efps(real, real_mask, FPD_GRAPHS), efps(gen, gen_mask, FPD_GRAPHS)
    put("fpd", fpd_infinity(fr, fg, seed=seed))
    put("kpd", kpd_median(fr, fg, seed=seed))
    return out
