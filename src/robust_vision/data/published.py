"""Errors of a model on published pre-corrupted files (CIFAR-10-C / CIFAR-100-C folders,
ImageNet-C / Tiny-ImageNet-C trees), in the same :class:`~robust_vision.evaluation.suite.CorruptionErrors`
as the generated suite, so ``suite.corruption_summary`` writes the same per-corruption x severity
tables and CE / mCE and both can be put side by side."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp


from robust_vision.data.batch import to_unit_float
from robust_vision.data.pipeline import eval_batches
from robust_vision.data.sources import ConvertedSource, RecordSource, corruption_sources


@functools.lru_cache(maxsize=8)
def _correct_fn(logits_fn: Callable) -> Callable:
    """One jitted counter per logits function, so every (corruption, severity) reuses its compilation."""
    @jax.jit
    def correct(images, labels, mask):
        pred = jnp.argmax(logits_fn(to_unit_float(images)), axis=-1)
        return jnp.sum((pred == labels) * mask)

    return correct


def count_correct(logits_fn: Callable, source: RecordSource, batch_size: int = 256, workers: int = 0) -> int:
    """Examples of ``source`` that ``logits_fn`` (float32 (B, H, W, C) in [0, 1] -> (B, K)) classifies
    correctly; streamed in fixed-size masked batches (padding never counts)."""
    correct = _correct_fn(logits_fn)
    total = [correct(b.images, b.labels, b.mask) for b in eval_batches(source, batch_size, shard_index=0,
                                                                         shard_count=1, workers=workers, threads=2)]
    return int(round(float(sum(jax.device_get(total))))) if total else 0


def published_corruption_errors(logits_fn: Callable, path: str, suite: str, image_shape: Sequence[int],
                                num_classes: int, *, model_name: str, clean: Optional[RecordSource] = None,
                                batch_size: int = 256, workers: int = 0):
    """Top-1 error on every (corruption, severity) of the published set at ``path``.

    Images are converted to the checkpoint's ``image_shape``; ``clean`` (the uncorrupted test
    split, optional) gives ``clean_error`` (NaN without it: relative CE then needs it)."""
    from robust_vision.data.readers import DatasetError
    from robust_vision.evaluation.suite import CorruptionErrors

    errors: dict[tuple[str, int], float] = {}
    n = None
    for corruption, severity, src in corruption_sources(path, suite):
        if src.info.num_classes != num_classes and int(src.labels.max()) >= num_classes:
            raise DatasetError(f"{suite}: '{path}' has labels up to {int(src.labels.max())} but the checkpoint "
                               f"predicts {num_classes} classes; evaluate a model trained on the same classes")
        n = len(src)
        wrong = n - count_correct(logits_fn, ConvertedSource(src, tuple(image_shape)), batch_size, workers)
        errors[(corruption, severity)] = wrong / n
    clean_error = float("nan")
    if clean is not None:
        clean_error = 1.0 - count_correct(logits_fn, ConvertedSource(clean, tuple(image_shape)), batch_size) / len(clean)
    corruptions = sorted({c for c, _ in errors})
    severities = sorted({s for _, s in errors})
    return CorruptionErrors(model=model_name, clean_error=clean_error, errors=errors, n=int(n or 0),
                            scale=suite, corruptions=corruptions, severities=severities)
