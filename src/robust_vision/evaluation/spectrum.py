"""Spectral probing of representations: eigenspectrum of the feature covariance and its
power-law exponent (the local-learning seed's "spectral probing"; Stringer et al. 2019,
Nassar et al. 2020: robust representations have spectra close to 1/n^alpha with alpha ~ 1).

These are analysis functions that run once on features already collected from a model
(``model(x, return_features=True)`` over a split), so they work on the host in float64
NumPy for accuracy; the eigendecomposition is ``numpy.linalg.eigvalsh`` and the fit an
ordinary least-squares line in log-log space. Written by hand (a few lines; no maintained
JAX library provides the power-law fit).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["eigenspectrum", "fit_power_law", "spectrum_table"]


def eigenspectrum(features: Any) -> np.ndarray:
    """Eigenvalues of the covariance of ``features`` over its N examples, sorted descending.

    Args:
      features: (N, D) array (or (N, ...) flattened to (N, D)), N >= 2; NumPy or JAX.

    Returns:
      (D,) float64 eigenvalues of the (N - 1)-normalised covariance, largest first (tiny
      negative round-off values are kept, so a rank-deficient covariance shows as ~0).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2 examples, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    xc = x - x.mean(axis=0, keepdims=True)
    cov = xc.T @ xc / (x.shape[0] - 1)
    return np.linalg.eigvalsh(0.5 * (cov + cov.T))[::-1].copy()


def fit_power_law(eigs: Any, fit_range: tuple[int, Optional[int]] = (0, None)) -> dict[str, Any]:
    """Least-squares fit of log l_n = intercept - alpha * log n over a range of ranks.

    Args:
      eigs: eigenvalues sorted descending (rank n = index + 1).
      fit_range: (start, end) Python slice indices into ``eigs`` (end None = to the last);
        non-positive eigenvalues in the range are skipped.

    Returns:
      dict with ``alpha`` (decay exponent; 1.0 for a 1/n spectrum), ``intercept`` (natural
      log of the fitted l_1), ``r2`` (coefficient of determination in log-log space),
      ``start``, ``end`` (the slice used) and ``n_points``.
    """
    e = np.asarray(eigs, dtype=np.float64).ravel()
    start, end = fit_range
    end = e.size if end is None else min(int(end), e.size)
    start = int(start)
    if not 0 <= start < end:
        raise ValueError(f"fit_range {fit_range} selects no eigenvalues of a spectrum of length {e.size}")
    ranks = np.arange(start + 1, end + 1, dtype=np.float64)
    vals = e[start:end]
    keep = vals > 0
    if keep.sum() < 2:
        raise ValueError(f"fit_range {fit_range} holds fewer than 2 positive eigenvalues; widen it")
    lx, ly = np.log(ranks[keep]), np.log(vals[keep])
    design = np.stack([lx, np.ones_like(lx)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, ly, rcond=None)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return {"alpha": float(-slope), "intercept": float(intercept), "r2": r2,
            "start": start, "end": end, "n_points": int(keep.sum())}


def spectrum_table(eigs: Any) -> list[dict[str, float]]:
    """Tidy rows, one per eigenvalue: rank (1-based), eigenvalue, normalized (l_n / l_1) and
    cumulative_variance (fraction of the total variance in ranks 1..n)."""
    e = np.asarray(eigs, dtype=np.float64).ravel()
    total = float(np.sum(np.clip(e, 0.0, None)))
    cum = np.cumsum(np.clip(e, 0.0, None)) / (total if total > 0 else 1.0)
    top = e[0] if e.size and e[0] != 0 else 1.0
    return [{"rank": i + 1, "eigenvalue": float(v), "normalized": float(v / top), "cumulative_variance": float(c)}
            for i, (v, c) in enumerate(zip(e, cum))]

