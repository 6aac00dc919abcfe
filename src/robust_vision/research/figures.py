"""The study's figures, drawn from its saved tables (rows as read back from the CSVs).

* ``snr_by_method``: mean SNR (noisy grid) and clean SNR per method, log axis, error bars =
  bootstrap 90% interval over examples (images) x seeds; one panel per protocol (the seed's "SNR by Method (Log Scale)").
* ``constraint_degradation``: SNR relative to the unconstrained Hebbian crossbar, and mean noisy
  accuracy, against the clip range (the seed's "Degradation Under Constraints").
* ``robustness_curves_<protocol>``: accuracy and SNR (log) vs noise level, one column per noise
  type, one line per method (band = bootstrap 90% interval).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from robust_vision.research.methods import METHODS
from robust_vision.research.tables import as_float
from robust_vision.viz._common import (figure_legend, legend_handle, noise_axis_label, noise_title, panel_grid,
                                       save_figure, series_styles, style_context)

__all__ = ["expected_figures", "plot_constraint_degradation", "plot_robustness_curves", "plot_snr_by_method"]

STYLES = series_styles([m.name for m in METHODS])  # one colour per method in every figure
_CONSTRAINT_ORDER = ("hebbian_uncon", "hebbian_loose", "hebbian_physical", "hebbian_tight")
_PROTOCOL_STYLE = {"classification": ("#0072B2", "o"), "pattern": ("#D55E00", "s")}


def expected_figures(out_dir: Path, protocols: Sequence[str], formats: Sequence[str]) -> list[Path]:
    """Every figure file a run over ``protocols`` writes."""
    stems = ["snr_by_method", "constraint_degradation", *(f"robustness_curves_{p}" for p in protocols)]
    return [Path(out_dir) / f"{s}.{fmt}" for s in stems for fmt in formats]


def _interval_errors(point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Asymmetric error bars (2, n) from an interval; 0 where the interval is undefined."""
    return np.nan_to_num(np.vstack([point - lo, hi - point]), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)


def plot_snr_by_method(master: Sequence[dict], out_dir: Path, *, style: str = "publication", dpi: int = 150,
                       formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    protocols = list(dict.fromkeys(str(r["protocol"]) for r in master))
    with style_context(style):
        fig, axes = panel_grid(len(protocols), ncols_max=2, panel_size=(5.2, 3.6), extra_height=1.2)
        for ax, protocol in zip(axes, protocols):
            rows = sorted((r for r in master if r["protocol"] == protocol), key=lambda r: as_float(r["rank"]))
            x = np.arange(len(rows))
            for offset, col, alpha, label in ((-0.2, "snr_noisy", 1.0, "noisy grid"), (0.2, "snr_clean", 0.45, "clean")):
                mean = np.array([as_float(r[col]) for r in rows])
                lo = np.array([as_float(r[f"{col}_lo"]) for r in rows])
                hi = np.array([as_float(r[f"{col}_hi"]) for r in rows])
                ok = np.isfinite(mean) & (mean > 0)
                colors = [STYLES[r["method"]]["color"] for r in rows]
                ax.bar(x[ok] + offset, mean[ok], width=0.38, color=np.array(colors)[ok], alpha=alpha,
                       yerr=_interval_errors(mean[ok], lo[ok], hi[ok]), capsize=2, error_kw={"linewidth": 0.8},
                       hatch=None if col == "snr_noisy" else "//", edgecolor="0.2", linewidth=0.4)
            for i, r in enumerate(rows):
                if r["status"] == "diverged" or not (math.isfinite(as_float(r["snr_noisy"])) and as_float(r["snr_noisy"]) > 0):
                    ax.annotate("diverged" if r["status"] == "diverged" else "n/a", (i, 1), xycoords=("data", "axes fraction"),
                                xytext=(0, -2), textcoords="offset points", ha="center", va="top", fontsize=7,
                                color="#CC0000", rotation=90)
            ax.set_yscale("log")
            ax.set_xticks(x, [r["method"] for r in rows], rotation=35, ha="right")
            ax.set_ylabel("SNR (geometric mean, log scale)")
            ax.set_title(f"{protocol.capitalize()} protocol")
        fig.suptitle("SNR by method (bars: geometric mean over examples x seeds, error bars: 90% bootstrap interval)")
        figure_legend(fig, [legend_handle("mean SNR over the noisy grid", color="0.3", linewidth=6),
                            legend_handle("clean SNR (hatched)", color="0.7", linewidth=6)])
        return save_figure(fig, out_dir, "snr_by_method", dpi, formats)


def plot_constraint_degradation(constraints: Sequence[dict], out_dir: Path, *, style: str = "publication",
                                dpi: int = 150, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    protocols = list(dict.fromkeys(str(r["protocol"]) for r in constraints))
    labels = {"hebbian_uncon": "None", "hebbian_loose": "Loose\n[0, 2]", "hebbian_physical": "Physical\n[0, 1]",
              "hebbian_tight": "Tight\n[0, 0.5]"}
    with style_context(style):
        fig, axes = panel_grid(2, ncols_max=2, panel_size=(4.2, 3.2))
        handles = []
        for protocol in protocols:
            by_key = {r["method_key"]: r for r in constraints if r["protocol"] == protocol}
            keys = [k for k in _CONSTRAINT_ORDER if k in by_key]
            x = np.arange(len(keys))
            color, marker = _PROTOCOL_STYLE.get(protocol, ("0.3", "o"))
            rel = np.array([as_float(by_key[k]["ratio_to_reference"]) * 100 for k in keys])
            rel_clean = np.array([as_float(by_key[k]["clean_ratio_to_reference"]) * 100 for k in keys])
            acc = np.array([as_float(by_key[k]["accuracy_noisy"]) for k in keys])
            axes[0].plot(x, rel, color=color, marker=marker, linestyle="-")
            axes[0].plot(x, rel_clean, color=color, marker=marker, linestyle="--", alpha=0.7)
            axes[1].plot(x, acc, color=color, marker=marker, linestyle="-")
            handles.append(legend_handle(f"{protocol} protocol", color=color, marker=marker))
            for ax in axes:
                ax.set_xticks(x, [labels[k] for k in keys])
        axes[0].axhline(100.0, color="0.5", linewidth=0.8)
        axes[0].set_ylabel("SNR, % of unconstrained")
        axes[0].set_title("SNR vs weight clip range")
        axes[1].set_ylabel("Accuracy, mean over noisy grid")
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].set_title("Noisy accuracy vs clip range")
        for ax in axes:
            ax.set_xlabel("Constraint tightness (clip range)")
        handles += [legend_handle("noisy-grid SNR", linestyle="-"), legend_handle("clean SNR", linestyle="--")]
        fig.suptitle("Degradation under hardware constraints (Hebbian crossbar)")
        figure_legend(fig, handles)
        return save_figure(fig, out_dir, "constraint_degradation", dpi, formats)


def plot_robustness_curves(curves: Sequence[dict], protocol: str, out_dir: Path, *, style: str = "publication",
                           dpi: int = 150, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    rows = [r for r in curves if r["protocol"] == protocol]
    noise_types = list(dict.fromkeys(str(r["noise_type"]) for r in rows))
    order = [m.name for m in METHODS]
    methods = sorted(dict.fromkeys(str(r["method"]) for r in rows), key=order.index)
    n = len(noise_types)
    with style_context(style):
        fig, axes = panel_grid(2 * n, ncols_max=n, panel_size=(3.3, 2.7))
        for col, noise in enumerate(noise_types):
            for row, (metric, log) in enumerate((("accuracy", False), ("snr", True))):
                ax = axes[row * n + col]
                for method in methods:
                    sel = sorted((r for r in rows if r["noise_type"] == noise and r["method"] == method),
                                 key=lambda r: as_float(r["level"]))
                    lvl = np.array([as_float(r["level"]) for r in sel])
                    y = np.array([as_float(r[metric]) for r in sel])
                    lo = np.array([as_float(r[f"{metric}_lo"]) for r in sel])
                    hi = np.array([as_float(r[f"{metric}_hi"]) for r in sel])
                    ok = np.isfinite(y) & ((y > 0) if log else True)
                    if not ok.any():
                        continue
                    st = STYLES[method]
                    ax.plot(lvl[ok], y[ok], color=st["color"], marker=st["marker"], linestyle=st["linestyle"])
                    band = ok & np.isfinite(lo) & np.isfinite(hi) & ((lo > 0) if log else True)
                    ax.fill_between(lvl[band], lo[band], hi[band], color=st["color"], alpha=0.12, linewidth=0)
                if log:
                    ax.set_yscale("log")
                    ax.set_ylabel("SNR (geometric mean, log)" if col == 0 else "")
                else:
                    ax.set_ylim(-0.02, 1.02)
                    ax.set_ylabel("Accuracy" if col == 0 else "")
                    ax.set_title(noise_title(noise))
                ax.set_xlabel(noise_axis_label(noise))
        fig.suptitle(f"Robustness curves, {protocol} protocol (band: 90% bootstrap interval over examples x seeds)")
        figure_legend(fig, [legend_handle(m, color=STYLES[m]["color"], marker=STYLES[m]["marker"],
                                          linestyle=STYLES[m]["linestyle"]) for m in methods])
        return save_figure(fig, out_dir, f"robustness_curves_{protocol}", dpi, formats)
