"""Side-by-side comparison of experiments (run directories and/or evaluation results).

Each experiment directory is recognised by the files it holds:

* a run directory holds ``metrics.csv`` (robust-vision-train);
* a results directory holds ``robustness_results.csv`` (robust-vision-eval);
* a run directory may also contain its results directory as a subdirectory, a results
  directory's ``results.json`` names the run it evaluated, and a sweep trial directory
  (``trials/<id>/``) holds ``run/`` and ``results/``: both halves are found either way.

Outputs in ``OUT``::

    comparison.csv / comparison.md / comparison.json   the side-by-side table
    robustness_results.csv, confidences.npz             the inputs merged, model = experiment name
    runs/<name>/metrics.csv                             copies of the training histories
    plots/                                              training_curves_comparison, robustness_*,
                                                        confidence_distributions

The merged tables are saved before they are plotted, so ``robust-vision-plot OUT`` redraws
the robustness figures.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from robust_vision.io import write_npz
from robust_vision.config import ConfigError
from robust_vision.experiments.trials import to_float
from robust_vision.runs.paths import METRICS_FILE, config_file
from robust_vision.tables import CONFIDENCES_NPZ, RESULTS_JSON, ROBUSTNESS_CSV

Log = Callable[[str], None]


class CompareError(ConfigError):
    """An experiment directory that cannot be compared, or bad names; the message says why."""


# --------------------------------------------------------------------------- finding the inputs


@dataclass
class Experiment:
    """One compared experiment: its display name and the directories found for it."""

    name: str
    path: Path
    run_dir: Path | None
    results_dir: Path | None


def _only(paths: list[Path], what: str, where: Path) -> Path | None:
    if len(paths) > 1:
        listed = ", ".join(str(p) for p in paths)
        raise CompareError(f"{where}: holds several {what} ({listed}); pass the one you mean")
    return paths[0] if paths else None


def _run_of_results(results_dir: Path) -> Path | None:
    """The run directory a results directory's results.json names, if it still exists."""
    try:
        info = json.loads((results_dir / RESULTS_JSON).read_text())
        run_dir = Path(info["models"][0]["run_dir"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return run_dir if (run_dir / METRICS_FILE).is_file() else None


def find_experiment(path: str | Path, name: str) -> Experiment:
    """Detect the run and/or results directory of ``path`` (see the module docstring)."""
    path = Path(path)
    if path.is_file() and path.name in (METRICS_FILE, ROBUSTNESS_CSV):
        path = path.parent
    if not path.is_dir():
        raise CompareError(f"{path}: not found; pass a run directory (with {METRICS_FILE}) or a results directory "
                           f"(with {ROBUSTNESS_CSV})")
    run_dir = path if (path / METRICS_FILE).is_file() else None
    results_dir = path if (path / ROBUSTNESS_CSV).is_file() else None
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if results_dir is None:
        results_dir = _only([p for p in subdirs if (p / ROBUSTNESS_CSV).is_file()], "results directories", path)
    if run_dir is None and results_dir is not None:
        run_dir = _run_of_results(results_dir)
    if run_dir is None:
        run_dir = _only([p for p in subdirs if (p / METRICS_FILE).is_file()], "run directories", path)
    if run_dir is None and results_dir is None:
        raise CompareError(f"{path}: neither {METRICS_FILE} (a run directory of robust-vision-train) nor {ROBUSTNESS_CSV} "
                           "(a results directory of robust-vision-eval) found there or in its subdirectories; "
                           "pass one of those directories")
    return Experiment(name, path, run_dir, results_dir)


_BAD_NAME = re.compile(r"[/\\|]")


def default_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, with parents added where two would collide (as the figures do)."""
    from robust_vision.viz.plots import run_labels

    return [_BAD_NAME.sub("_", label) for label in run_labels([Path(p) for p in paths])]


def check_names(names: Sequence[str], n: int) -> list[str]:
    if len(names) != n:
        raise CompareError(f"--names: got {len(names)} name(s) for {n} experiment(s); give one per experiment, "
                           "in the order --exp1, --exp2, --exp ...")
    for name in names:
        if not name.strip() or name in (".", "..") or _BAD_NAME.search(name):
            raise CompareError(f"--names: {name!r} cannot be used; names must be non-empty and contain no '/', "
                               "'\\' or '|'")
    if len(set(names)) != len(names):
        raise CompareError(f"--names: {list(names)} repeats a name; names must be distinct")
    return list(names)


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    from robust_vision.io import read_csv_rows

    try:
        return read_csv_rows(path)
    except ValueError as exc:
        raise CompareError(str(exc)) from None


def _best_metric(run_dir: Path) -> tuple[str, str]:
    """The run's training.best_metric / best_mode (the checkpoint an evaluation uses)."""
    import yaml

    try:
        training = (yaml.safe_load(config_file(run_dir).read_text()) or {}).get("training", {})
        return str(training.get("best_metric", "val_accuracy")), str(training.get("best_mode", "max"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "val_accuracy", "max"


def training_summary(run_dir: Path) -> dict[str, float]:
    """Epochs, final and best validation accuracy / SNR from a run's metrics.csv."""
    rows, _ = _read_csv(run_dir / METRICS_FILE)
    validated = [r for r in rows if not math.isnan(to_float(r.get("val_accuracy")))]
    out = {"epochs": float(len(rows))}
    if not validated:
        return out
    last = validated[-1]
    metric, mode = _best_metric(run_dir)
    scored = [r for r in validated if not math.isnan(to_float(r.get(metric)))] or validated
    key = (lambda r: to_float(r.get(metric))) if any(metric in r for r in scored) else (lambda r: to_float(r["val_accuracy"]))
    best = (max if mode == "max" else min)(scored, key=key)  # first of equals: the epoch the trainer kept
    out.update(final_val_accuracy=to_float(last["val_accuracy"]), final_val_snr=to_float(last.get("val_snr")),
               best_epoch=to_float(best["epoch"]), best_val_accuracy=to_float(best["val_accuracy"]),
               best_val_snr=to_float(best.get("val_snr")))
    return out


def results_rows(results_dir: Path, log: Log) -> tuple[list[dict[str, str]], list[str], str]:
    """The rows of the first model of a robustness_results.csv (a --baseline comes second)."""
    rows, header = _read_csv(results_dir / ROBUSTNESS_CSV)
    if not rows:
        raise CompareError(f"{results_dir / ROBUSTNESS_CSV}: no rows; re-run robust-vision-eval")
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(models) > 1:
        log(f"note: {results_dir / ROBUSTNESS_CSV} holds {len(models)} models; comparing the first, {models[0]!r}")
    return [r for r in rows if r["model"] == models[0]], header, models[0]


def conditions(rows: Sequence[dict[str, str]]) -> dict[tuple[str, float], dict[str, float]]:
    """{(noise_type, level): {accuracy, snr}}; the clean split is one entry ("clean", 0.0)."""
    out: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        level = to_float(r["level"])
        key = ("clean", 0.0) if level == 0.0 else (r["noise_type"], level)
        out.setdefault(key, {"accuracy": to_float(r["accuracy"]), "snr": to_float(r.get("snr"))})
    return out


# --------------------------------------------------------------------------- the table

# (quantity, label, kind): kind "acc" compares by difference (in points), "snr" by ratio.
_TRAINING_ROWS = [("epochs", "Epochs trained", "count"),
                  ("final_val_accuracy", "Final val accuracy", "acc"),
                  ("final_val_snr", "Final val SNR", "snr"),
                  ("best_epoch", "Best epoch", "count"),
                  ("best_val_accuracy", "Best val accuracy", "acc"),
                  ("best_val_snr", "Val SNR at best epoch", "snr")]


def build_table(experiments: Sequence[Experiment], log: Log) -> tuple[list[dict], dict[str, tuple]]:
    """Tidy comparison rows: quantity, noise_type, level, kind, one value per experiment name."""
    training = {e.name: training_summary(e.run_dir) for e in experiments if e.run_dir is not None}
    evals = {}
    for e in experiments:
        if e.results_dir is not None:
            rows, header, model = results_rows(e.results_dir, log)
            evals[e.name] = (rows, header, model)
    table: list[dict] = []
    if training:
        for quantity, label, kind in _TRAINING_ROWS:
            if any(quantity in s for s in training.values()):
                table.append({"quantity": quantity, "label": label, "noise_type": "", "level": "", "kind": kind,
                              **{e.name: training.get(e.name, {}).get(quantity, math.nan) for e in experiments}})
    per_exp = {name: conditions(rows) for name, (rows, _, _) in evals.items()}
    keys = list(dict.fromkeys(k for c in per_exp.values() for k in c))
    noise_order = list(dict.fromkeys(n for n, _ in keys))  # as the evaluator wrote them
    keys.sort(key=lambda k: (k != ("clean", 0.0), noise_order.index(k[0]), k[1]))
    for metric, kind in (("accuracy", "acc"), ("snr", "snr")):
        for noise, level in keys:
            cond = "clean" if noise == "clean" else f"{noise}@{level:g}"
            label = f"{'Accuracy' if metric == 'accuracy' else 'SNR'} {cond}"
            table.append({"quantity": metric, "label": label, "noise_type": noise, "level": level, "kind": kind,
                          **{e.name: per_exp.get(e.name, {}).get((noise, level), {}).get(metric, math.nan)
                             for e in experiments}})
    return table, evals


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def add_relative(table: list[dict], names: Sequence[str]) -> list[str]:
    """Add ``<name>_minus_<ref>`` and ``<name>_over_<ref>`` for every name after the first."""
    ref, cols = names[0], []
    for name in names[1:]:
        d, r = f"{name}_minus_{ref}", f"{name}_over_{ref}"
        cols += [d, r]
        for row in table:
            row[d] = row[name] - row[ref]
            row[r] = _ratio(row[name], row[ref])
    return cols


def _cell(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    if kind == "count":
        return f"{value:.0f}"
    if kind == "acc":
        return f"{value:.4f}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if value < 1e4 else f"{value:.3e}"


def _vs_cell(row: dict, name: str, ref: str) -> str:
    a, b = row[name], row[ref]
    if math.isnan(a) or math.isnan(b):
        return "\u2014"
    if row["kind"] == "acc":
        return f"{(a - b) * 100:+.2f} pts"
    if row["kind"] == "count":
        return f"{a - b:+.0f}"
    r = row[f"{name}_over_{ref}"]
    return f"\u00d7{r:.3g}" if math.isfinite(r) else str(r)


def format_markdown(table: Sequence[dict], names: Sequence[str]) -> str:
    """The side-by-side markdown table: values, then each experiment vs the first."""
    ref = names[0]
    heads = ["Quantity", *names, *(f"{n} vs {ref}" for n in names[1:])]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for row in table:
        cells = [row["label"], *(_cell(row[n], row["kind"]) for n in names),
                 *(_vs_cell(row, n, ref) for n in names[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Accuracy differences are in percentage points (x 100); SNR (geometric mean of p_y / max_j!=y p_j) "
              f"is compared as a ratio; the reference is {ref}."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- merged inputs


def write_merged_inputs(out_dir: Path, experiments: Sequence[Experiment], evals: dict) -> dict[str, Any]:
    """Copy metrics.csv per experiment and merge the robustness tables / confidences under
    the experiment names, so the figures (and a later redraw) read them from ``out_dir``."""
    from robust_vision.io import write_csv

    written: dict[str, Any] = {"runs": []}
    for e in experiments:
        if e.run_dir is not None:
            dest = out_dir / "runs" / e.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(e.run_dir / METRICS_FILE, dest / METRICS_FILE)
            written["runs"].append(dest)
    if evals:
        header = list(dict.fromkeys(c for _, h, _ in evals.values() for c in h))
        merged = [{**r, "model": name} for name, (rows, _, _) in evals.items() for r in rows]
        written["results_csv"] = write_csv(out_dir / ROBUSTNESS_CSV, merged, header)
        arrays: dict[str, np.ndarray] = {}
        for e in experiments:
            if e.name not in evals or not (e.results_dir / CONFIDENCES_NPZ).is_file():
                continue
            model = evals[e.name][2]
            with np.load(e.results_dir / CONFIDENCES_NPZ, allow_pickle=False) as data:
                for key in data.files:
                    m, rest = key.rsplit("|", 2)[0], key.rsplit("|", 2)[1:]
                    if m == model:
                        arrays["|".join([e.name, *rest])] = np.asarray(data[key])
        if arrays:
            written["confidences"] = write_npz(out_dir / CONFIDENCES_NPZ, arrays)
    return written


def draw_figures(out_dir: Path, names: Sequence[str], merged: dict, *, style: str, dpi: int,
                 formats: Sequence[str]) -> list[Path]:
    """Training curves overlaid, robustness curves overlaid, confidence distributions side by side."""
    from robust_vision.viz import (plot_confidence_histograms, plot_robustness_curves, plot_training_curves,
                                   series_styles)

    styles = series_styles(names)  # one colour per experiment in every figure
    plots = out_dir / "plots"
    kw = {"style": style, "dpi": dpi, "formats": formats}
    written: list[Path] = []
    if merged["runs"]:
        written += plot_training_curves(merged["runs"], plots, stem="training_curves_comparison",
                                        model_styles=styles, **kw)
    if "results_csv" in merged:
        written += plot_robustness_curves(merged["results_csv"], plots, model_styles=styles, **kw)
    if "confidences" in merged:
        written += plot_confidence_histograms(merged["confidences"], plots, **kw)
    return written


# --------------------------------------------------------------------------- entry


@dataclass
class CompareResult:
    experiments: list[Experiment]
    table: list[dict]
    markdown: str
    figures: list[Path]


def compare(paths: Sequence[str | Path], out_dir: str | Path, names: Sequence[str] | None = None, *,
            style: str = "publication", dpi: int = 150, formats: Sequence[str] = ("png", "pdf"),
            plots: bool = True, log: Log = print) -> CompareResult:
    """Compare experiments (the first is the reference); write tables and figures to ``out_dir``."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two experiments (--exp1 and --exp2)")
    for i, p in enumerate(paths):  # before the names (their labels import the plotting stack)
        find_experiment(p, str(i))
    names = check_names(list(names) if names else default_names([Path(p) for p in paths]), len(paths))
    experiments = [find_experiment(p, n) for p, n in zip(paths, names)]
    from robust_vision.io import write_csv, write_json  # after the path checks: it imports JAX
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for e in experiments:
        found = ", ".join(f"{k} {v}" for k, v in (("run", e.run_dir), ("results", e.results_dir)) if v is not None)
        log(f"{e.name}: {found}")
    table, evals = build_table(experiments, log)
    rel_cols = add_relative(table, names)
    write_csv(out_dir / "comparison.csv", table, ["quantity", "noise_type", "level", *names, *rel_cols])
    markdown = format_markdown(table, names)
    (out_dir / "comparison.md").write_text(markdown + "\n")
    write_json(out_dir / "comparison.json", {
        "reference": names[0],
        "experiments": [{"name": e.name, "path": str(e.path), "run_dir": e.run_dir and str(e.run_dir),
                         "results_dir": e.results_dir and str(e.results_dir)} for e in experiments],
        "rows": table})
    merged = write_merged_inputs(out_dir, experiments, evals)
    figures = draw_figures(out_dir, names, merged, style=style, dpi=dpi, formats=formats) if plots else []
    log("")
    log(markdown)
    log(f"\nTables written to {out_dir} (comparison.csv, comparison.md)"
        + (f"; {len(figures)} figure files in {out_dir / 'plots'}" if figures else ""))
    return CompareResult(experiments, table, markdown, figures)
