"""``robust-vision-analyze prune``: magnitude pruning at several sparsities, then clean and
noisy accuracy / SNR of each pruned model (the local-learning seed prunes its trained
weights before analysing them; here any model's kernels).

The restored parameters are the EMA weights when the run used EMA (the ones its validation
metrics were computed with). Only kernels (dense / conv weights, ndim >= 2) are pruned, by
``robust_vision.pruning.magnitude_prune``; biases, norm scales and non-trainable state
(batch-norm statistics, fixed noise masks) are kept. There is no fine-tuning after pruning.
Every pruned model is evaluated with the robustness grid evaluator on the same noise draws
(same seed), so the rows differ only by the weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from robust_vision.analysis.common import Context, write_summary
from robust_vision.io import write_csv
from robust_vision.evaluation.robustness import evaluate_robustness
from robust_vision.pruning import is_kernel, magnitude_prune
from robust_vision.viz._common import (ACCURACY_LABEL, SNR_LABEL, figure_legend, legend_handle, level_colors,
                                       noise_title, panel_grid, plot_series, save_figure, style_context)

PRUNING_COLUMNS = ["model", "scope", "sparsity_target", "sparsity_measured", "noise_type", "level", "accuracy",
                   "confidence", "margin", "snr", "snr_median", "degradation", "n_images", "n_draws"]


# One compiled program per (sparsity, scope): run eagerly, the ranking is ~100 small ops that
# each compile on first use, which dominates the command's run time on a small model.
_prune = jax.jit(magnitude_prune, static_argnums=(1, 2))


def kernel_sparsity(params) -> float:
    """Fraction of exactly-zero entries among the kernels (ndim >= 2), as
    ``robust_vision.pruning.sparsity_of`` defines it, counted on the host."""
    leaves = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
              if is_kernel(path, leaf)]
    total = sum(leaf.size for leaf in leaves)
    if total == 0:
        raise ValueError("the model has no kernels (weights with ndim >= 2) to prune")
    return sum(int(np.count_nonzero(leaf == 0)) for leaf in leaves) / total


def check_sparsities(sparsities: Sequence[float]) -> list[float]:
    """Distinct targets in [0, 1], in increasing order."""
    if not sparsities:
        raise ValueError("--sparsities: give at least one target fraction, e.g. 0 0.5 0.8 0.9")
    bad = [s for s in sparsities if not 0.0 <= float(s) <= 1.0]
    if bad:
        raise ValueError(f"--sparsities {bad[0]}: a sparsity is the fraction of kernel weights set to zero, in [0, 1]")
    return sorted({float(s) for s in sparsities})


def run_prune(ctx: Context, *, sparsities: Sequence[float], scope: str = "global",
              noise_types: Sequence[str] = ("gaussian",), levels: Sequence[float] = (0.0, 0.3),
              n_draws: int | None = None, batch_size: int | None = None, seed: int | None = None
              ) -> dict[str, Any]:
    """Compute, write (pruning.csv, pruning.json, pruning.png/pdf) and return the summary."""
    targets = check_sparsities(sparsities)
    if scope not in ("global", "layer"):
        raise ValueError(f"--scope {scope!r}: use global (one threshold over all kernels) or layer")
    bad = [lv for lv in levels if not 0.0 <= float(lv) <= 1.0]
    if bad:
        raise ValueError(f"--levels {bad[0]}: severities are in [0, 1]")
    # The clean condition is the reference of every curve: always evaluate it.
    levels = sorted({0.0, *(float(lv) for lv in levels)})
    ecfg = ctx.cfg.evaluation
    n_draws = ecfg.n_draws if n_draws is None else n_draws
    batch_size = ecfg.batch_size if batch_size is None else batch_size
    seed = ecfg.seed if seed is None else seed
    model = ctx.model
    params, model_state = model.variables
    baseline_sparsity = kernel_sparsity(params)

    rows: list[dict[str, Any]] = []
    for target in targets:
        pruned, _ = _prune(params, target, scope)
        measured = kernel_sparsity(pruned)
        res = evaluate_robustness(model.forward, (pruned, model_state), ctx.images, ctx.labels,
                                  model_name=model.name, noise_types=list(noise_types), levels=levels,
                                  n_draws=n_draws, batch_size=batch_size, seed=seed, ece_bins=ecfg.ece_bins)
        for r in res.rows:
            rows.append({**{k: r[k] for k in PRUNING_COLUMNS if k in r}, "scope": scope,
                         "sparsity_target": target, "sparsity_measured": measured})
        clean = next(r for r in res.rows if r["level"] == 0.0)
        print(f"sparsity {target:.3f} (measured {measured:.4f}): clean accuracy {clean['accuracy']:.4f}")
    write_csv(ctx.out_dir / "pruning.csv", rows, PRUNING_COLUMNS)

    n_kernel = sum(int(np.size(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                   if is_kernel(path, leaf))
    summary = {
        "scope": scope, "sparsities": targets, "noise_types": list(noise_types), "levels": levels,
        "n_draws": n_draws, "seed": seed, "n_kernel_weights": n_kernel,
        "sparsity_before_pruning": baseline_sparsity,
        "clean_accuracy": {f"{r['sparsity_target']:g}": r["accuracy"] for r in rows
                           if r["level"] == 0.0 and r["noise_type"] == list(noise_types)[0]},
        "note": "kernels (ndim >= 2) pruned by magnitude, no fine-tuning; EMA weights when the run used EMA",
    }
    write_summary(ctx, "pruning", summary)
    _plot(ctx, rows, list(noise_types), levels, scope)
    return summary


def _plot(ctx: Context, rows: list[dict], noise_types: list[str], levels: list[float], scope: str) -> None:
    colors = dict(zip(levels, level_colors(len(levels))))
    with style_context(ctx.style):
        n = len(noise_types)
        # Accuracy row above the SNR row, one column per noise type (one noise type: side by side).
        fig, axes = panel_grid(2 * n, ncols_max=max(n, 2), sharey=False)
        for i, noise in enumerate(noise_types):
            for row_idx, (metric, ylabel, log) in enumerate((("accuracy", ACCURACY_LABEL, False),
                                                             ("snr", SNR_LABEL, True))):
                ax = axes[row_idx * n + i] if n > 1 else axes[row_idx]
                for level in levels:
                    sel = [r for r in rows if r["noise_type"] == noise and r["level"] == level]
                    x = np.array([r["sparsity_target"] for r in sel], float)
                    y = np.array([r[metric] if r[metric] is not None else np.nan for r in sel], float)
                    style = {"color": colors[level], "marker": "o", "linestyle": "-"}
                    plot_series(ax, x, y, style, log=log)
                if log:
                    ax.set_yscale("log")
                ax.set_xlabel(f"target sparsity ({scope} magnitude pruning)")
                ax.set_ylabel(ylabel)
                ax.set_title(noise_title(noise))
                if not log:
                    ax.set_ylim(-0.02, 1.02)
        handles = [legend_handle(f"severity {lv:g}" if lv > 0 else "clean", color=colors[lv], marker="o")
                   for lv in levels]
        figure_legend(fig, handles, ncols_max=6)
        fig.suptitle(f"{ctx.model.name}: accuracy and SNR after pruning ({ctx.split_name} split)")
        save_figure(fig, ctx.out_dir, "pruning", ctx.dpi, ctx.formats)
