"""The seed's original loss experiment ("375x"), as its code ran it: one small MLP per image.

What ``truth_seeking_benchmark.py`` (the seed's research code) called the "CNN" was, per image:

* a 2-layer MLP without biases, D -> 128 ReLU -> 2 (D = 64*64 = 4096 for the original data),
  weights W1 (D, 128), W2 (128, 2) drawn from U(-0.01, 0.01);
* trained by plain gradient descent (lr 0.001, 60 iterations) on that single image with target
  t = [1, 0] and loss  mean((out - t)^2) + lambda * (-log(max(out0 - out1, 0.1)));
  lambda = 0 is pure MSE (the seed's "Cross-Entropy" row was never cross-entropy);
* tested on Gaussian noise sigma = 0.1 .. 0.7 (clipped to [0, 1], one draw per image and level);
  its SNR is out0 / (out1 + 1e-9) on the raw, signed outputs, averaged arithmetically over
  images x levels.

That ratio is ill-conditioned: when the control output out1 is negative or close to zero, one
image can dominate (or flip the sign of) the mean. We therefore also report

* ``snr_log_ratio``: the evaluator's definition with the outputs read as logits,
  exp(mean(out0 - out1)) (the geometric mean of the softmax ratio p0 / p1, DESIGN.md);
* ``frac_ill_conditioned``: the fraction of test examples whose control output is <= 0 or
  within 1e-6 of zero (out1 < 1e-6).

Everything is vectorised over images with ``jax.vmap``; each image has its own init key.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import get_noise

__all__ = ["ORIGINAL_LEVELS", "ORIGINAL_LAMBDAS", "ill_conditioned", "mlp_outputs", "original_loss",
           "original_snr", "log_ratio_snr", "train_original_mlps", "evaluate_original", "original_protocol"]

ORIGINAL_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
ORIGINAL_LAMBDAS: tuple[float, ...] = (0.0, 1.0, 10.0)
HIDDEN = 128
INIT_SCALE = 0.01
LEARNING_RATE = 1e-3
ITERATIONS = 60
MARGIN_FLOOR = 0.1     # max(out0 - out1, 0.1) inside the log
RATIO_EPS = 1e-9       # out0 / (out1 + 1e-9)
ILL_EPS = 1e-6         # control output <= 0 or within 1e-6 of zero


def mlp_outputs(params: tuple[jax.Array, jax.Array], x: jax.Array) -> jax.Array:
    """relu(x @ W1) @ W2 without biases: x (..., D) -> (..., 2) raw signed outputs."""
    w1, w2 = params
    return jax.nn.relu(x @ w1) @ w2


def original_loss(params: tuple[jax.Array, jax.Array], x: jax.Array, lam: jax.Array) -> jax.Array:
    """MSE to [1, 0] + lam * (-log(max(out0 - out1, 0.1))) for one image x (D,) -> scalar."""
    out = mlp_outputs(params, x)
    mse = jnp.mean((out - jnp.array([1.0, 0.0], out.dtype)) ** 2)
    return mse + lam * -jnp.log(jnp.maximum(out[0] - out[1], MARGIN_FLOOR))


def _init(key: jax.Array, dim: int, hidden: int) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(key)
    return (jax.random.uniform(k1, (dim, hidden), jnp.float32, -INIT_SCALE, INIT_SCALE),
            jax.random.uniform(k2, (hidden, 2), jnp.float32, -INIT_SCALE, INIT_SCALE))


@functools.partial(jax.jit, static_argnames=("hidden", "iterations"))
def train_original_mlps(key: jax.Array, x: jax.Array, lam: float | jax.Array, lr: float | jax.Array = LEARNING_RATE,
                        *, hidden: int = HIDDEN, iterations: int = ITERATIONS) -> tuple[jax.Array, jax.Array]:
    """One MLP per image, trained by plain gradient descent on that image alone.

    Args:
        key: init key; image n uses ``fold_in(key, n)``.
        x: (N, D) flattened images in [0, 1].
        lam: margin weight lambda (0 = pure MSE).
        lr: gradient-descent step size.

    Returns:
        (W1 (N, D, hidden), W2 (N, hidden, 2)).
    """
    n, dim = x.shape
    params = jax.vmap(lambda i: _init(jax.random.fold_in(key, i), dim, hidden))(jnp.arange(n))
    grad = jax.vmap(jax.grad(original_loss), in_axes=(0, 0, None))
    lam, lr = jnp.float32(lam), jnp.float32(lr)

    def step(p, _):
        g = grad(p, x, lam)
        return jax.tree.map(lambda w, gw: w - lr * gw, p, g), None

    params, _ = jax.lax.scan(step, params, None, length=iterations)
    return params


@functools.partial(jax.jit, static_argnames=("noise_type", "n_draws"))
def evaluate_original(params: tuple[jax.Array, jax.Array], images: jax.Array, key: jax.Array, level: jax.Array,
                      *, noise_type: str = "gaussian", n_draws: int = 1) -> jax.Array:
    """Each image's MLP on ``n_draws`` noisy copies of its own image: (N, n_draws, 2) outputs.

    images (N, H, W, C) in [0, 1]; the noise is the project's ``noise_type`` at ``level``
    (Gaussian: x + level * N(0, 1), clipped to [0, 1], as the original)."""
    n = images.shape[0]
    copies = jnp.repeat(images, n_draws, axis=0)
    noisy = get_noise(noise_type)(key, copies, level).reshape(n, n_draws, -1)
    return jax.vmap(mlp_outputs)(params, noisy)


def original_snr(outputs: np.ndarray) -> np.ndarray:
    """The original per-example SNR out0 / (out1 + 1e-9) on raw outputs (..., 2) -> (...)."""
    o = np.asarray(outputs, np.float64)
    return o[..., 0] / (o[..., 1] + RATIO_EPS)


def log_ratio_snr(outputs: np.ndarray) -> float:
    """exp(mean(out0 - out1)): the evaluator's SNR with the outputs read as logits."""
    o = np.asarray(outputs, np.float64)
    return float(np.exp(np.mean(o[..., 0] - o[..., 1])))


def ill_conditioned(outputs: np.ndarray) -> np.ndarray:
    """Examples whose control output is <= 0 or within 1e-6 of zero (bool, shape (...))."""
    o1 = np.asarray(outputs, np.float64)[..., 1]
    return (o1 <= 0) | (np.abs(o1) < ILL_EPS)


def original_protocol(key: jax.Array, images: np.ndarray, lam: float, *,
                      levels: Sequence[float] = ORIGINAL_LEVELS, noise_type: str = "gaussian",
                      n_draws: int = 1, lr: float = LEARNING_RATE, iterations: int = ITERATIONS,
                      hidden: int = HIDDEN) -> dict:
    """Train one MLP per image and evaluate it on ``levels`` of ``noise_type``.

    Args:
        key: split into an init key and a noise key (level i uses ``fold_in(noise_key, i)``).
        images: (N, H, W, C) float in [0, 1].
        lam: margin weight lambda.

    Returns:
        dict with ``outputs`` (N, L, n_draws, 2) float64 numpy, ``snr_per_image`` (N,) = the mean
        over levels and draws of the original ratio (the unit the bootstrap resamples), ``snr``
        (the original mean over images x levels x draws), ``snr_log_ratio``, ``accuracy``
        (out0 > out1), ``frac_ill_conditioned`` and ``train_accuracy`` (clean image).
    """
    images = jnp.asarray(images, jnp.float32)
    init_key, noise_key = jax.random.split(key)
    params = train_original_mlps(init_key, images.reshape(images.shape[0], -1), lam, lr, hidden=hidden,
                                 iterations=iterations)
    outs = np.stack([np.asarray(evaluate_original(params, images, jax.random.fold_in(noise_key, i),
                                                  jnp.float32(lvl), noise_type=noise_type, n_draws=n_draws),
                                np.float64) for i, lvl in enumerate(levels)], axis=1)
    clean = np.asarray(jax.vmap(mlp_outputs)(params, images.reshape(images.shape[0], -1)), np.float64)
    ratio = original_snr(outs)
    return {"outputs": outs, "snr_per_image": ratio.reshape(ratio.shape[0], -1).mean(axis=1),
            "snr": float(ratio.mean()), "snr_log_ratio": log_ratio_snr(outs),
            "accuracy": float((outs[..., 0] > outs[..., 1]).mean()),
            "frac_ill_conditioned": float(ill_conditioned(outs).mean()),
            "train_accuracy": float((clean[:, 0] > clean[:, 1]).mean())}
