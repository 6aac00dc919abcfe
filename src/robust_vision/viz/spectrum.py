"""Figures of an eigenspectrum (``evaluation.spectrum``): eigenvalue vs rank on log-log axes
with the fitted power law."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np


def spectrum_figure(eigs: Any, fit: Optional[dict[str, Any]], *, label: str = "eigenspectrum",
                    reference_alpha: Optional[float] = 1.0, title: Optional[str] = None):
    """Log-log figure of eigenvalue vs rank with the fitted power law over its fit range.

    Args:
      eigs: eigenvalues sorted descending (non-positive ones are not drawn).
      fit: result of ``evaluation.spectrum.fit_power_law`` (or None for no fitted line).
      reference_alpha: also draw a dotted 1/n^alpha guide through l_1 (None = no guide).
      title: optional axes title.

    Returns:
      A ``matplotlib.figure.Figure`` (no pyplot state); save it with
      ``viz._common.save_figure``.
    """
    from matplotlib.figure import Figure

    e = np.asarray(eigs, dtype=np.float64).ravel()
    ranks = np.arange(1, e.size + 1)
    pos = e > 0
    fig = Figure(figsize=(4.5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.loglog(ranks[pos], e[pos], ".", ms=3, label=label)
    if fit is not None:
        r = np.arange(fit["start"] + 1, fit["end"] + 1, dtype=np.float64)
        ax.loglog(r, np.exp(fit["intercept"]) * r ** (-fit["alpha"]), "-", lw=1.5,
                  label=f"fit (ranks {fit['start'] + 1}-{fit['end']}): alpha = {fit['alpha']:.2f} "
                        f"(R^2 = {fit['r2']:.3f})")
    if reference_alpha is not None and pos.any():
        ax.loglog(ranks, e[pos][0] * ranks ** (-float(reference_alpha)), ":", color="gray",
                  label=f"1/n^{reference_alpha:g}")
    ax.set_xlabel("rank n")
    ax.set_ylabel("eigenvalue")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_spectrum(eigs: Any, fit: Optional[dict[str, Any]], path: str | Path, *,
                  label: str = "eigenspectrum", reference_alpha: Optional[float] = 1.0,
                  dpi: int = 150) -> Path:
    """Write :func:`spectrum_figure` to ``path`` (format from the suffix: .png, .pdf, .svg).

    Returns:
      The written path.
    """
    from robust_vision.viz._common import save_figure

    path = Path(path)
    fig = spectrum_figure(eigs, fit, label=label, reference_alpha=reference_alpha)
    (written,) = save_figure(fig, path.parent, path.stem, dpi, [path.suffix.lstrip(".").lower() or "png"])
    return written
