"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

The smoothed classifier g(x) = argmax_c P(f(x + d) = c), d ~ N(0, sigma^2 I), is robust
within an L2 radius sigma * Phi^-1(p_A) around x, where p_A is the probability of its top
class (Theorem 1 of the paper, with p_B = 1 - p_A). We follow the paper's Monte-Carlo
procedures exactly:

* ``predict`` (PREDICT): n samples, top two counts n_A, n_B; abstain unless a two-sided
  binomial test of n_A vs n_A + n_B at p = 1/2 rejects at level alpha. The probability of
  returning a class other than g(x) is at most alpha.
* ``certify`` (CERTIFY): n0 samples pick the candidate class c_A; n fresh samples give the
  one-sided (1 - alpha) Clopper-Pearson lower bound p_A_lower of P(f(x + d) = c_A); abstain
  if p_A_lower < 1/2, else radius = sigma * Phi^-1(p_A_lower). With probability at least
  1 - alpha the certificate is correct.

Noise is added *without clipping to [0, 1]*, as in the paper: the theorem needs the
isotropic Gaussian, and clipping would change the distribution (the base classifier must
therefore be trained with the same unclipped noise). Sampling is written by hand in JAX (no
maintained JAX library implements it); the statistics use scipy on the host.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from robust_vision.distributed import to_host

LogitsFn = Callable[[jax.Array], jax.Array]

ABSTAIN = -1


def _check(x: Any, sigma: float, n: int, batch_size: int, name: str) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name}: x must be NHWC images (B, H, W, C), got shape {getattr(x, 'shape', None)}.")
    if isinstance(sigma, (int, float)) and not sigma > 0:
        raise ValueError(f"{name}: sigma must be > 0 (std of the Gaussian noise, pixel units), got {sigma}.")
    if (isinstance(n, int) and n < 1) or batch_size < 1:
        raise ValueError(f"{name}: need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}.")


def sample_counts(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, sigma: float | jax.Array, n: int,
                  batch_size: int = 1024) -> jax.Array:
    """How often each class is the argmax of logits_fn(x + d), d ~ N(0, sigma^2 I), over n draws.

    Args:
      logits_fn: images (M, H, W, C) -> logits (M, K), eval mode.
      x: (B, H, W, C) float32 images in [0, 1]. key: PRNG key. sigma: noise std (> 0).
      n: noise draws per image (may be traced). batch_size: noisy images per forward pass
        (static, a memory knob): each pass draws max(1, batch_size // B) samples of every
        image; the last pass is masked so exactly n draws count. The counts depend on the
        key and on batch_size // B, never on anything else.
    Returns: (B, K) int32 counts, each row summing to n. Pure and jittable (static
      logits_fn and batch_size).
    """
    _check(x, sigma, n, batch_size, "sample_counts")
    b = x.shape[0]
    per_pass = max(1, batch_size // b)
    # n may be traced (one compilation serves n0, n and predict's n); then the trip count is
    # dynamic, which is fine: nothing is differentiated through the counts.
    n_passes = (n + per_pass - 1) // per_pass
    num_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, jnp.float32)).shape[-1]

    def body(i, counts):
        # No clipping to [0, 1]: the certificate is for the isotropic Gaussian (see module doc).
        noise = sigma * jax.random.normal(jax.random.fold_in(key, i), (per_pass,) + x.shape, jnp.float32)
        noisy = (x[None] + noise).reshape((per_pass * b,) + x.shape[1:])
        pred = jnp.argmax(logits_fn(noisy), axis=-1).reshape(per_pass, b)
        valid = (i * per_pass + jnp.arange(per_pass)) < n  # the last pass may overshoot n
        hits = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * valid[:, None, None]
        return counts + jnp.sum(hits, axis=0)

    return jax.lax.fori_loop(0, n_passes, body, jnp.zeros((b, num_classes), jnp.int32))


_sample_counts_jit = jax.jit(sample_counts, static_argnames=("logits_fn", "batch_size"))


def sign_test_pvalue(count1: Any, count2: Any) -> np.ndarray:
    """Two-sided binomial test p-value of count1 successes in count1 + count2 trials at p = 1/2.

    Equals ``scipy.stats.binomtest(count1, count1 + count2, 0.5).pvalue`` (for p = 1/2 the
    two-sided p-value is min(1, 2 * P(X <= min(k, n - k)))), vectorised over arrays.
    """
    c1 = np.asarray(count1, dtype=np.int64)
    c2 = np.asarray(count2, dtype=np.int64)
    total = c1 + c2
    return np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(c1, c2), total, 0.5))


def clopper_pearson_lower(k: Any, n: Any, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion.

    p_lower = Beta(alpha; k, n - k + 1) quantile (0 when k = 0); the same value as the
    paper's ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    Vectorised over k (and n).
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, lower, 0.0)


def predict(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, sigma: float, n: int, alpha: float = 0.001,
            batch_size: int = 1024) -> np.ndarray:
    """Prediction of the smoothed classifier (the paper's PREDICT), (B,) int, -1 = abstain.

    Abstains unless the top class beats the runner-up in a two-sided binomial test at level
    ``alpha`` (so a non-abstained answer differs from g(x) with probability <= alpha).
    """
    _check(x, sigma, n, batch_size, "predict")
    counts = to_host(_sample_counts_jit(logits_fn, x, key, sigma, n, batch_size))
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    n_top = np.take_along_axis(counts, top[:, None], 1)[:, 0]
    n_second = np.take_along_axis(counts, second[:, None], 1)[:, 0]
    p_value = sign_test_pvalue(n_top, n_second)
    return np.where(p_value <= alpha, top, ABSTAIN).astype(np.int64)


def certify(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Certified prediction and L2 radius of the smoothed classifier (the paper's CERTIFY).

    Args:
      x: (B, H, W, C) float32 in [0, 1]; key: PRNG key; sigma: noise std (> 0, pixel units).
      n0: draws to select the class; n: draws to estimate its probability; alpha: failure
        probability of the certificate; batch_size: see ``sample_counts``.
    Returns: ``pred`` (B,) int (-1 = abstain) and ``radius`` (B,) float64 L2 radius in pixel
      units (0 for abstentions); the radius is sigma * Phi^-1(p_A_lower), at most
      sigma * Phi^-1(alpha^(1/n)) however confident the model is.
    """
    _check(x, sigma, n, batch_size, "certify")
    if n0 < 1:
        raise ValueError(f"certify: n0 must be >= 1, got {n0}.")
    k_select, k_estimate = jax.random.split(key)
    counts0 = to_host(_sample_counts_jit(logits_fn, x, k_select, sigma, n0, batch_size))
    c_a = np.argmax(counts0, axis=1)
    counts = to_host(_sample_counts_jit(logits_fn, x, k_estimate, sigma, n, batch_size))
    n_a = np.take_along_axis(counts, c_a[:, None], 1)[:, 0]
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    certified = p_lower >= 0.5
    radius = np.where(certified, float(sigma) * stats.norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    return np.where(certified, c_a, ABSTAIN).astype(np.int64), radius


def certified_accuracy_curve(preds: Any, radii: Any, labels: Any, radii_grid: Sequence[float]
                             ) -> list[dict[str, float]]:
    """Certified accuracy at each radius r: fraction of examples with pred == label and
    radius >= r (abstentions count as wrong), over the whole set.

    Returns one row per r: ``radius``, ``certified_accuracy``, ``abstain_fraction`` (the
    same in every row) and ``n``.
    """
    preds = np.asarray(preds)
    radii = np.asarray(radii, dtype=np.float64)
    labels = np.asarray(labels)
    if not (preds.shape == radii.shape == labels.shape and preds.ndim == 1):
        raise ValueError(f"preds, radii and labels must be 1-D of the same length, got shapes "
                         f"{preds.shape}, {radii.shape}, {labels.shape}.")
    n = preds.size
    if n == 0:
        raise ValueError("certified_accuracy_curve: no examples.")
    correct = preds == labels
    abstain = float(np.mean(preds == ABSTAIN))
    return [{"radius": float(r), "certified_accuracy": float(np.sum(correct & (radii >= r)) / n),
             "abstain_fraction": abstain, "n": n} for r in radii_grid]
