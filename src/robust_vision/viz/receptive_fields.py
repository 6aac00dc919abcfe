"""Receptive fields of a local-learning layer (``models/local.py``, Krotov & Hopfield 2019) as a
grid of images: one tile per hidden unit, its weight row reshaped to the input image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from robust_vision.viz._common import save_figure


def receptive_fields_figure(W: jax.Array | np.ndarray, image_shape: Sequence[int], *, max_units: int = 100,
                            ncols: Optional[int] = None):
    """The rows of W as images in a grid (the paper's figure of learned weights).

    Args:
      W: (n_hidden, H*W*C) weights.
      image_shape: (H, W) or (H, W, C). Grayscale rows use a symmetric blue-white-red map
        (as Krotov's ``draw_weights``); RGB rows are min-max scaled per unit to [0, 1].
      max_units: draw at most this many units (the first ones).

    Returns:
      A ``matplotlib.figure.Figure`` (no pyplot state); save it with
      ``robust_vision.viz._common.save_figure`` (one drawing for every format).
    """
    from matplotlib.figure import Figure

    W = np.asarray(W, dtype=np.float64)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = shape + (1,)
    if W.ndim != 2 or W.shape[1] != math.prod(shape):
        raise ValueError(f"W must be (n_hidden, {math.prod(shape)}) for image_shape {tuple(image_shape)}, got {W.shape}")
    n = min(W.shape[0], max_units)
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    fig = Figure(figsize=(1.2 * ncols, 1.2 * nrows), layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmax = np.abs(W[:n]).max() or 1.0
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = W[i].reshape(shape)
        if shape[2] == 1:
            ax.imshow(img[..., 0], cmap="bwr", vmin=-vmax, vmax=vmax)
        else:
            lo, hi = img.min(), img.max()
            ax.imshow((img - lo) / (hi - lo if hi > lo else 1.0))
    fig.suptitle(f"Receptive fields of {n} of {W.shape[0]} units")
    return fig


def plot_receptive_fields(W: jax.Array | np.ndarray, image_shape: Sequence[int], path: str | Path, *,
                          max_units: int = 100, ncols: Optional[int] = None, dpi: int = 150) -> Path:
    """Write :func:`receptive_fields_figure` to ``path``; the format follows the suffix
    (.png, .pdf, .svg). Returns the written path."""
    path = Path(path)
    fig = receptive_fields_figure(W, image_shape, max_units=max_units, ncols=ncols)
    (written,) = save_figure(fig, path.parent, path.stem, dpi, [path.suffix.lstrip(".").lower() or "png"])
    return written
