"""Robustness regularizers from the local-learning seed: Jacobian and spectral penalties.

* :func:`jacobian_penalty`: Hoffman, Roberts & Yaida, "Robust Learning with Jacobian
  Regularization" (2019, arXiv:1908.02729), the random-projection estimate of the squared
  Frobenius norm of the input-output Jacobian (facebookresearch/jacobian_regularizer).
* :func:`spectral_penalty`: Nassar et al., "On 1/n neural representation and robustness"
  (NeurIPS 2020; github.com/josuenassar/power_law): penalise the deviation of the
  eigenspectrum of a hidden representation from a 1/n^alpha power law.

Both are pure, jittable functions of whole batches and return a scalar to be added (times a
weight) to the training loss. They are written by hand: no maintained JAX library provides
either (the Jacobian-vector products themselves are ``jax.vjp``).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import jax
import jax.numpy as jnp

__all__ = ["JACOBIAN_CONVENTIONS", "jacobian_penalty", "make_regularizer", "spectral_penalty"]

# How the Jacobian penalty is scaled. "frobenius_sq": ||J||_F^2 (this project's default since
# its first release, so existing weights and configs keep their meaning); "half_frobenius_sq":
# 1/2 ||J||_F^2, the loss of the reference code (facebookresearch/jacobian_regularizer,
# JacobianReg returns ||J||_F^2 / 2 with lambda_JR applied outside), so a weight taken from
# Hoffman et al. means the same here.
JACOBIAN_CONVENTIONS: dict[str, float] = {"frobenius_sq": 1.0, "half_frobenius_sq": 0.5}


def jacobian_penalty(fn: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array,
                     n_proj: int = 1,
                     convention: Literal["frobenius_sq", "half_frobenius_sq"] = "frobenius_sq") -> jax.Array:
    """Estimate of ||J(x)||_F^2 = sum_{c,i} (d fn(x)_c / d x_i)^2, averaged over the batch.

    For every example a random unit vector v on the sphere of the C outputs gives
    E[C ||v^T J||^2] = ||J||_F^2 (E[v v^T] = I / C); one vector-Jacobian product per
    projection computes v^T J for the whole batch at once (Hoffman et al. 2019, Alg. 1).

    Args:
      fn: maps a batch x (B, ...) to outputs (B, C) (e.g. logits), example by example
        (no interaction between the examples of the batch, e.g. BatchNorm in eval mode).
      x: the input batch (B, ...), e.g. images (B, H, W, C) in [0, 1].
      key: ``jax.random`` key of the projections.
      n_proj: number of random projections (> 0), or -1 for the exact value (C products
        with the orthonormal basis).
      convention: ``"frobenius_sq"`` (default): the estimate of ||J||_F^2;
        ``"half_frobenius_sq"``: half of it, the reference code's loss (see
        ``JACOBIAN_CONVENTIONS``).

    Returns:
      Scalar float32: the estimate of the mean over the batch of ||J||_F^2, times 1/2 under
      ``"half_frobenius_sq"``. Differentiable with respect to parameters closed over by ``fn``.
    """
    if convention not in JACOBIAN_CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(JACOBIAN_CONVENTIONS)}, got {convention!r}")
    if n_proj == 0 or n_proj < -1:
        raise ValueError(f"n_proj must be a positive number of projections or -1 (exact), got {n_proj}")
    y, vjp_fn = jax.vjp(fn, x)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"fn must map a batch (B, ...) to outputs (B, C); got outputs of shape {y.shape} "
                         f"for inputs of shape {x.shape}")
    b, c = y.shape
    if n_proj == -1:
        vs = jnp.broadcast_to(jnp.eye(c, dtype=y.dtype)[:, None, :], (c, b, c))  # basis vector per example
        scale = 1.0
    else:
        vs = jax.random.normal(key, (n_proj, b, c), y.dtype)
        vs = vs / jnp.linalg.norm(vs, axis=-1, keepdims=True)
        scale = c / n_proj  # C ||v^T J||^2 is unbiased; average over projections
    scale = scale * JACOBIAN_CONVENTIONS[convention]
    # One batched vjp per projection vector (vmap over projections, never over examples).
    (jv,) = jax.vmap(vjp_fn)(vs)  # (P, B, ...)
    return (scale * jnp.sum(jv.astype(jnp.float32) ** 2) / b).astype(jnp.float32)


def spectral_penalty(hidden: jax.Array, alpha: float = 1.0, *, start: int = 10,
                     eigvecs: Optional[jax.Array] = None) -> jax.Array:
    """Nassar et al.'s spectral regulariser: deviation of the eigenspectrum of the
    covariance of ``hidden`` from a 1/n^alpha power law beyond index ``start``.

    With eigenvalues l_1 >= l_2 >= ... of the batch covariance (ranks n = 1..D), the target
    is g_n = beta / n^alpha anchored at the rank start+1 (beta = l_{start+1} (start+1)^alpha,
    held constant, as in the reference), and the penalty is

        (1 / D) sum_{n > start+1, l_n > 0} (l_n / g_n - 1)^2 + relu(l_n / g_n - 1)

    (the relu term penalises eigenvalues *above* the power law, i.e. too slow a decay, more
    than those below it).

    Eigenvalues are computed as diag(V^T C V) with eigenvectors V held constant (the
    batch's own, under ``stop_gradient``, or ``eigvecs`` computed on a larger set as the
    reference does): this gives the exact eigenvalue gradient v^T dC v without the
    1 / (l_i - l_j) terms of differentiating through eigh, which blow up for nearly
    degenerate spectra such as a white representation.

    Args:
      hidden: (B, D) representation of a batch (flattened if it has more dims).
      alpha: exponent of the target power law (1.0 = the 1/n law).
      start: 0-based index of the anchor eigenvalue; only eigenvalues after it are penalised
        (the reference uses 10). Needs start < D - 1 and B > start + 1.
      eigvecs: optional (D, D) eigenvectors (columns) of a reference covariance.

    Returns:
      Scalar float32 penalty (0 for an exact power law); differentiable w.r.t. ``hidden``.
    """
    h = hidden.reshape(hidden.shape[0], -1).astype(jnp.float32)
    b, d = h.shape
    if not 0 <= start < d - 1:
        raise ValueError(f"start must satisfy 0 <= start < D - 1 = {d - 1} (D = representation size), got {start}")
    if b < start + 2:
        raise ValueError(f"a batch of {b} examples has covariance rank <= {b - 1}, too low to anchor the power law "
                         f"at index start={start}; use batches larger than start + 1 or a smaller start")
    hc = h - jnp.mean(h, axis=0, keepdims=True)
    cov = hc.T @ hc / (b - 1)
    cov = 0.5 * (cov + cov.T)
    if eigvecs is None:
        _, v = jnp.linalg.eigh(jax.lax.stop_gradient(cov))
    else:
        if eigvecs.shape != (d, d):
            raise ValueError(f"eigvecs must be (D, D) = {(d, d)}, got {eigvecs.shape}")
        v = jax.lax.stop_gradient(eigvecs.astype(jnp.float32))
    eig = jnp.sum(v * (cov @ v), axis=0)  # diag(V^T C V)
    eig = jnp.sort(eig)[::-1]
    ranks = jnp.arange(1, d + 1, dtype=jnp.float32)
    beta = jax.lax.stop_gradient(eig[start] * (start + 1.0) ** alpha)
    beta = jnp.maximum(beta, jnp.finfo(jnp.float32).tiny)  # a dead representation gives 0, not nan
    ratio = eig * ranks ** alpha / beta  # l_n / g_n
    use = (jnp.arange(d) > start) & (eig > 0)
    terms = (ratio - 1.0) ** 2 + jax.nn.relu(ratio - 1.0)
    return jnp.sum(jnp.where(use, terms, 0.0)) / d


def make_regularizer(rcfg) -> Optional[Callable]:
    """The trainer's ``extra_loss(model, images, features, key) -> scalar`` for the weights of
    ``training.regularizers`` (a :class:`robust_vision.config.RegularizerConfig`), or None when
    both weights are 0.

    The Jacobian term differentiates a *copy* of the train-mode model (``nnx.split`` /
    ``nnx.merge``), so its extra forward pass does not update the batch-norm statistics a
    second time. The spectral term uses the named feature of the main forward pass,
    flattened to (B, D).
    """
    from flax import nnx  # local: this module is otherwise pure jnp

    from robust_vision.models.state import merge_fresh

    if rcfg.jacobian_weight == 0 and rcfg.spectral_weight == 0:
        return None

    def extra_loss(model, images, features, key):
        total = jnp.zeros((), jnp.float32)
        if rcfg.jacobian_weight > 0:
            graph, state = nnx.split(model)

            def logits_of(x):
                return merge_fresh(graph, state)(x)  # the copy's batch-norm update stays inside jax.vjp

            total = total + rcfg.jacobian_weight * jacobian_penalty(logits_of, images, key,
                                                                     n_proj=rcfg.jacobian_projections,
                                                                     convention=rcfg.jacobian_convention)
        if rcfg.spectral_weight > 0:
            if rcfg.spectral_layer not in features:
                raise ValueError(f"training.regularizers.spectral_layer: got {rcfg.spectral_layer!r}; this model's "
                                 f"features are {', '.join(sorted(features))}")
            total = total + rcfg.spectral_weight * spectral_penalty(features[rcfg.spectral_layer],
                                                                    alpha=rcfg.spectral_alpha,
                                                                    start=rcfg.spectral_start)
        return total

    return extra_loss
