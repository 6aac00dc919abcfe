"""robust-vision-compare: input detection, table numbers equal to the inputs, figures, errors."""

import csv
import math
from pathlib import Path

import pytest

from robust_vision.experiments.cli import compare_main
from test_sweep import tiny_sweep


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> tuple[Path, Path]:
    out = tiny_sweep(tmp_path_factory)
    return out / "trials" / "margin_lambda=0.5", out / "trials" / "margin_lambda=2.0"


def _row(table: list[dict], quantity: str, noise_type: str = "", level: float | None = None) -> dict:
    return next(r for r in table if r["quantity"] == quantity and r["noise_type"] == noise_type
                and (level is None or float(r["level"]) == level))


def test_compare_two_runs_tables_equal_inputs_and_figures(trials, tmp_path, capsys):
    a, b = trials
    out = tmp_path / "cmp"
    # exp1: a sweep trial directory (run/ + results/); exp2: a results directory (its run is
    # found through results.json).
    assert compare_main(["--exp1", str(a), "--exp2", str(b / "results"), "--output", str(out),
                         "--names", "small", "large", "--format", "png"]) == 0
    printed = capsys.readouterr().out
    assert "| Quantity | small | large | large vs small |" in printed
    table = _read(out / "comparison.csv")
    assert (out / "comparison.md").read_text().strip() in printed

    for name, trial in (("small", a), ("large", b)):
        metrics = _read(trial / "run" / "metrics.csv")
        best = max(metrics, key=lambda r: float(r["val_accuracy"]))  # best_metric: val_accuracy
        assert float(_row(table, "best_val_accuracy")[name]) == float(best["val_accuracy"])
        assert float(_row(table, "best_val_snr")[name]) == float(best["val_snr"])
        assert float(_row(table, "final_val_accuracy")[name]) == float(metrics[-1]["val_accuracy"])
        assert float(_row(table, "epochs")[name]) == len(metrics)
        results = _read(trial / "results" / "robustness_results.csv")
        clean = next(r for r in results if float(r["level"]) == 0.0)
        noisy = next(r for r in results if r["noise_type"] == "gaussian" and float(r["level"]) == 0.5)
        assert float(_row(table, "accuracy", "clean", 0.0)[name]) == float(clean["accuracy"])
        assert float(_row(table, "snr", "gaussian", 0.5)[name]) == float(noisy["snr"])

    row = _row(table, "snr", "gaussian", 0.5)
    assert float(row["large_over_small"]) == pytest.approx(float(row["large"]) / float(row["small"]))
    row = _row(table, "accuracy", "gaussian", 0.5)
    assert float(row["large_minus_small"]) == pytest.approx(float(row["large"]) - float(row["small"]))

    # The merged tables name the experiments; the figures are drawn from them.
    merged = _read(out / "robustness_results.csv")
    assert {r["model"] for r in merged} == {"small", "large"}
    for stem in ("training_curves_comparison", "robustness_accuracy", "robustness_snr", "confidence_distributions"):
        assert (out / "plots" / f"{stem}.png").is_file(), stem


def test_compare_run_dirs_only(trials, tmp_path, capsys):
    a, b = trials
    out = tmp_path / "cmp"
    assert compare_main(["--exp1", str(a / "run"), "--exp2", str(b / "run"), "--output", str(out),
                         "--no-plots"]) == 0
    table = _read(out / "comparison.csv")
    assert {r["quantity"] for r in table} >= {"final_val_accuracy", "best_val_snr"}
    assert not any(r["quantity"] == "accuracy" for r in table)  # no evaluation was given
    # Default names are the directory names, made distinct with their parents.
    assert "margin_lambda=0.5_run" in table[0] and "margin_lambda=2.0_run" in table[0]
    assert not math.isnan(float(table[0]["margin_lambda=0.5_run"]))


def test_compare_errors(trials, tmp_path, capsys):
    a, b = trials
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare_main(["--exp1", str(a), "--exp2", str(empty), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "metrics.csv" in err and "robustness_results.csv" in err
    assert compare_main(["--exp1", str(a), "--exp2", str(b), "--output", str(tmp_path / "o"),
                         "--names", "only_one"]) == 2
    assert "--names" in capsys.readouterr().err
    assert compare_main(["--exp1", str(a), "--exp2", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
