"""Figures from synthetic tables in the formats training and robust-vision-eval write."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from robust_vision import viz
from robust_vision.viz import PlotError

# Two noise types keep the figures small and the tests fast; the code has no limit.
NOISE_TYPES = ("gaussian", "fog")
LEVELS = (0.0, 0.1, 0.3, 0.5, 0.7)
MODELS = ("margin", "baseline")


def _write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if (isinstance(v, float) and math.isnan(v)) else v for v in row])


def make_run_dir(path: Path, *, epochs: int = 6, seed: int = 0, eval_every: int = 2) -> Path:
    """metrics.csv (val_* empty on epochs that were not validated) and config.yaml."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    cols = ["epoch", "train_loss", "train_accuracy", "train_margin", "train_snr", "val_loss", "val_accuracy",
            "val_margin", "val_snr", "val_snr_median", "val_ece", "learning_rate", "epoch_time_s"]
    rows = []
    for e in range(1, epochs + 1):
        loss = 2.0 / e + 0.05 * rng.random()
        margin = 0.8 * e + seed
        validated = e % eval_every == 0 or e == epochs
        val = [loss * 1.1, 1 - 0.5 / e, margin * 0.9, math.exp(margin * 0.9), math.exp(margin * 0.8), 0.05 / e] \
            if validated else [math.nan] * 6
        rows.append([e, loss, 1 - 0.6 / e, margin, math.exp(margin), *val, 1e-3, 1.5])
    _write_csv(path / "metrics.csv", cols, rows)
    (path / "config.yaml").write_text("training:\n  epochs: %d\n" % epochs)
    return path


def make_results_dir(path: Path, *, models=MODELS, suite: bool = True, seed: int = 0,
                     noise_types=NOISE_TYPES) -> Path:
    """robustness_results.csv, confidences.npz, results.json and (optionally) every suite table."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    rows, conf = [], {}
    for m_i, model in enumerate(models):
        strength = 3.0 / (1 + m_i)
        for n_i, noise in enumerate(noise_types):
            clean = 0.97 - 0.02 * m_i
            for level in LEVELS:
                acc = clean * math.exp(-level * (n_i + 1) / strength)
                margin = strength * 3 * (1 - level)
                snr = math.exp(margin)
                deg = math.nan if level == 0 else 100 * (clean - acc) / clean
                rows.append([model, noise, level, acc, 0.5 + acc / 2, margin, snr, snr * 0.9, 0.05 + level / 10,
                             1 - acc, deg, 200, 1])
                conf[f"{model}|{noise}|{level:g}"] = np.clip(rng.beta(8 - 6 * level, 1 + 2 * level, 200), 0.1,
                                                             1).astype(np.float32)
    _write_csv(path / "robustness_results.csv",
               ["model", "noise_type", "level", "accuracy", "confidence", "margin", "snr", "snr_median", "ece",
                "loss", "degradation", "n_images", "n_draws"], rows)
    np.savez(path / "confidences.npz", **conf)
    (path / "results.json").write_text('{"config": {}, "versions": {}, "summary": {}}')
    if not suite:
        return path
    corruptions = ("gaussian_noise", "shot_noise", "motion_blur", "fog", "jpeg_compression")
    _write_csv(path / "corruption_results.csv", ["model", "corruption", "severity", "error", "accuracy"],
               [[m, c, s, min(1.0, 0.05 * s * (i + 1) / 2 + 0.1 * k), 0.0] for k, m in enumerate(models)
                for i, c in enumerate(corruptions) for s in range(1, 6)])
    _write_csv(path / "corruption_summary.csv", ["model", "corruption", "mean_error", "ce", "relative_ce"],
               [[m, c, 0.1 + 0.05 * i + 0.1 * k, 0.8 + 0.1 * i + 0.2 * k if k else 1.0,
                 0.7 + 0.1 * i if k else 1.0] for k, m in enumerate(models) for i, c in enumerate(corruptions)])
    _write_csv(path / "attack_results.csv", ["model", "attack", "eps", "accuracy", "margin", "n"],
               [[m, a, eps, max(0.0, 0.95 - eps * (20 + 10 * k + 5 * j)), 1.0, 200] for k, m in enumerate(models)
                for j, a in enumerate(("fgsm", "pgd")) for eps in (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)])
    _write_csv(path / "certified_accuracy.csv", ["model", "sigma", "radius", "certified_accuracy", "abstain_fraction"],
               [[m, sg, r, max(0.0, 0.9 - r / (2 * sg) - 0.1 * k), 0.05 + 0.05 * k] for k, m in enumerate(models)
                for sg in (0.12, 0.25) for r in np.linspace(0, 1, 11)])
    rel_rows = []
    for m in models:
        for noise in noise_types:
            for level in (0.0, 0.5, 0.7):
                for b in range(10):
                    lo, hi = b / 10, (b + 1) / 10
                    count = 0 if b < 2 else int(5 + 40 * b * (1 - level))
                    mc = (lo + hi) / 2
                    rel_rows.append([m, noise, level, lo, hi, count, mc, max(0.0, mc - 0.2 * level)])
    _write_csv(path / "reliability.csv", ["model", "noise_type", "level", "bin_lower", "bin_upper", "count",
                                          "mean_confidence", "accuracy"], rel_rows)
    _write_csv(path / "conformal_results.csv", ["model", "method", "noise_type", "level", "alpha", "coverage",
                                                "mean_set_size"],
               [[m, meth, noise, lv, 0.1, 0.9 - 0.3 * lv * (k + 1), 1.1 + 3 * lv * (j + 1)]
                for k, m in enumerate(models) for j, meth in enumerate(("lac", "aps")) for noise in noise_types
                for lv in LEVELS])
    _write_csv(path / "selective_accuracy.csv", ["model", "noise_type", "level", "coverage", "threshold",
                                                 "selective_accuracy"],
               [[m, noise, lv, cov, 1 - cov, min(1.0, 0.99 - 0.4 * lv * cov - 0.05 * k)] for k, m in
                enumerate(models) for noise in noise_types for lv in LEVELS for cov in np.linspace(0.1, 1, 10)])
    return path


def _assert_files(paths: list[Path], stems: set[str], formats=("png", "pdf")) -> None:
    got = {(p.stem, p.suffix.lstrip(".")) for p in paths}
    for stem in stems:
        for fmt in formats:
            assert (stem, fmt) in got, f"{stem}.{fmt} not written; got {sorted(got)}"
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, p
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF" if p.suffix == ".pdf" else b"<")


FORMATS = ["png", "pdf"]
LOW = {"dpi": 40, "formats": FORMATS}  # low resolution keeps the tests fast


# --------------------------------------------------------------------------- individual figures


def test_training_curves_several_runs(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    runs = [make_run_dir(tmp_path / "ce", seed=0), make_run_dir(tmp_path / "margin", seed=2, epochs=4)]
    written = viz.plot_training_curves(runs, tmp_path / "out", style="publication", **LOW)
    _assert_files(written, {"training_curves"})
    assert all(p.parent == tmp_path / "out" for p in written)
    assert dict(matplotlib.rcParams) == before  # styles are scoped to the figure, never global


def test_robustness_curves_and_histograms(tmp_path):
    res = make_results_dir(tmp_path / "res", suite=False)
    written = viz.plot_robustness_curves(res / "robustness_results.csv", tmp_path / "o", style="default", **LOW)
    _assert_files(written, {"robustness_accuracy", "robustness_snr", "robustness_degradation"})
    written = viz.plot_confidence_histograms(res / "confidences.npz", tmp_path / "o", **LOW)
    _assert_files(written, {"confidence_distributions"})


def test_comparison_of_results_dirs(tmp_path):
    a = make_results_dir(tmp_path / "a", models=("m",), suite=False)
    b = make_results_dir(tmp_path / "b", models=("m", "base"), suite=False, seed=1)
    written = viz.plot_comparison([a, b], tmp_path / "o", **LOW)
    _assert_files(written, {"comparison"})


def test_suite_figures(tmp_path):
    res = make_results_dir(tmp_path / "res")
    out = tmp_path / "o"
    written = []
    written += viz.plot_corruption_errors(res / "corruption_results.csv", out, **LOW)
    written += viz.plot_corruption_ce(res / "corruption_summary.csv", out, **LOW)
    written += viz.plot_attack_curves(res / "attack_results.csv", out, **LOW)
    written += viz.plot_certified_accuracy(res / "certified_accuracy.csv", out, **LOW)
    written += viz.plot_reliability(res / "reliability.csv", out, results_csv=res / "robustness_results.csv", **LOW)
    written += viz.plot_conformal(res / "conformal_results.csv", out, **LOW)
    written += viz.plot_selective_accuracy(res / "selective_accuracy.csv", out, **LOW)
    _assert_files(written, {"corruption_errors", "corruption_ce", "attack_accuracy", "certified_accuracy",
                            "reliability", "conformal", "selective_accuracy"})


def test_svg_and_model_colours_are_stable(tmp_path):
    res = make_results_dir(tmp_path / "res", suite=False)
    written = viz.plot_robustness_curves(res / "robustness_results.csv", tmp_path / "o", dpi=40, formats=["svg"])
    _assert_files(written, {"robustness_accuracy"}, formats=("svg",))
    styles = viz.series_styles(["margin", "baseline", "margin"])
    assert list(styles) == ["margin", "baseline"]
    assert styles["margin"]["color"] == viz.PALETTE[0] and styles["baseline"]["color"] == viz.PALETTE[1]


# --------------------------------------------------------------------------- redraw


def test_redraw_run_dir_defaults_to_its_plots_folder(tmp_path):
    run = make_run_dir(tmp_path / "run")
    written = viz.redraw([run], None, style="publication", **LOW)
    _assert_files(written, {"training_curves"})
    assert all(p.parent == run / "plots" for p in written)


def test_redraw_results_dir_draws_every_table(tmp_path):
    res = make_results_dir(tmp_path / "res")
    written = viz.redraw([res], tmp_path / "figs", dpi=40, formats=["png"])
    _assert_files(written, {"robustness_accuracy", "robustness_snr", "robustness_degradation",
                            "confidence_distributions", "corruption_errors", "corruption_ce", "attack_accuracy",
                            "certified_accuracy", "reliability", "conformal", "selective_accuracy"},
                  formats=("png",))
    assert all(p.parent == tmp_path / "figs" for p in written)


def test_redraw_several_dirs_adds_cross_figures(tmp_path):
    runs = [make_run_dir(tmp_path / "runs" / n, seed=i, epochs=3) for i, n in enumerate(("ce", "margin"))]
    results = [make_results_dir(tmp_path / "runs" / f"eval_{i}", models=("m",), suite=False, seed=i,
                                noise_types=("gaussian",)) for i in range(2)]
    written = viz.redraw([*runs, *results], None, dpi=40, formats=["png"])
    cross = tmp_path / "runs" / "plots"
    assert cross / "training_curves_comparison.png" in written
    assert cross / "robustness_curves_comparison.png" in written
    assert runs[0] / "plots" / "training_curves.png" in written
    assert results[1] / "plots" / "robustness_accuracy.png" in written
    # With --output, each directory's own figures go to a subfolder named after it.
    written = viz.redraw([runs[0], results[0]], tmp_path / "out", dpi=40, formats=["png"])
    assert tmp_path / "out" / "ce" / "training_curves.png" in written
    assert tmp_path / "out" / "eval_0" / "confidence_distributions.png" in written


def test_redraw_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PlotError, match="metrics.csv.*robustness_results.csv"):
        viz.redraw([empty], None)
    with pytest.raises(PlotError, match="does not exist"):
        viz.redraw([tmp_path / "missing"], None)
    res = make_results_dir(tmp_path / "res", suite=False)
    with pytest.raises(PlotError, match="style"):
        viz.redraw([res], None, style="fancy")
    with pytest.raises(PlotError, match="format 'jpg'"):
        viz.redraw([res], None, formats=["jpg"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "robustness_results.csv").write_text("model,level\nm,0.0\n")
    with pytest.raises(PlotError, match="lacks column.*noise_type"):
        viz.redraw([bad], None)


# --------------------------------------------------------------------------- command line


def test_main_success_and_errors(tmp_path, capsys):
    res = make_results_dir(tmp_path / "res", suite=False)
    out = tmp_path / "cli"
    rc = viz.main([str(res), "--output", str(out), "--dpi", "40", "--style", "default", "--format", "png,pdf"])
    assert rc == 0
    assert (out / "robustness_accuracy.png").stat().st_size > 1000
    assert (out / "confidence_distributions.pdf").stat().st_size > 1000
    assert str(out / "robustness_snr.png") in capsys.readouterr().out

    assert viz.main(["--help"]) == 0
    assert "robust-vision-plot" in capsys.readouterr().out

    for argv in ([str(tmp_path / "nowhere")], [str(res), "--style", "fancy"], [str(res), "--format", "gif"],
                 [str(res), "--dpi", "many"], []):
        assert viz.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("robust-vision-plot: error:") and err.count("\n") == 1, err
