"""Percentile bootstrap intervals: the study's one resampling helper.

Resampling units are the independent draws of an experiment: images for the pattern protocol,
examples x seeds for classification. All resamples are drawn at once (one (B, n) index array),
so a statistic that reduces along axis 1 is evaluated for every resample in one vectorised call.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["bootstrap_interval", "paired_ratio"]

LEVEL = 0.90
N_RESAMPLES = 2000


def bootstrap_interval(values: np.ndarray, statistic: Callable[..., np.ndarray] = np.mean, *, seed: int = 0,
                       level: float = LEVEL, n_resamples: int = N_RESAMPLES) -> tuple[float, float, float]:
    """(point, low, high): ``statistic`` of ``values`` and its percentile bootstrap interval.

    Args:
        values: (n, ...) array; axis 0 is the resampling unit (an image, or an example x seed).
        statistic: ``statistic(x, axis=1)`` reduces a batch of resamples x (B, n, ...) to (B,),
            e.g. ``np.mean`` for (n,) values, or a paired ratio of two columns.
        seed: explicit seed of the resampling (same seed, same interval).
        level: central coverage, 0.9 = the 5th to 95th percentile.
        n_resamples: bootstrap resamples B.

    Returns nan bounds for fewer than 2 units (no spread can be estimated)."""
    v = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        point = float(np.asarray(statistic(v[None], axis=1)).reshape(-1)[0])
        if v.shape[0] < 2:
            return point, float("nan"), float("nan")
        idx = np.random.default_rng(seed).integers(0, v.shape[0], size=(n_resamples, v.shape[0]))
        stats = np.asarray(statistic(v[idx], axis=1), np.float64).reshape(n_resamples)
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(finite, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return point, float(lo), float(hi)


def paired_ratio(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Ratio of means of two paired columns: x (..., n, 2) -> mean(x[..., 0]) / mean(x[..., 1])."""
    return np.mean(x[..., 0], axis=axis) / np.mean(x[..., 1], axis=axis)
