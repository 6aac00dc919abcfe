"""The calibration part: reliability bins, temperature scaling, split-conformal prediction sets
(LAC, APS) and selective accuracy when abstaining on a low log-SNR, under every noise condition
of the robustness grid (the same images, condition by condition). Tables: reliability.csv,
calibration_summary.csv, conformal_results.csv, selective_accuracy.csv
(``tables.SUITE_TABLES["calibration"]``). The definitions are in ``evaluation/calibration.py``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from robust_vision.corruptions import get_noise
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.evaluation import calibration as cal_math
from robust_vision.batched import stream_per_example
from robust_vision.evaluation.robustness import condition_key
from robust_vision.evaluation.suite import LogitsFn, _crc, fmt, part_key
from robust_vision.program_cache import logits_program

SELECTIVE_COVERAGES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 21))


def _logits_under(logits_fn: LogitsFn, images: jax.Array, key: jax.Array, level: jax.Array, index: jax.Array,
                  *, noise_fn) -> jax.Array:
    """Logits (B, K) float32 of one batch under one seed-noise condition (``noise_fn`` None =
    clean); batch ``index`` is corrupted with fold_in(key, index), exactly as the robustness grid
    does, so the images match robustness_results.csv condition by condition."""
    x = to_unit_float(images)
    noisy = x if noise_fn is None else noise_fn(jax.random.fold_in(key, index), x, level)
    return logits_fn(noisy).astype(jnp.float32)


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


def _softmax_stats(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Probabilities (float64), confidence, correctness and NLL of softmax(logits / T)."""
    log_p = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    probs = np.exp(log_p)
    return {"probs": probs, "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == labels,
            "nll": -log_p[np.arange(labels.size), labels]}


@dataclass(frozen=True)
class CalibrationSettings:
    """What the calibration tables are computed under: the grid's conditions (``noise_types`` x
    ``levels``, keyed by ``seed`` as the grid keys them), the part ``key`` (APS randomisation),
    the conformal miscoverage levels ``alphas`` and ``methods``, the reliability ``n_bins`` and
    the selective-accuracy target ``coverages``."""

    noise_types: Sequence[str]
    levels: Sequence[float]
    seed: int
    key: jax.Array
    alphas: Sequence[float] = (0.1,)
    methods: Sequence[str] = ("lac", "aps")
    n_bins: int = 15
    coverages: Sequence[float] = SELECTIVE_COVERAGES


@dataclass
class _Fit:
    """What the calibration split gives: the temperature (None without the split), the
    conformal thresholds {(method, alpha): threshold} and the number of calibration examples."""

    temperature: float | None = None
    thresholds: dict = field(default_factory=dict)
    n: int = 0


def _fit_on_calibration(logits_fn: LogitsFn, cal_batches: Iterable[Batch] | None, s: CalibrationSettings) -> _Fit:
    """Temperature (NLL on the clean calibration logits) and the conformal thresholds at each
    alpha, on the *uncalibrated* softmax (a threshold must not depend on data it is then scored
    with). No calibration split, or an empty one: nothing fitted."""
    cal = conditions_logits_stream(logits_fn, cal_batches, [(None, 0.0)], s.seed) if cal_batches is not None else None
    if cal is None or len(cal[1]) == 0:
        return _Fit()
    cal_logits, cal_labels = cal[0][(None, 0.0)], cal[1].astype(np.int64)
    fit = _Fit(cal_math.fit_temperature(cal_logits, cal_labels), {}, len(cal_labels))
    cal_probs = _softmax_stats(cal_logits, cal_labels)["probs"]
    for method in s.methods:
        for alpha in s.alphas:
            # APS is randomised: one key for the calibration scores, independent ones for test.
            k = jax.random.fold_in(s.key, _crc(f"{method}|calibration")) if method == "aps" else None
            fit.thresholds[(method, alpha)] = cal_math.conformal_threshold(cal_probs, cal_labels, alpha, method, k)
    return fit


def _reliability_rows(st: dict, base: dict, n_bins: int) -> tuple[list[dict], float]:
    """Rows of reliability.csv of one condition, and its ECE."""
    bins = cal_math.reliability_bins(st["confidence"], st["correct"], n_bins)
    return [{**base, "bin": b, "bin_lower": float(bins["edges"][b]), "bin_upper": float(bins["edges"][b + 1]),
             "count": int(bins["counts"][b]), "mean_confidence": float(bins["mean_confidence"][b]),
             "accuracy": float(bins["accuracy"][b]), "ece": bins["ece"]} for b in range(n_bins)], bins["ece"]


def _calibration_row(logits: np.ndarray, labels: np.ndarray, st: dict, base: dict, ece: float, fit: _Fit,
                     n_bins: int) -> dict:
    """The row of calibration_summary.csv of one condition: ECE and NLL before / after T."""
    row = {**base, "accuracy": float(st["correct"].mean()), "temperature": fit.temperature, "ece": ece,
           "ece_temperature": None, "nll": float(st["nll"].mean()), "nll_temperature": None, "n": int(labels.size)}
    if fit.temperature is not None:
        st_t = _softmax_stats(logits, labels, fit.temperature)
        row["ece_temperature"] = cal_math.reliability_bins(st_t["confidence"], st_t["correct"], n_bins)["ece"]
        row["nll_temperature"] = float(st_t["nll"].mean())
    return row


def _conformal_rows(st: dict, labels: np.ndarray, base: dict, fit: _Fit, key: jax.Array) -> list[dict]:
    """Rows of conformal_results.csv of one condition: coverage and set size per (method, alpha)."""
    rows = []
    for (method, alpha), thr in fit.thresholds.items():
        k = None
        if method == "aps":
            k = jax.random.fold_in(jax.random.fold_in(key, _crc(f"{method}|{base['noise_type']}")),
                                   int(round(base["level"] * 1_000_000)))
        m = cal_math.set_metrics(cal_math.prediction_sets(st["probs"], thr, method, k), labels)
        rows.append({**base, "method": method, "alpha": float(alpha), "coverage": m["coverage"],
                     "mean_set_size": m["mean_size"], "empty_fraction": m["empty_fraction"], "threshold": thr,
                     "n": m["n"], "n_calibration": fit.n})
    return rows


def calibration_tables_stream(logits_fn: LogitsFn, cal_batches: Iterable[Batch] | None, batches: Iterable[Batch],
                              *, model_name: str, settings: CalibrationSettings) -> dict[str, Any]:
    """Calibration and abstention under every noise condition (noise type x level).

    ``batches`` / ``cal_batches``: fixed-size masked ``Batch``es of the evaluated split and of
    the calibration split (the validation split; None or empty skips the parts that need it),
    each read once (prefetched to the device): only the logits (N x K per condition) are kept.
    The test images of a condition are those of the robustness grid (same keys, draw 0).
    With a calibration split: temperature T fitted on the clean calibration logits, ECE and
    NLL before / after per condition; split-conformal LAC and APS (randomised) sets, coverage /
    mean set size per condition: coverage >= 1 - alpha holds on clean, exchangeable data; under
    noise the table measures how far it falls. Always: reliability bins (the ECE binning) and
    selective accuracy vs coverage when abstaining on the lowest predicted-class log-SNR.

    Returns a dict: ``reliability``, ``calibration``, ``conformal``, ``selective`` (row lists,
    see ``tables``), ``temperature`` (float or None), ``n_calibration`` (int).
    """
    s = settings
    for name in s.noise_types:
        get_noise(name)
    conditions = [(None, 0.0)] + [(t, float(lv)) for t in s.noise_types for lv in s.levels if float(lv) != 0.0]
    fit = _fit_on_calibration(logits_fn, cal_batches, s)
    per_condition, labels = conditions_logits_stream(logits_fn, batches, conditions, s.seed)
    if len(labels) == 0:
        raise ValueError("calibration: no examples (empty split)")
    labels = labels.astype(np.int64)
    out: dict[str, Any] = {"reliability": [], "calibration": [], "conformal": [], "selective": [],
                           "temperature": fit.temperature, "n_calibration": fit.n}
    for noise_type in s.noise_types:
        for level in map(float, s.levels):
            logits = per_condition[(None, 0.0) if level == 0.0 else (noise_type, level)]
            st = _softmax_stats(logits, labels)
            base = {"model": model_name, "noise_type": noise_type, "level": level}
            reliability, ece = _reliability_rows(st, base, s.n_bins)
            out["reliability"] += reliability
            out["calibration"].append(_calibration_row(logits, labels, st, base, ece, fit, s.n_bins))
            out["conformal"] += _conformal_rows(st, labels, base, fit, s.key)
            score = np.asarray(cal_math.predicted_class_log_snr(jnp.asarray(logits)))
            out["selective"] += [{**base, **r} for r in cal_math.selective_accuracy_curve(score, st["correct"],
                                                                                           s.coverages)]
    return out


def format_calibration_summary(results: dict[str, dict], alphas: Sequence[float]) -> str:
    """Per model: T, clean ECE before / after, conformal coverage on clean data and at the
    strongest level of each noise type."""
    lines = ["CALIBRATION AND CONFORMAL PREDICTION", "═" * 68]
    for model, res in results.items():
        clean = next((r for r in res["calibration"] if r["level"] == 0.0), None)
        if res["temperature"] is None:
            lines.append(f"  {model}: no calibration split (temperature / conformal skipped); clean ECE "
                         f"{fmt(clean['ece'] if clean else None)}")
        else:
            lines.append(f"  {model}: temperature T = {res['temperature']:.3f} (fitted on {res['n_calibration']} "
                         f"validation examples); clean ECE {fmt(clean['ece'])} -> {fmt(clean['ece_temperature'])}")
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



def run(ctx) -> tuple[dict, dict]:
    """(merged tables of every model, per-model results for the printed summary)."""
    ecfg = ctx.cfg.evaluation
    # The validation split is opened here only: a run without calibration never reads it.
    cal = ctx.val_source() if ecfg.split != "val" and ctx.val_source is not None else None
    note = None
    if ecfg.split == "val":
        note = "evaluation split is val: no separate calibration split, temperature and conformal sets skipped"
    elif cal is None or len(cal) == 0:
        cal, note = None, "empty validation split: temperature and conformal sets skipped"
    settings = CalibrationSettings(noise_types=ctx.noise_types, levels=ctx.levels, seed=ecfg.seed,
                                   key=part_key(ecfg.seed, "calibration"), alphas=ecfg.conformal_alpha,
                                   n_bins=ecfg.ece_bins)
    per_model = {}
    for m in ctx.per_model("calibration"):
        per_model[m.name] = calibration_tables_stream(
            ctx.logits_fns[m.name], None if cal is None else ctx.batches(source=cal), ctx.batches(),
            model_name=m.name, settings=settings)
    merged = {k: [r for res in per_model.values() for r in res[k]]
              for k in ("reliability", "calibration", "conformal", "selective")}
    merged["temperature"] = {name: res["temperature"] for name, res in per_model.items()}
    merged["calibration_split"] = None if cal is None else "val"
    merged["n_calibration"] = 0 if cal is None else len(cal)
    merged["note"] = note
    return merged, per_model


def record(out, result: tuple[dict, dict]) -> None:
    out.suite["calibration"], out.calibration_per_model = result


def summary(ctx, out) -> list[str]:
    lines = ["", format_calibration_summary(out.calibration_per_model, ctx.cfg.evaluation.conformal_alpha)]
    note = out.suite["calibration"]["note"]
    return lines + ([f"  note: {note}"] if note else [])
