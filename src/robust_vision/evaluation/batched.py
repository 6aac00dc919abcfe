"""Run a jitted per-example function over a whole split in fixed-size, sharded batches."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from robust_vision.data.pipeline import batch_indices, data_mesh, shard_batch

PerExampleFn = Callable[[jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def collect_per_example(fn: PerExampleFn, images: np.ndarray, labels: np.ndarray, batch_size: int,
                        mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Apply ``fn(images_batch, labels_batch, batch_index) -> {name: (B,) array}`` to every
    batch and return the per-example values of the *real* examples, shape (N,), in order.

    Batches are padded to ``batch_size`` (one compilation) and the padding is dropped, so
    every example appears exactly once. Results are fetched once at the end, which lets the
    device run ahead of the host.
    """
    mesh = mesh or data_mesh()
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    outputs, masks = [], []
    for i, batch in enumerate(batch_indices(len(labels), batch_size)):
        x, y = shard_batch(mesh, images[batch.indices], labels[batch.indices])
        outputs.append(fn(x, y, jax.numpy.asarray(i, jax.numpy.int32)))
        masks.append(batch.mask)
    if not outputs:
        return {}
    keep = np.concatenate(masks) > 0
    fetched = jax.device_get(outputs)
    return {name: np.concatenate([o[name] for o in fetched])[keep] for name in fetched[0]}
