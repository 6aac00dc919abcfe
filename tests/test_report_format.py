"""Printed reports agree with the tables (issue 14, item 6)."""

from robust_vision.metrics import degradation_percent
from robust_vision.evaluation.report import accuracy_interval, comparison_at, format_comparison, format_summary


def _row(model, level, acc, n=1000):
    return {"model": model, "noise_type": "gaussian", "level": level, "accuracy": acc, "confidence": 0.9,
            "margin": 1.0, "snr": 5.0, "degradation": None if level == 0 else degradation_percent(0.9, acc),
            "n_images": n, "n_draws": 1}


def test_console_degradation_has_the_csv_sign():
    text = format_summary([_row("m", 0.0, 0.9), _row("m", 0.5, 0.8595)])
    # (0.9 - 0.8595) / 0.9 = 4.5 % accuracy lost: printed positive, as in the CSV and the figure.
    assert " 4.5%" in text and "-4.5%" not in text


def test_wilson_interval_matches_known_values():
    lo, hi = accuracy_interval(0.5, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3  # Wilson 95% for 50/100
    assert accuracy_interval(0.5, 0) == (0.0, 1.0)


def test_comparison_at_chance_is_flagged_within_noise():
    rows = [_row("ours", 0.5, 0.110, n=1000), _row("base", 0.5, 0.100, n=1000)]
    cmp = comparison_at(rows, "ours", "base")
    assert cmp["within_noise"] is True
    assert "Within noise" in format_comparison(cmp) and "+10.0% accuracy" in format_comparison(cmp)
    far = comparison_at([_row("ours", 0.5, 0.95), _row("base", 0.5, 0.60)], "ours", "base")
    assert far["within_noise"] is False and "no overlap" in format_comparison(far)
