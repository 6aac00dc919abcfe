"""Figures of the optional robustness-suite tables: corruption benchmark, attacks,
certification, calibration (reliability), conformal prediction and selective prediction.

Same contract as :mod:`robust_vision.viz.plots`: table path in, figures written to
``out_dir`` in every requested format, written paths returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_vision.viz._common import (DEFAULT_DPI, DEFAULT_FORMATS, DEFAULT_STYLE, SeriesStyle, check_options,
                                       figure_legend, legend_handle, level_colors, level_styles, noise_axis_label,
                                       noise_title, panel_grid, plot_series, pretty, read_table, resolve_styles,
                                       save_figure, select, sorted_by, style_context, unique)


def _model_legend(fig, models: Sequence[str], styles: Mapping[str, SeriesStyle], extra: Sequence = ()) -> None:
    figure_legend(fig, [legend_handle(m, color=styles[m]["color"], marker=styles[m]["marker"],
                                      linestyle=styles[m]["linestyle"]) for m in models] + list(extra))


# --------------------------------------------------------------------------- corruption benchmark


def plot_corruption_errors(corruption_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                           dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Heatmap of top-1 error per corruption (rows) and severity 1..5 (columns), one panel per
    model, annotated with the values and sharing one colour scale. Writes ``corruption_errors``."""
    formats = check_options(style, dpi, formats)
    table = read_table(corruption_csv, ("model", "corruption", "severity", "error"))
    models = unique(table["model"])
    corruptions = unique(table["corruption"])
    severities = sorted(unique(int(s) for s in table["severity"] if np.isfinite(s)))
    grids = {}
    for model in models:
        grid = np.full((len(corruptions), len(severities)), np.nan)
        for i, c in enumerate(corruptions):
            for j, s in enumerate(severities):
                mask = select(table, model=model, corruption=c, severity=float(s))
                if mask.any():
                    grid[i, j] = table["error"][mask][0]
        grids[model] = grid
    vmax = max(1e-9, max(float(np.nanmax(g)) if np.isfinite(g).any() else 0.0 for g in grids.values()))

    with style_context(style):
        height = max(2.4, 0.32 * len(corruptions) + 0.9)
        fig, axes = panel_grid(len(models), ncols_max=3, panel_size=(3.0 + 0.25 * len(severities), height),
                               extra_height=0.5)
        image = None
        for k, (ax, model) in enumerate(zip(axes, models)):
            grid = grids[model]
            image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
            ax.grid(False)
            ax.set_xticks(range(len(severities)), [str(s) for s in severities])
            ax.set_yticks(range(len(corruptions)), [pretty(c) for c in corruptions] if k % 3 == 0 else [])
            ax.set_xlabel("Severity (1 = mild, 5 = strong)")
            ax.set_title(model)
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    # Light text on the dark (low) end of viridis, dark text on the light end.
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.55 * vmax else "black")
        if image is not None:
            fig.colorbar(image, ax=axes, label="Top-1 error (fraction)", shrink=0.9)
        fig.suptitle("Corruption benchmark: error per corruption and severity")
        return save_figure(fig, out_dir, "corruption_errors", dpi, formats)


def plot_corruption_ce(summary_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                       dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                       model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Grouped horizontal bars per corruption (plus their mean) of mean error, corruption
    error (CE, normalised by the baseline) and relative CE, for the columns that hold
    values. Writes ``corruption_ce``."""
    formats = check_options(style, dpi, formats)
    table = read_table(summary_csv, ("model", "corruption", "mean_error"))
    models = unique(table["model"])
    corruptions = unique(table["corruption"])
    styles = resolve_styles(model_styles, models)
    metrics = [(c, lab) for c, lab in (("mean_error", "Mean error over severities (fraction)"),
                                       ("ce", "CE (error / baseline error)"),
                                       ("relative_ce", "Relative CE (vs clean error gap)"))
               if c in table and np.isfinite(table[c]).any()]
    rows = corruptions + ["mean"]
    height = max(2.6, 0.22 * len(rows) * max(1, len(models)) ** 0.5 + 1.0)
    with style_context(style):
        fig, axes = panel_grid(len(metrics), ncols_max=3, panel_size=(3.4, height), extra_height=0.6)
        bar_h = 0.8 / max(1, len(models))
        for k, (ax, (col, xlabel)) in enumerate(zip(axes, metrics)):
            for m_i, model in enumerate(models):
                values = []
                for c in corruptions:
                    mask = select(table, model=model, corruption=c)
                    values.append(table[col][mask][0] if mask.any() else np.nan)
                values = np.array(values)
                values = np.append(values, np.nanmean(values) if np.isfinite(values).any() else np.nan)
                y = np.arange(len(rows)) + (m_i - (len(models) - 1) / 2) * bar_h
                ax.barh(y, np.nan_to_num(values, nan=0.0), height=bar_h, color=styles[model]["color"])
            # Bars of all panels line up row by row, so only the first panel names the rows.
            row_names = [pretty(r) for r in corruptions] + ["Mean"]
            ax.set_yticks(range(len(rows)), row_names if k == 0 else [])
            ax.invert_yaxis()
            ax.grid(axis="y", visible=False)
            ax.axhline(len(corruptions) - 0.5, color="0.4", linewidth=0.6)
            if col != "mean_error":
                ax.axvline(1.0, color="0.4", linewidth=0.8, linestyle="--")
            ax.set_xlabel(xlabel)
        fig.suptitle("Corruption benchmark summary")
        figure_legend(fig, [legend_handle(m, color=styles[m]["color"], linewidth=6) for m in models])
        return save_figure(fig, out_dir, "corruption_ce", dpi, formats)


# --------------------------------------------------------------------------- attacks and certification


def plot_attack_curves(attack_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                       dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                       model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Robust accuracy vs perturbation budget eps, one panel per attack, one line per model.
    Writes ``attack_accuracy``."""
    formats, table, models, attacks, styles = _panels_of(attack_csv, ("model", "attack", "eps", "accuracy"), "attack",
                                                         style, dpi, formats, model_styles)
    with style_context(style):
        fig, axes = panel_grid(len(attacks), sharey=True)
        for k, (ax, attack) in enumerate(zip(axes, attacks)):
            for model, mask in _models_with_rows(table, models, attack=attack):
                eps, acc = sorted_by(table, mask, "eps", "accuracy")
                plot_series(ax, eps, acc, styles[model])
            _accuracy_panel(ax, k, attack.upper() if len(attack) <= 5 else pretty(attack),
                            "Perturbation budget ε (pixel scale [0, 1])", "Robust accuracy (fraction)", legend=False)
        fig.suptitle("Accuracy under adversarial attack")
        _model_legend(fig, models, styles)
        return save_figure(fig, out_dir, "attack_accuracy", dpi, formats)


def _panels_of(path: str | Path, required: Sequence[str], panel_column: str, style: str, dpi: int,
               formats: Sequence[str], model_styles: Mapping[str, SeriesStyle] | None,
               order: Callable[[Any], Any] | None = None):
    """What a one-panel-per-value figure reads: the checked formats, the table at ``path``, its
    models, the panel values (the distinct values of ``panel_column``; converted by ``order`` and
    sorted when given) and each model's line style."""
    formats = check_options(style, dpi, formats)
    table = read_table(path, required)
    models = unique(table["model"])
    panels = unique(table[panel_column]) if order is None else sorted(unique(order(v) for v in table[panel_column]))
    return formats, table, models, panels, resolve_styles(model_styles, models)


def _models_with_rows(table, models: Sequence[str], **where: Any):
    """(model, row mask) for each of ``models`` that has rows where the columns equal ``where``."""
    for model in models:
        mask = select(table, model=model, **where)
        if mask.any():
            yield model, mask


def _accuracy_panel(ax, k: int, title: str, xlabel: str, ylabel: str, *, legend: bool = True) -> None:
    """Title, axis labels (the y label on the first panel of each row of 4), a [0, 1] accuracy
    axis and the legend in the upper right (accuracy falls with the budget: the empty corner)."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if k % 4 == 0:
        ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if legend:
        ax.legend(loc="upper right", fontsize="small")


def plot_certified_accuracy(certified_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                            dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                            model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Certified accuracy vs L2 radius (randomized smoothing), one panel per smoothing
    sigma, one step line per model; the legend gives each model's abstain fraction.
    Writes ``certified_accuracy``."""
    required = ("model", "sigma", "radius", "certified_accuracy")
    formats, table, models, sigmas, styles = _panels_of(certified_csv, required, "sigma", style, dpi, formats,
                                                        model_styles, order=float)
    with style_context(style):
        fig, axes = panel_grid(len(sigmas), sharey=True)
        for k, (ax, sigma) in enumerate(zip(axes, sigmas)):
            for model, mask in _models_with_rows(table, models, sigma=sigma):
                radius, acc = sorted_by(table, mask, "radius", "certified_accuracy")
                label = model
                if "abstain_fraction" in table and np.isfinite(table["abstain_fraction"][mask]).any():
                    label = f"{model} (abstains {np.nanmean(table['abstain_fraction'][mask]):.0%})"
                st = styles[model]
                ax.step(radius, acc, where="post", color=st["color"], linestyle=st["linestyle"], label=label)
            # Per-panel legends: the abstain fraction depends on sigma. Certified accuracy
            # falls with the radius, so the upper right is the empty corner.
            _accuracy_panel(ax, k, f"Smoothing σ = {sigma:g}", "L2 radius (pixel scale [0, 1])",
                            "Certified accuracy (fraction)")
        fig.suptitle("Certified accuracy (randomized smoothing)")
        return save_figure(fig, out_dir, "certified_accuracy", dpi, formats)


def plot_verified_accuracy(verified_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                           dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Verified accuracy vs eps (bound propagation), one panel per model, one line per method,
    with the PGD accuracy on the same examples above them (dashed: an upper bound on the true
    robust accuracy, the verified ones are lower bounds). Writes ``verified_accuracy``."""
    formats = check_options(style, dpi, formats)
    table = read_table(verified_csv, ("model", "method", "norm", "eps", "pgd_accuracy", "verified_accuracy"))
    models = unique(table["model"])
    methods = unique(table["method"])
    colors = level_colors(len(methods))
    with style_context(style):
        fig, axes = panel_grid(len(models), sharey=True)
        for k, (ax, model) in enumerate(zip(axes, models)):
            for color, method in zip(colors, methods):
                mask = select(table, model=model, method=method)
                if mask.any():
                    eps, acc = sorted_by(table, mask, "eps", "verified_accuracy")
                    ax.plot(eps, acc, marker="o", color=color, label=f"verified ({method})")
            eps, acc = sorted_by(table, select(table, model=model, method=methods[0]), "eps", "pgd_accuracy")
            ax.plot(eps, acc, color="black", linestyle="--", marker="x", label="PGD (upper bound)")
            norm = str(table["norm"][select(table, model=model)][0])
            _accuracy_panel(ax, k, pretty(model), f"eps ({'Linf' if norm == 'linf' else 'L2'}, pixel scale [0, 1])",
                            "Accuracy (fraction)")
        fig.suptitle("Verified vs PGD accuracy")
        return save_figure(fig, out_dir, "verified_accuracy", dpi, formats)


# --------------------------------------------------------------------------- calibration


def _model_by_noise(models: Sequence[str], noise_types: Sequence[str], panel_size: tuple[float, float]):
    """A figure with a row of panels per model and a column per noise type (at most 4 columns
    a row): (figure, [(model, noise type, axes), ...] in reading order)."""
    ncols = len(noise_types)
    fig, axes = panel_grid(len(models) * ncols, ncols_max=min(ncols, 4), panel_size=panel_size)
    return fig, [(model, noise, axes[i * ncols + j]) for i, model in enumerate(models)
                 for j, noise in enumerate(noise_types)]


def _with_levels(table, cells):
    """Each (model, noise type, axes) cell with the sorted severity levels the table holds for it."""
    for model, noise, ax in cells:
        levels = sorted(unique(float(v) for v in table["level"][select(table, model=model, noise_type=noise)]))
        yield model, noise, ax, levels


def plot_reliability(reliability_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                     dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                     results_csv: str | Path | None = None) -> list[Path]:
    """Reliability diagrams: accuracy vs mean confidence per bin, rows = models, columns =
    noise types, clean vs the highest level in each panel (empty bins skipped, marker
    area grows with the bin's count). The diagonal is perfect calibration. When
    ``results_csv`` is given the legend shows each condition's ECE as the evaluator
    computed it (one definition, not re-derived from the bins). Writes ``reliability``."""
    formats = check_options(style, dpi, formats)
    table = read_table(reliability_csv, ("model", "noise_type", "level", "count", "mean_confidence", "accuracy"))
    ece_of: dict[tuple[str, str, float], float] = {}
    if results_csv is not None and Path(results_csv).is_file():
        res = read_table(results_csv, ("model", "noise_type", "level"))
        if "ece" in res:
            for m, n, lv, e in zip(res["model"], res["noise_type"], res["level"], res["ece"]):
                ece_of[(str(m), str(n), float(lv))] = float(e)
    models = unique(table["model"])
    noise_types = unique(table["noise_type"])
    with style_context(style):
        fig, cells = _model_by_noise(models, noise_types, (2.9, 2.9))
        for model, noise, ax, levels in _with_levels(table, cells):
            ax.plot([0, 1], [0, 1], color="0.55", linestyle=":", linewidth=1.0, label="perfect calibration")
            chosen = ([0.0] if 0.0 in levels else []) + [lv for lv in levels[-1:] if lv > 0]
            for color, marker, lv in zip(level_colors(len(chosen)), ("o", "s"), chosen):
                mask = select(table, model=model, noise_type=noise, level=lv) & (table["count"] > 0)
                if not mask.any():
                    continue
                conf, acc, count = sorted_by(table, mask, "mean_confidence", "accuracy", "count")
                name = "clean" if lv == 0 else f"level {lv:g}"
                ece = ece_of.get((model, noise, lv))
                if ece is not None and math.isfinite(ece):
                    name += f", ECE {ece:.3f}"
                sizes = 12 + 60 * count / count.max()
                ax.plot(conf, acc, color=color, linewidth=1.2)
                ax.scatter(conf, acc, s=sizes, color=color, marker=marker, label=name, zorder=3)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_aspect("equal")
            ax.set_title(noise_title(noise) if len(models) == 1 else f"{model}: {noise_title(noise)}")
            ax.set_xlabel("Mean confidence in bin")
            ax.set_ylabel("Accuracy in bin (fraction)")
            # Below the axes: inside, any corner can hold bins (under- or over-confident).
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False)
        fig.suptitle("Reliability diagrams (marker area ∝ examples in bin)")
        return save_figure(fig, out_dir, "reliability", dpi, formats)


# --------------------------------------------------------------------------- conformal and selective prediction


def plot_conformal(conformal_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                   dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                   model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Conformal prediction under degraded input: empirical coverage (top row, dashed line =
    the 1 - alpha target) and mean prediction-set size (bottom row) vs level, one column per
    noise type; colour = model, line style = method. One figure per alpha: ``conformal``
    (or ``conformal_alpha<a>`` when the table holds several alphas)."""
    formats = check_options(style, dpi, formats)
    table = read_table(conformal_csv, ("model", "method", "noise_type", "level", "alpha", "coverage",
                                       "mean_set_size"))
    models, methods = unique(table["model"]), unique(table["method"])
    noise_types = unique(table["noise_type"])
    alphas = sorted(unique(float(a) for a in table["alpha"]))
    styles = resolve_styles(model_styles, models)
    method_ls = {m: ("-", "--", "-.", ":")[i % 4] for i, m in enumerate(methods)}
    written: list[Path] = []
    for alpha in alphas:
        with style_context(style):
            ncols = len(noise_types)
            fig, axes = panel_grid(2 * ncols, ncols_max=ncols, panel_size=(3.2, 2.6))
            for j, noise in enumerate(noise_types):
                cov_ax, size_ax = axes[j], axes[ncols + j]
                cov_ax.axhline(1 - alpha, color="0.35", linestyle=":", linewidth=1.0)
                for model in models:
                    for method in methods:
                        mask = select(table, model=model, method=method, noise_type=noise, alpha=alpha)
                        if not mask.any():
                            continue
                        level, cov, size = sorted_by(table, mask, "level", "coverage", "mean_set_size")
                        st = dict(styles[model], linestyle=method_ls[method])
                        plot_series(cov_ax, level, cov, st)
                        plot_series(size_ax, level, size, st)
                cov_ax.set_title(noise_title(noise))
                if j == 0:
                    cov_ax.set_ylabel("Coverage (fraction)")
                    size_ax.set_ylabel("Mean set size (classes)")
                for ax in (cov_ax, size_ax):
                    ax.set_xlabel(noise_axis_label(noise))
            fig.suptitle(f"Conformal prediction under degraded input (α = {alpha:g}, target coverage {1 - alpha:g})")
            extra = [legend_handle(m, linestyle=method_ls[m]) for m in methods] if len(methods) > 1 else []
            extra.append(legend_handle(f"target 1 − α = {1 - alpha:g}", linestyle=":", color="0.35"))
            _model_legend(fig, models, styles, extra)
            stem = "conformal" if len(alphas) == 1 else f"conformal_alpha{alpha:g}"
            written += save_figure(fig, out_dir, stem, dpi, formats)
    return written


def plot_selective_accuracy(selective_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                            dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Selective accuracy vs coverage (accuracy on the inputs kept when the least confident
    are rejected); rows = models, columns = noise types, one line per level (colour
    darkest = clean). Writes ``selective_accuracy``."""
    formats = check_options(style, dpi, formats)
    table = read_table(selective_csv, ("model", "noise_type", "level", "coverage", "selective_accuracy"))
    models, noise_types = unique(table["model"]), unique(table["noise_type"])
    # One style per level over all panels (colour, marker and dashes), explained by one legend
    # below the panels, where it covers no curve.
    all_levels = sorted(unique(float(v) for v in table["level"]))
    style_of = dict(zip(all_levels, level_styles(len(all_levels))))
    with style_context(style):
        fig, cells = _model_by_noise(models, noise_types, (3.2, 2.7))
        for model, noise, ax, levels in _with_levels(table, cells):
            for lv in levels:
                mask = select(table, model=model, noise_type=noise, level=lv)
                cov, acc = sorted_by(table, mask, "coverage", "selective_accuracy")
                ax.plot(cov, acc, markevery=max(1, len(cov) // 6), markersize=4, linewidth=1.3,
                        **style_of[lv])
            ax.set_xlim(0, 1.02)
            ax.set_title(noise_title(noise) if len(models) == 1 else f"{model}: {noise_title(noise)}")
            ax.set_xlabel("Coverage (fraction of inputs accepted)")
            ax.set_ylabel("Selective accuracy (fraction)")
        figure_legend(fig, [legend_handle("clean" if lv == 0 else f"level {lv:g}", markersize=4, **style_of[lv])
                            for lv in all_levels], ncols_max=min(len(all_levels), 6))
        fig.suptitle("Selective prediction: accuracy vs coverage")
        return save_figure(fig, out_dir, "selective_accuracy", dpi, formats)
