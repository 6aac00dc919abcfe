"""The robustness suite of ``robust-vision-eval``: one plain function per part.

* :func:`corruption_suite`: ImageNet-C style benchmark (error per corruption x severity,
  CE / mCE and relative CE / mCE against a reference model, Hendrycks & Dietterich 2019);
* :func:`attack_suite`: robust accuracy under adversarial attacks vs budget, plus the
  AutoAttack-style sanity checks;
* :func:`certification`: certified L2 accuracy of the Gaussian-smoothed classifier
  (randomized smoothing, Cohen et al. 2019);
* :func:`calibration_tables`: reliability bins, temperature scaling, split-conformal
  prediction sets (LAC, APS) and selective accuracy when abstaining on a low log-SNR,
  under every noise condition of the robustness grid.

Every part takes ``logits_fn`` (images (B, H, W, C) float32 in [0, 1] -> logits (B, K), eval
mode, weights closed over: ``LoadedModel.logits_fn()``) and returns tidy rows (lists of
dicts, one per table row; the CSV columns are the ``*_COLUMNS`` constants). Pass the *same*
``logits_fn`` object to every call for one model: jitted functions are cached on it.

Randomness: every part derives its keys from one seed with :func:`part_key` and folds in
names (corruption, attack, noise type) and batch indices, never a position in a list, so a
number does not change when other parts or conditions are added, and two models evaluated
with the same seed see the same corrupted / noisy images (common random numbers).
Definitions and commands are in docs/EVALUATION.md.
"""

from __future__ import annotations

import functools
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from robust_vision.corruptions import (
    HELD_OUT,
    IMAGENET_C,
    default_scale,
    get_corruption,
    get_noise,
)
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.evaluation.batched import array_batches, stream_per_example, take_examples
from robust_vision.evaluation.robustness import condition_key
from robust_vision.program_cache import logits_program

LogitsFn = Callable[[jax.Array], jax.Array]

SUITES: dict[str, list[str]] = {"imagenet-c": list(IMAGENET_C), "imagenet-c-all": list(IMAGENET_C) + list(HELD_OUT)}

# CLI / config attack names -> attack registry names (robust_vision.attacks.ATTACKS).
ATTACK_NAMES: dict[str, str] = {"fgsm": "fgsm", "pgd": "pgd", "apgd": "apgd_ce", "sparse": "sparse_pixel",
                                "noise": "noise_attack", "apgd-t": "apgd_t", "apgd-dlr": "apgd_dlr", "fab-t": "fab_t",
                                "square": "square"}
# Ensembles run by attacks.autoattack.autoattack_suite (not through robust_accuracy).
AUTOATTACK_NAMES = ("autoattack", "autoattack-rand")
GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "apgd-dlr", "fab-t", "autoattack", "autoattack-rand")

SELECTIVE_COVERAGES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 21))


def _crc(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def part_key(seed: int, part: str) -> jax.Array:
    """The key of one suite part ("corruptions", "attacks", "certify", "calibration"):
    a function of the seed and the part's name only."""
    return jax.random.fold_in(jax.random.key(seed), _crc(part))


# --------------------------------------------------------------------------- jitted per-batch pieces


def _correct_of(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array) -> jax.Array:
    """(B,) bool: argmax of the logits equals the label."""
    return jnp.argmax(logits_fn(images), axis=-1) == labels


def _logits_under(logits_fn: LogitsFn, images: jax.Array, key: jax.Array, level: jax.Array, index: jax.Array,
                  *, noise_fn) -> jax.Array:
    """Logits (B, K) float32 of one batch under one seed-noise condition (``noise_fn`` None =
    clean); batch ``index`` is corrupted with fold_in(key, index), exactly as the robustness grid
    does, so the images match robustness_results.csv condition by condition."""
    x = to_unit_float(images)
    noisy = x if noise_fn is None else noise_fn(jax.random.fold_in(key, index), x, level)
    return logits_fn(noisy).astype(jnp.float32)


# One program per model function (and noise type), jitted once; a loaded model's are kept on
# disk (program_cache.logits_program). Bounded: a dropped entry frees a model's programs.
@functools.lru_cache(maxsize=8)
def _correct(logits_fn: LogitsFn) -> Callable:
    """Jitted ``(images, labels) -> (B,) bool`` correct of ``logits_fn``."""
    return logits_program(_correct_of, logits_fn, name="suite_correct")


@functools.lru_cache(maxsize=16)
def _batch_logits(logits_fn: LogitsFn, noise_type: str | None) -> Callable:
    """Jitted ``(images, key, level, index) -> logits`` of ``_logits_under`` for this noise type."""
    noise_fn = None if noise_type is None else get_noise(noise_type)
    return logits_program(functools.partial(_logits_under, noise_fn=noise_fn), logits_fn,
                          name="condition_logits", key=noise_type, sources=[noise_fn] if noise_fn else [])


def conditions_logits_stream(logits_fn: LogitsFn, batches: Iterable[Batch],
                             conditions: Sequence[tuple[str | None, float]], seed: int, prefetch: int = 2
                             ) -> tuple[dict[tuple[str | None, float], np.ndarray], np.ndarray]:
    """Logits (N, K) of every real example under each seed-noise condition (noise_type, level)
    (``noise_type`` None or ``level`` 0 = clean), with the robustness grid's noise keys (draw 0),
    from one pass over ``batches``; and the labels (N,). Only the logits are kept (N x K per
    condition), never the images."""
    conditions = list(dict.fromkeys((None, 0.0) if t is None or lv == 0.0 else (t, float(lv))
                                    for t, lv in conditions))
    fns = {c: _batch_logits(logits_fn, c[0]) for c in conditions}  # unknown noise types fail here
    keys = {c: condition_key(seed, c[0] or "clean", c[1], 0) for c in conditions}

    def logits(x, y, i):
        out = {str(j): fns[c](x, keys[c], jnp.float32(c[1]), i) for j, c in enumerate(conditions)}
        return {**out, "labels": y}

    per = stream_per_example(logits, batches, prefetch=prefetch)
    if not per:  # an empty split: no batches
        return {c: np.zeros((0, 0), np.float32) for c in conditions}, np.zeros(0, np.int32)
    return {c: per[str(j)] for j, c in enumerate(conditions)}, per["labels"]


# --------------------------------------------------------------------------- corruption benchmark


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


def resolve_suite(suite: str) -> list[str]:
    """Corruption names of a suite ("imagenet-c": the 15, "imagenet-c-all": 15 + 4 held-out)."""
    if suite not in SUITES:
        raise ValueError(f"unknown corruption suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return list(SUITES[suite])


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


def corruption_errors(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                      corruptions: Sequence[str], severities: Sequence[int], scale: str, key: jax.Array,
                      batch_size: int = 512) -> CorruptionErrors:
    """:func:`corruption_errors_stream` over in-memory arrays: images (N, H, W, C) float32 in
    [0, 1], labels (N,) int, cut into batches of ``batch_size`` (the last padded; padding never
    counts)."""
    _check_severities(severities)
    return corruption_errors_stream(logits_fn, array_batches(np.asarray(images, np.float32), labels, batch_size),
                                    model_name=model_name, corruptions=corruptions, severities=severities,
                                    scale=scale, key=key)


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


def corruption_suite(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                     corruptions: Sequence[str], severities: Sequence[int], scale: str, key: jax.Array,
                     batch_size: int = 512, reference: CorruptionErrors | None = None
                     ) -> tuple[CorruptionErrors, list[dict], dict]:
    """:func:`corruption_errors` then :func:`corruption_summary` against ``reference``
    (the reference model's :class:`CorruptionErrors`, computed with the same key, or None).
    Returns (errors, summary rows, aggregate)."""
    errors = corruption_errors(logits_fn, images, labels, model_name=model_name, corruptions=corruptions,
                               severities=severities, scale=scale, key=key, batch_size=batch_size)
    rows, aggregate = corruption_summary(errors, reference)
    return errors, rows, aggregate


# --------------------------------------------------------------------------- attacks


def _default_steps(registry_name: str) -> int:
    """The attack's own default number of iterations (1 for fgsm)."""
    import inspect

    from robust_vision.attacks import get_attack

    param = inspect.signature(get_attack(registry_name)).parameters.get("steps")
    return 1 if param is None else int(param.default)


def check_attacks(attacks: Sequence[str], norm: str) -> None:
    """Fail fast (before any work) on an unknown attack name or an impossible combination."""
    unknown = [a for a in attacks if a not in ATTACK_NAMES and a not in AUTOATTACK_NAMES]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; valid attacks: {', '.join([*ATTACK_NAMES, *AUTOATTACK_NAMES])}")
    from robust_vision.preflight import check_attack_combination

    check_attack_combination(attacks, norm)


def _attack_plan(name: str, *, eps: Sequence[float], norm: str, steps: int | None,
                 sparse_fractions: Sequence[float], noise_radii: Sequence[float], unroll: bool
                 ) -> tuple[list[float], str, dict[str, Any]]:
    """(budgets, budget norm, static hyper-parameters) of one attack."""
    with_steps = {} if steps is None else {"steps": int(steps)}
    if name == "fgsm":
        return list(eps), "linf", {}
    if name in ("pgd", "apgd"):
        return list(eps), norm, {"norm": norm, **with_steps, **({"unroll": True} if unroll else {})}
    if name in ("apgd-t", "apgd-dlr", "fab-t"):
        return list(eps), norm, {"norm": norm, **with_steps}
    if name == "square":
        return list(eps), norm, {"norm": norm}
    if name == "sparse":
        return list(sparse_fractions), "l0_fraction", with_steps
    return list(noise_radii), "l2", with_steps  # noise


def attack_suite_stream(logits_fn: LogitsFn, batches: Callable[[], Iterable[Batch]], *, model_name: str,
                        attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                        steps: int | None = None, batch_size: int = 256,
                        sparse_fractions: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05),
                        noise_radii: Sequence[float] = (0.0, 0.5, 1.0, 2.0), sanity: bool = True,
                        sanity_examples: int = 256, unroll: bool = False) -> tuple[list[dict], list[dict]]:
    """:func:`attack_suite` on a stream: ``batches()`` returns a fresh pass of fixed-size masked
    ``Batch``es of the examples to attack (images uint8 or float32 in [0, 1]); each attack reads
    one pass (prefetched to the device, so device memory for inputs is bounded by prefetch x one
    batch) and the sanity checks read only the first ``sanity_examples``. ``batch_size`` is the
    sanity checks' batch (the stream's batches are already cut). Same rows as ``attack_suite``."""
    from robust_vision.attacks.evaluate import robust_accuracy_stream

    check_attacks(attacks, norm)
    rows: list[dict] = []
    for name in attacks:
        if name in AUTOATTACK_NAMES:
            continue  # run by the attack part through attacks.autoattack.autoattack_suite
        budgets, budget_norm, hyper = _attack_plan(name, eps=eps, norm=norm, steps=steps,
                                                   sparse_fractions=sparse_fractions, noise_radii=noise_radii,
                                                   unroll=unroll)
        if not budgets:
            continue
        result = robust_accuracy_stream(logits_fn, batches(), jax.random.fold_in(key, _crc(name)),
                                        ATTACK_NAMES[name], budgets, **hyper)
        for r in result:
            # The norm is part of the name when it is not the attack's usual one (pgd_l2).
            label = f"{name}_l2" if name in ("pgd", "apgd", "apgd-t", "apgd-dlr", "fab-t", "square") and norm == "l2" else name
            rows.append({"model": model_name, **r, "attack": label, "norm": budget_norm,
                         "steps": hyper.get("steps", _default_steps(ATTACK_NAMES[name]))})
    sanity_rows = attack_sanity_stream(logits_fn, batches(), model_name=model_name, attacks=attacks, eps=eps,
                                       key=key, norm=norm, steps=steps, batch_size=batch_size,
                                       sanity_examples=sanity_examples) if sanity else []
    return rows, sanity_rows


def attack_suite(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                 attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                 steps: int | None = None, batch_size: int = 256,
                 sparse_fractions: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05),
                 noise_radii: Sequence[float] = (0.0, 0.5, 1.0, 2.0), sanity: bool = True,
                 sanity_examples: int = 256, unroll: bool = False) -> tuple[list[dict], list[dict]]:
    """Robust accuracy of ``logits_fn`` under each attack, for each budget, over the whole set
    (:func:`attack_suite_stream` over the arrays cut into batches of ``batch_size``).

    Args:
      images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int.
      attacks: names in ``ATTACK_NAMES`` (fgsm, pgd, apgd, sparse, noise).
      eps: budgets of fgsm / pgd / apgd in [0, 1] pixel units (Linf, or the L2 radius for
        ``norm="l2"``); sparse uses ``sparse_fractions`` (fraction of pixels), noise
        ``noise_radii`` (L2 radius): their budgets are in other units.
      key: the part key; attack a uses fold_in(key, crc32(a)) (and ``robust_accuracy`` folds
        in the batch index, the same for every budget).
      steps: iterations of pgd / apgd / sparse / noise (None = each attack's default).
      sanity: run ``sanity_checks`` at the largest eps on the first ``sanity_examples``
        examples when a gradient attack (fgsm / pgd / apgd) is requested (its PGD uses
        min(steps, 20) steps, 10 by default).
      unroll: unroll the pgd / apgd iterations (``lax.fori_loop(unroll=True)``); default off.
        Unrolled, the compile time grows with the steps (APGD-100 compiled for minutes on CPU,
        the cause of issue 11's 8-minute first run) while the rolled loop compiles one body;
        benchmarks/compile_time.py measures both.
    Returns: (rows of attack_results.csv: ``attack`` is the name above, ``pgd_l2`` /
      ``apgd_l2`` for the L2 threat model, ``norm`` the budget's unit (linf, l2,
      l0_fraction), ``steps`` the iterations used; rows of attack_sanity.csv: one per check
      with ``passed`` and the warning message of a failed check).
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    return attack_suite_stream(logits_fn, lambda: array_batches(images, labels, batch_size), model_name=model_name,
                               attacks=attacks, eps=eps, key=key, norm=norm, steps=steps, batch_size=batch_size,
                               sparse_fractions=sparse_fractions, noise_radii=noise_radii, sanity=sanity,
                               sanity_examples=sanity_examples, unroll=unroll)


def attack_sanity_stream(logits_fn: LogitsFn, batches: Iterable[Batch], *, model_name: str,
                         attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                         steps: int | None = None, batch_size: int = 256, sanity_examples: int = 256) -> list[dict]:
    """Rows of attack_sanity.csv: ``sanity_checks`` at the largest eps on the first
    ``sanity_examples`` examples of ``batches`` (only those are read) when a gradient attack
    (fgsm / pgd / apgd) is in ``attacks`` (its PGD uses min(steps, 20) steps, 10 by default);
    [] otherwise. ``key`` is the part key (the checks use fold_in(key, crc32("sanity")))."""
    from robust_vision.attacks import AttackSanityWarning, sanity_checks

    sanity_rows: list[dict] = []
    eps_check = max(eps, default=0.0)
    if eps_check > 0 and any(a in GRADIENT_ATTACKS for a in attacks):
        images, labels = take_examples(batches, sanity_examples)
        images, k = to_unit_float(images), len(labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AttackSanityWarning)
            passed = sanity_checks(logits_fn, images, labels, jax.random.fold_in(key, _crc("sanity")),
                                   eps_check, norm=norm, pgd_steps=min(steps or 10, 20), batch_size=min(batch_size, k))
        messages = {}
        for w in caught:
            text = str(w.message)
            for check in passed:
                if f"'{check}'" in text:
                    messages.setdefault(check, text)
        sanity_rows = [{"model": model_name, "check": c, "passed": bool(ok), "eps": float(eps_check), "n": k,
                        "message": messages.get(c, "")} for c, ok in passed.items()]
    return sanity_rows


def attack_sanity(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                  attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                  steps: int | None = None, batch_size: int = 256, sanity_examples: int = 256) -> list[dict]:
    """:func:`attack_sanity_stream` on in-memory arrays (images (N, H, W, C) float32 in [0, 1])."""
    k = min(sanity_examples, len(labels))
    return attack_sanity_stream(logits_fn, array_batches(np.asarray(images, np.float32)[:k], np.asarray(labels)[:k],
                                                         batch_size),
                                model_name=model_name, attacks=attacks, eps=eps, key=key, norm=norm, steps=steps,
                                batch_size=batch_size, sanity_examples=sanity_examples)


# --------------------------------------------------------------------------- certification


def radii_grid(sigmas: Sequence[float], n: int, alpha: float, step: float = 0.05) -> list[float]:
    """L2 radii 0, step, 2 step, ... up to the largest certifiable radius
    max(sigma) * Phi^-1(alpha^(1/n)) (a multiple of ``step``, so 0.25, 0.5, ... are in it)."""
    from scipy import stats

    r_max = max(sigmas) * float(stats.norm.ppf(alpha ** (1.0 / n)))
    count = int(math.floor(max(r_max, 0.0) / step)) + 2
    return [round(k * step, 6) for k in range(count)]


def certification_stream(logits_fn: LogitsFn, batches: Iterable[Batch], *, model_name: str,
                         sigmas: Sequence[float], key: jax.Array, n0: int = 100, n: int = 10_000,
                         alpha: float = 0.001, batch_size: int = 512, radii: Sequence[float] | None = None,
                         prefetch: int = 2) -> tuple[list[dict], list[dict]]:
    """Certified L2 accuracy of the Gaussian-smoothed ``logits_fn`` (CERTIFY of Cohen et al.),
    from one pass over ``batches``.

    Args:
      batches: fixed-size masked ``Batch``es of the examples to certify (each costs n0 + n
        forward passes: pass a stream of the first few hundred), images uint8 or float32 in
        [0, 1]; prefetched to the device ``prefetch`` deep. Batch j is one chunk of images
        certified together (padding dropped).
      sigmas: smoothing noise std (pixel units), one certification each.
      key: the part key; sigma uses fold_in(key, round(1e6 sigma)), chunk j of it fold_in(., j).
      n0, n, alpha: selection draws, estimation draws, failure probability.
      batch_size: noisy images per forward pass (``certify.sample_counts``).
      radii: radius grid of the curve (default :func:`radii_grid`).
    Returns: (rows of certified_accuracy.csv: one per sigma x radius with the certified
      accuracy (pred == label and radius >= r) and the abstain fraction; per-example rows:
      index, label, prediction (-1 = abstain), radius).
    """
    from robust_vision.distributed import gather_batches
    from robust_vision.evaluation.batched import prefetch_to_device
    from robust_vision.evaluation.certify import certified_accuracy_curve, certify

    grid = list(radii) if radii is not None else radii_grid(sigmas, n, alpha)
    sigma_keys = [jax.random.fold_in(key, int(round(float(sigma) * 1_000_000))) for sigma in sigmas]
    labels, preds, rads = [], [[] for _ in sigmas], [[] for _ in sigmas]
    for j, batch in enumerate(prefetch_to_device(batches, prefetch)):
        x = to_unit_float(batch.images)
        got = gather_batches([{"y": batch.labels, "m": batch.mask}])  # every process certifies every row
        keep = got["m"] > 0
        labels.append(got["y"][keep])
        for s, (sigma, sk) in enumerate(zip(sigmas, sigma_keys)):
            p, r = certify(logits_fn, x, jax.random.fold_in(sk, j), float(sigma), n0=n0, n=n, alpha=alpha,
                           batch_size=batch_size)
            preds[s].append(p[keep])
            rads[s].append(r[keep])
    if not labels or not sum(len(y) for y in labels):
        raise ValueError("certification: no examples")
    labels = np.concatenate(labels)
    total = len(labels)
    curve_rows, example_rows = [], []
    for s, sigma in enumerate(sigmas):
        pred, rad = np.concatenate(preds[s]), np.concatenate(rads[s])
        for row in certified_accuracy_curve(pred, rad, labels, grid):
            curve_rows.append({"model": model_name, "sigma": float(sigma), **row, "n0": n0, "n_samples": n,
                               "alpha": alpha})
        example_rows += [{"model": model_name, "sigma": float(sigma), "index": i, "label": int(labels[i]),
                          "prediction": int(pred[i]), "radius": float(rad[i])} for i in range(total)]
    return curve_rows, example_rows


def certification(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, *, model_name: str,
                  sigmas: Sequence[float], key: jax.Array, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
                  batch_size: int = 512, radii: Sequence[float] | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """:func:`certification_stream` over in-memory arrays: images (N, H, W, C) float32 in
    [0, 1] (pass the subset to certify), labels (N,) int, certified in chunks of up to
    ``batch_size`` images (the last chunk padded, the padding dropped); ``batch_size`` is also
    the number of noisy images per forward pass."""
    if len(labels) == 0:
        raise ValueError("certification: no examples")
    return certification_stream(logits_fn, array_batches(np.asarray(images, np.float32), labels, batch_size),
                                model_name=model_name, sigmas=sigmas, key=key, n0=n0, n=n, alpha=alpha,
                                batch_size=batch_size, radii=radii)


# --------------------------------------------------------------------------- calibration


def _softmax_stats(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Probabilities (float64), confidence, correctness and NLL of softmax(logits / T)."""
    log_p = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    probs = np.exp(log_p)
    return {"probs": probs, "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == labels,
            "nll": -log_p[np.arange(labels.size), labels]}


def calibration_tables_stream(logits_fn: LogitsFn, cal_batches: Iterable[Batch] | None, batches: Iterable[Batch],
                              *, model_name: str, noise_types: Sequence[str], levels: Sequence[float], seed: int,
                              key: jax.Array, alphas: Sequence[float] = (0.1,),
                              methods: Sequence[str] = ("lac", "aps"), n_bins: int = 15,
                              coverages: Sequence[float] = SELECTIVE_COVERAGES) -> dict[str, Any]:
    """Calibration and abstention under every noise condition (noise type x level).

    ``batches`` / ``cal_batches``: fixed-size masked ``Batch``es of the evaluated split and of
    the calibration split (the validation split; None or empty skips the parts that need it),
    each read once (prefetched to the device): only the logits (N x K per condition) are kept.
    The test images of a condition are those of the robustness grid (same keys, draw 0).
    With a calibration split:

    * temperature T fitted on the clean calibration logits (NLL, ``fit_temperature``);
      ECE and NLL before / after per condition;
    * split-conformal LAC and APS (randomised) sets, threshold from the clean calibration
      split at each alpha, on the *uncalibrated* softmax (T is fitted on the same split, and
      a threshold must not depend on data it is then scored with), coverage / mean set size
      per condition: coverage >= 1 - alpha holds on clean, exchangeable data; under noise
      the table measures how far it falls.

    Always: reliability bins (``reliability_bins``, the ECE binning) and selective accuracy
    vs coverage when abstaining on the lowest predicted-class log-SNR.

    Returns a dict: ``reliability``, ``calibration``, ``conformal``, ``selective`` (row lists,
    see the ``*_COLUMNS``), ``temperature`` (float or None), ``n_calibration`` (int).
    """
    from robust_vision.evaluation.calibration import (
        conformal_threshold,
        fit_temperature,
        predicted_class_log_snr,
        prediction_sets,
        reliability_bins,
        selective_accuracy_curve,
        set_metrics,
    )

    for name in noise_types:
        get_noise(name)
    conditions = [(None, 0.0)] + [(t, float(lv)) for t in noise_types for lv in levels if float(lv) != 0.0]
    temperature, thresholds = None, {}
    n_cal = 0
    cal = conditions_logits_stream(logits_fn, cal_batches, [(None, 0.0)], seed) if cal_batches is not None else None
    if cal is not None and len(cal[1]) == 0:
        cal = None
    if cal is not None:
        cal_logits, cal_labels = cal[0][(None, 0.0)], cal[1].astype(np.int64)
        n_cal = len(cal_labels)
        temperature = fit_temperature(cal_logits, cal_labels)
        cal_probs = _softmax_stats(cal_logits, cal_labels)["probs"]
        for method in methods:
            for alpha in alphas:
                # APS is randomised: one key for the calibration scores, independent ones for test.
                k = jax.random.fold_in(key, _crc(f"{method}|calibration")) if method == "aps" else None
                thresholds[(method, alpha)] = conformal_threshold(cal_probs, cal_labels, alpha, method, k)

    per_condition, labels = conditions_logits_stream(logits_fn, batches, conditions, seed)
    if len(labels) == 0:
        raise ValueError("calibration: no examples (empty split)")
    labels = labels.astype(np.int64)

    out: dict[str, Any] = {"reliability": [], "calibration": [], "conformal": [], "selective": [],
                           "temperature": temperature, "n_calibration": n_cal}
    for noise_type in noise_types:
        for level in levels:
            level = float(level)
            logits = per_condition[(None, 0.0) if level == 0.0 else (noise_type, level)]
            st = _softmax_stats(logits, labels)
            base = {"model": model_name, "noise_type": noise_type, "level": level}
            bins = reliability_bins(st["confidence"], st["correct"], n_bins)
            for b in range(n_bins):
                out["reliability"].append({**base, "bin": b, "bin_lower": float(bins["edges"][b]),
                                           "bin_upper": float(bins["edges"][b + 1]), "count": int(bins["counts"][b]),
                                           "mean_confidence": float(bins["mean_confidence"][b]),
                                           "accuracy": float(bins["accuracy"][b]), "ece": bins["ece"]})
            cal_row = {**base, "accuracy": float(st["correct"].mean()), "temperature": temperature,
                       "ece": bins["ece"], "ece_temperature": None, "nll": float(st["nll"].mean()),
                       "nll_temperature": None, "n": int(labels.size)}
            if temperature is not None:
                st_t = _softmax_stats(logits, labels, temperature)
                cal_row["ece_temperature"] = reliability_bins(st_t["confidence"], st_t["correct"], n_bins)["ece"]
                cal_row["nll_temperature"] = float(st_t["nll"].mean())
            out["calibration"].append(cal_row)
            for (method, alpha), thr in thresholds.items():
                k = None
                if method == "aps":
                    k = jax.random.fold_in(jax.random.fold_in(key, _crc(f"{method}|{noise_type}")),
                                           int(round(level * 1_000_000)))
                sets = prediction_sets(st["probs"], thr, method, k)
                m = set_metrics(sets, labels)
                out["conformal"].append({**base, "method": method, "alpha": float(alpha), "coverage": m["coverage"],
                                         "mean_set_size": m["mean_size"], "empty_fraction": m["empty_fraction"],
                                         "threshold": thr, "n": m["n"], "n_calibration": n_cal})
            score = np.asarray(predicted_class_log_snr(jnp.asarray(logits)))
            for r in selective_accuracy_curve(score, st["correct"], coverages):
                out["selective"].append({**base, **r})
    return out


def calibration_tables(logits_fn: LogitsFn, cal_images: np.ndarray | None, cal_labels: np.ndarray | None,
                       images: np.ndarray, labels: np.ndarray, *, model_name: str, noise_types: Sequence[str],
                       levels: Sequence[float], seed: int, key: jax.Array, alphas: Sequence[float] = (0.1,),
                       methods: Sequence[str] = ("lac", "aps"), n_bins: int = 15,
                       coverages: Sequence[float] = SELECTIVE_COVERAGES, batch_size: int = 512) -> dict[str, Any]:
    """:func:`calibration_tables_stream` over in-memory arrays: the evaluated split ``images``
    (N, H, W, C) float32 in [0, 1] / ``labels`` (N,) and the calibration split ``cal_images`` /
    ``cal_labels`` (None or empty: temperature and conformal sets skipped), in batches of
    ``batch_size``."""
    have_cal = cal_images is not None and cal_labels is not None and len(cal_labels) > 0
    cal = array_batches(np.asarray(cal_images, np.float32), cal_labels, batch_size) if have_cal else None
    return calibration_tables_stream(logits_fn, cal, array_batches(np.asarray(images, np.float32), labels, batch_size),
                                     model_name=model_name, noise_types=noise_types, levels=levels, seed=seed,
                                     key=key, alphas=alphas, methods=methods, n_bins=n_bins, coverages=coverages)


# --------------------------------------------------------------------------- printed summaries


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def format_corruption_summary(aggregates: list[dict], summary_rows: list[dict], worst: int = 3) -> str:
    """mCE / relative mCE per model and its worst corruptions (by mean error)."""
    lines = ["CORRUPTION BENCHMARK (ImageNet-C style)", "═" * 68]
    for agg in aggregates:
        ref = agg["reference"] or "none"
        evaluated = sum(1 for r in summary_rows if r["model"] == agg["model"] and not r["held_out"])
        lines.append(f"  {agg['model']}: clean error {_fmt(agg['clean_error'])}, mean corruption error "
                     f"{_fmt(agg['mean_error'])} ({evaluated} corruption{'' if evaluated == 1 else 's'}, "
                     f"severities {agg['severities']}, "
                     f"{agg['scale']} table)"
                     + (f"; {_fmt(agg['mean_error_all'])} with the held-out ones"
                        if any(r["held_out"] for r in summary_rows if r["model"] == agg["model"]) else ""))
        if agg["mce"] is not None:
            lines.append(f"    mCE {_fmt(agg['mce'] * 100, '.1f')}%  relative mCE "
                         f"{_fmt(None if agg['relative_mce'] is None else agg['relative_mce'] * 100, '.1f')}%"
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


def _fmt_eps(eps: float) -> str:
    """8/255 for budgets on the 1/255 grid (how Linf budgets are usually quoted), else 0.05."""
    k = eps * 255
    return f"{round(k)}/255" if 0 < k <= 64 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def format_attack_summary(rows: list[dict], sanity_rows: list[dict]) -> str:
    """Robust accuracy vs budget per model and attack, and the sanity-check verdicts."""
    lines = ["ADVERSARIAL ROBUSTNESS (robust accuracy vs budget)", "═" * 68]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines.append(f"  {model}:")
        for attack in dict.fromkeys(r["attack"] for r in rows if r["model"] == model):
            sel = [r for r in rows if r["model"] == model and r["attack"] == attack]
            pairs = "  ".join(f"{_fmt_eps(r['eps'])}:{r['accuracy']:.3f}" for r in sel)
            lines.append(f"    {attack:<6} ({sel[0]['norm']}) eps:acc  {pairs}")
        checks = [r for r in sanity_rows if r["model"] == model]
        if checks:
            failed = [r["check"] for r in checks if not r["passed"]]
            verdict = "all passed" if not failed else "FAILED: " + ", ".join(failed)
            lines.append(f"    sanity checks at eps={checks[0]['eps']:.4g} on {checks[0]['n']} examples: {verdict}")
            lines += [f"      {r['message']}" for r in checks if not r["passed"]]
    return "\n".join(lines)


def format_certification_summary(rows: list[dict], radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> str:
    """Certified accuracy at a few radii per model and sigma, with the abstain fraction."""
    lines = ["CERTIFIED ROBUSTNESS (randomized smoothing, L2)", "═" * 68]
    for model in dict.fromkeys(r["model"] for r in rows):
        for sigma in dict.fromkeys(r["sigma"] for r in rows if r["model"] == model):
            sel = {round(r["radius"], 6): r for r in rows if r["model"] == model and r["sigma"] == sigma}
            any_row = next(iter(sel.values()))
            pairs = "  ".join(f"r={r:g}:{sel[round(r, 6)]['certified_accuracy']:.3f}" for r in radii
                              if round(r, 6) in sel)
            lines.append(f"  {model} sigma={sigma:g} (n={any_row['n_samples']}, alpha={any_row['alpha']:g}, "
                         f"{any_row['n']} examples, abstain {any_row['abstain_fraction']:.1%}): {pairs}")
    return "\n".join(lines)


def format_calibration_summary(results: dict[str, dict], alphas: Sequence[float]) -> str:
    """Per model: T, clean ECE before / after, conformal coverage on clean data and at the
    strongest level of each noise type."""
    lines = ["CALIBRATION AND CONFORMAL PREDICTION", "═" * 68]
    for model, res in results.items():
        clean = next((r for r in res["calibration"] if r["level"] == 0.0), None)
        if res["temperature"] is None:
            lines.append(f"  {model}: no calibration split (temperature / conformal skipped); clean ECE "
                         f"{_fmt(clean['ece'] if clean else None)}")
        else:
            lines.append(f"  {model}: temperature T = {res['temperature']:.3f} (fitted on {res['n_calibration']} "
                         f"validation examples); clean ECE {_fmt(clean['ece'])} -> {_fmt(clean['ece_temperature'])}")
        for alpha in alphas:
            for method in dict.fromkeys(r["method"] for r in res["conformal"]):
                sel = [r for r in res["conformal"] if r["method"] == method and r["alpha"] == alpha]
                if not sel:
                    continue
                c = next(r for r in sel if r["level"] == 0.0)
                worst = min(sel, key=lambda r: r["coverage"])
                lines.append(f"    {method.upper()} alpha={alpha:g}: clean coverage {c['coverage']:.3f} "
                             f"(target {1 - alpha:.2f}), mean set size {c['mean_set_size']:.2f}; lowest "
                             f"{worst['coverage']:.3f} at {worst['noise_type']} {worst['level']:g}")
    return "\n".join(lines)
