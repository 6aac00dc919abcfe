"""Redraw every figure that saved tables allow, and the ``robust-vision-plot`` command.

A *run directory* (from training) holds ``metrics.csv``; a *results directory* (from
``robust-vision-eval``) holds ``robustness_results.csv`` and/or ``confidences.npz`` and the
optional robustness-suite tables. A directory can be both. Where the figures go:

* ``out_dir`` given and one directory: every figure in ``out_dir``;
* ``out_dir`` given and several directories: each directory's own figures in
  ``out_dir/<dir name>/``, the cross-directory figures (training curves of all runs
  overlaid, comparison of all results) in ``out_dir``;
* ``out_dir`` not given: each directory's own figures in ``<dir>/plots/``, the
  cross-directory figures in ``plots/`` of the directories' common parent.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from robust_vision.viz._common import (DEFAULT_DPI, DEFAULT_FORMATS, DEFAULT_STYLE, STYLES, PlotError, check_options,
                                       read_table, series_styles, unique)
from robust_vision.runs.paths import METRICS_FILE
from robust_vision.tables import (ATTACK_RESULTS_CSV, CERTIFIED_CSV, CONFIDENCES_NPZ, CONFORMAL_CSV,
                                  CORRUPTION_RESULTS_CSV, CORRUPTION_SUMMARY_CSV, FIGURE_TABLES, RELIABILITY_CSV,
                                  ROBUSTNESS_CSV, SELECTIVE_CSV, VERIFIED_CSV)
from robust_vision.viz.plots import (plot_comparison, plot_confidence_histograms, plot_robustness_curves,
                                     plot_training_curves, run_labels)
from robust_vision.viz.suite import (plot_attack_curves, plot_certified_accuracy, plot_conformal, plot_corruption_ce,
                                     plot_corruption_errors, plot_reliability, plot_selective_accuracy,
                                     plot_verified_accuracy)

_KNOWN_FILES = (METRICS_FILE, *FIGURE_TABLES)
# The figure of each table of a results directory, in order, and whether it takes the result
# set's model colours.
_FIGURES = ((ROBUSTNESS_CSV, plot_robustness_curves, True), (CONFIDENCES_NPZ, plot_confidence_histograms, False),
            (CORRUPTION_RESULTS_CSV, plot_corruption_errors, False), (CORRUPTION_SUMMARY_CSV, plot_corruption_ce, True),
            (ATTACK_RESULTS_CSV, plot_attack_curves, True), (CERTIFIED_CSV, plot_certified_accuracy, True),
            (VERIFIED_CSV, plot_verified_accuracy, False), (RELIABILITY_CSV, plot_reliability, False),
            (CONFORMAL_CSV, plot_conformal, True), (SELECTIVE_CSV, plot_selective_accuracy, False))
# Tables whose "model" column names the models of a result set (for consistent colours).
_MODEL_TABLES = (ROBUSTNESS_CSV, CORRUPTION_SUMMARY_CSV, ATTACK_RESULTS_CSV, CERTIFIED_CSV, CONFORMAL_CSV)


def _expected() -> str:
    return (f"a run directory holds {METRICS_FILE}; a results directory holds {ROBUSTNESS_CSV} "
            f"(or any of {', '.join(FIGURE_TABLES[1:])})")


def classify(path: str | Path) -> tuple[Path, bool, bool]:
    """(directory, is_run_dir, is_results_dir) for a directory or one of its known table files."""
    path = Path(path)
    if path.is_file() and path.name in _KNOWN_FILES:
        path = path.parent  # a table was named directly: plot its directory
    if not path.exists():
        raise PlotError(f"{str(path)!r} does not exist; {_expected()}")
    if not path.is_dir():
        raise PlotError(f"{str(path)!r} is not a directory; {_expected()}")
    is_run = (path / METRICS_FILE).is_file()
    is_results = any((path / name).is_file() for name in FIGURE_TABLES)
    if not (is_run or is_results):
        raise PlotError(f"{str(path)!r} holds no tables to plot; {_expected()}")
    return path, is_run, is_results


def _model_styles(directory: Path) -> dict:
    """One colour per model over all tables of a results directory (evaluator's order)."""
    names: list[str] = []
    for name in _MODEL_TABLES:
        if (directory / name).is_file():
            names += list(read_table(directory / name, ("model",))["model"])
    return series_styles(unique(names))


def _results_figures(d: Path, out: Path, style: str, dpi: int, formats: list[str]) -> list[Path]:
    """Every figure the tables of one results directory allow."""
    styles = _model_styles(d)
    kw = {"style": style, "dpi": dpi, "formats": formats}
    written: list[Path] = []
    for name, plot, styled in _FIGURES:
        if (d / name).is_file():
            extra = {"model_styles": styles} if styled else {}
            if plot is plot_reliability:  # the legend shows each condition's ECE from the grid
                extra = {"results_csv": d / ROBUSTNESS_CSV}
            written += plot(d / name, out, **extra, **kw)
    return written


def redraw(paths: Sequence[str | Path], out_dir: str | Path | None = None, style: str = DEFAULT_STYLE,
           dpi: int = DEFAULT_DPI, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Draw every figure that the tables in ``paths`` allow; returns the written files.

    ``paths`` are run directories and/or results directories (detected by the files they
    hold; a path to one of the known tables stands for its directory). See the module
    docstring for where figures go. Raises :class:`PlotError` for a missing, empty or
    unrecognised directory, naming the files that were expected.
    """
    formats = check_options(style, dpi, formats)
    if not paths:
        raise PlotError(f"no directory given; {_expected()}")
    dirs: list[Path] = []
    run_dirs: list[Path] = []
    results_dirs: list[Path] = []
    for p in paths:
        d, is_run, is_results = classify(p)
        if d.resolve() in {x.resolve() for x in dirs}:
            continue  # the same directory named twice (or via one of its tables)
        dirs.append(d)
        if is_run:
            run_dirs.append(d)
        if is_results:
            results_dirs.append(d)

    several = len(dirs) > 1
    labels = dict(zip(dirs, run_labels(dirs)))
    if out_dir is not None:
        out_dir = Path(out_dir)
        own_out = {d: (out_dir / labels[d] if several else out_dir) for d in dirs}
        cross_out = out_dir
    else:
        own_out = {d: d / "plots" for d in dirs}
        cross_out = Path(os.path.commonpath([str(d.resolve()) for d in dirs])) / "plots"

    kw = {"style": style, "dpi": dpi, "formats": formats}
    written: list[Path] = []
    for d in dirs:
        if d in run_dirs:
            written += plot_training_curves([d], own_out[d], **kw)
        if d in results_dirs:
            written += _results_figures(d, own_out[d], style, dpi, formats)
    if len(run_dirs) > 1:
        written += plot_training_curves(run_dirs, cross_out, stem="training_curves_comparison", **kw)
    comparable = [d for d in results_dirs if (d / ROBUSTNESS_CSV).is_file()]
    if len(comparable) > 1:
        written += plot_comparison(comparable, cross_out, stem="robustness_curves_comparison", **kw)
    return written


class _ArgumentError(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``robust-vision-plot`` argument parser."""
    parser = _Parser(
        prog="robust-vision-plot",
        description="Redraw figures from saved tables (run directories with metrics.csv, results directories "
                    "with robustness_results.csv, ...) without re-running a model.")
    parser.add_argument("paths", nargs="+", metavar="DIR", help="run and/or results directories")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="write figures here (default: <DIR>/plots for each directory)")
    parser.add_argument("--dpi", type=int, default=DEFAULT_DPI, help=f"PNG resolution (default {DEFAULT_DPI})")
    parser.add_argument("--style", choices=STYLES, default=DEFAULT_STYLE,
                        help=f"figure style (default {DEFAULT_STYLE})")
    parser.add_argument("--format", default=",".join(DEFAULT_FORMATS), metavar="FMT[,FMT]",
                        help=f"comma-separated formats among png,pdf,svg (default {','.join(DEFAULT_FORMATS)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``robust-vision-plot DIR... [--output DIR] [--dpi N] [--style S] [--format png,pdf]``.

    Prints the written files; on an error prints one line to stderr and returns 2.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        formats = [f for f in (s.strip() for s in args.format.split(",")) if f]
        written = redraw(args.paths, args.output, style=args.style, dpi=args.dpi, formats=formats)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_ArgumentError, PlotError) as exc:
        print(f"robust-vision-plot: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output directory that cannot be written
        print(f"robust-vision-plot: error: cannot write figures: {exc}; choose another --output", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
