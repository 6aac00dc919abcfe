"""Shared plumbing of the figures: errors, table reading, styles, colours and saving.

Figures are drawn with ``matplotlib.figure.Figure`` directly (never ``pyplot``): no GUI
backend is touched, no global figure registry grows, and PNG/PDF/SVG are written by the
Agg/PDF/SVG canvases that ``savefig`` picks from the format. Styles are applied with
``rc_context`` so that drawing a figure never changes the caller's matplotlib settings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, cycler, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robust_vision.config import EvaluationConfig
from robust_vision.io import read_csv_rows

_DEFAULTS = EvaluationConfig()
DEFAULT_STYLE: str = _DEFAULTS.plot_style
DEFAULT_DPI: int = _DEFAULTS.dpi
DEFAULT_FORMATS: tuple[str, ...] = tuple(_DEFAULTS.format)
STYLES: tuple[str, ...] = ("publication", "default")
FORMATS: tuple[str, ...] = ("png", "pdf", "svg")


class PlotError(ValueError):
    """A figure cannot be drawn; the message names the file or option and the fix."""


# --------------------------------------------------------------------------- options


def check_options(style: str, dpi: int, formats: Sequence[str]) -> list[str]:
    """Validate the common options; returns the formats as a de-duplicated list."""
    if style not in STYLES:
        raise PlotError(f"style {style!r} is not known; use one of {', '.join(STYLES)}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 30 <= dpi <= 1200:
        raise PlotError(f"dpi {dpi!r} is out of range; use an integer in [30, 1200]")
    if isinstance(formats, str):  # a bare "png" would otherwise be read as ["p", "n", "g"]
        formats = [f.strip() for f in formats.split(",")]
    out: list[str] = []
    for fmt in formats:
        fmt = str(fmt).strip().lower().lstrip(".")
        if fmt not in FORMATS:
            raise PlotError(f"figure format {fmt!r} is not supported; use some of {', '.join(FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise PlotError(f"no figure format given; use some of {', '.join(FORMATS)}")
    return out


# --------------------------------------------------------------------------- tables

Table = dict[str, np.ndarray]

# Columns that stay text; every other column of a table is parsed as float (empty -> nan).
_TEXT_COLUMNS = {"model", "noise_type", "corruption", "attack", "method", "norm"}


def read_table(path: str | Path, required: Iterable[str]) -> Table:
    """Read a tidy CSV into ``{column: array}``: text columns as str arrays, others float64.

    Empty cells (e.g. val_* on epochs that were not validated) become nan. Raises
    :class:`PlotError` when the file is missing, empty, lacks a required column or holds
    a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"table {str(path)!r} not found; pass the file written by training/evaluation")
    try:
        raw_rows, header = read_csv_rows(path)
    except ValueError as exc:
        raise PlotError(str(exc)) from None
    columns = [c.strip() for c in header]
    rows = [{(k or "").strip(): v for k, v in row.items()} for row in raw_rows]
    missing = [c for c in required if c not in columns]
    if missing:
        raise PlotError(f"table {str(path)!r} lacks column(s) {', '.join(missing)}; "
                        f"expected at least {', '.join(required)} (was it written by this version?)")
    if not rows:
        raise PlotError(f"table {str(path)!r} has no rows; re-run the command that writes it")
    table: Table = {}
    for col in columns:
        cells = [(row.get(col) or "").strip() for row in rows]
        if col in _TEXT_COLUMNS:
            table[col] = np.array(cells, dtype=str)
            continue
        values = np.empty(len(cells), dtype=np.float64)
        for i, cell in enumerate(cells):
            try:
                values[i] = float(cell) if cell else math.nan
            except ValueError:
                raise PlotError(f"table {str(path)!r}, column {col!r}, row {i + 2}: {cell!r} is not a number; "
                                "fix or regenerate the file") from None
        table[col] = values
    return table


def unique(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance (the order the evaluator wrote them)."""
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v.item() if isinstance(v, np.generic) else v, None)
    return list(seen)


def select(table: Table, **conditions: Any) -> np.ndarray:
    """Boolean mask of the rows whose columns equal the given values."""
    n = len(next(iter(table.values())))
    mask = np.ones(n, dtype=bool)
    for col, value in conditions.items():
        mask &= table[col] == value
    return mask


def sorted_by(table: Table, mask: np.ndarray, key: str, *cols: str) -> tuple[np.ndarray, ...]:
    """The ``key`` column and ``cols`` of the masked rows, sorted by ``key``."""
    order = np.argsort(table[key][mask], kind="stable")
    return tuple(table[c][mask][order] for c in (key, *cols))


# --------------------------------------------------------------------------- labels

_NOISE_AXIS = {
    "gaussian": ("Gaussian noise", "Gaussian noise std (severity)"),
    "salt_pepper": ("Salt-and-pepper noise", "Salt-and-pepper probability (severity)"),
    "fog": ("Fog", "Fog intensity (severity)"),
    "occlusion": ("Occlusion", "Occluded area fraction (severity)"),
}
ACCURACY_LABEL = "Accuracy (fraction)"
SNR_LABEL = "SNR, geometric mean (log scale)"


def noise_title(noise_type: str) -> str:
    """Panel title of a noise type ("gaussian" -> "Gaussian noise")."""
    return _NOISE_AXIS.get(noise_type, (pretty(noise_type), ""))[0]


def noise_axis_label(noise_type: str) -> str:
    """x-axis label of a noise type, with what its severity measures."""
    return _NOISE_AXIS.get(noise_type, ("", f"{pretty(noise_type)} level (severity in [0, 1])"))[1]


def pretty(name: str) -> str:
    """Human-readable form of a registry name ("salt_pepper" -> "Salt pepper")."""
    text = str(name).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- style and colours

# Okabe & Ito (2008) colour-blind-safe palette, yellow last because it is faint on white.
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")

_PUBLICATION_RC: dict[str, Any] = {
    "font.family": "serif",
    "font.serif": ["STIXGeneral", "DejaVu Serif"],  # STIX ships with matplotlib: Times-like everywhere
    "mathtext.fontset": "stix",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12.5,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.6,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType so that text stays editable and searchable in the PDF
    "svg.fonttype": "none",
}
_DEFAULT_RC: dict[str, Any] = {"axes.grid": True, "grid.alpha": 0.4, "grid.linewidth": 0.5}


@contextlib.contextmanager
def style_context(style: str) -> Iterator[None]:
    """rc settings of ``style`` for the duration of one figure (creation and saving)."""
    rc = dict(_PUBLICATION_RC if style == "publication" else _DEFAULT_RC)
    rc["axes.prop_cycle"] = cycler(color=list(PALETTE))
    with rc_context(rc):
        yield


SeriesStyle = dict[str, Any]


def series_styles(names: Iterable[str]) -> dict[str, SeriesStyle]:
    """Colour, marker and line style per series name, in the given order.

    Pass the same mapping to every figure of a result set so that a model keeps its
    colour everywhere; past eight names the colours repeat with another line style.
    """
    out: dict[str, SeriesStyle] = {}
    for i, name in enumerate(unique(names)):
        out[name] = {"color": PALETTE[i % len(PALETTE)], "marker": _MARKERS[i % len(_MARKERS)],
                     "linestyle": _LINESTYLES[(i // len(PALETTE)) % len(_LINESTYLES)]}
    return out


def resolve_styles(given: Mapping[str, SeriesStyle] | None, names: Iterable[str]) -> dict[str, SeriesStyle]:
    """A copy of the caller's mapping, extended (next free colours) to every name in ``names``."""
    styles = dict(given or {})
    for name in unique(names):
        if name not in styles:
            styles[name] = series_styles([*styles, name])[name]
    return styles


def level_colors(n: int) -> list[tuple[float, ...]]:
    """n ordered colours for severities (viridis, clipped before its faint yellow end)."""
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.82, max(n, 1))][:n]


# Markers and dashes that tell neighbouring severity levels apart where their viridis colours
# are close (and in greyscale print).
_LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LEVEL_DASHES = ("-", "--", "-.", ":")


def level_styles(n: int) -> list[dict[str, Any]]:
    """n ordered line styles for severities: viridis colour + a distinct marker + a dash pattern
    (keyword arguments of ``Axes.plot``)."""
    return [{"color": c, "marker": _LEVEL_MARKERS[i % len(_LEVEL_MARKERS)],
             "linestyle": _LEVEL_DASHES[i % len(_LEVEL_DASHES)]} for i, c in enumerate(level_colors(n))]


def balanced_columns(n: int, ncols_max: int = 4) -> int:
    """Columns for n panels that leave the fewest empty cells (ties: more columns)."""
    if n <= ncols_max:
        return max(n, 1)
    return min(range(2, ncols_max + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))


def legend_handle(label: str, **kwargs: Any) -> Line2D:
    """A proxy line for a figure legend."""
    kwargs.setdefault("color", "0.2")
    return Line2D([], [], label=label, **kwargs)


# --------------------------------------------------------------------------- figures


def panel_grid(n: int, *, ncols_max: int = 4, panel_size: tuple[float, float] = (3.3, 2.7),
               nrows_extra: int = 0, sharey: bool | str = False,
               extra_height: float = 0.9) -> tuple[Figure, list]:
    """A constrained-layout figure with ``n`` panels wrapped to at most ``ncols_max`` columns.

    Unused cells of the grid are hidden. ``extra_height`` (inches) leaves room for the
    suptitle and a legend below the panels.
    """
    ncols = max(1, min(n, ncols_max))
    nrows = max(1, math.ceil(n / ncols)) + nrows_extra
    fig = Figure(figsize=(panel_size[0] * ncols + 0.3, panel_size[1] * nrows + extra_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def figure_legend(fig: Figure, handles: Sequence[Any], *, ncols_max: int = 4) -> None:
    """One legend below all panels, outside the data area (constrained layout makes room)."""
    if not handles:
        return
    ncols = min(len(handles), ncols_max)
    fig.legend(handles=list(handles), loc="outside lower center", ncols=ncols, frameon=False)


def save_figure(fig: Figure, out_dir: str | Path, stem: str, dpi: int, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.<fmt>`` for every format; returns the written paths.

    Creation dates are left out of PDF/SVG metadata so that redrawing the same tables
    gives byte-identical vector files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
        written.append(path)
    return written


def finite_positive(x: np.ndarray) -> np.ndarray:
    """Mask of values that a log axis can show."""
    return np.isfinite(x) & (x > 0)


def plot_series(ax, x: np.ndarray, y: np.ndarray, style: SeriesStyle, *, log: bool = False, **kwargs) -> None:
    """Line with markers, skipping cells that cannot be drawn (nan; <= 0 or inf on a log axis)."""
    keep = finite_positive(y) if log else np.isfinite(y)
    keep &= np.isfinite(x)
    if not keep.any():
        return
    kw = {"color": style["color"], "marker": style["marker"], "linestyle": style["linestyle"]}
    kw.update(kwargs)
    ax.plot(x[keep], y[keep], **kw)
