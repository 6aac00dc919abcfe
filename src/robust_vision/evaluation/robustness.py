"""The robustness grid evaluator: noise type x severity x draws, whole-dataset reductions.

``evaluate_robustness`` streams fixed-size ``Batch``es (from arrays or the input pipeline)
through the device with a prefetch of 2, reading the data once and evaluating every condition
on each batch, so device memory is bounded by batch size x prefetch depth. The severity is a
traced argument, and all conditions of a batch run in one program (a scan over conditions, a
switch over noise types), so one compilation serves the whole grid.

Noise draws are keyed by (seed, noise type, level, draw, batch), never by the position of
a condition in the grid, so a condition gives the same numbers whatever else is evaluated
and two models evaluated with the same seed see the same noisy images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import get_noise
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.data.pipeline import data_mesh, replicate
from robust_vision.distributed import gather_batches
from robust_vision.batched import array_batches, prefetch_to_device
from robust_vision.metrics import degradation_percent, per_example_metrics, summarize
from robust_vision.program_cache import cached_jit, model_jit

# forward(variables, images) -> logits: a pure function; the variables (parameters and
# model state) are passed as arguments so they are not baked into the compiled program.
Forward = Callable[[object, jax.Array], jax.Array]


# The per-example metrics every grid program returns, (B,) each.
METRIC_NAMES = ("correct", "confidence", "margin", "loss")


def _condition_numbers(noise_type: str, level: float, draw: int) -> tuple[int, int, int]:
    return zlib.crc32(noise_type.encode()) & 0x7FFFFFFF, int(round(level * 1_000_000)), draw


def condition_key(seed: int, noise_type: str, level: float, draw: int) -> jax.Array:
    key = jax.random.key(seed)
    for number in _condition_numbers(noise_type, level, draw):
        key = jax.random.fold_in(key, number)
    return key


def _key_data_of_conditions(seed: jax.Array, numbers: jax.Array) -> jax.Array:
    """key_data of ``condition_key`` for each row (crc, micro-level, draw) of ``numbers`` (C, 3)
    int32: the same keys (fold_in of a traced int32 is the fold_in of the same Python int)."""
    def one(row):
        key = jax.random.key(seed)
        for j in range(3):
            key = jax.random.fold_in(key, row[j])
        return jax.random.key_data(key)

    return jax.vmap(one)(numbers)


# One cached program for all the grid's keys: a fold_in per condition, run eagerly, would be
# three small programs traced and lowered again on every run.
_conditions_key_data = cached_jit(_key_data_of_conditions, name="condition_keys", key={})


@dataclass
class RobustnessResult:
    rows: list[dict]
    confidences: dict[str, np.ndarray] = field(default_factory=dict)


def _batch_conditions(forward: Forward, noise_fns: tuple, variables, images: jax.Array, labels: jax.Array,
                      kinds: jax.Array, key_data: jax.Array, levels: jax.Array, index: jax.Array
                      ) -> dict[str, jax.Array]:
    """Per-example metrics (B, C) of one batch under C conditions, in one program.

    Condition c corrupts the batch with ``noise_fns[kinds[c]]`` (None: clean) at ``levels[c]``
    with key ``fold_in(wrap_key_data(key_data[c]), index)``: batch ``index`` of a condition sees
    the same noise whatever else is evaluated. A ``lax.scan`` over the conditions with a
    ``lax.switch`` over the noise types: the model's forward pass is traced and lowered once for
    the whole grid instead of once per noise type (what a cached second run still pays), and the
    device holds one noisy batch at a time. kinds (C,) int32, key_data (C, ...) uint32, levels (C,).
    """
    x = to_unit_float(images)

    def corrupt(fn):
        if fn is None:
            return lambda key, level: x
        return lambda key, level: fn(jax.random.fold_in(key, index), x, level)

    branches = [corrupt(fn) for fn in noise_fns]

    def body(carry, condition):
        kind, data, level = condition
        noisy = jax.lax.switch(kind, branches, jax.random.wrap_key_data(data), level)
        m = per_example_metrics(forward(variables, noisy), labels)
        return carry, {k: m[k] for k in METRIC_NAMES}

    _, out = jax.lax.scan(body, None, (kinds, key_data, levels))
    return {k: v.T for k, v in out.items()}  # (B, C): batches concatenate along the examples


@lru_cache(maxsize=8)  # bounded: a dropped entry frees the programs of a model no longer evaluated
def _grid_program(forward: Forward, noise_types: tuple) -> Callable:
    """``_batch_conditions`` of ``forward`` and these noise types (None = clean), jitted; kept
    on disk (``program_cache``) when ``forward`` carries a ``program_key`` (a loaded model's)."""
    noise_fns = tuple(None if t is None else get_noise(t) for t in noise_types)
    return model_jit(partial(_batch_conditions, forward, noise_fns), getattr(forward, "program_key", None),
                     name="noise_grid", key=list(noise_types), sources=[f for f in noise_fns if f is not None])


def evaluate_conditions_stream(forward: Forward, variables, batches: Iterable[Batch], *, noise_types: list[str],
                               levels: list[float], seed: int, n_draws: int, prefetch: int = 2
                               ) -> dict[tuple[str | None, float], dict[str, np.ndarray]]:
    """Per-example metrics of every condition from one pass over ``batches``.

    ``batches``: fixed-size ``Batch``es (uint8 or float32 images, padding marked by ``mask``),
    e.g. ``batched.array_batches`` or the input pipeline; they are prefetched to the device
    ``prefetch`` deep, so input memory on device is bounded by prefetch x batch size. Every
    batch is read once and evaluated under all conditions. Returns {(None, 0.0): clean,
    (noise_type, level): metrics concatenated over draws, (N * n_draws,)}.
    """
    conditions: list[tuple[str | None, float, int]] = [(None, 0.0, 0)]
    for noise_type in noise_types:
        for level in levels:
            level = float(level)
            if level != 0.0:
                conditions += [(noise_type, level, d) for d in range(n_draws) if (noise_type, level, d)
                               not in conditions]
    types = tuple(dict.fromkeys(c[0] for c in conditions))  # None (clean) first
    run = _grid_program(forward, types)
    kinds = jnp.asarray([types.index(c[0]) for c in conditions], jnp.int32)
    numbers = np.asarray([_condition_numbers(c[0] or "clean", c[1], c[2]) for c in conditions], np.int32)
    key_data = _conditions_key_data(jnp.int32(seed), jnp.asarray(numbers))
    levels_c = jnp.asarray([c[1] for c in conditions], jnp.float32)
    outputs, masks = [], []
    for i, batch in enumerate(prefetch_to_device(batches, prefetch)):
        outputs.append(run(variables, batch.images, batch.labels, kinds, key_data, levels_c, jnp.int32(i)))
        masks.append(batch.mask)
    if not masks:
        raise ValueError("no batches to evaluate (empty split)")
    # Gathered across processes (every example exactly once); the global masks come along.
    keep = gather_batches([{"mask": m} for m in masks])["mask"] > 0
    gathered = gather_batches(outputs)  # {name: (N_padded, C)}
    per_cond = {c: {k: v[keep, j] for k, v in gathered.items()} for j, c in enumerate(conditions)}
    result: dict[tuple[str | None, float], dict[str, np.ndarray]] = {(None, 0.0): per_cond[(None, 0.0, 0)]}
    for noise_type, level, _ in conditions[1:]:
        draws = [per_cond[(noise_type, level, d)] for d in range(n_draws)]
        result[(noise_type, level)] = {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}
    return result


def evaluate_robustness(forward: Forward, variables, images: np.ndarray | None, labels: np.ndarray | None, *,
                        model_name: str, noise_types: list[str], levels: list[float], n_draws: int = 1,
                        batch_size: int = 512, seed: int = 0, ece_bins: int = 15,
                        batches: Callable[[], Iterable[Batch]] | None = None) -> RobustnessResult:
    """Evaluate every (noise type, level) condition; one tidy row per condition.

    ``forward`` must be a stable (hashable, reused) pure function so the grid compiles
    once; ``variables`` is its first argument. Level 0.0 is the clean split (evaluated once,
    repeated per noise type). Input: arrays ``images`` (N, H, W, C) uint8 or float32 in [0, 1]
    and ``labels`` (N,), cut into batches of ``batch_size``; or ``batches`` (images / labels
    None), a stream of fixed-size ``Batch``es from the input pipeline. Either way the data is
    streamed through the device with a prefetch of 2 batches, read once for all conditions.
    """
    for name in noise_types:
        get_noise(name)  # unknown names fail before any work, listing the valid ones
    variables = replicate(data_mesh(), variables)  # on the mesh of the batches (one or many processes)
    if batches is None:
        if images is None or labels is None:
            raise ValueError("evaluate_robustness: pass images and labels, or batches")
        stream = array_batches(images, labels, batch_size)
    else:
        stream = batches()
    per_cond = evaluate_conditions_stream(forward, variables, stream, noise_types=noise_types, levels=levels,
                                          seed=seed, n_draws=n_draws)
    clean = per_cond[(None, 0.0)]
    n_images = len(clean["correct"])
    clean_summary = summarize(clean, ece_bins)
    result = RobustnessResult(rows=[], confidences={f"{model_name}|clean|0": clean["confidence"].astype(np.float32)})
    for noise_type in noise_types:
        for level in levels:
            pe = clean if level == 0.0 else per_cond[(noise_type, float(level))]
            s = clean_summary if level == 0.0 else summarize(pe, ece_bins)
            result.rows.append({
                "model": model_name, "noise_type": noise_type, "level": float(level),
                "accuracy": s["accuracy"], "confidence": s["confidence"], "margin": s["margin"],
                "snr": s["snr"], "snr_median": s["snr_median"], "ece": s["ece"], "loss": s["loss"],
                "degradation": None if level == 0.0 else degradation_percent(clean_summary["accuracy"], s["accuracy"]),
                "n_images": n_images, "n_draws": 1 if level == 0.0 else n_draws,
            })
            result.confidences[f"{model_name}|{noise_type}|{level:g}"] = pe["confidence"].astype(np.float32)
    return result
