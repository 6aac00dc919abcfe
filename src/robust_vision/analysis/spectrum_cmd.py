"""``robust-vision-analyze spectrum``: eigenspectrum of a layer's representation and its
power-law exponent (the local-learning seed's "spectral probing"; Stringer et al. 2019,
Nassar et al. 2020 expect robust representations to decay like 1/n^alpha with alpha ~ 1).

The covariance is taken over the examples of a split; conv feature maps (H, W, C) are
flattened per example. When the layer has more dimensions D than there are examples N, the
non-zero eigenvalues are computed from the N x N Gram matrix of the centred features
instead of the D x D covariance (same non-zero spectrum, far less memory and time).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from robust_vision.analysis.common import Context, write_summary
from robust_vision.analysis.features import check_layer, collect_layers, layer_shapes
from robust_vision.io import write_csv
from robust_vision.evaluation.spectrum import eigenspectrum, fit_power_law
from robust_vision.viz.spectrum import spectrum_figure
from robust_vision.viz._common import save_figure, style_context

# Stringer et al. (2019) fit ranks 11..500: the top ranks carry the few dominant
# (often class-mean) directions and the tail is biased low by the finite sample.
_FIT_FIRST_RANK = 11
_FIT_LAST_RANK = 500
_MIN_FIT_POINTS = 10
# Host memory allowed for the float64 (N, D) activation matrix when --max-examples is not
# given; a larger request fails with the number of examples that fits.
_MAX_FEATURE_BYTES = 2 * 1024 ** 3


def layer_spectrum(features: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, float64) of the (N - 1)-normalised covariance of (N, D)
    features; min(N, D) of them (the rest are zero when D > N)."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"the spectrum needs at least 2 examples, got {n}; use a larger split or --max-examples")
    if d <= n:
        return eigenspectrum(x)
    xc = x - x.mean(axis=0, keepdims=True)
    gram = xc @ xc.T / (n - 1)  # same non-zero eigenvalues as xc.T @ xc / (n - 1)
    return np.linalg.eigvalsh(0.5 * (gram + gram.T))[::-1].copy()


def default_fit_ranks(eigs: np.ndarray) -> tuple[int, int]:
    """1-based inclusive ranks (first, last) of the power-law fit.

    Ranks 11..500 (Stringer et al. 2019) cut to the first half of the numerically non-zero
    eigenvalues; when that leaves fewer than 10 points (small layers) the fit starts at rank 2.
    """
    e = np.asarray(eigs, dtype=np.float64)
    top = e[0] if e.size and e[0] > 0 else 0.0
    n_pos = int(np.sum(e > top * 1e-10)) if top > 0 else 0
    if n_pos < 4:
        raise ValueError(f"the layer's covariance has only {n_pos} non-zero eigenvalue(s); no power law to fit "
                         "(is the layer constant, e.g. dead ReLUs, or are there too few examples?)")
    last = min(_FIT_LAST_RANK, max(n_pos // 2, 3))
    first = _FIT_FIRST_RANK if last - _FIT_FIRST_RANK + 1 >= _MIN_FIT_POINTS else 2
    return first, last


def spectrum_rows(eigs: np.ndarray) -> list[dict[str, float]]:
    """rank (1-based), eigenvalue, fraction_of_variance (l_n / sum l), cumulative_fraction."""
    e = np.asarray(eigs, dtype=np.float64)
    total = float(np.sum(np.clip(e, 0.0, None)))
    frac = np.clip(e, 0.0, None) / (total if total > 0 else 1.0)
    cum = np.cumsum(frac)
    return [{"rank": i + 1, "eigenvalue": float(v), "fraction_of_variance": float(f), "cumulative_fraction": float(c)}
            for i, (v, f, c) in enumerate(zip(e, frac, cum))]


def run_spectrum(ctx: Context, *, layer: str = "embedding", max_examples: Optional[int] = None,
                 fit_ranks: Optional[tuple[int, int]] = None, batch_size: int = 256) -> dict[str, Any]:
    """Compute, write (spectrum.csv, spectrum.json, spectrum.png/pdf) and return the summary."""
    model = ctx.model
    shapes = layer_shapes(model)
    check_layer(shapes, layer, model.name)
    n = len(ctx.labels)
    dim = math.prod(shapes[layer])
    if max_examples is not None:
        if max_examples < 2:
            raise ValueError(f"--max-examples {max_examples}: the covariance needs at least 2 examples")
        n = min(n, max_examples)
    elif n * dim * 8 > _MAX_FEATURE_BYTES:
        fits = max(2, _MAX_FEATURE_BYTES // (8 * dim))
        raise ValueError(f"--layer {layer} has {dim} values per example: the {n} {ctx.split_name} images would "
                         f"need {n * dim * 8 / 1e9:.1f} GB of activations; pass --max-examples {fits} (or fewer)")
    # The first n examples of the fixed split: deterministic, and the same ones for every model.
    feats = collect_layers(model, ctx.images[:n], [layer], batch_size=batch_size, flatten=True)[layer]
    eigs = layer_spectrum(feats)
    first, last = fit_ranks if fit_ranks is not None else default_fit_ranks(eigs)
    if not 1 <= first < last:
        raise ValueError(f"--fit-range {first} {last}: need 1 <= FIRST < LAST (1-based ranks)")
    if last > eigs.size:
        raise ValueError(f"--fit-range {first} {last}: the spectrum has only {eigs.size} eigenvalues "
                         f"(min(examples, dimensions)); use LAST <= {eigs.size}")
    fit = fit_power_law(eigs, (first - 1, last))
    trace = float(np.sum(np.var(feats.astype(np.float64), axis=0, ddof=1)))

    write_csv(ctx.out_dir / "spectrum.csv", spectrum_rows(eigs),
              ["rank", "eigenvalue", "fraction_of_variance", "cumulative_fraction"])
    shape = shapes[layer]
    summary = {
        "layer": layer, "layer_shape": list(shape), "n_examples": int(n), "dim": int(dim),
        "n_eigenvalues": int(eigs.size), "alpha": fit["alpha"], "r2": fit["r2"], "intercept": fit["intercept"],
        "fit_rank_first": first, "fit_rank_last": last, "fit_points": fit["n_points"],
        "trace": trace, "eigenvalue_sum": float(np.sum(eigs)),
        "top_eigenvalue": float(eigs[0]),
        "note": "alpha of l_n ~ n^-alpha fitted by least squares in log-log space over ranks "
                f"{first}..{last}; Stringer et al. 2019 / Nassar et al. 2020 expect alpha ~ 1",
    }
    write_summary(ctx, "spectrum", summary)
    with style_context(ctx.style):
        title = f"{model.name}: {layer} ({'x'.join(map(str, shape))}), {n} {ctx.split_name} images"
        fig = spectrum_figure(eigs, fit, label=f"{layer} eigenvalues", title=title)
        save_figure(fig, ctx.out_dir, "spectrum", ctx.dpi, ctx.formats)
    return summary
