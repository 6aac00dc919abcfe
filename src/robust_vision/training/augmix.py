"""AugMix (Hendrycks et al. 2020): augmentation chains mixed with the clean image, trained with
a Jensen-Shannon consistency loss. Everything runs on device from explicit keys.

Per image x (H, W, C) in [0, 1]: ``width`` chains, each of 1..``depth`` operations drawn from
:data:`OPS` (depth drawn per chain; ``depth`` < 0 in the paper's code means random 1..3, here
``depth`` is the maximum and the draw is always random), mixed with Dirichlet(alpha) weights;
then x_augmix = m * x + (1 - m) * mix with m ~ Beta(alpha, alpha). Two independent AugMix views
per image feed the loss

    CE(f(x), y) + lam * JS(p(x), p(x_aug1), p(x_aug2)),
    JS = mean_i KL(p_i || p_mix),  p_mix = (p(x) + p(x_aug1) + p(x_aug2)) / 3    (nats, per example).

The operations are the paper's list without ``equalize`` (histogram equalisation has no cheap
exact batched form) and without the ImageNet-C-overlapping ones (contrast, color, brightness,
sharpness are excluded by the paper itself): autocontrast, rotate, shear_x, shear_y,
translate_x, translate_y, posterize, solarize. No ImageNet-C corruption is used in training.
Geometric operations resample bilinearly with zero fill outside the image (as PIL's affine
transform does). Written by hand: no maintained JAX AugMix.

Trainer hook: ``augmix_hooks`` returns ``pair_transform`` / ``pair_loss`` for
``training.steps.make_train_step``; the "pair" is the two views stacked along the batch axis
(2B, H, W, C), so the train-mode forward sees the clean batch and the augmented views as two
batches (the reference concatenates all three for one batch-norm pass).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import ce_loss

__all__ = ["OPS", "apply_op", "augmix_image", "augmix_views", "augmix_hooks", "js_consistency", "augmix_objective"]

OPS: tuple[str, ...] = ("autocontrast", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "posterize",
                        "solarize")


def _affine(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """Resample x (H, W, C) at ``matrix`` @ (row, col, 1) about the image centre (bilinear, zero fill)."""
    h, w = x.shape[0], x.shape[1]
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    r, c = rows - cy, cols - cx
    src_r = matrix[0, 0] * r + matrix[0, 1] * c + matrix[0, 2] + cy
    src_c = matrix[1, 0] * r + matrix[1, 1] * c + matrix[1, 2] + cx
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode="constant", cval=0.0)  # noqa: E731
    return jnp.moveaxis(jax.vmap(sample, in_axes=-1)(x), 0, -1)


def apply_op(index: jax.Array, x: jax.Array, key: jax.Array, severity: float) -> jax.Array:
    """Operation ``OPS[index]`` at a random strength up to ``severity`` (1..10) on x (H, W, C) in [0, 1].

    Returns an image of the same shape, still in [0, 1]."""
    s = severity / 10.0
    k_mag, k_sign = jax.random.split(key)
    mag = jax.random.uniform(k_mag, (), minval=0.1, maxval=1.0) * s     # in (0, s]
    sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0)
    h, w = x.shape[0], x.shape[1]

    def autocontrast(x):
        lo, hi = x.min(axis=(0, 1), keepdims=True), x.max(axis=(0, 1), keepdims=True)
        return jnp.where(hi > lo, (x - lo) / jnp.maximum(hi - lo, 1e-6), x)

    def rotate(x):
        a = sign * mag * jnp.deg2rad(30.0)
        return _affine(x, jnp.array([[jnp.cos(a), -jnp.sin(a), 0.0], [jnp.sin(a), jnp.cos(a), 0.0]]))

    def shear_x(x):
        return _affine(x, jnp.array([[1.0, 0.0, 0.0], [sign * mag * 0.3, 1.0, 0.0]]))

    def shear_y(x):
        return _affine(x, jnp.array([[1.0, sign * mag * 0.3, 0.0], [0.0, 1.0, 0.0]]))

    def translate_x(x):
        return _affine(x, jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, sign * mag * w / 3.0]]))

    def translate_y(x):
        return _affine(x, jnp.array([[1.0, 0.0, sign * mag * h / 3.0], [0.0, 1.0, 0.0]]))

    def posterize(x):
        bits = 8.0 - jnp.round(mag * 4.0)                          # 8 .. 4 bits kept
        step = 2.0 ** (8.0 - bits)
        return jnp.floor(jnp.round(x * 255.0) / step) * step / 255.0

    def solarize(x):
        threshold = 1.0 - mag                                       # 1 (no-op) .. 0
        return jnp.where(x < threshold, x, 1.0 - x)

    branches = [autocontrast, rotate, shear_x, shear_y, translate_x, translate_y, posterize, solarize]
    return jnp.clip(jax.lax.switch(index, branches, x), 0.0, 1.0)


def augmix_image(key: jax.Array, x: jax.Array, *, width: int = 3, depth: int = 3, severity: float = 3.0,
                 alpha: float = 1.0) -> jax.Array:
    """One AugMix view of x (H, W, C) in [0, 1]; same key, same view."""
    k_w, k_m, k_chains = jax.random.split(key, 3)
    weights = jax.random.dirichlet(k_w, jnp.full((width,), alpha))
    m = jax.random.beta(k_m, alpha, alpha)

    def chain(k):
        k_depth, k_ops = jax.random.split(k)
        n_ops = jax.random.randint(k_depth, (), 1, depth + 1)

        def body(i, img):
            k_op, k_arg = jax.random.split(jax.random.fold_in(k_ops, i))
            out = apply_op(jax.random.randint(k_op, (), 0, len(OPS)), img, k_arg, severity)
            return jnp.where(i < n_ops, out, img)

        return jax.lax.fori_loop(0, depth, body, x)

    chains = jax.vmap(chain)(jax.random.split(k_chains, width))      # (width, H, W, C)
    mix = jnp.tensordot(weights, chains, axes=1)
    return m * x + (1.0 - m) * mix


def augmix_views(key: jax.Array, images: jax.Array, *, n_views: int = 2, **kwargs) -> jax.Array:
    """``n_views`` AugMix views of every image: (B, H, W, C) -> (n_views * B, H, W, C), view-major."""
    b = images.shape[0]
    keys = jax.random.split(key, n_views * b).reshape(n_views, b)
    one = functools.partial(augmix_image, **kwargs)
    return jax.vmap(lambda kv: jax.vmap(one)(kv, images))(keys).reshape((n_views * b,) + images.shape[1:])


def js_consistency(*logits: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence of the softmaxes of the given logits (each (B, K)) -> (B,), nats:
    mean_i KL(p_i || p_mix), p_mix = mean_i p_i. Zero iff all distributions agree."""
    log_p = jnp.stack([jax.nn.log_softmax(z.astype(jnp.float32), axis=-1) for z in logits])  # (V, B, K)
    log_mix = jax.nn.logsumexp(log_p, axis=0) - jnp.log(float(len(logits)))
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_mix[None]), axis=-1), axis=0)


def augmix_objective(logits_clean: jax.Array, logits_views: jax.Array, y: jax.Array, lam: float) -> jax.Array:
    """CE(f(x), y) + lam * JS(f(x), f(x_aug1), f(x_aug2)) per example, (B,), nats.

    logits_views: (2B, K), the two views stacked view-major (as :func:`augmix_views`)."""
    b = logits_clean.shape[0]
    return ce_loss(logits_clean, y) + lam * js_consistency(logits_clean, logits_views[:b], logits_views[b:2 * b])


def augmix_hooks(acfg) -> dict[str, Callable]:
    """``make_train_step`` hooks for ``training.augmix`` (empty when disabled)."""
    if not acfg.enabled:
        return {}
    opts = {"width": acfg.width, "depth": acfg.depth, "severity": acfg.severity, "alpha": acfg.alpha}

    def pair_transform(logits_fn, images, labels, key):  # the model is not needed: views only
        return augmix_views(key, images, n_views=2, **opts)

    return {"pair_transform": pair_transform,
            "pair_loss": functools.partial(augmix_objective, lam=acfg.js_weight)}
