"""Unsupervised pre-training of a model's local layer before supervised training.

``krotov``: the Krotov-Hopfield layer is trained without labels on the training images
(``models.local.train_krotov``, options ``model.krotov``); the trainer then trains only the
linear head (the local weights are not ``nnx.Param``, so the optimizer never sees them).

The rule runs on device over an in-memory array, so it reads a bounded sample of the training
source: all of it when its float32 images fit in ``SAMPLE_BYTES``, else a seeded random subset
of that size (the log says which).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from robust_vision.config import Config
from robust_vision.data.sources import RecordSource, SubsetSource, read_images
from robust_vision.models.local import p_norms, train_krotov

SAMPLE_BYTES = 1 << 30  # float32 images the local rule holds at once (1 GiB: all of CIFAR-10's 50k)


def bounded_sample(source: RecordSource, seed: int, max_bytes: int = SAMPLE_BYTES) -> tuple[np.ndarray, str]:
    """float32 (M, H, W, C) images in [0, 1] of ``source`` with M * H * W * C * 4 <= ``max_bytes``
    (at least one): every record in order when they fit, else M records drawn without
    replacement by ``seed`` (in source order). Returns (images, a phrase saying which)."""
    h, w, c = source.info.image_shape  # type: ignore[misc]
    fit = max(1, max_bytes // (4 * h * w * c))
    if len(source) <= fit:
        return read_images(source), f"all {len(source)} training images"
    picked = np.sort(np.random.default_rng(seed).choice(len(source), fit, replace=False))
    sample = SubsetSource(source, picked, replace(source.info, description=f"{fit} of {source.info.description}"))
    return read_images(sample), f"a random {fit} of the {len(source)} training images ({max_bytes >> 20} MiB bound)"


def pretrain_local_layer(model, cfg: Config, train_source: RecordSource, run_dir: Path,
                         log: Callable[[str], None] = print) -> None:
    """Train ``model``'s unsupervised layer in place, if it has one (else do nothing), on a
    bounded sample of ``train_source`` (records of one shape, uint8 or float32 [0, 1])."""
    if cfg.model.name != "krotov":
        return
    kc = cfg.model.krotov
    t0 = time.perf_counter()
    train_images, which = bounded_sample(train_source, cfg.training.seed)
    key = jax.random.fold_in(jax.random.key(cfg.training.seed), 0x10CA1)
    W = train_krotov(key, train_images, n_hidden=kc.n_hidden, epochs=kc.epochs,
                     batch_size=min(kc.batch_size, len(train_images)), p=kc.p, k=kc.k, delta=kc.delta, lr0=kc.lr)
    model.load_weights(W)
    norms = np.asarray(p_norms(W, kc.p))
    log(f"Krotov local layer: {kc.n_hidden} units, {kc.epochs} unsupervised epochs on {which} in "
        f"{time.perf_counter() - t0:.1f} s; p-norms of the rows: median {np.median(norms):.3f} "
        f"(the rule's fixed point is 1)")
    if kc.plot_fields:
        from robust_vision.viz._common import save_figure  # matplotlib only when a figure is drawn
        from robust_vision.viz.receptive_fields import receptive_fields_figure

        fig = receptive_fields_figure(W, train_images.shape[1:])
        written = save_figure(fig, run_dir / "plots", "receptive_fields", cfg.evaluation.dpi, cfg.evaluation.format)
        log(f"Receptive fields drawn in {written[0].parent}")
