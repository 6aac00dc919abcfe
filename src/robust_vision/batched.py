"""Run a jitted per-example function over a whole split in fixed-size, sharded batches; build
``Batch``es from arrays and prefetch them to the device (the streaming evaluators' input)."""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from robust_vision.data.batch import Batch
from robust_vision.data.pipeline import batch_indices, data_mesh, device_multiple, local_rows, shard_batch
from robust_vision.distributed import gather_batches

PerExampleFn = Callable[[jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def collect_per_example(fn: PerExampleFn, images: np.ndarray, labels: np.ndarray, batch_size: int,
                        mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """:func:`stream_per_example` over the in-memory arrays (``array_batches``): the per-example
    values (N,) of the real examples, in order. Batches are padded to ``batch_size`` (one
    compilation); on many processes each one feeds its own rows and every process gets all N."""
    if len(labels) == 0:
        return {}
    return stream_per_example(fn, _padded_batches(images, labels, batch_size, mesh), mesh=mesh)


def stream_per_example(fn: PerExampleFn, batches: Iterable[Batch], *, prefetch: int = 2,
                       mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Apply ``fn(images_batch, labels_batch, batch_index) -> {name: (B, ...) array}`` to every
    batch of ``batches`` (prefetched to the device ``prefetch`` deep, so input memory on device
    is bounded by prefetch x one batch) and return the values of the *real* examples (mask 1),
    shape (N, ...), in order. Images reach ``fn`` as stored (uint8 or float32): convert inside
    with ``to_unit_float``. Results are fetched once at the end, which lets the device run ahead
    of the host; on many processes they are gathered, so every process returns all N values."""
    outputs, masks = [], []
    for i, batch in enumerate(prefetch_to_device(batches, prefetch, mesh)):
        outputs.append(fn(batch.images, batch.labels, jax.numpy.asarray(i, jax.numpy.int32)))
        masks.append({"mask": batch.mask})
    if not outputs:
        return {}
    keep = gather_batches(masks)["mask"] > 0
    return {name: values[keep] for name, values in gather_batches(outputs).items()}


def take_examples(batches: Iterable[Batch], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` real examples of a stream as host arrays (images as stored, labels int32),
    gathered across processes; reads only the batches it needs. For the parts that work on a few
    hundred examples at most (attack sanity checks), never on a whole split."""
    images, labels, have = [], [], 0
    for batch in prefetch_to_device(batches, 1):
        got = gather_batches([{"x": batch.images, "y": batch.labels, "m": batch.mask}])
        keep = got["m"] > 0
        images.append(got["x"][keep])
        labels.append(got["y"][keep])
        have += int(keep.sum())
        if have >= k:
            break
    if not images:
        return np.zeros((0,)), np.zeros((0,), np.int32)
    return np.concatenate(images)[:k], np.concatenate(labels)[:k].astype(np.int32)


def array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  mesh: Mesh | None = None) -> Iterator[Batch]:
    """Fixed-size ``Batch``es of in-memory arrays (``data.pipeline.batch_indices``: the last
    batch padded by repetition, ``mask`` 0 on the padding). ``batch_size`` is capped at the
    number of examples and rounded up to a multiple of the device count, as the grid does.
    Images keep their dtype (uint8 or float32); nothing is uploaded here. On many processes each
    yields its own rows of every batch (``data.pipeline.local_rows``), as the input pipeline does."""
    return _padded_batches(images, labels, max(1, min(batch_size, len(labels))), mesh)


def _padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, mesh: Mesh | None) -> Iterator[Batch]:
    """``array_batches`` without the cap at N (a set smaller than one batch is padded to it)."""
    mesh = mesh or data_mesh()
    batch_size = device_multiple(batch_size, mesh)
    rows = local_rows(mesh, batch_size)
    labels = np.asarray(labels)
    for b in batch_indices(len(labels), batch_size):
        idx = b.indices[rows]
        yield Batch(images[idx], labels[idx].astype(np.int32), b.mask[rows])


def prefetch_to_device(batches: Iterable[Batch], depth: int = 2, mesh: Mesh | None = None) -> Iterator[Batch]:
    """Yield the batches with images and labels already on the device mesh (sharded along the
    batch axis), keeping up to ``depth`` transfers in flight ahead of the consumer, so the
    host-to-device copy of batch i+1 overlaps the computation of batch i. Device memory for
    inputs is bounded by ``depth`` x one batch. Each batch holds this process's rows; the results
    are global arrays (the mask too, so it can be gathered with the outputs)."""
    from robust_vision.interrupts import check_interrupt

    mesh = mesh or data_mesh()
    queue: collections.deque = collections.deque()
    for batch in batches:
        check_interrupt()  # a Ctrl-C swallowed inside a JAX callback still stops every evaluation loop
        queue.append(Batch(*shard_batch(mesh, np.asarray(batch.images), np.asarray(batch.labels, np.int32),
                                        np.asarray(batch.mask, np.float32))))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def source_batches(source, batch_size: int, n: int | None = None, *, threads: int = 2) -> Iterator[Batch]:
    """Fixed-size masked ``Batch``es of the first ``n`` records (all when None) of a record source
    (``data.sources``), read lazily by the input pipeline (``data.pipeline.eval_batches``): only
    the batches in flight are in memory. ``batch_size`` is capped at the number of records and
    rounded up to a multiple of the device count, as ``array_batches`` does, so an in-memory
    split gives the same batches either way. On many processes each reads its own rows."""
    from robust_vision.data.pipeline import eval_batches
    from robust_vision.data.sources import SubsetSource

    if n is not None and n < len(source):
        source = SubsetSource(source, np.arange(n), source.info)
    size = device_multiple(max(1, min(batch_size, len(source))), data_mesh())
    return eval_batches(source, size, threads=threads)
