"""Tables, JSON and the printed summary of a robustness evaluation."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from robust_vision.io import write_csv, write_npz
from robust_vision.tables import CONFIDENCES_NPZ, RESULT_COLUMNS, ROBUSTNESS_CSV, robustness_type_csv

_NAMES = {"gaussian": "GAUSSIAN NOISE", "salt_pepper": "SALT & PEPPER", "fog": "FOG", "occlusion": "OCCLUSION"}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("robust-vision", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    import jax

    out["backend"] = jax.default_backend()
    out["devices"] = str(jax.device_count())
    return out


def write_robustness_tables(out_dir: Path, rows: list[dict], confidences: dict[str, np.ndarray]) -> list[Path]:
    """robustness_results.csv (all rows), robustness_<type>.csv, confidences.npz."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_csv(out_dir / ROBUSTNESS_CSV, rows, RESULT_COLUMNS)]
    for noise_type in dict.fromkeys(r["noise_type"] for r in rows):
        written.append(write_csv(out_dir / robustness_type_csv(noise_type),
                                 [r for r in rows if r["noise_type"] == noise_type], RESULT_COLUMNS))
    written.append(write_npz(out_dir / CONFIDENCES_NPZ, confidences))
    return written


def _fmt_snr(snr: float) -> str:
    if not math.isfinite(snr):
        return str(snr)
    if snr < 10:
        return f"{snr:.3g}"
    return f"{snr:.1f}" if snr < 1e6 else f"{snr:.2e}"


def format_summary(rows: list[dict]) -> str:
    """The seed's "ROBUSTNESS EVALUATION RESULTS" block, one section per model and noise type."""
    rule = "\u2500" * 68
    lines = ["ROBUSTNESS EVALUATION RESULTS", "\u2550" * 68]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"Model: {model}"]
        model_rows = [r for r in rows if r["model"] == model]
        for noise_type in dict.fromkeys(r["noise_type"] for r in model_rows):
            lines += ["", f"{_NAMES.get(noise_type, noise_type.upper())}:",
                      f"  {'Level':<8} {'Accuracy':>9} {'Confidence':>11} {'Margin':>9} {'SNR':>10} {'Degradation':>12}",
                      f"  {rule}"]
            for r in (r for r in model_rows if r["noise_type"] == noise_type):
                # The CSV's sign: (acc_clean - acc_noisy) / acc_clean, positive = accuracy lost.
                deg = "\u2014" if r["degradation"] is None else f"{r['degradation']:.1f}%"
                lines.append(f"  {r['level']:<8.2f} {r['accuracy']:>9.4f} {r['confidence']:>11.4f} "
                             f"{r['margin']:>9.3f} {_fmt_snr(r['snr']):>10} {deg:>12}")
    return "\n".join(lines)


def comparison_at(rows: list[dict], model: str, baseline: str, noise_type: str = "gaussian",
                  level: float = 0.5) -> dict | None:
    """Accuracy and SNR of a model and its baseline at one condition, with the improvements."""
    pick = lambda name: next((r for r in rows if r["model"] == name and r["noise_type"] == noise_type  # noqa: E731
                              and abs(r["level"] - level) < 1e-9), None)
    ours, base = pick(model), pick(baseline)
    if ours is None or base is None:
        return None
    rel_acc = (ours["accuracy"] - base["accuracy"]) / base["accuracy"] * 100 if base["accuracy"] > 0 else float("nan")
    snr_ratio = ours["snr"] / base["snr"] if base["snr"] > 0 else float("inf")
    n_ours = int(ours.get("n_images") or 0) * int(ours.get("n_draws") or 1)
    n_base = int(base.get("n_images") or 0) * int(base.get("n_draws") or 1)
    ci_ours, ci_base = accuracy_interval(ours["accuracy"], n_ours), accuracy_interval(base["accuracy"], n_base)
    return {"noise_type": noise_type, "level": level, "model": model, "baseline": baseline,
            "model_accuracy": ours["accuracy"], "model_snr": ours["snr"],
            "baseline_accuracy": base["accuracy"], "baseline_snr": base["snr"],
            "accuracy_points": (ours["accuracy"] - base["accuracy"]) * 100,
            "accuracy_relative_percent": rel_acc, "snr_ratio": snr_ratio,
            "model_accuracy_ci95": list(ci_ours), "baseline_accuracy_ci95": list(ci_base),
            "within_noise": bool(ci_ours[0] <= ci_base[1] and ci_base[0] <= ci_ours[1])}


def accuracy_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of an accuracy measured on ``n`` predictions
    (scipy's ``BinomTestResult.proportion_ci(method="wilson")``); (0, 1) when n is 0."""
    if n <= 0 or not math.isfinite(accuracy):
        return (0.0, 1.0)
    from scipy import stats

    k = int(round(accuracy * n))
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def format_comparison(cmp: dict) -> str:
    return "\n".join([
        "COMPARISON WITH BASELINE:",
        f"  At {cmp['level'] * 100:g}% {cmp['noise_type'].replace('_', ' ').title()} noise:",
        f"    Baseline:  Accuracy = {cmp['baseline_accuracy']:.4f}  SNR = {_fmt_snr(cmp['baseline_snr'])}"
        f"   ({cmp['baseline']})",
        f"    Model:     Accuracy = {cmp['model_accuracy']:.4f}  SNR = {_fmt_snr(cmp['model_snr'])}"
        f"   ({cmp['model']})",
        "",
        f"    Improvement: {cmp['accuracy_relative_percent']:+.1f}% accuracy (relative; "
        f"{cmp['accuracy_points']:+.1f} points), {cmp['snr_ratio']:.3g}x SNR",
        *([] if "within_noise" not in cmp else [_noise_note(cmp)]),
    ])


def _noise_note(cmp: dict) -> str:
    (ml, mh), (bl, bh) = cmp["model_accuracy_ci95"], cmp["baseline_accuracy_ci95"]
    if cmp["within_noise"]:
        return (f"    Within noise: the 95% binomial intervals of the two accuracies overlap (model {ml:.3f}-{mh:.3f}, "
                f"baseline {bl:.3f}-{bh:.3f}); this difference is not evidence of an improvement")
    return f"    95% binomial intervals: model {ml:.3f}-{mh:.3f}, baseline {bl:.3f}-{bh:.3f} (no overlap)"
