"""Calibration and abstention (robust_vision.evaluation.calibration).

Synthetic data: logits z with labels drawn from softmax(z), so softmax(z) is calibrated and
calibration / test examples are exchangeable.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import special

from robust_vision.evaluation.calibration import (
    conformal_scores, conformal_threshold, fit_temperature, predicted_class_log_snr, prediction_sets,
    reliability_bins, selective_accuracy_curve, set_metrics,
)
from robust_vision.metrics import expected_calibration_error


def calibrated_data(n: int, k: int = 10, scale: float = 2.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((n, k))
    probs = special.softmax(logits, axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, probs.astype(np.float32), labels


def test_reliability_bins_consistent_with_metrics_ece():
    rng = np.random.default_rng(1)
    conf = rng.random(500)
    conf[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 0.5]  # edges: (b/n, (b+1)/n] convention
    correct = rng.random(500) < conf
    r = reliability_bins(conf, correct, n_bins=15)
    assert r["counts"].sum() == 500 and r["edges"].shape == (16,)
    filled = r["counts"] > 0
    ece = np.sum(r["counts"][filled] / 500 * np.abs(r["accuracy"][filled] - r["mean_confidence"][filled]))
    assert ece == pytest.approx(expected_calibration_error(conf, correct, 15), abs=1e-12)
    assert r["ece"] == pytest.approx(ece, abs=1e-12)
    # Every bin's mean confidence lies inside its edges.
    assert np.all(r["mean_confidence"][filled] > r["edges"][:-1][filled] - 1e-12)
    assert np.all(r["mean_confidence"][filled] <= r["edges"][1:][filled] + 1e-12)
    # A tiny known case: two examples in bin (0.5, 0.75], one right one wrong.
    small = reliability_bins(np.array([0.6, 0.7]), np.array([True, False]), n_bins=4)
    np.testing.assert_array_equal(small["counts"], [0, 0, 2, 0])
    assert small["accuracy"][2] == 0.5 and small["mean_confidence"][2] == pytest.approx(0.65)
    assert np.isnan(small["accuracy"][0])


def test_fit_temperature_recovers_known_scale():
    logits, _, labels = calibrated_data(20000, scale=2.0, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)
    assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(0.5 * logits, labels) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="labels must be in"):
        fit_temperature(logits, labels + 10)


def test_conformal_threshold_is_finite_sample_quantile():
    # LAC scores of the true labels are 1 - p_y = 0.1, 0.2, ..., 0.9 (n = 9).
    p_true = np.linspace(0.9, 0.1, 9)
    probs = np.stack([p_true, 1 - p_true], axis=1)
    labels = np.zeros(9, dtype=int)
    # k = ceil(10 * 0.8) = 8 -> 8th smallest score = 0.8.
    assert conformal_threshold(probs, labels, 0.2, "lac") == pytest.approx(0.8, abs=1e-6)
    # k = ceil(10 * 0.95) = 10 > n: the threshold is infinite and every set is full.
    q = conformal_threshold(probs, labels, 0.05, "lac")
    assert q == math.inf and bool(np.all(np.asarray(prediction_sets(probs, q, "lac"))))
    with pytest.raises(ValueError, match="valid methods: lac, aps"):
        conformal_threshold(probs, labels, 0.1, "raps")


def test_aps_scores_are_cumulative_mass():
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    np.testing.assert_allclose(np.asarray(conformal_scores(probs, "aps")), [[1.0, 0.6, 0.9]], atol=1e-6)
    s = np.asarray(conformal_scores(probs, "aps", jax.random.key(0)))
    u = (s[0, 1]) / 0.6  # randomised: above-mass + u * p
    np.testing.assert_allclose(s, [[0.9 + u * 0.1, u * 0.6, 0.6 + u * 0.3]], atol=1e-6)


@pytest.mark.parametrize("method,randomized", [("lac", False), ("aps", True), ("aps", False)])
def test_conformal_coverage_and_size(method, randomized):
    _, probs, labels = calibrated_data(7000, seed=3)
    cal, test = slice(0, 2000), slice(2000, None)
    k_cal, k_test = (jax.random.key(1), jax.random.key(2)) if randomized else (None, None)
    sizes = []
    for alpha in (0.05, 0.1, 0.2):
        q = conformal_threshold(probs[cal], labels[cal], alpha, method, k_cal)
        sets = prediction_sets(probs[test], q, method, k_test)
        m = set_metrics(sets, labels[test])
        assert m["coverage"] >= 1 - alpha - 0.015
        if method == "lac" or randomized:  # these are also not over-covering
            assert m["coverage"] <= 1 - alpha + 0.03
        sizes.append(m["mean_size"])
    assert sizes[0] > sizes[1] > sizes[2]


def test_set_metrics_known_values():
    sets = np.array([[True, False, True], [False, False, False], [True, True, True]])
    m = set_metrics(sets, np.array([2, 0, 1]))
    assert m == {"coverage": 2 / 3, "mean_size": 5 / 3, "empty_fraction": 1 / 3, "n": 3}


def test_selective_accuracy_curve():
    rng = np.random.default_rng(4)
    score = rng.standard_normal(5000) * 2
    correct = rng.random(5000) < special.expit(score)  # higher score -> more often correct
    rows = selective_accuracy_curve(score, correct, [1.0, 0.8, 0.5, 0.2, 0.05])
    assert rows[0]["selective_accuracy"] == pytest.approx(correct.mean()) and rows[0]["n_kept"] == 5000
    accs = [r["selective_accuracy"] for r in rows]
    assert all(b > a for a, b in zip(accs, accs[1:]))
    assert [r["n_kept"] for r in rows] == [5000, 4000, 2500, 1000, 250]
    # The threshold is the lowest kept score: exactly n_kept scores are >= it (continuous scores).
    for r in rows:
        assert np.sum(score >= r["threshold"]) == r["n_kept"]


def test_predicted_class_log_snr_is_top2_gap():
    logits = np.array([[1.0, 3.0, 2.5], [0.0, -1.0, -4.0]], np.float32)
    np.testing.assert_allclose(np.asarray(predicted_class_log_snr(logits)), [0.5, 1.0])
