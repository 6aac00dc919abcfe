"""Markdown renderings of the study's tables (the CSVs hold the full-precision numbers)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from robust_vision.research.methods import EXPERIMENTS, method_by_key
from robust_vision.research.tables import as_float, fmt_num, fmt_ratio_ci, markdown_table

__all__ = ["render_original", "context_note", "render_accuracy50", "render_experiment", "render_factors", "render_master",
           "render_linearity", "render_weights"]

_PROTOCOL_TITLES = {
    "classification": "Classification protocol",
    "pattern": ("Pattern protocol (one crossbar or one original-code MLP per image; CNN methods do not apply; "
                "MLP SNR = exp(mean(out0 - out1)))"),
}


def context_note(ctx: dict) -> str:
    """The definitions line printed under every table: task, grid, aggregate, seeds."""
    return (f"Task: {ctx['task']}. Noise grid: {', '.join(ctx['noise_types'])} at levels "
            f"{', '.join(f'{v:g}' for v in ctx['levels'] if v > 0)} (plus clean 0.0). "
            "Mean SNR = geometric mean over the noisy grid of the per-condition SNR (itself the geometric mean "
            "over test images of p_y / max p_other, or s_target / (s_control + 1e-6) for the crossbar); "
            f"clean SNR separately. {ctx['n_seeds']} seed(s) ({ctx['seeds_text']}). Each figure is the statistic "
            "over the test examples x seeds (classification) or images x seeds (pattern), pooled; brackets: its "
            "percentile bootstrap 90% interval over those units. Ratios between methods are paired (same units "
            "resampled for both).")


def _snr_cell(r: dict, col: str) -> str:
    text = fmt_ci(r[col], r[f"{col}_lo"], r[f"{col}_hi"])
    return f"diverged ({text})" if r["status"] == "diverged" else text


def _pct_cell(r: dict, col: str) -> str:
    return fmt_ci(r[col], r[f"{col}_lo"], r[f"{col}_hi"], percent=True)


def _relative(r: dict) -> str:
    f = lambda v: "nan" if math.isnan(as_float(v)) else f"{as_float(v):.3g}%"  # noqa: E731
    v, lo, hi = (r.get(c) for c in _ci_cols("relative_to_best_percent"))
    return f(v) if math.isnan(as_float(lo)) else f"{f(v)} [{f(lo)}, {f(hi)}]"


def _ci_cols(name: str) -> tuple[str, str, str]:
    return name, f"{name}_lo", f"{name}_hi"


def _change_cell(r: dict) -> str:
    if r["role"] == "reference":
        return "baseline"
    v, lo, hi = (as_float(r.get(c)) for c in _ci_cols("change_percent"))
    if math.isnan(v):
        return "undefined"
    return f"{v:+.1f}%" + ("" if math.isnan(lo) else f" [{lo:+.1f}%, {hi:+.1f}%]")


def _by_protocol(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["protocol"]), []).append(r)
    return out


def render_master(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Master results table", "", context_note(ctx), "",
             "Ranked by mean (noisy-grid) SNR; diverged methods rank last. Accuracy: clean test accuracy and the "
             "mean over the noisy grid. Relative to best: mean SNR / mean SNR of rank 1 (paired interval)."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Rank", "Method", "Learning Rule", "Constraints", "Loss Type", "Mean SNR (noisy)", "Clean SNR",
             "Accuracy (clean)", "Accuracy (noisy mean)", "Relative to Best"],
            [[f"{int(r['rank'])}", r["method"], r["learning_rule"], r["constraints"], r["loss"],
              _snr_cell(r, "snr_noisy"), _snr_cell(r, "snr_clean"), _pct_cell(r, "accuracy_clean"),
              _pct_cell(r, "accuracy_noisy"), _relative(r)]
             for r in prows]))
    return "\n".join(parts)


def render_experiment(rows: Sequence[dict], experiment_key: str, ctx: dict) -> str:
    ex = next(e for e in EXPERIMENTS if e.key == experiment_key)
    ref_name = method_by_key(ex.reference).name
    parts = [f"# Experiment: {ex.title}", "", f"Held fixed: {ex.fixed}.", "", context_note(ctx), "",
             f"Ratio / change: mean SNR of the row relative to the reference ({ref_name})."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            [ex.factor, "Method", "Mean SNR (noisy)", "Clean SNR", "Accuracy (clean)", "Accuracy (noisy mean)",
             "SNR ratio to reference", "Change from reference", "Clean SNR ratio"],
            [[str(r["varied"]), r["method"] + (" (reference)" if r["role"] == "reference" else ""),
              _snr_cell(r, "snr_noisy"), _snr_cell(r, "snr_clean"), _pct_cell(r, "accuracy_clean"),
              _pct_cell(r, "accuracy_noisy"), fmt_ratio_ci(*(r[c] for c in _ci_cols("ratio_to_reference"))),
              _change_cell(r), fmt_ratio_ci(*(r[c] for c in _ci_cols("clean_ratio_to_reference")))]
             for r in prows]))
    return "\n".join(parts)


def render_factors(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Factor importance ranking", "", context_note(ctx), "",
             "Importance = mean SNR of the best method / mean SNR of the worst within each controlled experiment "
             "(architecture: the cross-entropy pair), with its paired bootstrap 90% interval. Effect is written the "
             "seed's way: a ratio, or for constraints the change from unconstrained to tight."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Rank", "Factor", "Best / worst SNR", "Effect", "Best", "Worst", "Clean ratio", "Note"],
            [[f"{int(r['rank'])}", r["factor"], fmt_ratio_ci(*(r[c] for c in _ci_cols("ratio_best_to_worst"))),
              r["effect"], r["best_method"], r["worst_method"],
              fmt_ratio_ci(*(r[c] for c in _ci_cols("clean_ratio_best_to_worst"))), r["note"] or ""]
             for r in prows]))
    return "\n".join(parts)


def render_accuracy50(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Accuracy at 50% Gaussian noise (std 0.5)", "", context_note(ctx), "",
             "Degradation = (clean - noisy) / clean accuracy (paired interval over the same units)."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Method", "Clean Acc", "50% Noise Acc", "Degradation", "SNR at 50% noise", "Status"],
            [[r["method"], _pct_cell(r, "accuracy_clean"), _pct_cell(r, "accuracy_gauss50"), _degradation(r),
              _snr_cell(r, "snr_gauss50"), r["status"]] for r in prows]))
    return "\n".join(parts)


def _degradation(r: dict) -> str:
    v, lo, hi = (as_float(r.get(c)) for c in _ci_cols("degradation_percent"))
    if math.isnan(v):
        return "nan"
    return f"{-v:+.1f}%" + ("" if math.isnan(lo) else f" [{-hi:+.1f}%, {-lo:+.1f}%]")


def render_weights(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Weight statistics by method (local rules)", "",
             "Final crossbar weights W, finite entries only; mean, std and max abs are means over seeds of the "
             "per-seed value (brackets: percentile bootstrap 90% interval over seeds, shown with 2 or more "
             "seeds); the range is min / max over all seeds. Diverged: non-finite weights or max|W| above the "
             f"divergence bound ({fmt_num(ctx.get('bound'))})."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Method", "Weight Mean", "Weight Std", "Weight Range", "max abs", "Diverged", "Notes"],
            [[r["method"], _maybe_ci(r, "mean"), _maybe_ci(r, "std"), f"[{fmt_num(r['min'])}, {fmt_num(r['max'])}]",
              _maybe_ci(r, "max_abs"), r["diverged"], r["note"] or ""] for r in prows]))
    return "\n".join(parts)


def _maybe_ci(r: dict, col: str) -> str:
    """'point [lo, hi]', or the point alone when there is no interval (one seed)."""
    point, lo, hi = (r.get(c) for c in _ci_cols(col))
    return fmt_num(point) if math.isnan(as_float(lo)) else fmt_ci(point, lo, hi)


def render_linearity(rows: Sequence[dict], ctx: dict) -> str:
    """The "SNR roughly linear in lambda" test: clean SNRs, paired steps, Pearson r, with intervals."""
    parts = ["# Clean SNR against the margin weight lambda", "",
             "Cross-entropy (lambda 0) and the margin loss at lambda 1 and 10, same model and data. Steps: paired "
             "SNR ratios between successive lambdas (same units resampled for both). Pearson r of lambda against "
             "the clean SNR (and its log); its interval resamples the units of the three methods jointly and "
             "recomputes the three SNRs each time. With three lambdas, r mostly says how far SNR(10) stands above "
             "the other two.", ""]
    num = lambda r, c: fmt_ci(*(r[k] for k in _ci_cols(c)))  # noqa: E731
    ratio = lambda r, c: fmt_ratio_ci(*(r[k] for k in _ci_cols(c)))  # noqa: E731
    parts.append(markdown_table(
        ["Protocol", "SNR lambda=0", "SNR lambda=1", "SNR lambda=10", "SNR(1)/SNR(0)", "SNR(10)/SNR(1)",
         "Pearson r", "r of log SNR", "Units"],
        [[r["protocol"], num(r, "snr_clean_lambda_0"), num(r, "snr_clean_lambda_1"), num(r, "snr_clean_lambda_10"),
          ratio(r, "ratio_lambda_1_to_0"), ratio(r, "ratio_lambda_10_to_1"), num(r, "pearson_r"),
          num(r, "pearson_r_log"), f"{int(as_float(r['n_units']))} ({int(as_float(r['n_seeds']))} seed(s))"]
         for r in rows]))
    parts += ["", context_note(ctx)]
    return "\n".join(parts)


def fmt_ci(point: Any, lo: Any, hi: Any, *, percent: bool = False) -> str:
    """'point [lo, hi]' (the bootstrap 90% interval); percentages when ``percent``."""
    if percent:
        f = lambda v: "nan" if math.isnan(as_float(v)) else f"{100 * as_float(v):.1f}%"  # noqa: E731
    else:
        f = fmt_num
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def render_original(rows: Sequence[dict], ctx: dict) -> str:
    """The original loss experiment (per-image MLPs) with bootstrap intervals."""
    parts = ["# Original loss experiment (the seed's code, pattern protocol)", "",
             f"Images: {ctx.get('pattern_images', 'see results.json')}. One MLP per image (D -> 128 ReLU -> 2, no "
             "bias, U(-0.01, 0.01)), plain gradient descent (lr 0.001, 60 steps) on MSE to [1, 0] + lambda * "
             "(-log max(out0 - out1, 0.1)); tested on Gaussian sigma 0.1..0.7 (clipped, one draw per image and "
             "level). Original SNR = arithmetic mean of out0 / (out1 + 1e-9) on raw outputs; log-ratio SNR = "
             "exp(mean(out0 - out1)). Brackets: bootstrap 90% interval over images x seeds "
             f"({ctx['seeds_text']}). Ill-conditioned: control output <= 0 or within 1e-6 of zero.", ""]
    parts.append(markdown_table(
        ["Method", "lambda", "Original SNR", "Log-ratio SNR", "Accuracy", "Ill-conditioned examples",
         "Original SNR / lambda=0", "Log-ratio SNR / lambda=0", "Warning"],
        [[r["method"], f"{as_float(r['lambda']):g}",
          fmt_ci(r["snr_original"], r["snr_original_lo"], r["snr_original_hi"]),
          fmt_ci(r["snr_log_ratio"], r["snr_log_ratio_lo"], r["snr_log_ratio_hi"]),
          fmt_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], percent=True),
          fmt_ci(r["frac_ill_conditioned"], r["frac_ill_conditioned_lo"], r["frac_ill_conditioned_hi"], percent=True),
          fmt_ci(r["ratio_original_to_mse"], r["ratio_original_to_mse_lo"], r["ratio_original_to_mse_hi"]),
          fmt_ci(r["ratio_log_to_mse"], r["ratio_log_to_mse_lo"], r["ratio_log_to_mse_hi"]),
          "ratio ill-conditioned" if r["ill_conditioned"] else ""] for r in rows]))
    return "\n".join(parts)
