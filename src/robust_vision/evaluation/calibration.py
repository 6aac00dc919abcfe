"""Calibration and abstention: reliability diagrams, temperature scaling, split-conformal
prediction sets (LAC, APS) and selective accuracy when abstaining on a low log-SNR.

Array conventions: ``probs`` (N, K) softmax probabilities, ``logits`` (N, K), ``labels`` (N,)
int, ``confidence`` (N,) in [0, 1], ``correct`` (N,) bool. Reductions run on the host in
float64 over the whole split. Conformal prediction in JAX has no maintained library, so the
split-conformal procedures (Vovk et al. 2005; Sadinle et al. 2019 for LAC; Romano, Sesia &
Candes 2020 for APS) are written here; temperature scaling uses scipy.optimize.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

from robust_vision.metrics import confidence_bin_index, expected_calibration_error, logit_margin

CONFORMAL_METHODS = ("lac", "aps")


# --------------------------------------------------------------------------- reliability


def reliability_bins(confidence: Any, correct: Any, n_bins: int = 15) -> dict[str, Any]:
    """Reliability-diagram bins, with the binning of ``metrics.expected_calibration_error``:
    bin b holds confidences in (b/n_bins, (b+1)/n_bins] (a confidence of 0 goes to bin 0).

    Returns a dict: ``edges`` (n_bins + 1,), ``counts`` (n_bins,) int, ``mean_confidence``
    and ``accuracy`` (n_bins,) (NaN for empty bins), ``ece`` (float, from ``metrics``) and ``n``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of the same length, got {confidence.shape} "
                         f"and {correct.shape}.")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if confidence.size and (confidence.min() < 0 or confidence.max() > 1):
        raise ValueError("confidence must be in [0, 1] (max softmax probability), got values outside.")
    bins = confidence_bin_index(confidence, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "counts": counts, "mean_confidence": mean_conf,
            "accuracy": accuracy, "ece": expected_calibration_error(confidence, correct, n_bins),
            "n": int(confidence.size)}


# --------------------------------------------------------------------------- temperature


def _check_logits_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}.")
    if logits.shape[0] == 0:
        raise ValueError("no examples.")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}], got [{labels.min()}, {labels.max()}].")
    return logits, labels.astype(np.int64)


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T > 0 minimising the mean NLL of softmax(logits / T) (Guo et al. 2017).

    Fit on a held-out (validation) split, never on the test split. The search is over
    log T in log(bounds) (bounded Brent, ``scipy.optimize.minimize_scalar``), in float64.
    T > 1 softens over-confident predictions; argmax (accuracy) is unchanged.
    """
    logits, labels = _check_logits_labels(logits, labels)
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}.")
    rows = np.arange(labels.size)

    def nll(log_t: float) -> float:
        log_probs = special.log_softmax(logits / math.exp(log_t), axis=1)
        return float(-np.mean(log_probs[rows, labels]))

    res = optimize.minimize_scalar(nll, bounds=(math.log(lo), math.log(hi)), method="bounded",
                                   options={"xatol": 1e-7})
    return float(math.exp(res.x))


# --------------------------------------------------------------------------- conformal sets


def _check_method(method: str) -> None:
    if method not in CONFORMAL_METHODS:
        raise ValueError(f"unknown conformal method {method!r}; valid methods: {', '.join(CONFORMAL_METHODS)}")


def conformal_scores(probs: jax.Array, method: str = "lac", key: jax.Array | None = None) -> jax.Array:
    """Non-conformity score of every (example, class) pair, (N, K) float32; larger = stranger.

    * ``lac`` (least ambiguous set-valued classifier): 1 - p_k.
    * ``aps`` (adaptive prediction sets): total probability of the classes ranked above k
      plus u * p_k. With a ``key``, u ~ U(0, 1) per example (randomised APS, Romano et al.
      2020: coverage close to exactly 1 - alpha); with ``key=None``, u = 1 (the deterministic
      version: still valid, slightly larger sets). Ties in p are broken by class index.
    Jittable.
    """
    _check_method(method)
    probs = jnp.asarray(probs, jnp.float32)
    if method == "lac":
        return 1.0 - probs
    order = jnp.argsort(-probs, axis=1, stable=True)
    sorted_p = jnp.take_along_axis(probs, order, axis=1)
    above = jnp.cumsum(sorted_p, axis=1) - sorted_p  # mass of the classes ranked strictly above
    if key is None:
        u = jnp.ones((probs.shape[0], 1), jnp.float32)
    else:
        u = jax.random.uniform(key, (probs.shape[0], 1), jnp.float32)
    sorted_scores = above + u * sorted_p
    # Back to class order: the inverse permutation of ``order``.
    return jnp.take_along_axis(sorted_scores, jnp.argsort(order, axis=1), axis=1)


def conformal_threshold(cal_probs: Any, cal_labels: Any, alpha: float, method: str = "lac",
                        key: jax.Array | None = None) -> float:
    """Split-conformal threshold q from a calibration split exchangeable with the test data.

    q is the k-th smallest calibration score of the true label, k = ceil((n + 1)(1 - alpha))
    (the finite-sample quantile level k / n), so that P(y_test in set) >= 1 - alpha. When
    k > n (alpha < 1 / (n + 1)) the threshold is +inf: every set is the full label set.
    ``key`` randomises APS (see ``conformal_scores``); use a key independent of the test one.
    """
    _check_method(method)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (miscoverage) must be in (0, 1), got {alpha}.")
    probs = np.asarray(cal_probs, dtype=np.float32)
    labels = np.asarray(cal_labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need cal_probs (n, K) and cal_labels (n,), got {probs.shape} and {labels.shape}.")
    n = labels.size
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        return math.inf
    scores = np.asarray(conformal_scores(probs, method, key))[np.arange(n), labels]
    return float(np.sort(scores)[k - 1])


def prediction_sets(probs: jax.Array, threshold: float | jax.Array, method: str = "lac",
                    key: jax.Array | None = None) -> jax.Array:
    """Prediction sets {k : score(x, k) <= threshold}, (N, K) bool. Jittable.

    For APS the set is a prefix of the classes sorted by probability; pass a key (fresh,
    not the calibration one) for randomised APS, or None for the deterministic version,
    matching how the threshold was computed.
    """
    return conformal_scores(probs, method, key) <= threshold


def set_metrics(sets: Any, labels: Any) -> dict[str, float]:
    """Empirical coverage P(y in set), mean set size and fraction of empty sets, over the whole split."""
    sets = np.asarray(sets, dtype=bool)
    labels = np.asarray(labels)
    if sets.ndim != 2 or labels.shape != (sets.shape[0],):
        raise ValueError(f"need sets (N, K) and labels (N,), got {sets.shape} and {labels.shape}.")
    sizes = sets.sum(axis=1)
    return {"coverage": float(np.mean(sets[np.arange(labels.size), labels])),
            "mean_size": float(np.mean(sizes)), "empty_fraction": float(np.mean(sizes == 0)),
            "n": int(labels.size)}


# --------------------------------------------------------------------------- abstention


def predicted_class_log_snr(logits: jax.Array) -> jax.Array:
    """Log-SNR of the *predicted* class, z_pred - max_{j != pred} z_j >= 0, (N,).

    The label-free confidence score used to abstain: the log odds of the predicted class
    against its strongest competitor (``metrics.logit_margin`` at the predicted label).
    """
    logits = jnp.asarray(logits)
    return logit_margin(logits, jnp.argmax(logits, axis=-1))


def selective_accuracy_curve(score: Any, correct: Any, coverages: Sequence[float]) -> list[dict[str, float]]:
    """Accuracy on the examples we keep when abstaining on the lowest scores.

    For each target coverage c in (0, 1] keep the ceil(c * N) highest-score examples (ties
    broken by position, so the kept count is exact) and report ``coverage`` (kept / N),
    ``target_coverage``, ``threshold`` (lowest kept score: answer when score >= threshold),
    ``selective_accuracy`` (correct / kept) and ``n_kept``. At c = 1 this is the accuracy.
    """
    score = np.asarray(score, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if score.shape != correct.shape or score.ndim != 1 or score.size == 0:
        raise ValueError(f"score and correct must be non-empty 1-D arrays of the same length, got "
                         f"{score.shape} and {correct.shape}.")
    n = score.size
    order = np.argsort(-score, kind="stable")
    cum_correct = np.cumsum(correct[order])
    rows = []
    for c in coverages:
        if not 0 < c <= 1:
            raise ValueError(f"coverages must be in (0, 1], got {c}.")
        m = max(1, math.ceil(c * n - 1e-9))
        rows.append({"target_coverage": float(c), "coverage": m / n, "threshold": float(score[order[m - 1]]),
                     "selective_accuracy": float(cum_correct[m - 1] / m), "n_kept": int(m)})
    return rows
