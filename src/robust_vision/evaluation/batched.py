"""Run a jitted per-example function over a whole split in fixed-size, sharded batches."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from robust_vision.data.pipeline import batch_indices, data_mesh, local_rows, shard_batch
from robust_vision.distributed import gather_batches

PerExampleFn = Callable[[jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def collect_per_example(fn: PerExampleFn, images: np.ndarray, labels: np.ndarray, batch_size: int,
                        mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Apply ``fn(images_batch, labels_batch, batch_index) -> {name: (B,) array}`` to every
    batch and return the per-example values of the *real* examples, shape (N,), in order.

    Batches are padded to ``batch_size`` (one compilation) and the padding is dropped, so
    every example appears exactly once. Results are fetched once at the end, which lets the
    device run ahead of the host. On many processes (``jax.distributed``) each one feeds its own
    rows of every batch and the results are gathered, so every process returns all N values.
    """
    mesh = mesh or data_mesh()
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    rows = local_rows(mesh, batch_size)
    outputs, masks = [], []
    for i, batch in enumerate(batch_indices(len(labels), batch_size)):
        idx = batch.indices[rows]
        x, y = shard_batch(mesh, images[idx], labels[idx])
        outputs.append(fn(x, y, jax.numpy.asarray(i, jax.numpy.int32)))
        masks.append(batch.mask)
    if not outputs:
        return {}
    keep = np.concatenate(masks) > 0
    return {name: values[keep] for name, values in gather_batches(outputs).items()}
