"""Unsupervised pre-training of a model's local layer before supervised training.

``krotov``: the Krotov-Hopfield layer is trained without labels on the training images
(``models.local.train_krotov``, options ``model.krotov``); the trainer then trains only the
linear head (the local weights are not ``nnx.Param``, so the optimizer never sees them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from robust_vision.config import Config
from robust_vision.models.local import p_norms, receptive_fields_figure, train_krotov


def pretrain_local_layer(model, cfg: Config, train_images: np.ndarray, run_dir: Path,
                         log: Callable[[str], None] = print) -> None:
    """Train ``model``'s unsupervised layer in place, if it has one (else do nothing)."""
    if cfg.model.name != "krotov":
        return
    kc = cfg.model.krotov
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cfg.training.seed), 0x10CA1)
    W = train_krotov(key, train_images, n_hidden=kc.n_hidden, epochs=kc.epochs,
                     batch_size=min(kc.batch_size, len(train_images)), p=kc.p, k=kc.k, delta=kc.delta, lr0=kc.lr)
    model.load_weights(W)
    norms = np.asarray(p_norms(W, kc.p))
    log(f"Krotov local layer: {kc.n_hidden} units, {kc.epochs} unsupervised epochs in "
        f"{time.perf_counter() - t0:.1f} s; p-norms of the rows: median {np.median(norms):.3f} "
        f"(the rule's fixed point is 1)")
    if kc.plot_fields:
        from robust_vision.viz._common import save_figure  # matplotlib only when a figure is drawn

        fig = receptive_fields_figure(W, train_images.shape[1:])
        written = save_figure(fig, run_dir / "plots", "receptive_fields", cfg.evaluation.dpi, cfg.evaluation.format)
        log(f"Receptive fields drawn in {written[0].parent}")
