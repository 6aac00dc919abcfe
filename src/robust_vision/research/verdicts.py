"""The seed's Validation Checklist and its headline claims, decided from the written tables.

Everything here is a pure function of table rows (as read back by
:func:`robust_vision.research.tables.read_rows`), so the verdicts can be recomputed from a
results directory and tested with hand-made tables.

The paper's figures below are the *claims under test* (``shared/seeds/robust-vision.txt``),
never results of this project. Decision rules:

* thresholds (SNR > 2000, < 20; accuracy > 85%, < 70% at Gaussian std 0.5) are applied to the
  seed means of the classification protocol, clean SNR for the SNR items;
* "SNR scales roughly linearly with lambda (up to 10)": clean SNR non-decreasing in lambda and
  Pearson r > 0.9 between lambda and clean SNR over lambda in {0 (cross-entropy), 1, 10}. With
  three points, r > 0.9 alone mostly says that SNR(10) stands far above the other two, hence
  the monotonicity requirement; the log-SNR correlation is reported alongside;
* a ratio claim ("375x") is *reproduced* when the measured ratio lies within a factor of
  ``RATIO_TOLERANCE`` (3) of the claim, in the same direction; a percentage claim ("-66%") when
  the measured change lies within ``PERCENT_TOLERANCE`` (15) percentage points of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from robust_vision.research.tables import as_float, fmt_num, fmt_ratio, markdown_table

__all__ = ["ill_conditioned_warnings", "original_claims", "CheckItem", "Claim", "PERCENT_TOLERANCE", "RATIO_TOLERANCE", "compare_claims", "render_checklist",
           "render_claims", "validation_checklist"]

RATIO_TOLERANCE = 3.0
PERCENT_TOLERANCE = 15.0
LINEAR_R = 0.9
CLS = "classification"


@dataclass
class CheckItem:
    item: str
    criterion: str
    measured: str
    status: str  # PASS, FAIL or N/A (not measured by this run)
    value: Optional[float] = None


@dataclass
class Claim:
    claim: str
    paper: str
    protocol: str
    measured: str
    verdict: str  # reproduced, not reproduced, not measured
    note: str = ""
    value: Optional[float] = None


def _row(rows: Sequence[dict], protocol: str, key: str) -> Optional[dict]:
    return next((r for r in rows if r.get("protocol") == protocol and r.get("method_key") == key), None)


def _value(rows: Sequence[dict], protocol: str, key: str, column: str) -> Optional[float]:
    """The cell, nan when the cell is empty / non-numeric; None when the method is not in the table."""
    r = _row(rows, protocol, key)
    if r is None:
        return None
    v = r.get(column)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _threshold(item: str, criterion: str, value: Optional[float], passes, unit: str = "") -> CheckItem:
    if value is None:
        return CheckItem(item, criterion, "not measured (method not run)", "N/A")
    if math.isnan(value):
        return CheckItem(item, criterion, "undefined (nan: diverged or not evaluated)", "FAIL", value)
    shown = f"{value * 100:.1f}%" if unit == "%" else fmt_num(value)
    return CheckItem(item, criterion, shown, "PASS" if passes(value) else "FAIL", value)


def lambda_correlation(master: Sequence[dict]) -> tuple[Optional[float], Optional[float], list[float]]:
    """(Pearson r of clean SNR vs lambda, r of log SNR vs lambda, [SNR(0), SNR(1), SNR(10)])."""
    snrs = [_value(master, CLS, k, "snr_clean") for k in ("cnn_ce", "cnn_margin_1", "cnn_margin_10")]
    if any(v is None for v in snrs):
        return None, None, []
    lam = np.array([0.0, 1.0, 10.0])
    v = np.array(snrs, np.float64)
    if not np.all(np.isfinite(v)) or np.std(v) == 0:
        return float("nan"), float("nan"), list(v)
    r = float(np.corrcoef(lam, v)[0, 1])
    r_log = float(np.corrcoef(lam, np.log(v))[0, 1]) if np.all(v > 0) and np.std(np.log(v)) > 0 else float("nan")
    return r, r_log, list(v)


def validation_checklist(master: Sequence[dict], acc50: Sequence[dict],
                         figures: Sequence[str | Path]) -> list[CheckItem]:
    """The seed's six checklist items from the master and accuracy-at-50% tables.

    Args:
        master: rows of master_results.csv (needs protocol, method_key, snr_clean).
        acc50: rows of accuracy_at_50_gaussian.csv (protocol, method_key, accuracy_gauss50).
        figures: the figure files the run was expected to write.
    """
    items = [
        _threshold("Margin model achieves SNR > 2000 on clean data", "CNN Margin-10 clean SNR > 2000",
                   _value(master, CLS, "cnn_margin_10", "snr_clean"), lambda v: v > 2000),
        _threshold("Baseline model achieves SNR < 20 on clean data", "CNN Standard (CE) clean SNR < 20",
                   _value(master, CLS, "cnn_ce", "snr_clean"), lambda v: v < 20),
        _threshold("Margin model maintains >85% accuracy at 50% Gaussian noise",
                   "CNN Margin-10 accuracy at Gaussian std 0.5 > 85%",
                   _value(acc50, CLS, "cnn_margin_10", "accuracy_gauss50"), lambda v: v > 0.85, "%"),
        _threshold("Baseline model drops to <70% accuracy at 50% Gaussian noise",
                   "CNN Standard accuracy at Gaussian std 0.5 < 70%",
                   _value(acc50, CLS, "cnn_ce", "accuracy_gauss50"), lambda v: v < 0.70, "%"),
    ]
    r, r_log, snrs = lambda_correlation(master)
    lin = ("SNR scales roughly linearly with lambda (up to lambda=10)",
           f"clean SNR non-decreasing and Pearson r(lambda, clean SNR) > {LINEAR_R} over lambda in "
           "{0 (CE), 1, 10}")
    if r is None:
        items.append(CheckItem(*lin, "not measured (CNN methods not run)", "N/A"))
    elif math.isnan(r):
        items.append(CheckItem(*lin, "undefined (non-finite or constant SNR)", "FAIL", r))
    else:
        monotone = bool(np.all(np.diff(snrs) >= 0))
        measured = (f"r = {r:.3f} (SNR {', '.join(fmt_num(v) for v in snrs)} at lambda 0, 1, 10; "
                    f"r of log SNR = {r_log:.3f}" + ("" if monotone else "; not monotone in lambda") + ")")
        items.append(CheckItem(*lin, measured, "PASS" if r > LINEAR_R and monotone else "FAIL", r))
    paths = [Path(p) for p in figures]
    missing = [p.name for p in paths if not (p.is_file() and p.stat().st_size > 0)]
    items.append(CheckItem("All plots generated successfully in publication quality",
                           "every expected figure file (PNG and PDF) exists and is non-empty",
                           f"{len(paths) - len(missing)}/{len(paths)} files" + (
                               f"; missing: {', '.join(missing)}" if missing else ""),
                           "PASS" if paths and not missing else "FAIL"))
    return items


def _ratio_claim(claim: str, paper: str, claimed: float, protocol: str, num: Optional[float],
                 den: Optional[float], note: str = "") -> Claim:
    if num is None or den is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", note)
    if math.isnan(num) or math.isnan(den):
        return Claim(claim, paper, protocol, "undefined (a method diverged: SNR nan)", "not reproduced",
                     note, float("nan"))
    ratio = num / den if den > 0 else float("inf")
    ok = claimed / RATIO_TOLERANCE <= ratio <= claimed * RATIO_TOLERANCE
    return Claim(claim, paper, protocol, fmt_ratio(ratio), "reproduced" if ok else "not reproduced", note, ratio)


def _percent_claim(claim: str, paper: str, claimed: float, protocol: str, num: Optional[float],
                   den: Optional[float], note: str = "") -> Claim:
    if num is None or den is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", note)
    if math.isnan(num) or math.isnan(den) or den <= 0:
        return Claim(claim, paper, protocol, "undefined (SNR nan)", "not reproduced", note, float("nan"))
    change = (num / den - 1) * 100
    ok = abs(change - claimed) <= PERCENT_TOLERANCE
    return Claim(claim, paper, protocol, f"{change:+.1f}%", "reproduced" if ok else "not reproduced", note, change)


def _interval_ratio_claim(claim: str, paper: str, claimed: float, protocol: str, row: Optional[dict],
                          prefix: str, what: str) -> Claim:
    """Reproduced when the bootstrap 90% interval of the ratio overlaps [claim / 3, claim * 3]."""
    if row is None or row.get(prefix) is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", what)
    point, lo, hi = (as_float(row.get(prefix)), as_float(row.get(f"{prefix}_lo")), as_float(row.get(f"{prefix}_hi")))
    measured = f"{fmt_num(point)}x [90% CI {fmt_num(lo)}, {fmt_num(hi)}]"
    ok = (math.isfinite(lo) and math.isfinite(hi) and hi >= claimed / RATIO_TOLERANCE
          and lo <= claimed * RATIO_TOLERANCE)
    return Claim(claim, paper, protocol, measured, "reproduced" if ok else "not reproduced", what, point)


def original_claims(original: Sequence[dict]) -> list[Claim]:
    """The "375x" claim under the protocol that produced it (per-image MLPs, research/original.py)."""
    row = next((r for r in original if r.get("method_key") == "mlp_margin_10"), None)
    proto = "pattern (original code: per-image MLP, MSE + lambda * margin)"
    return [_interval_ratio_claim("Loss function: margin (lambda=10) vs lambda=0, original SNR", "375x higher SNR",
                                  375.0, proto, row, "ratio_original_to_mse",
                                  "arithmetic mean of out0 / (out1 + 1e-9), as the original; paired over images"),
            _interval_ratio_claim("Loss function: margin (lambda=10) vs lambda=0, log-ratio SNR", "375x higher SNR",
                                  375.0, proto, row, "ratio_log_to_mse",
                                  "exp(mean(out0 - out1)), the evaluator's SNR with outputs as logits")]


def ill_conditioned_warnings(original: Sequence[dict]) -> list[str]:
    """One warning line per original-protocol method whose ratio SNR is ill-conditioned."""
    out = []
    for r in original:
        if r.get("ill_conditioned") in (True, "True"):
            out.append(f"WARNING: {r['method']}: the original SNR out0 / (out1 + 1e-9) is ill-conditioned: "
                       f"{100 * as_float(r['frac_ill_conditioned']):.0f}% of the control outputs are <= 0 or within "
                       f"1e-6 of zero; its mean is {fmt_num(r['snr_original'])} with 90% interval "
                       f"[{fmt_num(r['snr_original_lo'])}, {fmt_num(r['snr_original_hi'])}]. Read the log-ratio "
                       "SNR instead.")
    return out


def compare_claims(master: Sequence[dict], acc50: Sequence[dict], architecture: Sequence[dict],
                   factors: Sequence[dict], checklist: Sequence[CheckItem],
                   original: Sequence[dict] = ()) -> list[Claim]:
    """Each headline claim of the seed next to the measured figure, with a verdict.

    Args:
        master: master_results.csv rows; acc50: accuracy_at_50_gaussian.csv rows;
        architecture: experiment_architecture.csv rows; factors: factor_importance.csv rows;
        checklist: :func:`validation_checklist` of the same tables (threshold claims reuse it).
    """
    v = lambda protocol, key, col="snr_noisy": _value(master, protocol, key, col)  # noqa: E731
    claims = [_ratio_claim("Loss function: margin (lambda=10) vs cross-entropy", "375x higher SNR", 375.0, CLS,
                           v(CLS, "cnn_margin_10"), v(CLS, "cnn_ce"),
                           _clean_note(v(CLS, "cnn_margin_10", "snr_clean"), v(CLS, "cnn_ce", "snr_clean")))]
    protocols = [p for p in ("pattern", CLS) if any(r.get("protocol") == p for r in master)] or [CLS]
    for p in protocols:
        claims.append(_ratio_claim("Learning rule: Hebbian vs SGD (both unconstrained)", "133x higher SNR", 133.0, p,
                                   v(p, "hebbian_uncon"), v(p, "sgd_uncon"),
                                   _clean_note(v(p, "hebbian_uncon", "snr_clean"), v(p, "sgd_uncon", "snr_clean"))))
    for p in protocols:
        claims.append(_percent_claim("Constraints: tight [0, 0.5] vs unconstrained Hebbian", "-66% SNR", -66.0, p,
                                     v(p, "hebbian_tight"), v(p, "hebbian_uncon")))
        claims.append(_percent_claim(
            "Constraints: physical [0, 1] vs unconstrained Hebbian", "-38% SNR (headline: '-62%')", -38.3, p,
            v(p, "hebbian_physical"), v(p, "hebbian_uncon"),
            "the seed's headline '-62%' matches none of its own rows: its table gives physical = 62% of the "
            "unconstrained SNR (-38%) and tight -66%"))
    lin, cnn = _value(architecture, CLS, "linear_ce", "snr_noisy"), _value(architecture, CLS, "cnn_ce", "snr_noisy")
    claims.append(_ratio_claim("Architecture: linear -> 2-layer CNN (cross-entropy)", "~10x higher SNR", 10.0, CLS,
                               cnn, lin))
    claims.append(_ranking_claim(factors))
    names = {0: ("Margin model SNR on clean data", "> 2000"), 1: ("Baseline (CE) SNR on clean data", "< 20"),
             2: ("Margin model accuracy at 50% Gaussian noise", "> 85%"),
             3: ("Baseline accuracy at 50% Gaussian noise", "< 70%"),
             4: ("SNR roughly linear in lambda (up to 10)", "roughly linear")}
    for i, (claim, paper) in names.items():
        item = checklist[i]
        verdict = {"PASS": "reproduced", "FAIL": "not reproduced"}.get(item.status, "not measured")
        claims.append(Claim(claim, paper, CLS, item.measured, verdict, item.criterion, item.value))
    if original:
        claims[1:1] = original_claims(original)
    return claims


def _clean_note(num: Optional[float], den: Optional[float]) -> str:
    if num is None or den is None or math.isnan(num) or math.isnan(den) or den <= 0:
        return "ratio of mean SNR over the noisy grid"
    return f"ratio of mean SNR over the noisy grid; on clean data {fmt_ratio(num / den)}"


_SEED_ORDER = ("Loss function", "Learning rule", "Architecture", "Constraints")


def _ranking_claim(factors: Sequence[dict]) -> Claim:
    rows = sorted((r for r in factors if r.get("protocol") == CLS), key=lambda r: as_float(r.get("rank")))
    order = tuple(str(r["factor"]) for r in rows)
    paper = " > ".join(_SEED_ORDER)
    if set(order) != set(_SEED_ORDER):
        return Claim("Factor ranking (by best-to-worst SNR ratio)", paper, CLS,
                     " > ".join(order) or "not measured", "not measured",
                     "needs all four experiments in the classification protocol")
    return Claim("Factor ranking (by best-to-worst SNR ratio)", paper, CLS, " > ".join(order),
                 "reproduced" if order == _SEED_ORDER else "not reproduced",
                 "; ".join(f"{r['factor']} {fmt_ratio(r['ratio_best_to_worst'])}" for r in rows))


# --------------------------------------------------------------------------- rendering


def render_checklist(items: Sequence[CheckItem], ctx: dict) -> str:
    lines = ["# Validation checklist", "",
             "The seed's checklist, decided from master_results.csv and accuracy_at_50_gaussian.csv "
             f"(classification protocol: {ctx['task']}; seed means over {ctx['n_seeds']} seed(s)).", ""]
    lines.append(markdown_table(["", "Item", "Criterion", "Measured", "Result"],
                                [["[x]" if i.status == "PASS" else "[ ]", i.item, i.criterion, i.measured, i.status]
                                 for i in items]))
    n_pass = sum(i.status == "PASS" for i in items)
    lines += ["", f"{n_pass}/{len(items)} items pass."]
    return "\n".join(lines)


def render_claims(claims: Sequence[Claim], ctx: dict, warnings: Sequence[str] = ()) -> str:
    lines = ["# Compared with the paper's claims", "", *[f"**{w}**\n" for w in warnings],
             "Each claim of shared/seeds/robust-vision.txt next to what this run measured. Ratios use the mean "
             "(noisy-grid) SNR of master_results.csv. A ratio claim counts as reproduced within a factor of "
             f"{RATIO_TOLERANCE:g} of the claim, a percentage claim within {PERCENT_TOLERANCE:g} points; where a "
             "90% bootstrap interval is given, the interval must overlap that tolerance band. The Protocol column "
             "says under which protocol each claim was tested.", ""]
    lines.append(markdown_table(["Claim", "Paper", "Protocol", "Measured", "Verdict", "Note"],
                                [[c.claim, c.paper, c.protocol, c.measured, c.verdict, c.note] for c in claims]))
    n = sum(c.verdict == "reproduced" for c in claims)
    lines += ["", f"{n}/{len(claims)} claims reproduced by this run."]
    return "\n".join(lines)


def checklist_lines(items: Sequence[CheckItem]) -> list[str]:
    """The printed form: one line per item with PASS / FAIL / N/A."""
    return [f"  [{i.status:^4}] {i.item}  (measured: {i.measured})" for i in items]


def as_dicts(objs: Sequence[CheckItem | Claim]) -> list[dict]:
    return [asdict(o) for o in objs]
