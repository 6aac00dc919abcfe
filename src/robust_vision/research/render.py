"""Markdown renderings of the study's tables (the CSVs hold the full-precision numbers)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from robust_vision.research.methods import EXPERIMENTS, method_by_key
from robust_vision.research.tables import as_float, fmt_num, fmt_pm, fmt_ratio, markdown_table

__all__ = ["context_note", "render_accuracy50", "render_experiment", "render_factors", "render_master",
           "render_weights"]

_PROTOCOL_TITLES = {
    "classification": "Classification protocol",
    "pattern": "Pattern protocol (one crossbar per image; CNN methods do not apply)",
}


def context_note(ctx: dict) -> str:
    """The definitions line printed under every table: task, grid, aggregate, seeds."""
    return (f"Task: {ctx['task']}. Noise grid: {', '.join(ctx['noise_types'])} at levels "
            f"{', '.join(f'{v:g}' for v in ctx['levels'] if v > 0)} (plus clean 0.0). "
            "Mean SNR = geometric mean over the noisy grid of the per-condition SNR (itself the geometric mean "
            "over test images of p_y / max p_other, or s_target / (s_control + 1e-6) for the crossbar); "
            f"clean SNR separately. Values are mean ± std over {ctx['n_seeds']} seed(s) ({ctx['seeds_text']}).")


def _snr_cell(mean: Any, std: Any, status: Any) -> str:
    text = fmt_pm(mean, std)
    return f"diverged ({text})" if status == "diverged" else text


def _pct(x: Any) -> str:
    v = as_float(x)
    return "nan" if math.isnan(v) else f"{100 * v:.1f}%"


def _by_protocol(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["protocol"]), []).append(r)
    return out


def render_master(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Master results table", "", context_note(ctx), "",
             "Ranked by mean (noisy-grid) SNR; diverged methods rank last. Accuracy: clean test accuracy and the "
             "mean over the noisy grid. Relative to best: mean SNR / mean SNR of rank 1."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Rank", "Method", "Learning Rule", "Constraints", "Loss Type", "Mean SNR (noisy)", "Clean SNR",
             "Accuracy (clean)", "Accuracy (noisy mean)", "Relative to Best"],
            [[f"{int(r['rank'])}", r["method"], r["learning_rule"], r["constraints"], r["loss"],
              _snr_cell(r["snr_noisy"], r["snr_noisy_std"], r["status"]),
              _snr_cell(r["snr_clean"], r["snr_clean_std"], r["status"]),
              fmt_pm(r["accuracy_clean"], r["accuracy_clean_std"], percent=True),
              fmt_pm(r["accuracy_noisy"], r["accuracy_noisy_std"], percent=True),
              "nan" if r["relative_to_best_percent"] is None else f"{as_float(r['relative_to_best_percent']):.3g}%"]
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
              _snr_cell(r["snr_noisy"], r["snr_noisy_std"], r["status"]),
              _snr_cell(r["snr_clean"], r["snr_clean_std"], r["status"]),
              _pct(r["accuracy_clean"]), _pct(r["accuracy_noisy"]),
              fmt_ratio(r["ratio_to_reference"]),
              "baseline" if r["role"] == "reference" else (
                  "undefined" if math.isnan(as_float(r["change_percent"]))
                  else f"{as_float(r['change_percent']):+.1f}%"),
              fmt_ratio(r["clean_ratio_to_reference"])] for r in prows]))
    return "\n".join(parts)


def render_factors(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Factor importance ranking", "", context_note(ctx), "",
             "Importance = mean SNR of the best method / mean SNR of the worst within each controlled experiment "
             "(architecture: the cross-entropy pair). Effect is written the seed's way: a ratio, or for "
             "constraints the change from unconstrained to tight."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Rank", "Factor", "Best / worst SNR", "Effect", "Best", "Worst", "Clean ratio", "Note"],
            [[f"{int(r['rank'])}", r["factor"], fmt_ratio(r["ratio_best_to_worst"]), r["effect"], r["best_method"],
              r["worst_method"], fmt_ratio(r["clean_ratio_best_to_worst"]), r["note"] or ""] for r in prows]))
    return "\n".join(parts)


def render_accuracy50(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Accuracy at 50% Gaussian noise (std 0.5)", "", context_note(ctx), "",
             "Degradation = (clean - noisy) / clean accuracy, from the seed means."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Method", "Clean Acc", "50% Noise Acc", "Degradation", "SNR at 50% noise", "Status"],
            [[r["method"], fmt_pm(r["accuracy_clean"], r["accuracy_clean_std"], percent=True),
              fmt_pm(r["accuracy_gauss50"], r["accuracy_gauss50_std"], percent=True),
              "nan" if r["degradation_percent"] is None else f"{-as_float(r['degradation_percent']):+.1f}%",
              _snr_cell(r["snr_gauss50"], r["snr_gauss50_std"], r["status"]), r["status"]] for r in prows]))
    return "\n".join(parts)


def render_weights(rows: Sequence[dict], ctx: dict) -> str:
    parts = ["# Weight statistics by method (local rules)", "",
             "Final crossbar weights W, finite entries only; mean and std are seed means, min / max over all "
             "seeds. Diverged: non-finite weights or max|W| above the divergence bound "
             f"({fmt_num(ctx.get('bound'))})."]
    for protocol, prows in _by_protocol(rows).items():
        parts += ["", f"## {_PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        parts.append(markdown_table(
            ["Method", "Weight Mean", "Weight Std", "Weight Range", "max abs", "Diverged", "Notes"],
            [[r["method"], fmt_num(r["mean"]), fmt_num(r["std"]), f"[{fmt_num(r['min'])}, {fmt_num(r['max'])}]",
              fmt_num(r["max_abs"]), r["diverged"], r["note"] or ""] for r in prows]))
    return "\n".join(parts)
