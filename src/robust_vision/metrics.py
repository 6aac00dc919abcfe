"""Per-example metrics and whole-dataset reductions.

The single implementation of the definitions in DESIGN.md:

* logit margin  m = z_y - max_{j != y} z_j  (negative when the prediction is wrong);
* confidence    c = max_j softmax(z)_j;
* SNR           p_y / max_{j != y} p_j = exp(m) for a softmax classifier; for a model with
  non-negative outputs s (the crossbar / Hebbian model) s_y / max_{j != y} s_j.
  We keep SNR in log space per example (``log_snr``) and report the dataset figure as
  the geometric mean exp(mean log_snr) and the median, both computed in float64 on the
  host so that large margins do not overflow;
* ECE           sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins.

Per-example functions are jittable and take logits of shape (B, K) and integer labels of
shape (B,). Reductions take NumPy arrays that cover the *whole* split (correct / total;
never an average of per-batch averages).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF_FILL = -1e30  # stands in for -inf so that the max over "other" classes ignores y


def logit_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """z_y - max_{j != y} z_j, shape (B,). Negative when the example is misclassified."""
    num_classes = logits.shape[-1]
    true_mask = jax.nn.one_hot(labels, num_classes, dtype=bool)
    true_logit = jnp.sum(jnp.where(true_mask, logits, 0.0), axis=-1)
    other_max = jnp.max(jnp.where(true_mask, _NEG_INF_FILL, logits), axis=-1)
    return true_logit - other_max


def log_snr_from_scores(scores: jax.Array, labels: jax.Array, eps: float = 1e-6) -> jax.Array:
    """log(s_y / max_{j != y} s_j) for non-negative scores (crossbar / Hebbian outputs), (B,).

    ``eps`` is added to the denominator as in the seed's research code (s_control + 1e-6),
    and to the numerator so that an all-zero output gives log(1) = 0 instead of -inf.
    """
    num_classes = scores.shape[-1]
    true_mask = jax.nn.one_hot(labels, num_classes, dtype=bool)
    true_score = jnp.sum(jnp.where(true_mask, scores, 0.0), axis=-1)
    other_max = jnp.max(jnp.where(true_mask, -jnp.inf, scores), axis=-1)
    return jnp.log(jnp.maximum(true_score, 0.0) + eps) - jnp.log(jnp.maximum(other_max, 0.0) + eps)


def per_example_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Everything the reductions need, per example, for a softmax classifier.

    Returns a dict of (B,) arrays: ``correct`` (bool), ``confidence`` (max softmax prob,
    in [0, 1]), ``margin`` (logit margin; also the log-SNR), ``loss`` (cross-entropy in nats),
    ``prediction`` (int32).
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    prediction = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nll = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return {
        "correct": prediction == labels,
        "confidence": jnp.exp(jnp.max(log_probs, axis=-1)),
        "margin": logit_margin(logits, labels),
        "loss": nll,
        "prediction": prediction,
    }


def snr_summary(log_snr: np.ndarray) -> dict[str, float]:
    """Geometric-mean and median SNR from per-example log-SNR values (float64, no overflow
    below SNR ~ 1e308; beyond that the value is reported as inf)."""
    log_snr = np.asarray(log_snr, dtype=np.float64)
    if log_snr.size == 0:
        return {"snr": float("nan"), "snr_median": float("nan")}
    with np.errstate(over="ignore"):
        return {"snr": float(np.exp(log_snr.mean())), "snr_median": float(np.exp(np.median(log_snr)))}


def confidence_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width calibration bin of each confidence in [0, 1], (N,) -> (N,) int in [0, n_bins).

    Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes into bin 0. The
    ECE and the reliability diagram (``calibration.reliability_bins``) both bin with this.
    """
    return np.clip(np.ceil(np.asarray(confidence, np.float64) * n_bins).astype(int) - 1, 0, n_bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins over (0, 1]; the standard (Guo et al. 2017) estimator."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    bins = confidence_bin_index(confidence, n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / confidence.size)


def summarize(per_example: dict[str, np.ndarray], ece_bins: int = 15) -> dict[str, float]:
    """Whole-dataset reduction of concatenated per-example metrics.

    ``per_example`` must hold ``correct``, ``confidence``, ``margin`` and optionally ``loss``,
    each of shape (N,) covering every example of the split exactly once.
    Returns accuracy, confidence, margin (means), snr / snr_median, ece, loss and n.
    """
    correct = np.asarray(per_example["correct"], dtype=np.float64)
    n = int(correct.size)
    out = {
        "n": n,
        "accuracy": float(correct.sum() / n) if n else float("nan"),
        "confidence": float(np.mean(per_example["confidence"], dtype=np.float64)) if n else float("nan"),
        "margin": float(np.mean(per_example["margin"], dtype=np.float64)) if n else float("nan"),
        **snr_summary(per_example["margin"]),
        "ece": expected_calibration_error(per_example["confidence"], correct, ece_bins),
    }
    if "loss" in per_example:
        out["loss"] = float(np.mean(per_example["loss"], dtype=np.float64)) if n else float("nan")
    return out


def degradation_percent(clean_accuracy: float, noisy_accuracy: float) -> float:
    """(acc_clean - acc_noisy) / acc_clean in percent (DESIGN.md); nan when acc_clean is 0."""
    if clean_accuracy <= 0:
        return float("nan")
    return 100.0 * (clean_accuracy - noisy_accuracy) / clean_accuracy
