"""The noise grid part: every model under every noise type x level (``robustness``), the
robustness_results.csv / robustness_<type>.csv tables and confidences.npz."""

from __future__ import annotations

from pathlib import Path


def run(ctx) -> dict:
    """The noise grid of every model: {"results": rows, "confidences": {...}, "comparison": the
    first two models compared (``report.comparison_at``; None for one model)}."""
    from robust_vision.evaluation.report import comparison_at
    from robust_vision.evaluation.robustness import evaluate_robustness

    ecfg = ctx.cfg.evaluation
    rows, confidences = [], {}
    for m in ctx.per_model("noise grid"):
        res = evaluate_robustness(m.forward, m.variables, None, None, model_name=m.name,
                                  noise_types=ctx.noise_types, levels=ctx.levels, n_draws=ecfg.n_draws,
                                  batch_size=ecfg.batch_size, seed=ecfg.seed, ece_bins=ecfg.ece_bins,
                                  batches=ctx.batches)
        rows += res.rows
        confidences.update(res.confidences)
    comparison = comparison_at(rows, ctx.models[0].name, ctx.models[1].name) if len(ctx.models) > 1 else None
    return {"results": rows, "confidences": confidences, "comparison": comparison}


def record(out, result: dict) -> None:
    out.rows, out.confidences, out.comparison = result["results"], result["confidences"], result["comparison"]


def summary(ctx, out) -> list[str]:
    from robust_vision.evaluation.report import format_comparison, format_summary

    lines = [format_summary(out.rows)]
    if out.comparison is not None:
        lines += ["", format_comparison(out.comparison)]
    return lines


def write(out_dir: Path, out) -> list[Path]:
    from robust_vision.evaluation.report import write_robustness_tables

    return write_robustness_tables(out_dir, out.rows, out.confidences)
