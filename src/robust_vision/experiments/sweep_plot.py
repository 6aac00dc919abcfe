"""The sweep's ablation figure: SNR (log axis) and accuracy against one numeric parameter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from robust_vision.experiments.trials import DEFAULT_CONDITION, COMPLETE, read_trials, to_float


def numeric_column(rows: Sequence[dict], key: str) -> bool:
    values = [r.get(key) for r in rows if r.get("status") == COMPLETE]
    return bool(values) and all(not isinstance(v, bool) and v not in ("true", "false")
                                and math.isfinite(to_float(v)) for v in values)


def plot_sweep(trials_csv: str | Path, param: str, out_dir: str | Path, *, style: str = "publication",
               dpi: int = 150, formats: Sequence[str] = ("png", "pdf"), noisy_condition: str = DEFAULT_CONDITION,
               trial_ids: Sequence[str] | None = None) -> list[Path]:
    """The ablation figure of a one-parameter sweep, from trials.csv alone.

    Left: accuracy (clean and at the noisy condition) vs the parameter value; right: SNR
    (log axis, clean and noisy) vs the parameter. The x axis is logarithmic when the
    values are positive and span a factor of 20 or more. Writes ``sweep_<param>.<fmt>``.
    """
    from robust_vision.viz._common import (ACCURACY_LABEL, SNR_LABEL, PALETTE, check_options, figure_legend,
                                           legend_handle, panel_grid, plot_series, save_figure, style_context)

    formats = check_options(style, dpi, formats)
    rows, _ = read_trials(Path(trials_csv))
    keep = [r for r in rows.values()
            if r.get("status") == COMPLETE and (trial_ids is None or r["trial_id"] in trial_ids)]
    if not keep:
        return []
    keep.sort(key=lambda r: to_float(r[param]))
    x = [to_float(r[param]) for r in keep]
    import numpy as np

    from matplotlib.ticker import NullLocator

    xs = np.array(x)
    series = [("clean", "clean_{}", PALETTE[0], "o", "-"),
              (f"noisy ({noisy_condition})", "noisy_{}", PALETTE[1], "s", "--")]
    leaf = param.rsplit(".", 1)[-1]
    lambda_sweep = leaf == "margin_lambda"
    xlabel = f"Margin weight \u03bb ({param})" if lambda_sweep else param
    with style_context(style):
        fig, axes = panel_grid(2, ncols_max=2, panel_size=(3.6, 2.9))
        for ax, (metric, ylabel, log) in zip(axes, [("accuracy", ACCURACY_LABEL, False), ("snr", SNR_LABEL, True)]):
            for _, col, color, marker, ls in series:
                ys = np.array([to_float(r.get(col.format(metric))) for r in keep])
                plot_series(ax, xs, ys, {"color": color, "marker": marker, "linestyle": ls}, log=log)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title("Accuracy" if metric == "accuracy" else "SNR: true class vs strongest rival")
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(-0.02, 1.02)
            if (xs > 0).all() and xs.max() / xs.min() >= 20:
                ax.set_xscale("log")
            if len(set(x)) <= 8:  # a grid: label its values, not powers of ten
                ax.set_xticks(sorted(set(x)), [f"{v:g}" for v in sorted(set(x))])
                ax.xaxis.set_minor_locator(NullLocator())
        fig.suptitle("Lambda ablation" if lambda_sweep else f"Sweep of {param}")
        figure_legend(fig, [legend_handle(name, color=color, marker=marker, linestyle=ls)
                            for name, _, color, marker, ls in series])
        return save_figure(fig, out_dir, f"sweep_{leaf}", dpi, formats)
