"""Figures from saved tables: redrawable from disk without a model.

``redraw`` draws every figure the tables of run and results directories allow;
``main`` is the ``robust-vision-plot`` command. The individual ``plot_*`` functions take
table paths, an output directory, ``style`` ("publication"/"default"), ``dpi`` and
``formats`` and return the files they wrote.
"""

from robust_vision.viz._common import PALETTE, PlotError, series_styles
from robust_vision.viz.plots import (plot_comparison, plot_confidence_histograms, plot_robustness_curves,
                                     plot_training_curves)
from robust_vision.viz.redraw import main, redraw
from robust_vision.viz.suite import (plot_attack_curves, plot_certified_accuracy, plot_conformal, plot_corruption_ce,
                                     plot_corruption_errors, plot_reliability, plot_selective_accuracy)

__all__ = [
    "PALETTE",
    "PlotError",
    "main",
    "plot_attack_curves",
    "plot_certified_accuracy",
    "plot_comparison",
    "plot_confidence_histograms",
    "plot_conformal",
    "plot_corruption_ce",
    "plot_corruption_errors",
    "plot_reliability",
    "plot_robustness_curves",
    "plot_selective_accuracy",
    "plot_training_curves",
    "redraw",
    "series_styles",
]
