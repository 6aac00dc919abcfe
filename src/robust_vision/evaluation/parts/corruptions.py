"""The corruption part: an ImageNet-C style benchmark, generated on the fly (error per
corruption x severity, CE / mCE and relative CE / mCE against a reference model, Hendrycks &
Dietterich 2019), or read from published pre-corrupted files (``parts/published.py``) when
``evaluation.suite_data`` is set. Tables: corruption_results.csv, corruption_summary.csv,
corruption_mce.csv (``tables.SUITE_TABLES["corruptions"]``)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import HELD_OUT, default_scale, get_corruption
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.batched import stream_per_example
from robust_vision.evaluation.suite import LogitsFn, _crc, fmt, part_key, resolve_suite
from robust_vision.program_cache import logits_program


@dataclass
class CorruptionErrors:
    """Top-1 errors of one model on the corruption suite: ``errors[(corruption, severity)]``
    in [0, 1] over the whole split, and the clean error."""

    model: str
    clean_error: float
    errors: dict[tuple[str, int], float]
    n: int
    scale: str
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Tidy rows of corruption_results.csv, one per corruption x severity."""
        return [{"model": self.model, "corruption": c, "severity": s, "error": self.errors[(c, s)],
                 "accuracy": 1.0 - self.errors[(c, s)], "n": self.n, "scale": self.scale,
                 "held_out": int(c in HELD_OUT)} for c in self.corruptions for s in self.severities]


def resolve_scale(scale: str, image_shape: Sequence[int]) -> str:
    """The parameter table: ``auto`` picks cifar below 64 px (``imagenet_c.default_scale``)."""
    if scale == "auto":
        return default_scale(tuple(image_shape))
    if scale not in ("imagenet", "cifar"):
        raise ValueError(f"corruption scale must be auto, imagenet or cifar, got {scale!r}")
    return scale


def _check_severities(severities: Sequence[int]) -> list[int]:
    for s in severities:
        if isinstance(s, bool) or int(s) != s or not 1 <= int(s) <= 5:
            raise ValueError(f"severities must be integers in 1..5, got {s!r}")
    return [int(s) for s in severities]


def _correct_of(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array) -> jax.Array:
    """(B,) bool: argmax of the logits equals the label."""
    return jnp.argmax(logits_fn(images), axis=-1) == labels


# One program per model function (and noise type), jitted once; a loaded model's are kept on
# disk (program_cache.logits_program). Bounded: a dropped entry frees a model's programs.
@functools.lru_cache(maxsize=8)
def _correct(logits_fn: LogitsFn) -> Callable:
    """Jitted ``(images, labels) -> (B,) bool`` correct of ``logits_fn``."""
    return logits_program(_correct_of, logits_fn, name="suite_correct")


def corruption_errors_stream(logits_fn: LogitsFn, batches: Iterable[Batch], *, model_name: str,
                             corruptions: Sequence[str], severities: Sequence[int], scale: str, key: jax.Array,
                             prefetch: int = 2) -> CorruptionErrors:
    """Top-1 error of ``logits_fn`` on every corruption x severity, from one pass over ``batches``.

    Args:
      batches: fixed-size masked ``Batch``es of the split (``batched.array_batches`` or
        ``data.pipeline.eval_batches``; images uint8 or float32 in [0, 1]), prefetched to the
        device ``prefetch`` deep: device memory for inputs is bounded by prefetch x one batch.
        Each batch is read once and evaluated clean and under every condition.
      corruptions: names in ``CORRUPTIONS`` (may be empty: the clean error only); severities:
        ints in 1..5; scale: "imagenet" / "cifar".
      key: the part key; batch b of (corruption c, severity s) uses
        fold_in(fold_in(fold_in(key, crc32(c)), s), b), so every model sees the same images.
    Returns: :class:`CorruptionErrors` (errors in [0, 1], error = wrong / N; padding never counts).
    """
    fns = {c: get_corruption(c) for c in corruptions}  # unknown names fail before any work
    severities = _check_severities(severities)
    keys = {(c, s): jax.random.fold_in(jax.random.fold_in(key, _crc(c)), s) for c in fns for s in severities}

    correct_of = _correct(logits_fn)

    def correct(x, y, b):
        x = to_unit_float(x)
        out = {"clean": correct_of(x, y)}
        for (c, s), sk in keys.items():  # same calls as one condition at a time: the same bits
            out[f"{c}|{s}"] = correct_of(fns[c](jax.random.fold_in(sk, b), x, s, scale), y)
        return out

    per_example = stream_per_example(correct, batches, prefetch=prefetch)
    if not per_example:
        raise ValueError("corruption suite: no examples (empty split)")
    n = int(per_example["clean"].size)

    def error(values: np.ndarray) -> float:
        return float((n - int(values.sum())) / n)  # wrong / N: an exact multiple of 1/N

    return CorruptionErrors(model=model_name, clean_error=error(per_example["clean"]),
                            errors={(c, s): error(per_example[f"{c}|{s}"]) for c, s in keys}, n=n, scale=scale,
                            corruptions=list(fns), severities=severities)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _wrong(errors: np.ndarray, n: int) -> np.ndarray:
    """Errors (multiples of 1/n) back to integer counts of wrong examples, so that error
    differences are exact (1 - 355/360 - (1 - 355/360) must be 0, not 1e-17)."""
    return np.rint(np.asarray(errors) * n)


def corruption_summary(result: CorruptionErrors, reference: CorruptionErrors | None = None
                       ) -> tuple[list[dict], dict]:
    """Per-corruption summary rows and the aggregate (mCE) of one model.

    With E_{c,s} the error at corruption c, severity s (summed over the evaluated severities)
    and E_clean the clean error (Hendrycks & Dietterich 2019):

    * mean_error_c = mean_s E_{c,s};
    * CE_c = sum_s E_{c,s} / sum_s E^ref_{c,s};
    * relative CE_c = sum_s (E_{c,s} - E_clean) / sum_s (E^ref_{c,s} - E^ref_clean);
    * mCE, relative mCE = means of CE_c, relative CE_c over the 15 ImageNet-C corruptions
      (held-out ones get CE columns but are not averaged in).

    A ratio whose denominator is <= 0 (the reference never errs, or its error does not grow
    under the corruption) is NaN and left out of the mean (``n_corruptions`` / ``n_relative``
    count the corruptions averaged into mCE / relative mCE).
    Without ``reference`` the CE columns are empty (None) and the aggregate says so.
    Returns (summary rows of corruption_summary.csv, aggregate row of corruption_mce.csv).
    """
    if reference is not None:
        missing = [k for k in result.errors if k not in reference.errors]
        if missing:
            raise ValueError(f"the reference model {reference.model!r} was not evaluated on {missing[:3]}...; "
                             "evaluate both on the same corruptions and severities")
    rows = []
    for c in result.corruptions:
        errs = np.array([result.errors[(c, s)] for s in result.severities])
        row = {"model": result.model, "corruption": c, "mean_error": float(errs.mean()), "ce": None,
               "relative_ce": None, "clean_error": result.clean_error,
               "reference": reference.model if reference is not None else None, "held_out": int(c in HELD_OUT)}
        if reference is not None:
            ref = np.array([reference.errors[(c, s)] for s in result.severities])
            row["ce"] = _ratio(errs.sum(), ref.sum())
            gap = (_wrong(errs, result.n) - _wrong(result.clean_error, result.n)).sum() / result.n
            ref_gap = (_wrong(ref, reference.n) - _wrong(reference.clean_error, reference.n)).sum() / reference.n
            row["relative_ce"] = _ratio(gap, ref_gap)
        rows.append(row)
    main = [r for r in rows if not r["held_out"]]

    def finite_mean(values: list) -> float:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    aggregate = {
        "model": result.model, "reference": reference.model if reference is not None else None,
        "clean_error": result.clean_error,
        "mean_error": finite_mean([r["mean_error"] for r in main]),
        "mce": finite_mean([r["ce"] for r in main]) if reference is not None else None,
        "relative_mce": finite_mean([r["relative_ce"] for r in main]) if reference is not None else None,
        "n_corruptions": sum(1 for r in main if r["ce"] is not None and math.isfinite(r["ce"])),
        "n_relative": sum(1 for r in main if r["relative_ce"] is not None and math.isfinite(r["relative_ce"])),
        "mean_error_all": finite_mean([r["mean_error"] for r in rows]),
        "severities": " ".join(str(s) for s in result.severities), "scale": result.scale,
    }
    if reference is None:
        aggregate["note"] = "no reference model: CE / mCE need one (--reference RUN)"
    return rows, aggregate


def format_corruption_summary(aggregates: list[dict], summary_rows: list[dict], worst: int = 3) -> str:
    """mCE / relative mCE per model and its worst corruptions (by mean error)."""
    lines = ["CORRUPTION BENCHMARK (ImageNet-C style)", "═" * 68]
    for agg in aggregates:
        ref = agg["reference"] or "none"
        evaluated = sum(1 for r in summary_rows if r["model"] == agg["model"] and not r["held_out"])
        lines.append(f"  {agg['model']}: clean error {fmt(agg['clean_error'])}, mean corruption error "
                     f"{fmt(agg['mean_error'])} ({evaluated} corruption{'' if evaluated == 1 else 's'}, "
                     f"severities {agg['severities']}, "
                     f"{agg['scale']} table)"
                     + (f"; {fmt(agg['mean_error_all'])} with the held-out ones"
                        if any(r["held_out"] for r in summary_rows if r["model"] == agg["model"]) else ""))
        if agg["mce"] is not None:
            lines.append(f"    mCE {fmt(agg['mce'] * 100, '.1f')}%  relative mCE "
                         f"{fmt(None if agg['relative_mce'] is None else agg['relative_mce'] * 100, '.1f')}%"
                         + (f" (over {agg['n_relative']} corruptions: the reference's error does not grow under "
                            "the others)" if agg["n_relative"] < agg["n_corruptions"] else "")
                         + f"  (reference {ref}; 100% = as robust as the reference)")
        else:
            lines.append("    CE / mCE: not computed (no reference model; pass --reference RUN)")
        rows = sorted((r for r in summary_rows if r["model"] == agg["model"]), key=lambda r: -r["mean_error"])
        worst_txt = ", ".join(f"{r['corruption']} {r['mean_error']:.3f}"
                              + (f" (CE {r['ce']:.2f})" if r["ce"] is not None and math.isfinite(r["ce"]) else "")
                              for r in rows[:worst])
        lines.append(f"    worst: {worst_txt}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the part


def load_reference(ctx):
    """The reference model of CE / mCE (``evaluation.reference_checkpoint``; None without one),
    renamed "<name> (reference)" when an evaluated model has its name."""
    from robust_vision.runs.loading import load_trained_model

    path = ctx.cfg.evaluation.reference_checkpoint
    if not path:
        return None
    model = load_trained_model(path, None)
    if model.name in {m.name for m in ctx.models}:
        model.name = f"{model.name} (reference)"
    return model


def summarise(errors: list[CorruptionErrors], reference: CorruptionErrors | None, reference_checkpoint) -> dict:
    """The tables of every model's errors against ``reference``, then the reference's own rows
    (CE = 1 by definition, for the figures): the tail of the part's results.json section."""
    rows, summary_rows, aggregates = [], [], []
    for result in errors + ([reference] if reference is not None else []):
        own_summary, aggregate = corruption_summary(result, reference)
        rows += result.rows()
        summary_rows += own_summary
        aggregates.append(aggregate)
    return {"reference": reference.model if reference else None, "reference_checkpoint": reference_checkpoint,
            "results": rows, "summary": summary_rows, "aggregate": aggregates}


def run(ctx) -> dict:
    """Corruption benchmark of every model (and of the reference model, for CE / mCE), each one
    streamed pass over the evaluated split (``parts/published.py`` runs instead with ``suite_data``)."""
    ecfg = ctx.cfg.evaluation
    scale = resolve_scale(ecfg.corruption_scale, ctx.source.info.image_shape)
    kw = dict(corruptions=resolve_suite(ecfg.suite), severities=list(ecfg.severities), scale=scale,
              key=part_key(ecfg.seed, "corruptions"))
    ref_model, reference, errors = load_reference(ctx), None, []
    with ctx.progress(len(ctx.models) + (ref_model is not None), "corruptions") as bar:
        if ref_model is not None:
            ctx.check(ref_model)
            reference = corruption_errors_stream(ref_model.logits_fn(), ctx.batches(), model_name=ref_model.name, **kw)
            bar.update(1)
        for m in ctx.models:
            errors.append(corruption_errors_stream(ctx.logits_fns[m.name], ctx.batches(), model_name=m.name, **kw))
            bar.update(1)
    return {"suite": ecfg.suite, "scale": scale, "severities": list(ecfg.severities),
            **summarise(errors, reference, ecfg.reference_checkpoint)}


def summary(ctx, out) -> list[str]:
    section = out.suite["corruptions"]
    return ["", format_corruption_summary(section["aggregate"], section["summary"])]
