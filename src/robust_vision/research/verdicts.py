"""The seed's Validation Checklist and its headline claims, decided from the written tables.

Everything here is a pure function of table rows (as read back by
:func:`robust_vision.research.tables.read_rows`), so the verdicts can be recomputed from a
results directory and tested with hand-made tables.

The paper's figures below are the *claims under test* (``shared/seeds/robust-vision.txt``),
never results of this project. Decision rules:

* every figure comes with its bootstrap 90% interval from the tables (``*_lo`` / ``*_hi``;
  units: test examples x seeds for classification, images x seeds for pattern; ratios between
  methods paired over the same units, see :mod:`robust_vision.research.tables`);
* checklist: the seed's thresholds (SNR > 2000, < 20; accuracy > 85%, < 70% at Gaussian std
  0.5) applied to the point estimates of the classification protocol, clean SNR for the SNR
  items; the claims of the same thresholds count as reproduced when the interval reaches the
  claimed side (hi > 2000, lo < 20, ...);
* "SNR scales roughly linearly with lambda (up to 10)": clean SNR non-decreasing in lambda and
  Pearson r > 0.9 between lambda and clean SNR over lambda in {0 (cross-entropy), 1, 10}
  (lambda_linearity.csv: r's interval resamples the three methods' paired units jointly). The
  checklist item decides on the points; the claim is reproduced when r's interval reaches above
  0.9 and neither paired step SNR(1)/SNR(0), SNR(10)/SNR(1) has its interval wholly below 1.
  With three points, r > 0.9 alone mostly says that SNR(10) stands far above the other two,
  hence the monotonicity requirement; the log-SNR correlation is reported alongside;
* the factor ranking is reproduced unless a factor the seed ranks higher has its best-to-worst
  ratio interval wholly below that of a factor it ranks lower;
* a ratio claim ("375x") is *reproduced* when the interval of the measured (paired) ratio
  overlaps the tolerance band [claim / ``RATIO_TOLERANCE``, claim * ``RATIO_TOLERANCE``] (3); a
  percentage claim ("-66%") when the interval of the measured change overlaps [claim -
  ``PERCENT_TOLERANCE``, claim + ``PERCENT_TOLERANCE``] (15 points). Without an interval (one
  unit) the point decides. Each claim states the protocol it was tested under.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from robust_vision.research.tables import (LINEARITY_METHODS, as_float, fmt_num, fmt_ratio, markdown_table,
                                           pearson_with)

__all__ = ["ill_conditioned_warnings", "original_claims", "CheckItem", "Claim", "Linearity", "PERCENT_TOLERANCE",
           "RATIO_TOLERANCE", "compare_claims", "lambda_linearity", "render_checklist", "render_claims",
           "validation_checklist"]

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


def _number(v: object) -> float:
    """A numeric cell as float; nan when the cell is empty or not a number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _triple(rows: Sequence[dict], protocol: str, key: str, column: str) -> Optional[tuple[float, float, float]]:
    """(point, lo, hi) of a cell and its interval columns; None when the method is not in the table."""
    r = _row(rows, protocol, key)
    return None if r is None else _cell(r, column)


def _cell(row: dict, column: str) -> tuple[float, float, float]:
    """(point, lo, hi) of ``row[column]`` and its interval columns, nan for an empty or
    non-numeric cell; missing bounds fall back to the point (no interval: the point decides)."""
    point, lo, hi = (_number(row.get(c)) for c in (column, f"{column}_lo", f"{column}_hi"))
    return point, point if math.isnan(lo) else lo, point if math.isnan(hi) else hi


def fmt_interval(t: Sequence[float], unit: str = "") -> str:
    """'point [90% CI lo, hi]' with unit "x" (ratio), "%" (fraction shown as percent), "pp" (a
    percentage change) or "" (a number)."""
    def f(v: float) -> str:
        if unit == "%":
            return "nan" if math.isnan(v) else f"{100 * v:.1f}%"
        if unit == "pp":
            return "nan" if math.isnan(v) else f"{v:+.1f}%"
        return fmt_num(v) + ("x" if unit == "x" and math.isfinite(v) else "")
    point, lo, hi = t
    return f(point) if (lo == point and hi == point) else f"{f(point)} [90% CI {f(lo)}, {f(hi)}]"


def _threshold(item: str, criterion: str, value: Optional[tuple[float, float, float]], passes,
               unit: str = "") -> CheckItem:
    """A checklist item: PASS when the point estimate passes (its interval is shown)."""
    if value is None:
        return CheckItem(item, criterion, "not measured (method not run)", "N/A")
    if math.isnan(value[0]):
        return CheckItem(item, criterion, "undefined (nan: diverged or not evaluated)", "FAIL", value[0])
    return CheckItem(item, criterion, fmt_interval(value, unit), "PASS" if passes(value[0]) else "FAIL", value[0])


@dataclass(frozen=True)
class Linearity:
    """The lambda-linearity figures, each (point, lo, hi) with its bootstrap 90% interval
    (lo = hi = point when the table has no interval)."""

    r: tuple[float, float, float]
    r_log: tuple[float, float, float]
    snrs: tuple[tuple[float, float, float], ...]  # clean SNR at lambda 0, 1, 10
    steps: tuple[tuple[float, float, float], ...]  # paired SNR(1) / SNR(0), SNR(10) / SNR(1)

    @property
    def monotone(self) -> bool:
        """Non-decreasing in lambda on the point estimates."""
        return all(t[0] >= 1.0 for t in self.steps)

    @property
    def monotone_possible(self) -> bool:
        """Non-decreasing is consistent with the intervals: no step's interval lies wholly below 1."""
        return all(t[2] >= 1.0 for t in self.steps)


def lambda_linearity(master: Sequence[dict], linearity: Sequence[dict] = ()) -> Optional[Linearity]:
    """The linearity figures of the classification protocol: from lambda_linearity.csv rows
    (:func:`robust_vision.research.tables.linearity_rows`, with intervals) when given, else from
    the master table's point estimates. None when a CNN method was not run."""
    row = next((r for r in linearity if r.get("protocol") == CLS), None)
    if row is not None:
        return Linearity(_cell(row, "pearson_r"), _cell(row, "pearson_r_log"),
                         tuple(_cell(row, f"snr_clean_lambda_{v:g}") for _, v in LINEARITY_METHODS),
                         (_cell(row, "ratio_lambda_1_to_0"), _cell(row, "ratio_lambda_10_to_1")))
    snrs = [_triple(master, CLS, k, "snr_clean") for k, _ in LINEARITY_METHODS]
    if any(t is None for t in snrs):
        return None
    lam = np.array([v for _, v in LINEARITY_METHODS])
    v = np.array([t[0] for t in snrs], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(pearson_with(lam, v[None])[0])
        r_log = float(pearson_with(lam, np.log(v)[None])[0])
        steps = tuple((q,) * 3 for q in (v[1] / v[0], v[2] / v[1]))
    return Linearity((r,) * 3, (r_log,) * 3, tuple(snrs), steps)


def _linearity_text(lin: Linearity) -> str:
    return (f"r = {fmt_interval(lin.r)} (clean SNR {', '.join(fmt_interval(t) for t in lin.snrs)} at lambda 0, 1, "
            f"10; steps SNR(1)/SNR(0) {fmt_interval(lin.steps[0], 'x')}, SNR(10)/SNR(1) "
            f"{fmt_interval(lin.steps[1], 'x')}; r of log SNR = {fmt_interval(lin.r_log)}"
            + ("" if lin.monotone else "; not monotone in lambda") + ")")


# (checklist item, criterion, claim, paper, table, method, column, threshold, direction, unit)
THRESHOLDS = (
    ("Margin model achieves SNR > 2000 on clean data", "CNN Margin-10 clean SNR > 2000",
     "Margin model SNR on clean data", "> 2000", "master", "cnn_margin_10", "snr_clean", 2000.0, ">", ""),
    ("Baseline model achieves SNR < 20 on clean data", "CNN Standard (CE) clean SNR < 20",
     "Baseline (CE) SNR on clean data", "< 20", "master", "cnn_ce", "snr_clean", 20.0, "<", ""),
    ("Margin model maintains >85% accuracy at 50% Gaussian noise", "CNN Margin-10 accuracy at Gaussian std 0.5 > 85%",
     "Margin model accuracy at 50% Gaussian noise", "> 85%", "acc50", "cnn_margin_10", "accuracy_gauss50", 0.85, ">",
     "%"),
    ("Baseline model drops to <70% accuracy at 50% Gaussian noise", "CNN Standard accuracy at Gaussian std 0.5 < 70%",
     "Baseline accuracy at 50% Gaussian noise", "< 70%", "acc50", "cnn_ce", "accuracy_gauss50", 0.70, "<", "%"),
)


def validation_checklist(master: Sequence[dict], acc50: Sequence[dict], figures: Sequence[str | Path],
                         linearity: Sequence[dict] = ()) -> list[CheckItem]:
    """The seed's six checklist items from the master and accuracy-at-50% tables, decided on the
    point estimates (the seed's thresholds; intervals shown).

    Args:
        master: rows of master_results.csv (needs protocol, method_key, snr_clean).
        acc50: rows of accuracy_at_50_gaussian.csv (protocol, method_key, accuracy_gauss50).
        figures: the figure files the run was expected to write.
        linearity: rows of lambda_linearity.csv (the lambda item's interval); without them the
            lambda item is computed from the master table's points.
    """
    items = [
        _threshold(THRESHOLDS[0][0], THRESHOLDS[0][1], _triple(master, CLS, "cnn_margin_10", "snr_clean"),
                   lambda v: v > 2000),
        _threshold(THRESHOLDS[1][0], THRESHOLDS[1][1], _triple(master, CLS, "cnn_ce", "snr_clean"), lambda v: v < 20),
        _threshold(THRESHOLDS[2][0], THRESHOLDS[2][1], _triple(acc50, CLS, "cnn_margin_10", "accuracy_gauss50"),
                   lambda v: v > 0.85, "%"),
        _threshold(THRESHOLDS[3][0], THRESHOLDS[3][1], _triple(acc50, CLS, "cnn_ce", "accuracy_gauss50"),
                   lambda v: v < 0.70, "%"),
    ]
    lin = lambda_linearity(master, linearity)
    spec = ("SNR scales roughly linearly with lambda (up to lambda=10)",
            f"clean SNR non-decreasing and Pearson r(lambda, clean SNR) > {LINEAR_R} over lambda in "
            "{0 (CE), 1, 10}")
    if lin is None:
        items.append(CheckItem(*spec, "not measured (CNN methods not run)", "N/A"))
    elif math.isnan(lin.r[0]):
        items.append(CheckItem(*spec, "undefined (non-finite or constant SNR)", "FAIL", lin.r[0]))
    else:
        items.append(CheckItem(*spec, _linearity_text(lin), "PASS" if lin.r[0] > LINEAR_R and lin.monotone else "FAIL",
                               lin.r[0]))
    paths = [Path(p) for p in figures]
    missing = [p.name for p in paths if not (p.is_file() and p.stat().st_size > 0)]
    items.append(CheckItem("All plots generated successfully in publication quality",
                           "every expected figure file (PNG and PDF) exists and is non-empty",
                           f"{len(paths) - len(missing)}/{len(paths)} files" + (
                               f"; missing: {', '.join(missing)}" if missing else ""),
                           "PASS" if paths and not missing else "FAIL"))
    return items


def consistent(interval: Sequence[float], band_lo: float, band_hi: float) -> bool:
    """The verdict rule: the interval [lo, hi] overlaps the claim's tolerance band."""
    _, lo, hi = interval
    return not (math.isnan(lo) or math.isnan(hi)) and hi >= band_lo and lo <= band_hi


def _experiment_ratio(experiments: Mapping[str, Sequence[dict]], experiment: str, protocol: str, key: str,
                      column: str = "ratio_to_reference", invert: bool = False
                      ) -> Optional[tuple[float, float, float]]:
    """The paired ratio of ``key`` to the experiment's reference with its interval (inverted:
    reference / key)."""
    t = _triple(experiments.get(experiment, ()), protocol, key, column)
    if t is None or not invert:
        return t
    inv = lambda v: 1.0 / v if v != 0 else float("inf")  # noqa: E731
    return inv(t[0]), inv(t[2]), inv(t[1])


def _ratio_claim(claim: str, paper: str, claimed: float, protocol: str,
                 ratio: Optional[tuple[float, float, float]], note: str = "") -> Claim:
    if ratio is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", note)
    if math.isnan(ratio[0]):
        return Claim(claim, paper, protocol, "undefined (a method diverged: SNR nan)", "not reproduced",
                     note, float("nan"))
    ok = consistent(ratio, claimed / RATIO_TOLERANCE, claimed * RATIO_TOLERANCE)
    return Claim(claim, paper, protocol, fmt_interval(ratio, "x"), "reproduced" if ok else "not reproduced", note,
                 ratio[0])


def _percent_claim(claim: str, paper: str, claimed: float, protocol: str,
                   change: Optional[tuple[float, float, float]], note: str = "") -> Claim:
    if change is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", note)
    if math.isnan(change[0]):
        return Claim(claim, paper, protocol, "undefined (SNR nan)", "not reproduced", note, float("nan"))
    ok = consistent(change, claimed - PERCENT_TOLERANCE, claimed + PERCENT_TOLERANCE)
    return Claim(claim, paper, protocol, fmt_interval(change, "pp"), "reproduced" if ok else "not reproduced", note,
                 change[0])


def _threshold_claim(spec: tuple, master: Sequence[dict], acc50: Sequence[dict]) -> Claim:
    """A threshold claim: reproduced when the interval reaches the claimed side of the threshold."""
    _, criterion, claim, paper, table, key, column, threshold, direction, unit = spec
    t = _triple(master if table == "master" else acc50, CLS, key, column)
    if t is None:
        return Claim(claim, paper, CLS, "not measured (method not run)", "not measured", criterion)
    if math.isnan(t[0]):
        return Claim(claim, paper, CLS, "undefined (nan: diverged or not evaluated)", "not reproduced", criterion,
                     t[0])
    ok = t[2] > threshold if direction == ">" else t[1] < threshold
    return Claim(claim, paper, CLS, fmt_interval(t, unit), "reproduced" if ok else "not reproduced",
                 f"{criterion}; reproduced when the 90% interval reaches the claimed side", t[0])


def _interval_ratio_claim(claim: str, paper: str, claimed: float, protocol: str, row: Optional[dict],
                          prefix: str, what: str) -> Claim:
    """Reproduced when the bootstrap 90% interval of the ratio overlaps [claim / 3, claim * 3]."""
    if row is None or row.get(prefix) is None:
        return Claim(claim, paper, protocol, "not measured (method not run)", "not measured", what)
    t = (as_float(row.get(prefix)), as_float(row.get(f"{prefix}_lo")), as_float(row.get(f"{prefix}_hi")))
    measured = fmt_interval(t, "x")
    ok = consistent(t, claimed / RATIO_TOLERANCE, claimed * RATIO_TOLERANCE)
    return Claim(claim, paper, protocol, measured, "reproduced" if ok else "not reproduced", what, t[0])


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


def compare_claims(master: Sequence[dict], acc50: Sequence[dict], experiments: Mapping[str, Sequence[dict]],
                   factors: Sequence[dict], original: Sequence[dict] = (),
                   linearity: Sequence[dict] = ()) -> list[Claim]:
    """Each headline claim of the seed next to the measured figure and its interval, with a verdict.

    Args:
        master: master_results.csv rows; acc50: accuracy_at_50_gaussian.csv rows;
        experiments: {"loss" | "learning_rule" | "constraints" | "architecture": rows of
            experiment_<key>.csv} (their paired ratios to the reference decide the ratio claims);
        factors: factor_importance.csv rows;
        original: original_protocol.csv rows (the "375x" claim under the original protocol).
        linearity: lambda_linearity.csv rows (the lambda claim's intervals).
    """
    ex = experiments
    claims = [_ratio_claim("Loss function: margin (lambda=10) vs cross-entropy", "375x higher SNR", 375.0, CLS,
                           _experiment_ratio(ex, "loss", CLS, "cnn_margin_10"),
                           _clean_note(_experiment_ratio(ex, "loss", CLS, "cnn_margin_10",
                                                         "clean_ratio_to_reference")))]
    protocols = [p for p in ("pattern", CLS) if any(r.get("protocol") == p for r in master)] or [CLS]
    for p in protocols:
        claims.append(_ratio_claim("Learning rule: Hebbian vs SGD (both unconstrained)", "133x higher SNR", 133.0, p,
                                   _experiment_ratio(ex, "learning_rule", p, "sgd_uncon", invert=True),
                                   _clean_note(_experiment_ratio(ex, "learning_rule", p, "sgd_uncon",
                                                                 "clean_ratio_to_reference", invert=True))))
    for p in protocols:
        claims.append(_percent_claim("Constraints: tight [0, 0.5] vs unconstrained Hebbian", "-66% SNR", -66.0, p,
                                     _experiment_ratio(ex, "constraints", p, "hebbian_tight", "change_percent")))
        claims.append(_percent_claim(
            "Constraints: physical [0, 1] vs unconstrained Hebbian", "-38% SNR (headline: '-62%')", -38.3, p,
            _experiment_ratio(ex, "constraints", p, "hebbian_physical", "change_percent"),
            "the seed's headline '-62%' matches none of its own rows: its table gives physical = 62% of the "
            "unconstrained SNR (-38%) and tight -66%"))
    claims.append(_ratio_claim("Architecture: linear -> 2-layer CNN (cross-entropy)", "~10x higher SNR", 10.0, CLS,
                               _experiment_ratio(ex, "architecture", CLS, "cnn_ce")))
    claims.append(_ranking_claim(factors))
    claims += [_threshold_claim(spec, master, acc50) for spec in THRESHOLDS]
    claims.append(_linearity_claim(lambda_linearity(master, linearity)))
    if original:
        claims[1:1] = original_claims(original)
    return claims


def _linearity_claim(lin: Optional[Linearity]) -> Claim:
    """Reproduced when the interval of r reaches above LINEAR_R and a non-decreasing SNR is
    consistent with the intervals of both paired steps (neither lies wholly below 1)."""
    claim, paper = "SNR roughly linear in lambda (up to 10)", "roughly linear"
    rule = (f"reproduced when the 90% interval of Pearson r(lambda, clean SNR) reaches above {LINEAR_R:g} and "
            "neither paired step SNR(1)/SNR(0), SNR(10)/SNR(1) has its interval wholly below 1")
    if lin is None:
        return Claim(claim, paper, CLS, "not measured (CNN methods not run)", "not measured", rule)
    if math.isnan(lin.r[0]):
        return Claim(claim, paper, CLS, "undefined (non-finite or constant SNR)", "not reproduced", rule, lin.r[0])
    ok = lin.r[2] > LINEAR_R and lin.monotone_possible
    return Claim(claim, paper, CLS, _linearity_text(lin), "reproduced" if ok else "not reproduced", rule, lin.r[0])


def _clean_note(clean: Optional[tuple[float, float, float]]) -> str:
    text = "paired ratio of the mean SNR over the noisy grid"
    if clean is None or math.isnan(clean[0]):
        return text
    return f"{text}; on clean data {fmt_interval(clean, 'x')}"


_SEED_ORDER = ("Loss function", "Learning rule", "Architecture", "Constraints")


def _ranking_claim(factors: Sequence[dict]) -> Claim:
    """The seed's factor ranking: reproduced when it is consistent with the intervals, i.e. no
    factor the seed ranks higher has its best-to-worst ratio interval wholly below the interval of
    a factor it ranks lower (without intervals: the point order must match)."""
    rows = sorted((r for r in factors if r.get("protocol") == CLS), key=lambda r: as_float(r.get("rank")))
    order = tuple(str(r["factor"]) for r in rows)
    paper = " > ".join(_SEED_ORDER)
    if set(order) != set(_SEED_ORDER):
        return Claim("Factor ranking (by best-to-worst SNR ratio)", paper, CLS,
                     " > ".join(order) or "not measured", "not measured",
                     "needs all four experiments in the classification protocol")
    by_factor = {str(r["factor"]): _cell(r, "ratio_best_to_worst") for r in rows}
    contradicted = [(a, b) for i, a in enumerate(_SEED_ORDER) for b in _SEED_ORDER[i + 1:]
                    if by_factor[a][2] < by_factor[b][1] or (math.isnan(by_factor[a][0]) and not math.isnan(by_factor[b][0]))]
    note = ("point order; reproduced unless a factor the seed ranks higher has its ratio interval wholly below "
            "that of one it ranks lower" + (" (contradicted: " + "; ".join(f"{a} < {b}" for a, b in contradicted) + ")"
                                            if contradicted else "") + ": "
            + "; ".join(f"{r['factor']} {_factor_ratio(r)}" for r in rows))
    return Claim("Factor ranking (by best-to-worst SNR ratio)", paper, CLS, " > ".join(order),
                 "reproduced" if not contradicted else "not reproduced", note)


def _factor_ratio(r: dict) -> str:
    point = as_float(r.get("ratio_best_to_worst"))
    lo, hi = as_float(r.get("ratio_best_to_worst_lo")), as_float(r.get("ratio_best_to_worst_hi"))
    if math.isnan(lo) or math.isinf(point):
        return fmt_ratio(point)
    return fmt_interval((point, lo, hi), "x")


# --------------------------------------------------------------------------- rendering


def render_checklist(items: Sequence[CheckItem], ctx: dict) -> str:
    lines = ["# Validation checklist", "",
             "The seed's checklist, decided from master_results.csv and accuracy_at_50_gaussian.csv "
             f"(classification protocol: {ctx['task']}; point estimates over the test examples x {ctx['n_seeds']} "
             "seed(s), decided on the point; brackets: bootstrap 90% interval).", ""]
    lines.append(markdown_table(["", "Item", "Criterion", "Measured", "Result"],
                                [["[x]" if i.status == "PASS" else "[ ]", i.item, i.criterion, i.measured, i.status]
                                 for i in items]))
    n_pass = sum(i.status == "PASS" for i in items)
    lines += ["", f"{n_pass}/{len(items)} items pass."]
    return "\n".join(lines)


def render_claims(claims: Sequence[Claim], ctx: dict, warnings: Sequence[str] = ()) -> str:
    lines = ["# Compared with the paper's claims", "", *[f"**{w}**\n" for w in warnings],
             "Each claim of shared/seeds/robust-vision.txt next to what this run measured, with its bootstrap 90% "
             "interval (units: test examples x seeds for the classification protocol, images x seeds for the "
             "pattern protocol; ratios between methods are paired over the same units, from the experiment "
             "tables). A ratio claim counts as reproduced when the interval overlaps [claim / "
             f"{RATIO_TOLERANCE:g}, claim x {RATIO_TOLERANCE:g}], a percentage claim when it overlaps claim ± "
             f"{PERCENT_TOLERANCE:g} points, a threshold claim when it reaches the claimed side of the threshold. "
             "The Protocol column says under which protocol each claim was tested.", ""]
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
