"""Run a jitted per-example function over a whole split in fixed-size, sharded batches; build
``Batch``es from arrays and prefetch them to the device (the streaming evaluators' input)."""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from robust_vision.data.batch import Batch
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


def array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  mesh: Mesh | None = None) -> Iterator[Batch]:
    """Fixed-size ``Batch``es of in-memory arrays (``data.pipeline.batch_indices``: the last
    batch padded by repetition, ``mask`` 0 on the padding). ``batch_size`` is capped at the
    number of examples and rounded up to a multiple of the device count, as the grid does.
    Images keep their dtype (uint8 or float32); nothing is uploaded here. On many processes each
    yields its own rows of every batch (``data.pipeline.local_rows``), as the input pipeline does."""
    mesh = mesh or data_mesh()
    n_dev = mesh.devices.size
    n = len(labels)
    batch_size = max(1, min(batch_size, n))
    batch_size = -(-batch_size // n_dev) * n_dev
    rows = local_rows(mesh, batch_size)
    labels = np.asarray(labels)
    for b in batch_indices(n, batch_size):
        idx = b.indices[rows]
        yield Batch(images[idx], labels[idx].astype(np.int32), b.mask[rows])


def prefetch_to_device(batches: Iterable[Batch], depth: int = 2, mesh: Mesh | None = None) -> Iterator[Batch]:
    """Yield the batches with images and labels already on the device mesh (sharded along the
    batch axis), keeping up to ``depth`` transfers in flight ahead of the consumer, so the
    host-to-device copy of batch i+1 overlaps the computation of batch i. Device memory for
    inputs is bounded by ``depth`` x one batch. Each batch holds this process's rows; the results
    are global arrays (the mask too, so it can be gathered with the outputs)."""
    mesh = mesh or data_mesh()
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(Batch(*shard_batch(mesh, np.asarray(batch.images), np.asarray(batch.labels, np.int32),
                                        np.asarray(batch.mask, np.float32))))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
