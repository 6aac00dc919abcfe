"""ConfidenceMonitor: known logits give known SNR and decisions; counts; batch == per item."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from robust_vision.evaluation.monitor import ConfidenceMonitor, MonitorResult


def test_known_logits_give_known_snr_and_decision():
    monitor = ConfidenceMonitor(snr_threshold=10.0)
    # z_top - z_second = 3 -> SNR e^3 ~ 20.1 >= 10: HIGH.
    high = monitor.check(np.array([0.0, 3.0, 0.0, -1.0]))
    assert isinstance(high, MonitorResult)
    assert high.prediction == 1
    assert high.snr == pytest.approx(math.exp(3.0), rel=1e-6)
    assert high.margin == pytest.approx(3.0)
    assert high.confidence == pytest.approx(math.exp(3) / (math.exp(3) + 2 + math.exp(-1)), rel=1e-6)
    assert (high.level, high.action) == ("HIGH", "PROCEED")
    # gap 1 -> SNR e ~ 2.7 < 10: LOW; the strongest rival (not the mean) sets the SNR.
    low = monitor.check([2.0, 1.0, 1.0, -5.0])
    assert low.prediction == 0 and low.snr == pytest.approx(math.e, rel=1e-6)
    assert (low.level, low.action) == ("LOW", "REVIEW_REQUIRED")
    # a tie: SNR exactly 1, first class wins as in argmax.
    tie = monitor.check([4.0, 4.0])
    assert tie.prediction == 0 and tie.snr == 1.0 and tie.confidence == pytest.approx(0.5)


def test_results_are_frozen():
    result = ConfidenceMonitor().check([1.0, 0.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.level = "HIGH"  # type: ignore[misc]


def test_threshold_boundary_is_inclusive():
    logits = np.array([2.0, 0.0], dtype=np.float32)  # margin exactly 2.0 in float32
    at = ConfidenceMonitor(snr_threshold=math.exp(2.0)).check(logits)
    assert at.snr == math.exp(2.0) and at.level == "HIGH" and at.action == "PROCEED"
    above = ConfidenceMonitor(snr_threshold=np.nextafter(math.exp(2.0), math.inf)).check(logits)
    assert above.level == "LOW" and above.action == "REVIEW_REQUIRED"
    # SNR is always >= 1, so a threshold of 1 (or 0) passes everything, ties included.
    assert ConfidenceMonitor(snr_threshold=1.0).check([0.0, 0.0]).level == "HIGH"


def test_batch_equals_per_item_and_counts_accumulate():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(16, 5)).astype(np.float32)
    batch_monitor, item_monitor = ConfidenceMonitor(5.0), ConfidenceMonitor(5.0)
    batch = batch_monitor.check(logits)
    items = [item_monitor.check(row) for row in logits]
    assert isinstance(batch, list) and len(batch) == 16
    assert batch == items
    n_low = sum(r.level == "LOW" for r in batch)
    assert 0 < n_low < 16  # the random logits exercise both outcomes
    assert [r.prediction for r in batch] == np.argmax(logits, axis=1).tolist()
    assert batch_monitor.summary() == item_monitor.summary()
    summary = batch_monitor.summary()
    assert summary["total"] == 16 and summary["low_confidence"] == n_low
    assert summary["high_confidence"] == 16 - n_low
    assert summary["low_confidence_fraction"] == pytest.approx(n_low / 16)
    batch_monitor.check(logits[:3])
    assert batch_monitor.summary()["total"] == 19
    batch_monitor.reset()
    assert batch_monitor.summary()["total"] == 0 and batch_monitor.summary()["low_confidence"] == 0
    assert math.isnan(batch_monitor.summary()["low_confidence_fraction"])


def test_huge_margins_stay_finite_or_inf_without_warnings():
    monitor = ConfidenceMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = monitor.check([[1e4, -1e4, 0.0], [50.0, 0.0, 0.0]])
    assert big[0].snr == math.inf and big[0].level == "HIGH" and big[0].confidence == 1.0
    assert big[1].snr == pytest.approx(math.exp(50.0), rel=1e-5) and math.isfinite(big[1].snr)


def test_empty_batch_returns_empty_list():
    monitor = ConfidenceMonitor()
    assert monitor.check(np.zeros((0, 3))) == [] and monitor.summary()["total"] == 0


@pytest.mark.parametrize("logits, message", [
    ([1.0], "K >= 2"),
    (np.zeros((2, 1)), "K >= 2"),
    (1.0, "shape"),
    (np.zeros((2, 3, 4)), "shape"),
    ([0.0, float("nan")], "non-finite"),
    ([[0.0, 1.0], [math.inf, 0.0]], r"non-finite.*\[1\]"),
    ([1e300, 0.0], "non-finite"),
    (["a", "b"], "numeric"),
    ([[1.0, 2.0], [1.0]], "different lengths"),
])
def test_bad_logits_raise_clear_errors(logits, message):
    monitor = ConfidenceMonitor()
    with pytest.raises(ValueError, match=message):
        monitor.check(logits)
    assert monitor.summary()["total"] == 0


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf"), "high"])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="snr_threshold"):
        ConfidenceMonitor(snr_threshold=threshold)
