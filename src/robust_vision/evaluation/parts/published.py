"""The corruption part on published pre-corrupted files (CIFAR-10-C / CIFAR-100-C folders,
ImageNet-C / Tiny-ImageNet-C trees; ``evaluation.suite_data``, layout ``evaluation.suite``):
the same :class:`~robust_vision.evaluation.parts.corruptions.CorruptionErrors`, per-corruption x
severity tables and CE / mCE as the generated suite, so both can be put side by side."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import jax

from robust_vision.data.sources import ConvertedSource, corruption_sources
from robust_vision.evaluation.parts.corruptions import (CorruptionErrors, corruption_errors_stream, load_reference,
                                                        summarise)


def published_corruption_errors(logits_fn: Callable, path: str, suite: str, image_shape: Sequence[int],
                                num_classes: int, *, model_name: str, batch_size: int = 256) -> CorruptionErrors:
    """Top-1 error on every (corruption, severity) of the published set at ``path``, each file
    streamed like the evaluated split (:func:`corruption_errors_stream` of its clean error:
    wrong / N, padding never counts). Images are converted to the checkpoint's ``image_shape``;
    ``clean_error`` is NaN (the part sets that of the evaluated split)."""
    from robust_vision.data.readers import DatasetError

    errors: dict[tuple[str, int], float] = {}
    n = None
    for corruption, severity, src in corruption_sources(path, suite):
        if src.info.num_classes != num_classes and int(src.labels.max()) >= num_classes:
            raise DatasetError(f"{suite}: '{path}' has labels up to {int(src.labels.max())} but the checkpoint "
                               f"predicts {num_classes} classes; evaluate a model trained on the same classes")
        n = len(src)
        errors[(corruption, severity)] = _clean_error(logits_fn, ConvertedSource(src, tuple(image_shape)), batch_size,
                                                      model_name, suite)
    return CorruptionErrors(model=model_name, clean_error=float("nan"), errors=errors, n=int(n or 0), scale=suite,
                            corruptions=sorted({c for c, _ in errors}), severities=sorted({s for _, s in errors}))


def _clean_error(logits_fn: Callable, source, batch_size: int, model_name: str, suite: str) -> float:
    """Top-1 error (wrong / N) of ``logits_fn`` on the records of ``source``, streamed."""
    from robust_vision.batched import source_batches

    return corruption_errors_stream(logits_fn, source_batches(source, batch_size), model_name=model_name,
                                    corruptions=[], severities=[], scale=suite, key=jax.random.key(0)).clean_error


def run(ctx) -> dict:
    """Errors of every model (and of the reference model) on the published files; the clean
    error is that of the evaluated split (``--data`` / the config's), streamed."""
    ecfg = ctx.cfg.evaluation

    def errors_of(model, logits_fn) -> CorruptionErrors:
        errors = published_corruption_errors(logits_fn, ecfg.suite_data, ecfg.suite, model.input_shape,
                                             model.num_classes, model_name=model.name, batch_size=ecfg.batch_size)
        clean = _clean_error(logits_fn, ctx.source, ecfg.batch_size, model.name, ecfg.suite)
        return replace(errors, clean_error=clean)  # wrong / N of the evaluated split

    ref_model = load_reference(ctx)
    reference = None if ref_model is None else errors_of(ref_model, ref_model.logits_fn())
    errors = []
    for m in ctx.per_model("corruptions (published)"):
        errors.append(errors_of(m, ctx.logits_fns[m.name]))
    tail = summarise(errors, reference, ecfg.reference_checkpoint)
    severities = sorted({r["severity"] for r in tail["results"]}) if tail["results"] else []
    return {"suite": ecfg.suite, "suite_data": ecfg.suite_data, "scale": "published", "severities": severities,
            **tail}
