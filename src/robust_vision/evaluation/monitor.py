"""Deployment-time confidence gate: flag predictions whose SNR is too low to act on.

At deployment there is no label, so the SNR of a decision is the odds of the *predicted*
class against its strongest competitor, p_top / p_second = exp(z_top - z_second), i.e.
the logit margin with the prediction standing in for the label. It is computed with
:func:`robust_vision.metrics.per_example_metrics` (margin and max-softmax
confidence), so the monitor and the evaluator share one definition.

    monitor = ConfidenceMonitor(snr_threshold=10.0)
    result = monitor.check(logits)          # logits (K,) -> one MonitorResult
    if result.action == "REVIEW_REQUIRED": ...
    monitor.summary()                       # running counts since the last reset()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.metrics import per_example_metrics

HIGH, LOW = "HIGH", "LOW"
PROCEED, REVIEW_REQUIRED = "PROCEED", "REVIEW_REQUIRED"


@dataclass(frozen=True)
class MonitorResult:
    """The monitor's verdict on one input.

    ``snr`` = p_top / p_second >= 1 (inf when the logit gap exceeds ~709, the float64
    range of exp); ``margin`` = z_top - z_second = log(snr); ``confidence`` = max softmax.
    """

    prediction: int
    snr: float
    margin: float
    confidence: float
    level: str  # "HIGH" when snr >= threshold, else "LOW"
    action: str  # "PROCEED" or "REVIEW_REQUIRED"


@jax.jit
def _top_metrics(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(prediction, margin of the prediction over its strongest rival, confidence)."""
    prediction = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    per_example = per_example_metrics(logits, prediction)  # the prediction stands in for the label
    return prediction, per_example["margin"], per_example["confidence"]


class ConfidenceMonitor:
    """Gate predictions on their SNR and count how many needed review.

    Args:
        snr_threshold: a prediction with SNR >= this is HIGH / PROCEED, below it LOW /
            REVIEW_REQUIRED. SNR is always >= 1, so a threshold <= 1 lets everything pass.
    """

    def __init__(self, snr_threshold: float = 10.0) -> None:
        try:
            threshold = float(snr_threshold)
        except (TypeError, ValueError):
            raise ValueError(f"snr_threshold: got {snr_threshold!r}; expected a finite number >= 0 "
                             "(e.g. 10.0)") from None
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"snr_threshold: got {snr_threshold!r}; expected a finite number >= 0 (e.g. 10.0)")
        self.snr_threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Zero the running counts."""
        self.total = 0
        self.low_confidence = 0

    def check(self, logits: Any) -> MonitorResult | list[MonitorResult]:
        """Judge one logits vector (K,) -> a MonitorResult, or a batch (B, K) -> a list of them.

        Raises ValueError for a rank other than 1 or 2, fewer than 2 classes, or logits that
        are not finite numbers (nan/inf usually mean a broken model or input pipeline).
        """
        try:
            array = np.asarray(logits)
        except ValueError:  # ragged nested lists
            raise ValueError("logits: rows of different lengths; expected (K,) or (B, K) with one K") from None
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ValueError(f"logits: got dtype {array.dtype}; expected a numeric array of shape (K,) or (B, K)")
        if array.ndim not in (1, 2):
            raise ValueError(f"logits: got shape {array.shape}; expected (K,) for one input or (B, K) for a batch")
        if array.shape[-1] < 2:
            raise ValueError(f"logits: got {array.shape[-1]} class(es) in shape {array.shape}; SNR compares the top "
                             "class with the second, so K >= 2 is needed")
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected below
            batch = array.reshape(-1, array.shape[-1]).astype(np.float32)
        if not np.isfinite(batch).all():
            bad = np.flatnonzero(~np.isfinite(batch).all(axis=1)).tolist()
            raise ValueError(f"logits: non-finite values (nan/inf, or beyond float32 range) in input(s) {bad[:10]}; "
                             "check the model and the input preprocessing")
        if batch.shape[0] == 0:
            return []
        prediction, margin, confidence = (np.asarray(a) for a in _top_metrics(jnp.asarray(batch)))
        margin = margin.astype(np.float64)
        with np.errstate(over="ignore"):  # a gap above ~709 nats is an SNR beyond float64: inf
            snr = np.exp(margin)
        # Decide on the reported value itself, so that a reported snr equal to the threshold
        # is always HIGH (inf compares correctly).
        high = snr >= self.snr_threshold
        results = [
            MonitorResult(prediction=int(p), snr=float(s), margin=float(m), confidence=float(c),
                          level=HIGH if h else LOW, action=PROCEED if h else REVIEW_REQUIRED)
            for p, s, m, c, h in zip(prediction, snr, margin, confidence, high)
        ]
        self.total += len(results)
        self.low_confidence += int((~high).sum())
        return results[0] if array.ndim == 1 else results

    def summary(self) -> dict[str, float | int]:
        """Running counts since construction or the last :meth:`reset`.

        ``low_confidence_fraction`` is nan before any input was checked.
        """
        return {
            "snr_threshold": self.snr_threshold,
            "total": self.total,
            "low_confidence": self.low_confidence,
            "high_confidence": self.total - self.low_confidence,
            "low_confidence_fraction": self.low_confidence / self.total if self.total else float("nan"),
        }
