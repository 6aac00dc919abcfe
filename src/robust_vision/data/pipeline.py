"""Batching, device placement and on-device augmentation.

Batches always have the same shape so every jitted step compiles once: the last partial
batch is padded (by repeating indices) and a 0/1 ``mask`` marks the real examples, so each
example counts exactly once in every whole-dataset reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robust_vision.data.batch import Batch
from robust_vision.data.images import preprocess
from robust_vision.data.sources import array_backed, read_batch


@dataclass(frozen=True)
class BatchIndices:
    """Indices into a split for one batch. ``indices`` (batch_size,) int, ``mask`` (batch_size,)
    float32 with 1 for real examples and 0 for padding."""

    indices: np.ndarray
    mask: np.ndarray


def batch_indices(num_examples: int, batch_size: int, order: np.ndarray | None = None) -> Iterator[BatchIndices]:
    """Yield fixed-size batches covering ``order`` (default 0..n-1) exactly once."""
    order = np.arange(num_examples) if order is None else np.asarray(order)
    for start in range(0, num_examples, batch_size):
        yield _padded(order, start, batch_size)


def _padded(order: np.ndarray, start: int, batch_size: int) -> BatchIndices:
    """The batch of ``order`` from ``start``; a last partial batch is padded by repeating the
    order's first indices (``mask`` 0 there)."""
    idx = order[start:start + batch_size]
    real = idx.shape[0]
    mask = np.ones(batch_size, np.float32)
    if real < batch_size:
        idx = np.concatenate([idx, np.resize(order[:max(real, 1)], batch_size - real)])
        mask[real:] = 0.0
    return BatchIndices(idx, mask)


def num_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The shuffling order of one epoch: a pure function of (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    return np.asarray(jax.random.permutation(key, num_examples))


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every process (``jax.distributed``), axis ``"data"``.

    Devices are ordered by process, so each process's devices hold one contiguous block of
    rows of every batch (``local_rows``)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))


def device_multiple(batch_size: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's device count, so that every device
    holds the same number of rows of a batch (the padding rows are masked out by the callers)."""
    n_dev = mesh.devices.size
    return -(-batch_size // n_dev) * n_dev


def local_rows(mesh: Mesh, global_size: int) -> slice:
    """The rows of a batch axis of ``global_size`` (a multiple of the mesh size) that this
    process feeds: one contiguous block, all rows on a single process."""
    flat = list(mesh.devices.flat)
    mine = [i for i, d in enumerate(flat) if d.process_index == jax.process_index()]
    per_device = global_size // len(flat)
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_batch(mesh: Mesh, *arrays: np.ndarray, axis: int = 0):
    """Global arrays split along ``axis`` (the batch axis) over the mesh, from this process's
    rows (``local_rows``) of each array: on one process the whole array, on many its block.

    Each process passes only the data of its own devices, which is what lets the same code run
    on one host or many (``jax.make_array_from_process_local_data``)."""
    spec = PartitionSpec(*([None] * axis), "data")
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, sharding) for a in arrays)
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in arrays)


def shard_global_batch(mesh: Mesh, *arrays: np.ndarray, axis: int = 0):
    """``shard_batch`` for host arrays that every process holds in full (an in-memory split):
    each process passes its own rows along ``axis``."""
    rows = local_rows(mesh, arrays[0].shape[axis]) if arrays else slice(None)
    index = (slice(None),) * axis + (rows,)
    return shard_batch(mesh, *(np.asarray(a)[index] for a in arrays), axis=axis)


def replicate(mesh: Mesh, tree):
    """Place a pytree on every device of the mesh (parameters, optimizer state). On many
    processes every one must pass the same values (same seed, same checkpoint)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global: reshard on device
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(place, tree)


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{key}: got {batch_size}; it must be a multiple of the {n} devices "
                         f"(e.g. {batch_size + n - batch_size % n})")


def augment(key: jax.Array, images: jax.Array, *, flip: bool, crop_padding: int, noise_std: float,
            noise_clip: bool = True) -> jax.Array:
    """Random horizontal flip, random crop after zero padding, additive Gaussian noise.

    images (B, H, W, C) in [0, 1] -> same shape, in [0, 1] (outside it only with noise_clip=False).
    Each example draws its own
    flip / offset / noise from ``key``; the options are static (Python) values.
    """
    flip_key, crop_key, noise_key = jax.random.split(key, 3)
    b, h, w, _ = images.shape
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    if crop_padding > 0:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if noise_std > 0:
        images = images + noise_std * jax.random.normal(noise_key, images.shape, images.dtype)
        if noise_clip:  # unclipped = the isotropic Gaussian that randomized smoothing certifies
            images = jnp.clip(images, 0.0, 1.0)
    return images


# --------------------------------------------------------------------------- streaming input (Grain)
# The functions below read records lazily from a ``data.sources`` record source through Grain:
# a MapDataset over *batch numbers* whose map reads, decodes, resizes and converts one batch, run
# by Grain's reader threads (and worker processes with ``workers > 0``). Only the batches in
# flight are in host memory, so memory does not grow with the dataset; what grows is the
# index order (8 bytes per example).

def _default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if shard_index is None else int(shard_index)
    count = jax.process_count() if shard_count is None else int(shard_count)
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} is not in 0..{count - 1}")
    return index, count


@dataclass(frozen=True)
class _BatchPlan:
    """Random access to this shard's part of global batch ``b`` (a Grain source of BatchIndices)."""

    order: np.ndarray
    batch_size: int
    shard_index: int
    shard_count: int

    def __len__(self) -> int:
        return num_batches(len(self.order), self.batch_size)

    def __getitem__(self, b: int) -> BatchIndices:
        batch = _padded(self.order, int(b) * self.batch_size, self.batch_size)  # batch_indices' padding
        per = self.batch_size // self.shard_count
        part = slice(self.shard_index * per, (self.shard_index + 1) * per)
        return BatchIndices(batch.indices[part], batch.mask[part])


@dataclass(frozen=True)
class _BatchReader:
    """Reads, preprocesses and stacks the records of one BatchIndices into a Batch (in a worker)."""

    source: object
    image_size: tuple[int, int] | None
    channels: int | None

    def __call__(self, plan: BatchIndices):
        src = self.source
        if array_backed(src) and self.image_size is None and self.channels is None:
            images = read_batch(src, plan.indices)  # one read of the array / memmap
        else:
            images = np.stack([preprocess(src._read(int(i)), self.image_size, self.channels) for i in plan.indices])
        return Batch(images, src.labels[plan.indices].astype(np.int32), plan.mask)


def _stream(source, order: np.ndarray, batch_size: int, shard_index, shard_count, workers: int, threads: int,
            image_size, channels):
    import grain

    index, count = _default_shard(shard_index, shard_count)
    if batch_size % count:
        raise ValueError(f"batch_size: got {batch_size}; it must be a multiple of the {count} processes reading it")
    plan = _BatchPlan(np.asarray(order, np.int64), int(batch_size), index, count)
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    dataset = grain.MapDataset.source(plan).map(_BatchReader(source, size, channels))
    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=max(2, 2 * threads)))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags; use their defaults
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return iter(stream)


def train_batches(source, batch_size: int, seed: int, epoch: int, *, shard_index: int | None = None,
                  shard_count: int | None = None, workers: int = 0, threads: int = 1,
                  image_size: tuple[int, int] | None = None, channels: int | None = None):
    """The training batches of one epoch, as ``robust_vision.data.batch.Batch`` es.

    Order: ``epoch_permutation(seed, epoch, len(source))`` cut into global batches of
    ``batch_size`` (the last padded by repeating its own indices, ``mask`` 0 there), exactly as
    ``batch_indices`` does, so the order is a pure function of (seed, epoch) and ``--resume``
    sees the same batches. Process ``shard_index`` of ``shard_count`` (default: this JAX process)
    gets rows ``[i * B / P, (i + 1) * B / P)`` of every global batch, so the processes together
    read each record exactly once and their batches concatenate to the 1-process batch.
    Images keep the source's dtype (uint8 for files / prepared shards): convert on device with
    ``to_unit_float``. ``workers`` > 0 decodes in that many worker processes."""
    order = epoch_permutation(seed, epoch, len(source))
    return _stream(source, order, batch_size, shard_index, shard_count, workers, threads, image_size, channels)


def eval_batches(source, batch_size: int, *, shard_index: int | None = None, shard_count: int | None = None,
                 workers: int = 0, threads: int = 1, image_size: tuple[int, int] | None = None,
                 channels: int | None = None):
    """Every record of ``source`` once, in order, in fixed-size masked batches (see train_batches)."""
    return _stream(source, np.arange(len(source)), batch_size, shard_index, shard_count, workers, threads,
                   image_size, channels)
