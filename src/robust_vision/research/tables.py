"""Aggregation of the study's per-condition rows into its tables (CSV + markdown).

Definitions (one place; docs/RESEARCH.md repeats them):

* per-condition SNR: the evaluator's geometric mean over test examples (and noise draws) of
  the decision's SNR (DESIGN.md): p_y / max_{j!=y} p_j for softmax models, s_y / (max_{j!=y}
  s_j + 1e-6) for crossbars;
* ``snr_noisy`` ("mean SNR", the ranking figure): geometric mean of the per-condition SNRs over
  the noisy grid (every noise type x every level > 0), i.e. exp(mean log SNR);
* ``snr_clean``: the per-condition SNR at level 0;
* ``accuracy_noisy``: arithmetic mean accuracy over the noisy grid; ``accuracy_gauss50``:
  accuracy at Gaussian std 0.5;
* resampling units: a test example of one seed (classification) or a pattern image of one
  seed (pattern); every method of a seed is evaluated on the same units (same examples or
  images, same noise draws), so the units of two methods are paired. Each unit carries its
  fraction correct and its mean log-SNR over its draws, per condition (``RunRecord.units``);
* across seeds: every figure is the statistic over the units pooled over seeds (accuracy: the
  mean, equal to the mean of the per-seed accuracies; SNR: exp of the mean log-SNR, i.e. the
  geometric mean of the per-seed SNRs), with a percentile bootstrap 90% interval over those
  units (``*_lo`` / ``*_hi``, :mod:`robust_vision.research.bootstrap`). Units without a finite
  log-SNR (a diverged pattern model) are left out of the SNR; a run without scores (diverged
  training) makes its method's figures nan;
* a method is ``diverged`` when any seed diverged (non-finite weights, |W| above the bound, or
  a non-finite backprop loss); diverged methods rank last, whatever their SNR;
* ratios between methods (relative to best, ratio to reference, factor importance): SNR of one
  / SNR of the other with a *paired* bootstrap interval (the same units resampled for both,
  exp(mean of the per-unit log-SNR differences)); ``inf`` when the denominator has no defined
  SNR (diverged).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from robust_vision.io import write_csv
from robust_vision.research.methods import EXPERIMENTS, MASTER_ORDER, METHODS, Experiment, method_by_key
from robust_vision.research.protocols import RunRecord

__all__ = ["MASTER_COLUMNS", "as_float", "fmt_num", "fmt_ratio_ci", "markdown_table", "read_rows", "snr_ratio",
           "method_summaries", "master_rows", "experiment_rows", "factor_rows", "accuracy50_rows", "weight_rows",
           "linearity_rows", "LINEARITY_METHODS", "pearson_with",
           "curve_rows", "fmt_ratio", "geometric_mean", "write_table"]

METRICS = ("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy", "accuracy_gauss50", "snr_gauss50")


def _ci(*names: str) -> list[str]:
    """Each name with its interval columns: [name, name_lo, name_hi, ...]."""
    return [c for n in names for c in (n, f"{n}_lo", f"{n}_hi")]


MASTER_COLUMNS = ["protocol", "rank", "method_key", "method", "learning_rule", "constraints", "loss", "architecture",
                  *_ci("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy", "relative_to_best_percent"),
                  "n_seeds", "n_units", "n_diverged", "status"]
EXPERIMENT_COLUMNS = ["protocol", "experiment", "method_key", "method", "role", "varied",
                      *_ci("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy", "ratio_to_reference",
                           "change_percent", "clean_ratio_to_reference"), "status"]
FACTOR_COLUMNS = ["protocol", "rank", "factor", "experiment", "methods_compared", "best_method", "worst_method",
                  *_ci("best_snr", "worst_snr", "ratio_best_to_worst", "clean_ratio_best_to_worst"), "effect",
                  "note"]
ACC50_COLUMNS = ["protocol", "method_key", "method", *_ci("accuracy_clean", "accuracy_gauss50", "degradation_percent",
                                                          "snr_gauss50"), "status"]
WEIGHT_COLUMNS = ["protocol", "method_key", "method", *_ci("mean", "std", "max_abs"), "min", "max", "n_seeds",
                  "n_diverged", "diverged", "note"]
LINEARITY_COLUMNS = ["protocol", *_ci("snr_clean_lambda_0", "snr_clean_lambda_1", "snr_clean_lambda_10",
                                      "ratio_lambda_1_to_0", "ratio_lambda_10_to_1", "pearson_r", "pearson_r_log"),
                     "n_seeds", "n_units"]
LINEARITY_METHODS = (("cnn_ce", 0.0), ("cnn_margin_1", 1.0), ("cnn_margin_10", 10.0))
CURVE_COLUMNS = ["protocol", "method_key", "method", "noise_type", "level", *_ci("accuracy", "snr"), "n_seeds",
                 "n_units"]
PROTOCOL_ORDER = ("classification", "pattern")
NAN3 = (float("nan"),) * 3


# --------------------------------------------------------------------------- numbers


def as_float(x: Any) -> float:
    """float, with None -> nan."""
    return float("nan") if x is None else float(x)


def geometric_mean(values: Iterable[float]) -> float:
    """exp(mean log v) in float64: nan if any value is nan (or the set is empty), inf if any is inf."""
    v = np.asarray([as_float(x) for x in values], np.float64)
    if v.size == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(np.exp(np.mean(np.log(v))))


def _nanmean(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Mean over ``axis`` of the non-nan entries (nan where there are none), without warnings."""
    x = np.asarray(x, np.float64)
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(ok.any(axis=axis), np.where(ok, x, 0.0).sum(axis=axis) / np.maximum(ok.sum(axis=axis), 1),
                        np.nan)


def _exp_nanmean(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """exp of the mean log value: the geometric mean of SNRs given their logs."""
    with np.errstate(over="ignore"):
        return np.exp(_nanmean(x, axis))


def _ratio(a: float, b: float) -> float:
    a, b = as_float(a), as_float(b)
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if b == 0:
        return float("inf") if a > 0 else float("nan")
    return a / b


def fmt_num(x: Any, digits: int = 4) -> str:
    """Compact number: 4 significant digits, scientific beyond 1e5 or below 1e-3; '-' for None."""
    if x is None or x == "":
        return "-"
    x = as_float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.{digits}g}"


def fmt_ratio(x: Any) -> str:
    x = as_float(x)
    if math.isnan(x):
        return "undefined"
    return "inf" if math.isinf(x) else f"{x:.3g}x"


# --------------------------------------------------------------------------- aggregation


def _at(rows: list[dict], noise_type: str, level: float) -> Optional[int]:
    return next((i for i, r in enumerate(rows) if r["noise_type"] == noise_type and abs(r["level"] - level) < 1e-9),
                None)


def _unit_metrics(records: Sequence[RunRecord]) -> Optional[dict[str, np.ndarray]]:
    """Per-unit values of every METRIC, pooled over the records (one method, seeds sorted):
    (n_units,) arrays; accuracies are fractions, SNRs log-SNRs. None when a record has no units."""
    if not records or any(r.units is None for r in records):
        return None
    rows = records[0].rows
    noisy = [i for i, r in enumerate(rows) if r["level"] > 0.0]
    clean = next((i for i, r in enumerate(rows) if r["level"] == 0.0), None)
    g50 = _at(rows, "gaussian", 0.5)
    correct = np.concatenate([r.units["correct"] for r in records])  # (U, len(rows))
    log_snr = np.concatenate([r.units["log_snr"] for r in records])
    nan = np.full(len(correct), np.nan)
    pick = lambda a, i: a[:, i] if i is not None else nan  # noqa: E731
    return {"snr_noisy": _nanmean(log_snr[:, noisy]) if noisy else nan, "snr_clean": pick(log_snr, clean),
            "accuracy_clean": pick(correct, clean), "accuracy_noisy": correct[:, noisy].mean(axis=1) if noisy else nan,
            "accuracy_gauss50": pick(correct, g50), "snr_gauss50": pick(log_snr, g50)}


def _statistic(metric: str):
    return _exp_nanmean if metric.startswith("snr") else np.mean


def method_summaries(records: Sequence[RunRecord]) -> list[dict]:
    """One dict per (protocol, method): every METRIC with its bootstrap 90% interval over the
    units pooled over seeds (module docstring), n_seeds, n_units, n_diverged, status. The
    private ``_units`` / ``_seeds`` entries keep the units for the paired ratios."""
    from robust_vision.research.bootstrap import bootstrap_interval

    keys = list(dict.fromkeys((r.protocol, r.method.key) for r in records))
    out = []
    for protocol, key in keys:
        recs = sorted((r for r in records if r.protocol == protocol and r.method.key == key), key=lambda r: r.seed)
        m = method_by_key(key)
        units = _unit_metrics(recs)
        s: dict[str, Any] = {"protocol": protocol, "method_key": key, "method": m.name,
                             "learning_rule": m.learning_rule, "constraints": m.constraints, "loss": m.loss,
                             "architecture": m.architecture, "n_seeds": len(recs),
                             "n_units": 0 if units is None else len(units["snr_clean"]),
                             "n_diverged": sum(bool(r.diverged) for r in recs), "_units": units,
                             "_seeds": tuple(r.seed for r in recs)}
        for metric in METRICS:
            s[metric], s[f"{metric}_lo"], s[f"{metric}_hi"] = (
                NAN3 if units is None else bootstrap_interval(units[metric], _statistic(metric)))
        s["status"] = "diverged" if s["n_diverged"] else "ok"
        out.append(s)
    return out


def snr_ratio(a: dict, b: dict, metric: str = "snr_noisy") -> tuple[float, float, float]:
    """SNR of summary ``a`` / SNR of summary ``b`` and its paired bootstrap 90% interval
    (exp of the mean per-unit log-SNR difference; the same resampled units for both). Without
    paired units (other seeds, no units) the ratio of the two figures with nan bounds."""
    from robust_vision.research.bootstrap import bootstrap_interval

    ua, ub = (a.get("_units") or {}).get(metric), (b.get("_units") or {}).get(metric)
    if ua is None or ub is None or a.get("_seeds") != b.get("_seeds") or ua.shape != ub.shape:
        return _ratio(a[metric], b[metric]), float("nan"), float("nan")
    if np.isnan(ub).all() and not np.isnan(ua).all():
        return float("inf"), float("inf"), float("inf")  # the denominator has no defined SNR (diverged)
    return bootstrap_interval(ua - ub, _exp_nanmean)


def _change(ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    """Ratio interval -> percentage change interval ((ratio - 1) * 100)."""
    return tuple((r - 1) * 100 if math.isfinite(r) else float("nan") for r in ratio)  # type: ignore[return-value]


def _protocols(rows: Sequence[dict]) -> list[str]:
    present = {r["protocol"] for r in rows}
    return [p for p in PROTOCOL_ORDER if p in present]


def _rank_key(s: dict) -> tuple:
    snr = as_float(s["snr_noisy"])
    return (s["status"] == "diverged", math.isnan(snr), -snr if not math.isnan(snr) else 0.0)


def _set(row: dict, name: str, triple: Sequence[float]) -> None:
    row[name], row[f"{name}_lo"], row[f"{name}_hi"] = (float(v) for v in triple)


def master_rows(summaries: Sequence[dict]) -> list[dict]:
    """The seed's master table per protocol: master methods ranked by noisy-grid SNR, diverged
    last; relative to best = paired SNR ratio to rank 1, in percent."""
    out = []
    for protocol in _protocols(summaries):
        rows = [dict(s) for s in summaries if s["protocol"] == protocol
                and (s["method_key"] in MASTER_ORDER
                     or (protocol == "pattern" and method_by_key(s["method_key"]).in_pattern_master))]
        rows.sort(key=_rank_key)
        for i, r in enumerate(rows, 1):
            r["rank"] = i
            rel = snr_ratio(r, rows[0])
            _set(r, "relative_to_best_percent", [v * 100 if math.isfinite(v) else float("nan") for v in rel])
            out.append({c: r.get(c) for c in MASTER_COLUMNS})
    return out


_VARIED = {"learning_rule": "learning_rule", "constraints": "constraints", "loss": "loss",
           "architecture": "architecture"}


def experiment_rows(summaries: Sequence[dict], experiment: Experiment) -> list[dict]:
    """Rows of one controlled experiment per protocol, each compared with the reference method
    (paired SNR ratios with their intervals)."""
    out = []
    for protocol in _protocols(summaries):
        by_key = {s["method_key"]: s for s in summaries if s["protocol"] == protocol}
        ref = by_key.get(experiment.reference)
        present = [k for k in experiment.methods if k in by_key]
        if ref is None or len(present) < 2:
            continue
        for key in present:
            s = by_key[key]
            row = {"protocol": protocol, "experiment": experiment.key, "method_key": key, "method": s["method"],
                   "role": "reference" if key == experiment.reference else (
                       "compared" if key in experiment.compared else "extra"),
                   "varied": s[_VARIED[experiment.key]], "status": s["status"],
                   **{c: s[c] for c in _ci("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy")}}
            ratio = snr_ratio(s, ref)
            _set(row, "ratio_to_reference", ratio)
            _set(row, "change_percent", _change(ratio))
            _set(row, "clean_ratio_to_reference", snr_ratio(s, ref, "snr_clean"))
            out.append(row)
    return out


def factor_rows(summaries: Sequence[dict]) -> list[dict]:
    """Factor importance per protocol: best-to-worst SNR ratio within each experiment (paired
    interval), ranked by the ratio."""
    out = []
    for protocol in _protocols(summaries):
        by_key = {s["method_key"]: s for s in summaries if s["protocol"] == protocol}
        rows = []
        for ex in EXPERIMENTS:
            keys = [k for k in ex.compared if k in by_key]
            if len(keys) < 2:
                continue
            defined = [k for k in keys if not math.isnan(as_float(by_key[k]["snr_noisy"]))]
            undefined = [k for k in keys if k not in defined]
            note = ""
            if defined:
                best = max(defined, key=lambda k: as_float(by_key[k]["snr_noisy"]))
                worst = undefined[0] if undefined else min(defined, key=lambda k: as_float(by_key[k]["snr_noisy"]))
            else:
                best, worst = keys[0], keys[-1]
            b, w = by_key[best], by_key[worst]
            ratio = (float("inf"),) * 3 if undefined and defined else snr_ratio(b, w)
            if undefined:
                note = "; ".join(f"{by_key[k]['method']}: SNR undefined ({by_key[k]['status']})" for k in undefined)
            if ex.key == "constraints":
                tight = by_key.get("hebbian_tight")
                change = _change(snr_ratio(tight, by_key[ex.reference])) if tight else NAN3
                effect = (f"{change[0]:+.0f}% [{change[1]:+.0f}%, {change[2]:+.0f}%] (unconstrained -> tight)"
                          if math.isfinite(change[0]) else "undefined")
            else:
                effect = f"{fmt_ratio_ci(*ratio)} ({w['method']} -> {b['method']})"
            row = {"protocol": protocol, "factor": ex.factor, "experiment": ex.key,
                   "methods_compared": "; ".join(by_key[k]["method"] for k in keys), "best_method": b["method"],
                   "worst_method": w["method"], "effect": effect, "note": note}
            _set(row, "best_snr", [b["snr_noisy"], b["snr_noisy_lo"], b["snr_noisy_hi"]])
            _set(row, "worst_snr", [w["snr_noisy"], w["snr_noisy_lo"], w["snr_noisy_hi"]])
            _set(row, "ratio_best_to_worst", ratio)
            _set(row, "clean_ratio_best_to_worst", snr_ratio(b, w, "snr_clean"))
            rows.append(row)
        rows.sort(key=lambda r: (math.isnan(as_float(r["ratio_best_to_worst"])), -as_float(r["ratio_best_to_worst"])
                                 if not math.isnan(as_float(r["ratio_best_to_worst"])) else 0.0))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        out += [{c: r.get(c) for c in FACTOR_COLUMNS} for r in rows]
    return out


def accuracy50_rows(summaries: Sequence[dict]) -> list[dict]:
    """Clean accuracy, accuracy at Gaussian std 0.5 and the degradation between them
    (100 * (1 - acc50 / acc_clean), paired bootstrap over the same units)."""
    from robust_vision.research.bootstrap import bootstrap_interval, paired_ratio

    out = []
    for protocol in _protocols(summaries):
        for s in sorted((s for s in summaries if s["protocol"] == protocol), key=lambda s: _order(s["method_key"])):
            row = {c: s.get(c) for c in ACC50_COLUMNS}
            u = s.get("_units")
            a0 = as_float(s["accuracy_clean"])
            if u is None or not a0 > 0 or math.isnan(as_float(s["accuracy_gauss50"])):
                _set(row, "degradation_percent", NAN3)
            else:
                r, lo, hi = bootstrap_interval(np.stack([u["accuracy_gauss50"], u["accuracy_clean"]], -1), paired_ratio)
                _set(row, "degradation_percent", [100 * (1 - r), 100 * (1 - hi), 100 * (1 - lo)])
            out.append(row)
    return out


def _order(key: str) -> int:
    return [m.key for m in METHODS].index(key)


def weight_rows(records: Sequence[RunRecord]) -> list[dict]:
    """Weight statistics of the local-rule (crossbar) methods, aggregated over seeds.

    mean, std and max_abs: the mean over seeds of the per-seed value, with a percentile bootstrap
    90% interval over seeds (the seed is the independent replicate of a training run; nan bounds
    with one seed); min / max: the extremes over all seeds (a range, not an estimate). Finite
    entries only."""
    from robust_vision.research.bootstrap import bootstrap_interval

    out = []
    keys = list(dict.fromkeys((r.protocol, r.method.key) for r in records if r.weight_stats is not None))
    keys.sort(key=lambda k: (PROTOCOL_ORDER.index(k[0]), _order(k[1])))
    for protocol, key in keys:
        recs = sorted((r for r in records if r.protocol == protocol and r.method.key == key), key=lambda r: r.seed)
        ws = [r.weight_stats for r in recs]
        arr = lambda name: np.asarray([as_float(w.get(name)) for w in ws], np.float64)  # noqa: E731
        n_div = sum(r.diverged for r in recs)
        row: dict[str, Any] = {"protocol": protocol, "method_key": key, "method": recs[0].method.name}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices of a diverged run -> nan
            for name in ("mean", "std", "max_abs"):
                per_seed = arr(name)
                _set(row, name, bootstrap_interval(per_seed[np.isfinite(per_seed)])
                     if np.isfinite(per_seed).any() else NAN3)
            row.update({"min": float(np.nanmin(arr("min"))), "max": float(np.nanmax(arr("max"))),
                        "n_seeds": len(recs), "n_diverged": n_div,
                        "diverged": f"yes ({n_div}/{len(recs)} seeds)" if n_div else "no"})
        nonfinite = sum(int(w.get("n", 0)) - int(w.get("n_finite", w.get("n", 0))) for w in ws)
        notes = []
        if nonfinite:
            notes.append(f"{nonfinite} non-finite weight entries (excluded from mean/std/min/max)")
        if "n_models" in ws[0]:
            notes.append(f"{sum(int(w['n_diverged_models']) for w in ws)}/{sum(int(w['n_models']) for w in ws)} "
                         "single-image models diverged")
        row["note"] = "; ".join(notes)
        out.append(row)
    return out


def pearson_with(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pearson r between the fixed abscissae x (k,) and each row of values (B, k) -> (B,)
    (nan where a row is constant or non-finite)."""
    xc = x - x.mean()
    vc = values - values.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = (vc * xc).sum(-1) / np.sqrt((vc ** 2).sum(-1) * (xc ** 2).sum())
    return np.where(np.isfinite(r), r, np.nan)


def linearity_rows(summaries: Sequence[dict]) -> list[dict]:
    """The "SNR roughly linear in lambda" test per protocol, with bootstrap 90% intervals.

    Clean SNR of cross-entropy (lambda 0) and the margin losses (lambda 1, 10); the paired
    ratios SNR(1) / SNR(0) and SNR(10) / SNR(1) (monotonicity); Pearson r of lambda against
    the clean SNR and against its log. The three methods are evaluated on the same units (test
    examples x seeds), so r's interval resamples the units jointly: each resample recomputes the
    three SNRs (exp of the mean log-SNR) and their correlation with lambda. Only protocols
    where all three methods ran with paired units appear."""
    from robust_vision.research.bootstrap import bootstrap_interval

    lam = np.array([v for _, v in LINEARITY_METHODS])
    out = []
    for protocol in _protocols(summaries):
        by_key = {s["method_key"]: s for s in summaries if s["protocol"] == protocol}
        ss = [by_key.get(k) for k, _ in LINEARITY_METHODS]
        if any(s is None for s in ss):
            continue
        units = [(s.get("_units") or {}).get("snr_clean") for s in ss]
        if any(u is None for u in units) or len({s["_seeds"] for s in ss}) != 1 or len({u.shape for u in units}) != 1:
            continue
        log_snr = np.stack(units, -1)  # (U, 3): per-unit clean log-SNR at lambda 0, 1, 10
        row: dict[str, Any] = {"protocol": protocol, "n_seeds": ss[0]["n_seeds"], "n_units": len(log_snr)}
        for s, (_, v) in zip(ss, LINEARITY_METHODS):
            _set(row, f"snr_clean_lambda_{v:g}", [s["snr_clean"], s["snr_clean_lo"], s["snr_clean_hi"]])
        _set(row, "ratio_lambda_1_to_0", snr_ratio(ss[1], ss[0], "snr_clean"))
        _set(row, "ratio_lambda_10_to_1", snr_ratio(ss[2], ss[1], "snr_clean"))
        _set(row, "pearson_r", bootstrap_interval(log_snr, lambda x, axis=1: pearson_with(lam, _exp_nanmean(x, axis))))
        _set(row, "pearson_r_log", bootstrap_interval(log_snr, lambda x, axis=1: pearson_with(lam, _nanmean(x, axis))))
        out.append({c: row.get(c) for c in LINEARITY_COLUMNS})
    return out


def curve_rows(records: Sequence[RunRecord]) -> list[dict]:
    """Accuracy and SNR per (protocol, method, noise type, level), over the units pooled over
    seeds, with bootstrap 90% intervals (module docstring)."""
    from robust_vision.research.bootstrap import bootstrap_interval

    groups: dict[tuple, list[RunRecord]] = {}
    for rec in records:
        groups.setdefault((rec.protocol, rec.method.key), []).append(rec)
    out = []
    for (protocol, key), recs in groups.items():
        recs.sort(key=lambda r: r.seed)
        have_units = all(r.units is not None for r in recs)
        for i, cond in enumerate(recs[0].rows):
            row = {"protocol": protocol, "method_key": key, "method": method_by_key(key).name,
                   "noise_type": cond["noise_type"], "level": cond["level"], "n_seeds": len(recs), "n_units": 0}
            if have_units:
                correct = np.concatenate([r.units["correct"][:, i] for r in recs])
                _set(row, "accuracy", bootstrap_interval(correct))
                _set(row, "snr", bootstrap_interval(np.concatenate([r.units["log_snr"][:, i] for r in recs]),
                                                    _exp_nanmean))
                row["n_units"] = len(correct)
            else:
                _set(row, "accuracy", NAN3)
                _set(row, "snr", NAN3)
            out.append(row)
    return out


def fmt_ratio_ci(point: Any, lo: Any, hi: Any) -> str:
    """'12.3x [4.5x, 30x]' (the bootstrap 90% interval; just the ratio when it has none)."""
    text = fmt_ratio(point)
    if math.isnan(as_float(lo)) or math.isnan(as_float(hi)) or math.isinf(as_float(point)):
        return text
    return f"{text} [{fmt_ratio(lo)}, {fmt_ratio(hi)}]"


# --------------------------------------------------------------------------- files


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_table(out_dir: Path, stem: str, rows: Sequence[dict], columns: list[str], markdown: str) -> list[Path]:
    """``out_dir/stem.csv`` (all columns) and ``out_dir/stem.md`` (the rendered table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out_dir / f"{stem}.csv", rows, columns)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown.rstrip() + "\n")
    return [csv_path, md_path]


def _cell(text: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_table`: numbers as float, empty cells as None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {str(path)!r} not found; run `robust-vision-research run --output DIR` first")
    with path.open(newline="") as f:
        return [{k: _cell(v or "") for k, v in row.items()} for row in csv.DictReader(f)]


# --------------------------------------------------------------------------- original protocol

ORIGINAL_COLUMNS = ["method_key", "method", "lambda", "n_units", "n_seeds", "snr_original", "snr_original_lo",
                    "snr_original_hi", "snr_log_ratio", "snr_log_ratio_lo", "snr_log_ratio_hi", "accuracy",
                    "accuracy_lo", "accuracy_hi", "frac_ill_conditioned", "frac_ill_conditioned_lo",
                    "frac_ill_conditioned_hi", "ratio_original_to_mse", "ratio_original_to_mse_lo",
                    "ratio_original_to_mse_hi", "ratio_log_to_mse", "ratio_log_to_mse_lo", "ratio_log_to_mse_hi",
                    "ill_conditioned"]
ILL_FRACTION = 0.05  # above this fraction of near-zero / negative control outputs the ratio is flagged


def _exp_mean(x: np.ndarray, axis: int = 1) -> np.ndarray:
    return np.exp(np.mean(x, axis=axis))


def original_rows(records: Sequence[RunRecord], *, seed: int = 0) -> list[dict]:
    """The original loss experiment (per-image MLPs), one row per lambda, pooled over seeds.

    Resampling unit: one image of one seed (its 7 Gaussian levels, one draw each). Every number
    has a bootstrap 90% interval (``_lo`` / ``_hi``, :func:`bootstrap.bootstrap_interval` with
    ``seed``): the original SNR = arithmetic mean of out0 / (out1 + 1e-9); the log-ratio SNR =
    exp(mean(out0 - out1)); the ratios to lambda = 0 are paired (same images, same noise)."""
    from robust_vision.research.bootstrap import bootstrap_interval, paired_ratio
    from robust_vision.research.original import ill_conditioned, original_snr

    by_key: dict[str, list[RunRecord]] = {}
    for rec in records:
        if rec.method.family == "mlp" and "original_outputs" in rec.extra:
            by_key.setdefault(rec.method.key, []).append(rec)
    units = {}
    for key, recs in by_key.items():
        recs = sorted(recs, key=lambda r: r.seed)
        outs = np.concatenate([np.asarray(r.extra["original_outputs"], np.float64) for r in recs])  # (U, L, 2)
        units[key] = {"ratio": original_snr(outs).mean(axis=1), "margin": (outs[..., 0] - outs[..., 1]).mean(axis=1),
                      "correct": (outs[..., 0] > outs[..., 1]).mean(axis=1),
                      "ill": ill_conditioned(outs).mean(axis=1), "seeds": [r.seed for r in recs]}
    base = next((k for k, recs in by_key.items() if recs[0].method.margin_lambda == 0.0), None)
    out = []
    for key in sorted(units, key=_order):
        u, m = units[key], method_by_key(key)
        row: dict[str, Any] = {"method_key": key, "method": m.name, "lambda": m.margin_lambda,
                               "n_units": len(u["ratio"]), "n_seeds": len(u["seeds"])}
        for col, vals, stat in (("snr_original", u["ratio"], np.mean), ("snr_log_ratio", u["margin"], _exp_mean),
                                ("accuracy", u["correct"], np.mean), ("frac_ill_conditioned", u["ill"], np.mean)):
            row[col], row[f"{col}_lo"], row[f"{col}_hi"] = bootstrap_interval(vals, stat, seed=seed)
        b = units.get(base)
        if b is not None and u["seeds"] == b["seeds"]:
            row["ratio_original_to_mse"], row["ratio_original_to_mse_lo"], row["ratio_original_to_mse_hi"] = \
                bootstrap_interval(np.stack([u["ratio"], b["ratio"]], -1), paired_ratio, seed=seed)
            row["ratio_log_to_mse"], row["ratio_log_to_mse_lo"], row["ratio_log_to_mse_hi"] = \
                bootstrap_interval(u["margin"] - b["margin"], _exp_mean, seed=seed)
        lo, hi = as_float(row["snr_original_lo"]), as_float(row["snr_original_hi"])
        row["ill_conditioned"] = bool(as_float(row["frac_ill_conditioned"]) > ILL_FRACTION
                                      or not (lo > 0 or hi < 0) or as_float(row["snr_original"]) <= 0)
        out.append({c: row.get(c) for c in ORIGINAL_COLUMNS})
    return out
