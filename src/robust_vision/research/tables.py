"""Aggregation of the study's per-condition rows into its tables (CSV + markdown).

Definitions (one place; docs/RESEARCH.md repeats them):

* per-condition SNR: the evaluator's geometric mean over test examples (and noise draws) of
  the decision's SNR (DESIGN.md): p_y / max_{j!=y} p_j for softmax models, s_y / (max_{j!=y}
  s_j + 1e-6) for crossbars;
* ``snr_noisy`` ("mean SNR", the ranking figure): geometric mean of the per-condition SNRs over
  the noisy grid (every noise type x every level > 0), i.e. exp(mean log SNR), per seed;
* ``snr_clean``: the per-condition SNR at level 0;
* ``accuracy_noisy``: arithmetic mean accuracy over the noisy grid; ``accuracy_gauss50``:
  accuracy at Gaussian std 0.5;
* across seeds: arithmetic mean and sample standard deviation (ddof = 1; 0 for one seed) of
  the per-seed figures. A nan in any seed (e.g. diverged weights) makes the mean nan;
* a method is ``diverged`` when any seed diverged (non-finite weights, |W| above the bound, or
  a non-finite backprop loss); diverged methods rank last, whatever their SNR;
* factor importance: within each controlled experiment, SNR of the best method / SNR of the
  worst (noisy-grid SNR); ``inf`` when the worst has no defined SNR (diverged).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from robust_vision.evaluation.report import write_csv
from robust_vision.research.methods import EXPERIMENTS, MASTER_ORDER, METHODS, Experiment, method_by_key
from robust_vision.research.protocols import RunRecord

__all__ = ["MASTER_COLUMNS", "as_float", "fmt_num", "fmt_pm", "markdown_table", "read_rows", "seed_summaries",
           "method_summaries", "master_rows", "experiment_rows", "factor_rows", "accuracy50_rows", "weight_rows",
           "curve_rows", "fmt_ratio", "geometric_mean", "write_table"]

METRICS = ("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy", "accuracy_gauss50", "snr_gauss50")
MASTER_COLUMNS = ["protocol", "rank", "method_key", "method", "learning_rule", "constraints", "loss", "architecture",
                  "snr_noisy", "snr_noisy_std", "snr_clean", "snr_clean_std", "accuracy_clean", "accuracy_clean_std",
                  "accuracy_noisy", "accuracy_noisy_std", "relative_to_best_percent", "n_seeds", "n_diverged",
                  "status"]
EXPERIMENT_COLUMNS = ["protocol", "experiment", "method_key", "method", "role", "varied", "snr_noisy",
                      "snr_noisy_std", "snr_clean", "snr_clean_std", "accuracy_clean", "accuracy_noisy",
                      "ratio_to_reference", "change_percent", "clean_ratio_to_reference", "status"]
FACTOR_COLUMNS = ["protocol", "rank", "factor", "experiment", "methods_compared", "best_method", "worst_method",
                  "best_snr", "worst_snr", "ratio_best_to_worst", "clean_ratio_best_to_worst", "effect", "note"]
ACC50_COLUMNS = ["protocol", "method_key", "method", "accuracy_clean", "accuracy_clean_std", "accuracy_gauss50",
                 "accuracy_gauss50_std", "degradation_percent", "snr_gauss50", "snr_gauss50_std", "status"]
WEIGHT_COLUMNS = ["protocol", "method_key", "method", "mean", "std", "min", "max", "max_abs", "n_seeds",
                  "n_diverged", "diverged", "note"]
CURVE_COLUMNS = ["protocol", "method_key", "method", "noise_type", "level", "accuracy", "accuracy_std", "snr",
                 "snr_std", "n_seeds"]
PROTOCOL_ORDER = ("classification", "pattern")


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([as_float(x) for x in values], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0


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


def fmt_pm(mean: Any, std: Any, *, percent: bool = False) -> str:
    """'mean ± std' (accuracies as percentages when ``percent``)."""
    if math.isnan(as_float(mean)):
        return "nan"
    if percent:
        return f"{as_float(mean) * 100:.1f}% ± {as_float(std) * 100:.1f}"
    return f"{fmt_num(mean)} ± {fmt_num(std, 2)}"


def fmt_ratio(x: Any) -> str:
    x = as_float(x)
    if math.isnan(x):
        return "undefined"
    return "inf" if math.isinf(x) else f"{x:.3g}x"


# --------------------------------------------------------------------------- aggregation


def _noisy(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["level"] > 0.0]


def _at(rows: list[dict], noise_type: str, level: float) -> Optional[dict]:
    return next((r for r in rows if r["noise_type"] == noise_type and abs(r["level"] - level) < 1e-9), None)


def seed_summaries(records: Sequence[RunRecord]) -> list[dict]:
    """One dict per (protocol, method, seed) with the METRICS and ``diverged``."""
    out = []
    for rec in records:
        noisy = _noisy(rec.rows)
        clean = next((r for r in rec.rows if r["level"] == 0.0), None)
        g50 = _at(rec.rows, "gaussian", 0.5)
        out.append({
            "protocol": rec.protocol, "method_key": rec.method.key, "seed": rec.seed, "diverged": rec.diverged,
            "snr_noisy": geometric_mean(r["snr"] for r in noisy),
            "snr_clean": as_float(clean["snr"]) if clean else float("nan"),
            "accuracy_clean": as_float(clean["accuracy"]) if clean else float("nan"),
            "accuracy_noisy": _mean_std([r["accuracy"] for r in noisy])[0],
            "accuracy_gauss50": as_float(g50["accuracy"]) if g50 else float("nan"),
            "snr_gauss50": as_float(g50["snr"]) if g50 else float("nan"),
        })
    return out


def method_summaries(seed_rows: Sequence[dict]) -> list[dict]:
    """One dict per (protocol, method): mean / std over seeds of every metric, n_seeds, n_diverged, status."""
    keys = list(dict.fromkeys((r["protocol"], r["method_key"]) for r in seed_rows))
    out = []
    for protocol, key in keys:
        rows = [r for r in seed_rows if r["protocol"] == protocol and r["method_key"] == key]
        m = method_by_key(key)
        s: dict[str, Any] = {"protocol": protocol, "method_key": key, "method": m.name,
                             "learning_rule": m.learning_rule, "constraints": m.constraints, "loss": m.loss,
                             "architecture": m.architecture, "n_seeds": len(rows),
                             "n_diverged": sum(bool(r["diverged"]) for r in rows)}
        for metric in METRICS:
            s[metric], s[f"{metric}_std"] = _mean_std([r[metric] for r in rows])
        s["status"] = "diverged" if s["n_diverged"] else "ok"
        out.append(s)
    return out


def _protocols(rows: Sequence[dict]) -> list[str]:
    present = {r["protocol"] for r in rows}
    return [p for p in PROTOCOL_ORDER if p in present]


def _rank_key(s: dict) -> tuple:
    snr = as_float(s["snr_noisy"])
    return (s["status"] == "diverged", math.isnan(snr), -snr if not math.isnan(snr) else 0.0)


def master_rows(summaries: Sequence[dict]) -> list[dict]:
    """The seed's master table per protocol: master methods ranked by noisy-grid SNR, diverged last."""
    out = []
    for protocol in _protocols(summaries):
        rows = [dict(s) for s in summaries if s["protocol"] == protocol
                and (s["method_key"] in MASTER_ORDER
                     or (protocol == "pattern" and method_by_key(s["method_key"]).in_pattern_master))]
        rows.sort(key=_rank_key)
        best = as_float(rows[0]["snr_noisy"]) if rows else float("nan")
        for i, r in enumerate(rows, 1):
            r["rank"] = i
            rel = _ratio(r["snr_noisy"], best)
            r["relative_to_best_percent"] = rel * 100 if math.isfinite(rel) else float("nan")
            out.append({c: r.get(c) for c in MASTER_COLUMNS})
    return out


_VARIED = {"learning_rule": "learning_rule", "constraints": "constraints", "loss": "loss",
           "architecture": "architecture"}


def experiment_rows(summaries: Sequence[dict], experiment: Experiment) -> list[dict]:
    """Rows of one controlled experiment per protocol, each compared with the reference method."""
    out = []
    for protocol in _protocols(summaries):
        by_key = {s["method_key"]: s for s in summaries if s["protocol"] == protocol}
        ref = by_key.get(experiment.reference)
        present = [k for k in experiment.methods if k in by_key]
        if ref is None or len(present) < 2:
            continue
        for key in present:
            s = by_key[key]
            ratio = _ratio(s["snr_noisy"], ref["snr_noisy"])
            out.append({
                "protocol": protocol, "experiment": experiment.key, "method_key": key, "method": s["method"],
                "role": "reference" if key == experiment.reference else (
                    "compared" if key in experiment.compared else "extra"),
                "varied": s[_VARIED[experiment.key]], "snr_noisy": s["snr_noisy"], "snr_noisy_std": s["snr_noisy_std"],
                "snr_clean": s["snr_clean"], "snr_clean_std": s["snr_clean_std"],
                "accuracy_clean": s["accuracy_clean"], "accuracy_noisy": s["accuracy_noisy"],
                "ratio_to_reference": ratio,
                "change_percent": (ratio - 1) * 100 if math.isfinite(ratio) else float("nan"),
                "clean_ratio_to_reference": _ratio(s["snr_clean"], ref["snr_clean"]), "status": s["status"],
            })
    return out


def factor_rows(summaries: Sequence[dict]) -> list[dict]:
    """Factor importance per protocol: best-to-worst SNR ratio within each experiment, ranked."""
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
            ratio = float("inf") if undefined and defined else _ratio(by_key[best]["snr_noisy"],
                                                                      by_key[worst]["snr_noisy"])
            clean = _ratio(by_key[best]["snr_clean"], by_key[worst]["snr_clean"])
            if undefined:
                note = "; ".join(f"{by_key[k]['method']}: SNR undefined ({by_key[k]['status']})" for k in undefined)
            if ex.key == "constraints":
                tight = by_key.get("hebbian_tight")
                ref = by_key[ex.reference]
                change = (_ratio(tight["snr_noisy"], ref["snr_noisy"]) - 1) * 100 if tight else float("nan")
                effect = f"{change:+.0f}% (unconstrained -> tight)" if math.isfinite(change) else "undefined"
            else:
                effect = f"{fmt_ratio(ratio)} ({by_key[worst]['method']} -> {by_key[best]['method']})"
            rows.append({"protocol": protocol, "factor": ex.factor, "experiment": ex.key,
                         "methods_compared": "; ".join(by_key[k]["method"] for k in keys),
                         "best_method": by_key[best]["method"], "worst_method": by_key[worst]["method"],
                         "best_snr": by_key[best]["snr_noisy"], "worst_snr": by_key[worst]["snr_noisy"],
                         "ratio_best_to_worst": ratio, "clean_ratio_best_to_worst": clean, "effect": effect,
                         "note": note})
        rows.sort(key=lambda r: (math.isnan(as_float(r["ratio_best_to_worst"])), -as_float(r["ratio_best_to_worst"])
                                 if not math.isnan(as_float(r["ratio_best_to_worst"])) else 0.0))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        out += [{c: r.get(c) for c in FACTOR_COLUMNS} for r in rows]
    return out


def accuracy50_rows(summaries: Sequence[dict]) -> list[dict]:
    """Clean accuracy, accuracy at Gaussian std 0.5 and the degradation between them."""
    out = []
    for protocol in _protocols(summaries):
        for s in sorted((s for s in summaries if s["protocol"] == protocol), key=lambda s: _order(s["method_key"])):
            a0, a50 = as_float(s["accuracy_clean"]), as_float(s["accuracy_gauss50"])
            deg = 100 * (a0 - a50) / a0 if a0 > 0 and not math.isnan(a50) else float("nan")
            out.append({**{c: s.get(c) for c in ACC50_COLUMNS}, "degradation_percent": deg})
    return out


def _order(key: str) -> int:
    return [m.key for m in METHODS].index(key)


def weight_rows(records: Sequence[RunRecord]) -> list[dict]:
    """Weight statistics of the local-rule (crossbar) methods, aggregated over seeds:
    mean of the per-seed mean and std, min of the minima, max of the maxima (finite entries)."""
    out = []
    keys = list(dict.fromkeys((r.protocol, r.method.key) for r in records if r.weight_stats is not None))
    keys.sort(key=lambda k: (PROTOCOL_ORDER.index(k[0]), _order(k[1])))
    for protocol, key in keys:
        recs = [r for r in records if r.protocol == protocol and r.method.key == key]
        ws = [r.weight_stats for r in recs]
        arr = lambda name: np.asarray([as_float(w.get(name)) for w in ws], np.float64)  # noqa: E731
        n_div = sum(r.diverged for r in recs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices of a diverged run -> nan
            row = {"protocol": protocol, "method_key": key, "method": recs[0].method.name,
                   "mean": float(np.nanmean(arr("mean"))), "std": float(np.nanmean(arr("std"))),
                   "min": float(np.nanmin(arr("min"))), "max": float(np.nanmax(arr("max"))),
                   "max_abs": float(np.nanmax(arr("max_abs"))), "n_seeds": len(recs), "n_diverged": n_div,
                   "diverged": f"yes ({n_div}/{len(recs)} seeds)" if n_div else "no"}
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


def curve_rows(records: Sequence[RunRecord]) -> list[dict]:
    """Accuracy and SNR per (protocol, method, noise type, level): mean and std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        for r in rec.rows:
            groups.setdefault((rec.protocol, rec.method.key, r["noise_type"], r["level"]), []).append(r)
    out = []
    for (protocol, key, noise, level), rows in groups.items():
        acc, acc_sd = _mean_std([r["accuracy"] for r in rows])
        snr, snr_sd = _mean_std([r["snr"] for r in rows])
        out.append({"protocol": protocol, "method_key": key, "method": method_by_key(key).name, "noise_type": noise,
                    "level": level, "accuracy": acc, "accuracy_std": acc_sd, "snr": snr, "snr_std": snr_sd,
                    "n_seeds": len(rows)})
    return out


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
