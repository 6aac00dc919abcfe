"""Core figures, drawn from saved tables only: training curves, robustness curves,
confidence distributions and cross-run comparisons.

Every function takes the table path(s), an output directory, ``style``
("publication" or "default"), ``dpi`` and ``formats`` (any of png/pdf/svg), writes one
file per format and returns the written paths. ``model_styles`` (see
:func:`robust_vision.viz.series_styles`) fixes the colour of each model so that it is
the same in every figure of a result set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from robust_vision.metrics import degradation_percent
from robust_vision.runs.paths import METRICS_FILE
from robust_vision.tables import ROBUSTNESS_CSV
from robust_vision.viz._common import (ACCURACY_LABEL, DEFAULT_DPI, DEFAULT_FORMATS, DEFAULT_STYLE, SNR_LABEL,
                                       PlotError, SeriesStyle, check_options, figure_legend, legend_handle,
                                       level_colors, balanced_columns, noise_axis_label, noise_title, panel_grid,
                                       plot_series, read_table, resolve_styles, save_figure, select, sorted_by,
                                       style_context, unique)

_ROBUSTNESS_REQUIRED = ("model", "noise_type", "level", "accuracy")


def run_labels(dirs: Sequence[Path]) -> list[str]:
    """Short distinct names for directories: the directory name, with parents added
    only where two names would otherwise collide (runs/a/seed0 vs runs/b/seed0)."""
    dirs = [Path(d).resolve() for d in dirs]
    depth = 1
    while True:
        labels = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(labels)) == len(labels) or depth >= max(len(d.parts) for d in dirs):
            return labels
        depth += 1


def _warn_dropped_snr(values: np.ndarray, where: str) -> None:
    bad = np.isinf(values) | (np.isfinite(values) & (values <= 0))
    if bad.any():
        warnings.warn(f"{where}: {int(bad.sum())} SNR value(s) are inf or <= 0 and cannot be drawn on a log "
                      "axis; they are left out of the figure (see the table for their values)", stacklevel=3)


# --------------------------------------------------------------------------- training curves


def plot_training_curves(run_dirs: Sequence[str | Path], out_dir: str | Path, style: str = DEFAULT_STYLE,
                         dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                         stem: str = "training_curves",
                         model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Loss, accuracy and SNR (log axis) vs epoch for one or several runs.

    Reads ``<run>/metrics.csv`` of every run directory. Colour = run (legend = run
    directory name); dashed = training, solid with markers = validation (drawn only on
    validated epochs). Writes ``out_dir/<stem>.<fmt>``.
    """
    formats = check_options(style, dpi, formats)
    if not run_dirs:
        raise PlotError("no run directory given; pass directories that hold metrics.csv")
    run_dirs = [Path(d) for d in run_dirs]
    tables = [read_table(d / METRICS_FILE, ("epoch", "train_loss", "train_accuracy")) for d in run_dirs]
    labels = run_labels(run_dirs)
    styles = resolve_styles(model_styles, labels)
    panels = [("loss", "Loss", "Loss (training objective, mean per example)", False),
              ("accuracy", "Accuracy", ACCURACY_LABEL, False),
              ("snr", "SNR: true class vs strongest rival", SNR_LABEL, True)]
    # A panel only for what some run recorded (an older metrics.csv may lack the SNR columns).
    panels = [p for p in panels if any(np.isfinite(t[c]).any() for t in tables
                                       for c in (f"train_{p[0]}", f"val_{p[0]}") if c in t)]
    with style_context(style):
        fig, axes = panel_grid(len(panels), ncols_max=3, panel_size=(3.5, 2.9))
        any_val = False
        for label, table in zip(labels, tables):
            st = styles[label]
            epoch = table["epoch"]
            for ax, (key, _, _, log) in zip(axes, panels):
                if f"train_{key}" in table:
                    if log:
                        _warn_dropped_snr(table[f"train_{key}"], f"{label} train_{key}")
                    plot_series(ax, epoch, table[f"train_{key}"], st, log=log, linestyle="--", marker="")
                if f"val_{key}" in table and np.isfinite(table[f"val_{key}"]).any():
                    any_val = True
                    if log:
                        _warn_dropped_snr(table[f"val_{key}"], f"{label} val_{key}")
                    plot_series(ax, epoch, table[f"val_{key}"], st, log=log, linestyle="-")
        for ax, (_, title, ylabel, log) in zip(axes, panels):
            ax.set_title(title)
            ax.set_xlabel("Epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if log:
                ax.set_yscale("log")
        fig.suptitle("Training curves")
        handles = [legend_handle(lab, color=styles[lab]["color"], marker=styles[lab]["marker"] if any_val else "")
                   for lab in labels]
        handles.append(legend_handle("training", linestyle="--"))
        if any_val:
            handles.append(legend_handle("validation", linestyle="-", marker="o"))
        figure_legend(fig, handles)
        return save_figure(fig, out_dir, stem, dpi, formats)


# --------------------------------------------------------------------------- robustness curves


def _degradation(table: dict, mask: np.ndarray) -> np.ndarray:
    """Degradation (%) of the masked rows, sorted by level; 0 at the clean level by definition.

    Uses the table's column when present, else derives it with the one definition in
    :func:`robust_vision.metrics.degradation_percent`.
    """
    level, acc = sorted_by(table, mask, "level", "accuracy")
    if "degradation" in table:
        (_, deg) = sorted_by(table, mask, "level", "degradation")
    else:
        clean = acc[level == 0.0]
        deg = np.array([degradation_percent(float(clean[0]), float(a)) if clean.size else math.nan for a in acc])
    return np.where((level == 0.0) & np.isnan(deg), 0.0, deg)


def plot_robustness_curves(results_csv: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                           dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                           model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Accuracy, SNR (log axis) and degradation vs noise level from ``robustness_results.csv``.

    Three figures, ``robustness_accuracy``, ``robustness_snr`` and ``robustness_degradation``,
    each with one panel per noise type and one line per model. The shaded band around each
    accuracy curve is a 95% normal-approximation binomial interval over ``n_images`` (when
    the column is present and there are at most four models); it shows how much of a gap
    between models is sampling noise. SNR values that a log axis cannot show (inf) are
    left out with a warning.
    """
    formats = check_options(style, dpi, formats)
    table = read_table(results_csv, _ROBUSTNESS_REQUIRED)
    models = unique(table["model"])
    styles = resolve_styles(model_styles, models)
    # Interval bands help with a few models and only clutter beyond that.
    show_bands = "n_images" in table and len(models) <= 4
    written: list[Path] = []
    for stem in _ROBUSTNESS_FIGURES:
        if stem == "robustness_snr" and "snr" not in table:
            continue
        with style_context(style):
            fig = _robustness_figure(stem, table, models, styles, show_bands)
            written += save_figure(fig, out_dir, stem, dpi, formats)
    return written


def _accuracy_series(ax, table, mask, st: SeriesStyle, label: str, bands: bool) -> None:
    """Accuracy vs level, with its 95% binomial band over ``n_images`` when ``bands``."""
    level, acc = sorted_by(table, mask, "level", "accuracy")
    plot_series(ax, level, acc, st)
    if bands:
        (_, n) = sorted_by(table, mask, "level", "n_images")
        with np.errstate(invalid="ignore", divide="ignore"):
            half = 1.96 * np.sqrt(acc * (1 - acc) / n)
        ok = np.isfinite(half)
        ax.fill_between(level[ok], (acc - half)[ok], (acc + half)[ok], color=st["color"], alpha=0.15, linewidth=0)


def _snr_series(ax, table, mask, st: SeriesStyle, label: str, bands: bool) -> None:
    level, snr = sorted_by(table, mask, "level", "snr")
    _warn_dropped_snr(snr, f"{label} snr")
    plot_series(ax, level, snr, st, log=True)


def _degradation_series(ax, table, mask, st: SeriesStyle, label: str, bands: bool) -> None:
    level = sorted_by(table, mask, "level")[0]
    plot_series(ax, level, _degradation(table, mask), st)


# The robustness figures: stem -> (title, y label, one model's series, the finish of each panel).
_ROBUSTNESS_FIGURES = {
    "robustness_accuracy": ("Accuracy under degraded input", ACCURACY_LABEL, _accuracy_series,
                            lambda ax: ax.set_ylim(-0.02, 1.02)),
    "robustness_snr": ("SNR (true class vs strongest rival) under degraded input", SNR_LABEL, _snr_series,
                       lambda ax: ax.set_yscale("log")),
    "robustness_degradation": ("Accuracy degradation relative to clean input", "Degradation (% of clean accuracy)",
                               _degradation_series, lambda ax: ax.axhline(0.0, color="0.5", linewidth=0.8)),
}


def _robustness_figure(stem: str, table, models: Sequence[str], styles: Mapping[str, SeriesStyle],
                       show_bands: bool):
    """One robustness figure: a panel per noise type, a line per model."""
    title, ylabel, series, finish = _ROBUSTNESS_FIGURES[stem]
    noise_types = unique(table["noise_type"])
    fig, axes = panel_grid(len(noise_types), sharey=stem != "robustness_snr")
    for ax, noise in zip(axes, noise_types):
        for model in models:
            mask = select(table, model=model, noise_type=noise)
            if mask.any():
                series(ax, table, mask, styles[model], f"{model} {noise}", show_bands)
        ax.set_title(noise_title(noise))
        ax.set_xlabel(noise_axis_label(noise))
        # Shared y axes: one label per row is enough (and leaves the panels wider).
        if stem == "robustness_snr" or axes.index(ax) % min(len(noise_types), 4) == 0:
            ax.set_ylabel(ylabel)
        finish(ax)
    fig.suptitle(title)
    handles = [legend_handle(m, color=styles[m]["color"], marker=styles[m]["marker"],
                             linestyle=styles[m]["linestyle"]) for m in models]
    if stem == "robustness_accuracy" and show_bands:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label="95% interval (binomial, n images)"))
    figure_legend(fig, handles)
    return fig


# --------------------------------------------------------------------------- confidence histograms


def _parse_confidence_key(key: str, path: Path) -> tuple[str, str, float]:
    parts = key.rsplit("|", 2)
    try:
        if len(parts) != 3:
            raise ValueError
        return parts[0], parts[1], float(parts[2])
    except ValueError:
        raise PlotError(f"{str(path)!r}: key {key!r} is not MODEL|NOISE_TYPE|LEVEL; regenerate the file "
                        "with robust-vision-eval") from None


def plot_confidence_histograms(confidences_npz: str | Path, out_dir: str | Path, style: str = DEFAULT_STYLE,
                               dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                               bins: int = 25) -> list[Path]:
    """Distribution of per-example max-softmax confidence, clean vs noisy.

    Reads ``confidences.npz`` (keys ``MODEL|NOISE_TYPE|LEVEL``). One panel per model and
    noise type (rows = models) overlays the clean level, a middle level and the highest
    level; each histogram is normalised to the fraction of examples so that conditions
    with different counts compare directly. Writes ``confidence_distributions.<fmt>``.
    """
    formats = check_options(style, dpi, formats)
    path = Path(confidences_npz)
    if not path.is_file():
        raise PlotError(f"{str(path)!r} not found; robust-vision-eval writes it next to {ROBUSTNESS_CSV}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float64).ravel() for k in data.files}
    except (OSError, ValueError) as exc:
        raise PlotError(f"{str(path)!r} is not a readable .npz file ({exc}); regenerate it") from None
    if not arrays:
        raise PlotError(f"{str(path)!r} holds no arrays; regenerate it with robust-vision-eval")
    entries = {_parse_confidence_key(k, path): v for k, v in arrays.items()}
    models = unique(m for m, _, _ in entries)
    noise_types = unique(n for _, n, _ in entries)
    edges = np.linspace(0.0, 1.0, bins + 1)
    line_styles = ("-", "--", ":")

    with style_context(style):
        # Rows = models when the noise types fit in one row; otherwise the columns that leave the
        # fewest empty panels.
        n_panels = len(models) * len(noise_types)
        ncols = len(noise_types) if len(noise_types) <= 4 else balanced_columns(n_panels)
        fig, axes = panel_grid(n_panels, ncols_max=ncols, panel_size=(3.3, 2.5), sharey=False)
        for i, model in enumerate(models):
            for j, noise in enumerate(noise_types):
                ax = axes[i * len(noise_types) + j]
                levels = sorted(lv for m, n, lv in entries if m == model and n == noise)
                noisy = [lv for lv in levels if lv > 0]
                chosen = ([0.0] if 0.0 in levels else []) + (
                    [noisy[(len(noisy) - 1) // 2]] if len(noisy) >= 2 else []) + noisy[-1:]
                colors = level_colors(len(chosen))
                for c, ls, lv in zip(colors, line_styles, chosen):
                    conf = entries[(model, noise, lv)]
                    conf = conf[np.isfinite(conf)]
                    if conf.size == 0:
                        continue
                    name = "clean" if lv == 0 else f"level {lv:g}"
                    ax.hist(conf, bins=edges, weights=np.full(conf.size, 1.0 / conf.size), histtype="step",
                            color=c, linestyle=ls, linewidth=1.6, label=f"{name} (mean {conf.mean():.2f})")
                ax.set_xlim(0.0, 1.0)
                ax.set_title(noise_title(noise) if len(models) == 1 else f"{model}: {noise_title(noise)}")
                ax.set_xlabel("Max softmax confidence")
                ax.set_ylabel("Fraction of examples")
                # Each panel has its own levels, so each gets its own small legend, in
                # headroom added above the bars so that it never hides them.
                ax.set_ylim(0.0, 1.5 * max(ax.get_ylim()[1], 1e-3))
                ax.legend(loc="upper left", fontsize="small", handlelength=1.8)
        fig.suptitle("Confidence distributions: clean vs degraded input")
        return save_figure(fig, out_dir, "confidence_distributions", dpi, formats)


# --------------------------------------------------------------------------- comparison


def plot_comparison(results_dirs: Sequence[str | Path], out_dir: str | Path, style: str = DEFAULT_STYLE,
                    dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS, *,
                    stem: str = "comparison",
                    model_styles: Mapping[str, SeriesStyle] | None = None) -> list[Path]:
    """Side-by-side comparison of several results directories.

    Reads ``<dir>/robustness_results.csv`` of each; top row: accuracy, bottom row: SNR
    (log axis), one column per noise type (union over the directories), one line per
    directory (``dir: model`` when a directory holds several models). Writes ``<stem>.<fmt>``.
    """
    formats = check_options(style, dpi, formats)
    if not results_dirs:
        raise PlotError(f"no results directory given; pass directories that hold {ROBUSTNESS_CSV}")
    dirs = [Path(d) for d in results_dirs]
    tables = [read_table(d / ROBUSTNESS_CSV, _ROBUSTNESS_REQUIRED) for d in dirs]
    series = []  # (label, table, model)
    for label, table in zip(run_labels(dirs), tables):
        models = unique(table["model"])
        series += [(label if len(models) == 1 else f"{label}: {m}", table, m) for m in models]
    styles = resolve_styles(model_styles, [s[0] for s in series])
    noise_types = unique(n for t in tables for n in t["noise_type"])
    has_snr = any("snr" in t for t in tables)
    rows = [("accuracy", ACCURACY_LABEL, False)] + ([("snr", SNR_LABEL, True)] if has_snr else [])

    with style_context(style):
        ncols = len(noise_types)
        fig, axes = panel_grid(ncols * len(rows), ncols_max=ncols, panel_size=(3.3, 2.7))
        for r, (key, ylabel, log) in enumerate(rows):
            for c, noise in enumerate(noise_types):
                ax = axes[r * ncols + c]
                for label, table, model in series:
                    mask = select(table, model=model, noise_type=noise)
                    if mask.any() and key in table:
                        level, y = sorted_by(table, mask, "level", key)
                        plot_series(ax, level, y, styles[label], log=log)
                if r == 0:  # the columns are the noise types: name them once, at the top
                    ax.set_title(noise_title(noise))
                ax.set_xlabel(noise_axis_label(noise))
                ax.set_ylabel(ylabel)
                if log:
                    ax.set_yscale("log")
                else:
                    ax.set_ylim(-0.02, 1.02)
        fig.suptitle("Comparison of runs under degraded input")
        figure_legend(fig, [legend_handle(s, color=styles[s]["color"], marker=styles[s]["marker"],
                                          linestyle=styles[s]["linestyle"]) for s in styles if s in
                            {x[0] for x in series}])
        return save_figure(fig, out_dir, stem, dpi, formats)
