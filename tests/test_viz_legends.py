"""Legends that hide no data, levels that can be told apart, no empty panels (issue 14, item 5)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from robust_vision.viz import _common, plots, suite

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def captured(monkeypatch):
    """The Figure objects the plot functions would save."""
    figures = []

    def capture(fig, *args, **kwargs):
        figures.append(fig)
        return []

    monkeypatch.setattr(suite, "save_figure", capture)
    monkeypatch.setattr(plots, "save_figure", capture)
    return figures


def test_neighbouring_levels_differ_in_marker_and_dashes():
    styles = _common.level_styles(len(LEVELS))
    for a, b in zip(styles, styles[1:]):
        assert a["marker"] != b["marker"] and a["linestyle"] != b["linestyle"]
    assert [_common.balanced_columns(n) for n in (1, 4, 5, 6, 7, 8)] == [1, 4, 3, 3, 4, 4]


def test_selective_accuracy_has_one_legend_outside_the_panels(tmp_path, captured):
    path = _write_csv(tmp_path / "s.csv", ["model", "noise_type", "level", "coverage", "selective_accuracy"],
                      [["m", n, lv, c, 1 - 0.3 * lv * c] for n in ("gaussian", "fog") for lv in LEVELS
                       for c in np.linspace(0.1, 1, 10)])
    suite.plot_selective_accuracy(path, tmp_path)
    (fig,) = captured
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == len(LEVELS)
    _assert_legends_clear_of_axes(fig)


def test_reliability_legend_does_not_overlap_points(tmp_path, captured):
    rows = [["m", "gaussian", lv, b / 10, (b + 1) / 10, 10, (b + 0.5) / 10, min(1.0, (b + 0.5) / 10 + 0.3 * (1 - lv))]
            for lv in (0.0, 0.7) for b in range(10)]  # under-confident: points in the upper left
    path = _write_csv(tmp_path / "r.csv", ["model", "noise_type", "level", "bin_lower", "bin_upper", "count",
                                           "mean_confidence", "accuracy"], rows)
    suite.plot_reliability(path, tmp_path)
    (fig,) = captured
    _assert_legends_clear_of_axes(fig)


def test_confidence_distributions_leave_at_most_one_empty_panel(tmp_path, captured):
    rng = np.random.default_rng(0)
    noise = ("gaussian", "salt_pepper", "fog", "occlusion", "blur")
    np.savez(tmp_path / "c.npz", **{f"m|{n}|{lv}": rng.uniform(size=50) for n in noise for lv in (0.0, 0.5)})
    plots.plot_confidence_histograms(tmp_path / "c.npz", tmp_path)
    (fig,) = captured
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(fig.axes) - len(hidden) == 5 and len(hidden) <= 1


def _assert_legends_clear_of_axes(fig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), "legend covers a panel's data area"
