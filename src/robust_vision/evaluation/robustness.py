"""The robustness grid evaluator: noise type x severity x draws, whole-dataset reductions.

The split is uploaded once as (n_batches, batch, H, W, C), sharded along the batch axis;
each condition is one compiled ``lax.scan`` over the batches, so device memory is bounded by
the batch size and the host does no per-batch work. The severity is a traced argument:
one compilation per noise type serves every level.

Noise draws are keyed by (seed, noise type, level, draw, batch), never by the position of
a condition in the grid, so a condition gives the same numbers whatever else is evaluated
and two models evaluated with the same seed see the same noisy images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import get_noise
from robust_vision.data.pipeline import data_mesh, replicate, shard_global_batch
from robust_vision.distributed import to_host
from robust_vision.evaluation.metrics import degradation_percent, per_example_metrics, summarize

RESULT_COLUMNS = ["model", "noise_type", "level", "accuracy", "confidence", "margin", "snr", "snr_median", "ece",
                  "loss", "degradation", "n_images", "n_draws"]

# forward(variables, images) -> logits: a pure function; the variables (parameters and
# model state) are passed as arguments so they are not baked into the compiled program.
Forward = Callable[[object, jax.Array], jax.Array]


@dataclass
class BatchedSplit:
    """A split on device: images (n_batches, B, H, W, C), labels (n_batches, B), mask
    (n_batches, B) with 0 for the padding of the last batch."""

    images: jax.Array
    labels: jax.Array
    mask: np.ndarray
    num_examples: int

    @property
    def keep(self) -> np.ndarray:
        return self.mask.reshape(-1) > 0


def batch_split(images: np.ndarray, labels: np.ndarray, batch_size: int) -> BatchedSplit:
    """Pad to a whole number of batches (repeating the first examples; masked out) and shard."""
    mesh = data_mesh()
    n_dev = mesh.devices.size
    batch_size = max(1, min(batch_size, len(labels)))
    batch_size = -(-batch_size // n_dev) * n_dev
    n = len(labels)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    idx = np.concatenate([np.arange(n), np.resize(np.arange(n), pad)]) if pad else np.arange(n)
    mask = (np.arange(n_batches * batch_size) < n).astype(np.float32).reshape(n_batches, batch_size)
    # Sharded along the batch axis; on many processes each one places its own rows of it.
    x, y = shard_global_batch(mesh, images[idx].reshape(n_batches, batch_size, *images.shape[1:]),
                              labels[idx].reshape(n_batches, batch_size).astype(np.int32), axis=1)
    return BatchedSplit(x, y, mask, n)


def condition_key(seed: int, noise_type: str, level: float, draw: int) -> jax.Array:
    key = jax.random.key(seed)
    key = jax.random.fold_in(key, zlib.crc32(noise_type.encode()) & 0x7FFFFFFF)
    key = jax.random.fold_in(key, int(round(level * 1_000_000)))
    return jax.random.fold_in(key, draw)


@partial(jax.jit, static_argnames=("forward", "noise_fn"))
def _run_condition(forward: Forward, noise_fn, variables, images: jax.Array, labels: jax.Array, key: jax.Array,
                   level: jax.Array) -> dict[str, jax.Array]:
    def body(carry, inputs):
        x, y, i = inputs
        noisy = x if noise_fn is None else noise_fn(jax.random.fold_in(key, i), x, level)
        m = per_example_metrics(forward(variables, noisy), y)
        return carry, {k: m[k] for k in ("correct", "confidence", "margin", "loss")}

    _, out = jax.lax.scan(body, None, (images, labels, jnp.arange(images.shape[0])))
    return out


def evaluate_condition(forward: Forward, variables, split: BatchedSplit, noise_type: str | None, level: float,
                       *, seed: int, n_draws: int) -> dict[str, np.ndarray]:
    """Per-example metrics of one condition over the whole split, concatenated over draws:
    arrays of shape (N * n_draws,) (N when the condition is clean)."""
    noise_fn = None if noise_type is None or level == 0.0 else get_noise(noise_type)
    draws = 1 if noise_fn is None else n_draws
    outputs = []
    for draw in range(draws):
        key = condition_key(seed, noise_type or "clean", level, draw)
        out = _run_condition(forward, noise_fn, variables, split.images, split.labels, key, jnp.float32(level))
        outputs.append(out)
    fetched = to_host(outputs)  # gathered across processes: every example exactly once
    keep = split.keep
    return {k: np.concatenate([o[k].reshape(-1)[keep] for o in fetched]) for k in fetched[0]}


@dataclass
class RobustnessResult:
    rows: list[dict]
    confidences: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_robustness(forward: Forward, variables, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                        noise_types: list[str], levels: list[float], n_draws: int = 1, batch_size: int = 512,
                        seed: int = 0, ece_bins: int = 15) -> RobustnessResult:
    """Evaluate every (noise type, level) condition; one tidy row per condition.

    ``forward`` must be a stable (hashable, reused) pure function so each noise type compiles
    once; ``variables`` is its first argument. Level 0.0 is the clean split (evaluated once, repeated per noise type).
    """
    for name in noise_types:
        get_noise(name)  # unknown names fail before any work, listing the valid ones
    split = batch_split(images, labels, batch_size)
    variables = replicate(data_mesh(), variables)  # on the same mesh as the split (one or many processes)
    clean = evaluate_condition(forward, variables, split, None, 0.0, seed=seed, n_draws=1)
    clean_summary = summarize(clean, ece_bins)
    result = RobustnessResult(rows=[], confidences={f"{model_name}|clean|0": clean["confidence"].astype(np.float32)})
    for noise_type in noise_types:
        for level in levels:
            pe = clean if level == 0.0 else evaluate_condition(forward, variables, split, noise_type, level, seed=seed,
                                                                n_draws=n_draws)
            s = clean_summary if level == 0.0 else summarize(pe, ece_bins)
            result.rows.append({
                "model": model_name, "noise_type": noise_type, "level": float(level),
                "accuracy": s["accuracy"], "confidence": s["confidence"], "margin": s["margin"],
                "snr": s["snr"], "snr_median": s["snr_median"], "ece": s["ece"], "loss": s["loss"],
                "degradation": None if level == 0.0 else degradation_percent(clean_summary["accuracy"], s["accuracy"]),
                "n_images": len(labels), "n_draws": 1 if level == 0.0 else n_draws,
            })
            result.confidences[f"{model_name}|{noise_type}|{level:g}"] = pe["confidence"].astype(np.float32)
    return result
