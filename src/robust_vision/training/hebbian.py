"""The seed's crossbar model and its local learning rules (Hebbian vs SGD-MSE).

Source: the "Systematic Decomposition" study of ``shared/seeds/robust-vision.txt`` (master
table rows "Hebbian Uncon./Loose/Physical/Tight" and "SGD Uncon.", and the "Weight
Statistics by Method" table). Nothing here is tuned to reproduce its numbers: the module
measures what these rules do.

Model (a resistive crossbar: one conductance per input pixel and output line)::

    W  : (D, K) float32, initialised U[0, init_scale) (init_scale = 0.01)
    s  = W^T x          for one flattened image x (D,)         -> (K,)
    S  = X @ W          for a batch X (B, D)                    -> (B, K)

Rules (one update per call; ``t`` is the one-hot target signal, e.g. [1, 0])::

    hebbian : dW =  eta * x t^T
    sgd_mse : dW = -eta * x (W^T x - t)^T        (gradient of 0.5 * ||W^T x - t||^2)
    then, optionally, W <- clip(W, lo, hi)        (clip_range = (lo, hi); None = unconstrained)

For a minibatch X (B, D), T (B, K) both rules use the batch **mean** of the per-example
updates: dW = eta * X^T T / B (Hebbian) and dW = -eta * X^T (X W - T) / B (SGD-MSE), so one
call with a batch of B copies of x equals one single-example update on x.

SGD-MSE on one image is a linear recursion of the residual r = W^T x - t:
r <- (1 - eta * ||x||^2) r, which converges iff eta * ||x||^2 < 2. For a 64x64 image in
[0, 1] (||x||^2 ~ 10^3) the seed's eta = 0.01 is far beyond that limit, so the weights
explode. Divergence is an *outcome* (``diverged`` flags, non-finite-safe statistics), never
an exception.

SNR follows DESIGN.md through the project's single implementation,
:func:`robust_vision.metrics.log_snr_from_scores`: log(s_y / max_{j!=y} s_j) with
the seed's 1e-6 in the denominator; accuracy of the pattern protocol is s_target > s_control.

No maintained JAX library implements these crossbar rules; they are a few lines of jnp.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import get_noise
from robust_vision.corruptions._common import lookup
from robust_vision.metrics import log_snr_from_scores, snr_summary
from robust_vision.models.crossbar import init_crossbar

__all__ = [
    "RULES",
    "ClipRange",
    "clip_weights",
    "crossbar_accuracy",
    "crossbar_epoch",
    "crossbar_scores",
    "get_rule",
    "hebbian_update",
    "is_diverged",
    "pattern_protocol",
    "sgd_mse_update",
    "train_crossbar",
    "train_single_pattern",
    "weight_stats",
]

ClipRange = Optional[tuple[float, float]]
"""(lo, hi) bounds applied after every update, or None for unconstrained weights."""

RuleFn = Callable[[jax.Array, jax.Array, jax.Array, "float | jax.Array", Any], jax.Array]


# ------------------------------------------------------------------------------ checks


def _check_clip_range(clip_range: Any) -> ClipRange:
    """None, or a (lo, hi) pair with lo <= hi (concrete values are checked; traced pass)."""
    if clip_range is None:
        return None
    if len(clip_range) != 2:
        raise ValueError(f"clip_range must be null or [lo, hi], got {clip_range!r}.")
    lo, hi = clip_range
    if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
        lo, hi = float(lo), float(hi)
        if not lo <= hi:  # also rejects NaN
            raise ValueError(f"clip_range must satisfy lo <= hi, got [{lo}, {hi}].")
    return (lo, hi)


@dataclass(frozen=True)
class LocalRule:
    """A local learning rule and its settings: ``name`` ("hebbian" or "sgd_mse"), learning rate
    ``eta`` (None: the seed's 0.2 for hebbian, 0.01 for sgd_mse), ``clip_range`` (lo, hi) applied
    after every update (None: unconstrained) and the divergence ``bound`` on |W|."""

    name: str = "hebbian"
    eta: Optional[float] = None
    clip_range: ClipRange = None
    bound: float = 1e6

    def resolved(self) -> "LocalRule":
        """This rule checked (known name, lo <= hi), with its default eta filled in."""
        get_rule(self.name)
        eta = self.eta if self.eta is not None else {"hebbian": 0.2, "sgd_mse": 0.01}[self.name]
        return LocalRule(self.name, float(eta), _check_clip_range(self.clip_range), float(self.bound))


def _flatten(x: jax.Array) -> jax.Array:
    """(B, ...) -> (B, D) float32."""
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------------------- model


def crossbar_scores(W: jax.Array, x: jax.Array) -> jax.Array:
    """Crossbar outputs s = W^T x.

    Args:
        W: (D, K) weights.
        x: (B, D) flattened inputs, or (B, H, W, C) images (flattened row-major to D = H*W*C).

    Returns:
        (B, K) float32 scores (non-negative when W and x are).
    """
    return _flatten(x) @ W


def crossbar_accuracy(W: jax.Array, x: jax.Array, y: jax.Array) -> float:
    """Fraction of examples with argmax_k s_k == y over the whole of ``x`` (B, D) / ``y`` (B,).

    Non-finite scores (diverged weights) count as wrong."""
    scores = crossbar_scores(W, x)
    finite = jnp.all(jnp.isfinite(scores), axis=-1)
    correct = (jnp.argmax(scores, axis=-1) == jnp.asarray(y)) & finite
    return float(jnp.mean(correct.astype(jnp.float32)))


# ------------------------------------------------------------------------------- rules


def clip_weights(W: jax.Array, clip_range: ClipRange) -> jax.Array:
    """``clip(W, lo, hi)``, or W unchanged (bit for bit) when ``clip_range`` is None.

    NaN entries stay NaN, so clipping never hides a divergence."""
    if clip_range is None:
        return W
    lo, hi = clip_range
    return jnp.clip(W, lo, hi)


def _as_batch(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    if x.ndim == 1:
        x = x[None]
    if t.ndim == 1:
        t = jnp.broadcast_to(t, (x.shape[0], t.shape[0]))
    if x.ndim != 2 or t.ndim != 2 or t.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (D,) or (B, D) and t (K,) or (B, K); got {x.shape} and {t.shape}.")
    return x, t


def hebbian_update(W: jax.Array, x: jax.Array, t: jax.Array, eta: float | jax.Array,
                   clip_range: ClipRange = None) -> jax.Array:
    """One Hebbian step W <- clip(W + eta * x t^T).

    Args:
        W: (D, K) weights.
        x: (D,) one flattened input, or (B, D) a minibatch (the update is the batch mean).
        t: (K,) target signal (shared by the batch) or (B, K) one per example.
        eta: learning rate (weight units per unit input x target).
        clip_range: (lo, hi) or None.

    Returns:
        (D, K) updated weights. Jittable (``clip_range`` may be a pytree argument).
    """
    xb, tb = _as_batch(x, t)
    dW = (eta / xb.shape[0]) * (xb.T @ tb) if xb.shape[0] > 1 else eta * jnp.outer(xb[0], tb[0])
    return clip_weights(W + dW, clip_range)


def sgd_mse_update(W: jax.Array, x: jax.Array, t: jax.Array, eta: float | jax.Array,
                   clip_range: ClipRange = None) -> jax.Array:
    """One SGD step on 0.5 * ||W^T x - t||^2: W <- clip(W - eta * x (W^T x - t)^T).

    Args/returns as :func:`hebbian_update` (minibatch: mean of the per-example gradients).
    """
    xb, tb = _as_batch(x, t)
    residual = xb @ W - tb  # (B, K)
    dW = (-eta / xb.shape[0]) * (xb.T @ residual) if xb.shape[0] > 1 else -eta * jnp.outer(xb[0], residual[0])
    return clip_weights(W + dW, clip_range)


RULES: dict[str, RuleFn] = {"hebbian": hebbian_update, "sgd_mse": sgd_mse_update}


def get_rule(name: str) -> RuleFn:
    """The update rule called ``name`` (hebbian, sgd_mse); unknown names list the valid ones."""
    return lookup(RULES, name, "learning rule")


# -------------------------------------------------------------------------- divergence


def is_diverged(W: jax.Array, bound: float | jax.Array, axes: Optional[Sequence[int]] = None) -> jax.Array:
    """True where W has a non-finite entry or max|W| > bound (jittable).

    Args:
        W: weights of any shape, e.g. (D, K) or a stack (N, D, K).
        bound: divergence bound on |W| (weight units).
        axes: axes reduced over; default all (a scalar). Use (1, 2) for a (N, D, K) stack.

    Returns:
        bool array (scalar, or the non-reduced axes).
    """
    axes = None if axes is None else tuple(axes)
    nonfinite = jnp.any(~jnp.isfinite(W), axis=axes)
    too_big = jnp.max(jnp.where(jnp.isfinite(W), jnp.abs(W), 0.0), axis=axes) > bound
    return nonfinite | too_big


def weight_stats(W: Any, bound: Optional[float] = None) -> dict[str, Any]:
    """Finite-safe weight statistics (the seed's "Weight Statistics by Method" table).

    mean / std / min / max / max_abs are computed in float64 over the *finite* entries only
    (NaN when there are none); non-finite entries are counted and flagged.

    Args:
        W: weights of any shape (pooled over all entries, e.g. all N models of a protocol).
        bound: divergence bound; adds ``diverged`` (non-finite or max|W| > bound).

    Returns:
        dict with mean, std, min, max, max_abs (float), n, n_finite, n_nan, n_posinf,
        n_neginf (int), has_nan, has_inf (bool) and, with ``bound``, diverged (bool).
    """
    w = np.asarray(W, dtype=np.float64).ravel()
    finite = np.isfinite(w)
    wf = w[finite]
    has = wf.size > 0
    out: dict[str, Any] = {
        "mean": float(wf.mean()) if has else float("nan"),
        "std": float(wf.std()) if has else float("nan"),
        "min": float(wf.min()) if has else float("nan"),
        "max": float(wf.max()) if has else float("nan"),
        "max_abs": float(np.abs(wf).max()) if has else float("nan"),
        "n": int(w.size),
        "n_finite": int(finite.sum()),
        "n_nan": int(np.isnan(w).sum()),
        "n_posinf": int(np.isposinf(w).sum()),
        "n_neginf": int(np.isneginf(w).sum()),
    }
    out["has_nan"] = out["n_nan"] > 0
    out["has_inf"] = (out["n_posinf"] + out["n_neginf"]) > 0
    if bound is not None:
        out["diverged"] = bool(out["n_finite"] < out["n"] or (has and out["max_abs"] > bound))
    return out


# ---------------------------------------------------------------------- pattern protocol


@functools.partial(jax.jit, static_argnames=("rule", "iterations"))
def train_single_pattern(W0: jax.Array, x: jax.Array, t: jax.Array, *, rule: str, eta: float | jax.Array,
                         iterations: int, clip_range: ClipRange = None) -> jax.Array:
    """``iterations`` single-example updates of ``rule`` on one image (lax.fori_loop).

    Args:
        W0: (D, K) initial weights.
        x: (D,) flattened image in [0, 1].
        t: (K,) target signal, e.g. [1, 0].
        rule: "hebbian" or "sgd_mse" (static).
        eta: learning rate.
        iterations: number of updates (static).
        clip_range: (lo, hi) or None, applied after every update.

    Returns:
        (D, K) trained weights (possibly non-finite for a diverging rule).
    """
    update = get_rule(rule)
    return jax.lax.fori_loop(0, iterations, lambda _, W: update(W, x, t, eta, clip_range), W0)


@functools.partial(jax.jit, static_argnames=("rule", "iterations", "num_outputs"))
def _train_patterns(key: jax.Array, x: jax.Array, eta: jax.Array, clip_range: ClipRange, bound: jax.Array,
                    *, rule: str, iterations: int, num_outputs: int) -> tuple[jax.Array, jax.Array]:
    """Fresh model per image (vmap): x (N, D) -> W (N, D, K), diverged (N,)."""
    n, d = x.shape
    W0 = jax.vmap(lambda k: init_crossbar(k, d, num_outputs))(jax.random.split(key, n))
    t = jax.nn.one_hot(0, num_outputs, dtype=jnp.float32)
    train = functools.partial(train_single_pattern, rule=rule, eta=eta, iterations=iterations,
                              clip_range=clip_range)
    W = jax.vmap(lambda w0, xi: train(w0, xi, t))(W0, x)
    return W, is_diverged(W, bound, axes=(1, 2))


@functools.partial(jax.jit, static_argnames=("noise_type", "n_noisy"))
def _eval_condition(W: jax.Array, images: jax.Array, key: jax.Array, level: jax.Array,
                    *, noise_type: str, n_noisy: int) -> tuple[jax.Array, jax.Array]:
    """Each model n on ``n_noisy`` noisy copies of its own image.

    W (N, D, K), images (N, H, W, C) -> log_snr (N, n_noisy), correct (N, n_noisy) bool.
    """
    n = images.shape[0]
    copies = jnp.repeat(images, n_noisy, axis=0)  # (N * n_noisy, H, W, C), image-major
    noisy = get_noise(noise_type)(key, copies, level).reshape(n, n_noisy, -1)
    scores = jnp.einsum("nmd,ndk->nmk", noisy, W)  # (N, n_noisy, K)
    flat = scores.reshape(n * n_noisy, -1)
    log_snr = log_snr_from_scores(flat, jnp.zeros((n * n_noisy,), jnp.int32)).reshape(n, n_noisy)
    s_target, s_control = scores[..., 0], jnp.max(scores[..., 1:], axis=-1)
    return log_snr, s_target > s_control


def _condition_key(key: jax.Array, noise_type: str, level_index: int) -> jax.Array:
    # A stable per-condition key: a condition's noise does not depend on which other
    # noise types were requested alongside it.
    return jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(noise_type.encode()) & 0x7FFFFFFF), level_index)


def _condition_rows(W: jax.Array, images: jax.Array, noise_key: jax.Array, noise_types: Sequence[str],
                    levels: Sequence[float], n_noisy: int) -> tuple[list[dict], list[dict]]:
    """``pattern_protocol``'s rows and per-image arrays, one per (noise_type, level)."""
    rows, per_image = [], []
    for name in noise_types:
        for i, level in enumerate(levels):
            log_snr, correct = _eval_condition(W, images, _condition_key(noise_key, name, i),
                                               jnp.float32(level), noise_type=name, n_noisy=n_noisy)
            draws = np.asarray(log_snr, np.float64)  # (N, n_noisy)
            log_snr = draws.ravel()
            finite = np.isfinite(log_snr)
            ok = np.isfinite(draws)
            count = ok.sum(axis=1)
            # mean over an image's finite draws; nan for an image without any (diverged model)
            image_log_snr = np.where(count > 0, np.where(ok, draws, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
            rows.append({
                "noise_type": name, "level": float(level), "n": int(log_snr.size),
                "accuracy": float(np.asarray(correct).mean()),
                **snr_summary(log_snr[finite]),
                "n_nonfinite": int((~finite).sum()),
            })
            # per image (N,): the resampling units of the study's bootstrap intervals
            per_image.append({"log_snr": image_log_snr, "accuracy": np.asarray(correct, np.float64).mean(axis=1)})
    return rows, per_image


def pattern_protocol(key: jax.Array, images: jax.Array, rule: LocalRule = LocalRule(), iterations: int = 30,
                     noise_types: Sequence[str] = ("gaussian", "salt_pepper", "fog", "occlusion"),
                     levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5), n_noisy: int = 20,
                     num_outputs: int = 2) -> dict[str, Any]:
    """The seed's single-pattern protocol: one fresh 2-output crossbar per image.

    For each image n: W_n ~ U[0, 0.01) (its own key), trained for ``iterations`` updates of
    ``rule`` on that image alone with target t = [1, 0]; then tested on ``n_noisy`` noisy
    copies of the same image for every (noise_type, level). All N models train at once (vmap).

    Args:
        key: ``jax.random`` key (split into an init key and a noise key).
        images: (N, H, W, C) float images in [0, 1] (the seed: 64x64 grayscale, C = 1).
        rule: the rule and its eta, clip range and divergence bound (:class:`LocalRule`).
        iterations: updates per image.
        noise_types: names for :func:`robust_vision.corruptions.get_noise`.
        levels: severities in [0, 1] (0 = clean).
        n_noisy: noisy copies per image and condition.
        num_outputs: K (output 0 is the target, the others the control).

    Returns:
        dict with the settings, ``rows`` (one per noise_type x level: noise_type, level, n,
        accuracy = fraction with s_target > s_control over all N * n_noisy tests, snr /
        snr_median = geometric mean / median of s_target / (s_control + 1e-6) over the finite
        log-SNRs, n_nonfinite = tests whose log-SNR is NaN/inf, e.g. from diverged weights),
        ``per_image`` (one per row: ``log_snr`` / ``accuracy``, (N,) arrays of each image's mean
        finite log-SNR (nan: none finite) and fraction correct over its n_noisy copies),
        ``weight_stats`` (:func:`weight_stats` pooled over the N models), ``n_diverged``,
        ``diverged`` ((N,) bool list) and ``n_images``.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    rule = rule.resolved()
    for name in noise_types:
        get_noise(name)
    if num_outputs < 2:
        raise ValueError(f"num_outputs must be >= 2 (target + control), got {num_outputs}.")
    init_key, noise_key = jax.random.split(key)
    x = images.reshape(images.shape[0], -1)
    W, diverged = _train_patterns(init_key, x, jnp.float32(rule.eta), rule.clip_range, jnp.float32(rule.bound),
                                  rule=rule.name, iterations=int(iterations), num_outputs=int(num_outputs))
    rows, per_image = _condition_rows(W, images, noise_key, noise_types, levels, int(n_noisy))
    diverged = np.asarray(diverged)
    return {
        "rule": rule.name, "clip_range": None if rule.clip_range is None else list(rule.clip_range), "eta": rule.eta,
        "iterations": int(iterations), "n_images": int(images.shape[0]), "n_noisy": int(n_noisy),
        "bound": rule.bound, "rows": rows, "per_image": per_image, "weight_stats": weight_stats(W, rule.bound),
        "n_diverged": int(diverged.sum()), "diverged": diverged.tolist(),
    }


# ---------------------------------------------------------------- classification protocol


@functools.partial(jax.jit, static_argnames=("rule", "batch_size"))
def crossbar_epoch(W: jax.Array, x: jax.Array, t: jax.Array, key: jax.Array, eta: jax.Array, clip_range: ClipRange,
                   *, rule: str, batch_size: int) -> jax.Array:
    """One shuffled pass of ``rule`` over x (N, D) with targets t (N, K): W (D, K) -> W.

    The order is permutation(key), padded to whole batches with masked rows (zeros: they add
    nothing); each batch applies ``rule`` once, its batch mean rescaled to a mean over the real
    rows only (eta * B / count)."""
    n = x.shape[0]
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    perm = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros((pad,), jnp.int32)])
    valid = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    update = get_rule(rule)

    def body(W: jax.Array, idx_valid: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        idx, ok = idx_valid
        xb, tb = x[idx] * ok[:, None], t[idx] * ok[:, None]
        scale = batch_size / jnp.maximum(ok.sum(), 1.0)
        return update(W, xb, tb, eta * scale, clip_range), None

    W, _ = jax.lax.scan(body, W, (perm.reshape(n_batches, batch_size), valid.reshape(n_batches, batch_size)))
    return W


@functools.partial(jax.jit, static_argnames=("rule", "epochs", "batch_size"))
def _train_crossbar(key: jax.Array, x: jax.Array, t: jax.Array, eta: jax.Array, clip_range: ClipRange,
                    *, rule: str, epochs: int, batch_size: int) -> jax.Array:
    """``epochs`` of ``crossbar_epoch`` from ``init_crossbar``: x (N, D), one-hot targets t (N, K) -> W (D, K)."""
    init_key, shuffle_key = jax.random.split(key)

    def epoch(W: jax.Array, k: jax.Array) -> tuple[jax.Array, None]:
        return crossbar_epoch(W, x, t, k, eta, clip_range, rule=rule, batch_size=batch_size), None

    W, _ = jax.lax.scan(epoch, init_crossbar(init_key, x.shape[1], t.shape[1]), jax.random.split(shuffle_key, epochs))
    return W


def train_crossbar(key: jax.Array, x_train: jax.Array, y_train: jax.Array, rule: LocalRule = LocalRule(),
                   epochs: int = 30, batch_size: int = 128,
                   num_classes: Optional[int] = None) -> tuple[jax.Array, dict[str, Any]]:
    """Train a K-output crossbar on a labelled set with a local rule (one jitted lax.scan).

    Each epoch reshuffles (key) and visits every example exactly once, in minibatches of
    ``batch_size`` (the last partial batch included, masked); each minibatch applies one
    update with the batch *mean* of the per-example updates and target t = one_hot(y).
    Hebbian therefore accumulates class correlations: W[:, k] grows with the mean input of
    class k (weighted by how often the class occurs); SGD-MSE fits W^T x to the one-hot target.

    Args:
        key: ``jax.random`` key (init and shuffling).
        x_train: (N, D) flattened inputs, or (N, H, W, C) images, in [0, 1].
        y_train: (N,) int labels in {0..K-1}.
        rule: the rule and its eta, clip range and divergence bound (:class:`LocalRule`).
        epochs: passes over the data.
        batch_size: minibatch size.
        num_classes: K; default max(y_train) + 1.

    Returns:
        (W (D, K), stats): stats = :func:`weight_stats` with ``diverged``, plus
        ``train_accuracy`` (argmax agreement over the whole training set; non-finite = wrong).
    """
    rule = rule.resolved()
    x = _flatten(x_train)
    y = jnp.asarray(y_train, jnp.int32)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y_train must be (N,) with N = {x.shape[0]}, got shape {y.shape}.")
    if num_classes is None:
        num_classes = int(np.asarray(y).max()) + 1
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}.")
    batch_size = min(int(batch_size), x.shape[0])
    t = jax.nn.one_hot(y, int(num_classes), dtype=jnp.float32)
    W = _train_crossbar(key, x, t, jnp.float32(rule.eta), rule.clip_range, rule=rule.name, epochs=int(epochs),
                        batch_size=batch_size)
    stats = weight_stats(W, rule.bound)
    stats["train_accuracy"] = crossbar_accuracy(W, x, y)
    return W, stats

