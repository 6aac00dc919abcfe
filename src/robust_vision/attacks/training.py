"""Adversarial-training losses, pure and jittable, for use inside the trainer's train step.

``logits_fn`` is built by the trainer from the parameters being differentiated; the inner
attack is run under ``lax.stop_gradient`` so the outer gradient w.r.t. the parameters is the
usual Danskin / TRADES gradient at the adversarial point (no back-propagation through the
attack iterations, which JAX then drops from the backward pass).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import LogitsFn, ce_loss, check_inputs, loop, project
from robust_vision.attacks.gradient import default_step_size, pgd


def madry_pgd_examples(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
                       eps: float | jax.Array, steps: int = 10, step_size: float | jax.Array | None = None,
                       unroll: int | bool = 1) -> jax.Array:
    """Adversarial examples for Madry et al. (2018) PGD training: Linf PGD with a random
    start, maximising cross-entropy, returned under ``stop_gradient``.

    Train on ``ce(logits_fn(x_adv), y)``. Shapes: x (B, H, W, C) in [0, 1], y (B,) ->
    x_adv (B, H, W, C) in [0, 1], ||x_adv - x||_inf <= eps. step_size defaults to 2.5 * eps / steps;
    ``unroll`` as in ``pgd`` (unrolling is faster on CPU, slower to compile).
    """
    x_adv = pgd(logits_fn, x, y, key, eps, norm="linf", steps=steps, step_size=step_size, random_start=True,
                unroll=unroll)
    return jax.lax.stop_gradient(x_adv)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) per example from log-probabilities (B, K) -> (B,), in nats."""
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def trades_examples(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, eps: float | jax.Array, steps: int = 10,
                    step_size: float | jax.Array | None = None, unroll: int | bool = 1) -> jax.Array:
    """TRADES's inner maximisation (Zhang et al. 2019): x_adv in the Linf eps-ball of x that
    maximises KL(softmax f(x) || softmax f(x_adv)), returned under ``stop_gradient``.

    Start at x + 0.001 * N(0, 1) (as the reference code), then ``steps`` sign-gradient steps
    of ``step_size`` (default 2.5 * eps / steps; the paper uses eps / 4 with 10 steps at
    eps = 8/255, close to this), projected onto the ball and [0, 1]; f(x) is a constant.
    Shapes: x (B, H, W, C) in [0, 1] -> (B, H, W, C). ``unroll`` as in ``pgd``.
    """
    if step_size is None:
        step_size = default_step_size(eps, steps)
    target = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(x).astype(jnp.float32), axis=-1))

    def kl_total(xa):
        return jnp.sum(_kl(target, jax.nn.log_softmax(logits_fn(xa).astype(jnp.float32), axis=-1)))

    x0 = project(x + 0.001 * jax.random.normal(key, x.shape, x.dtype), x, eps, "linf")

    def body(_, xa):
        g = jax.grad(kl_total)(xa)
        return project(xa + step_size * jnp.sign(g), x, eps, "linf")

    return jax.lax.stop_gradient(loop(0, steps, body, x0, unroll=unroll))


def trades_objective(logits_clean: jax.Array, logits_adv: jax.Array, y: jax.Array, beta: float) -> jax.Array:
    """CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)) per example, (B,), in nats;
    differentiable in both logits (as the reference)."""
    log_p_clean = jax.nn.log_softmax(logits_clean.astype(jnp.float32), axis=-1)
    log_p_adv = jax.nn.log_softmax(logits_adv.astype(jnp.float32), axis=-1)
    return ce_loss(logits_clean, y) + beta * _kl(log_p_clean, log_p_adv)


def trades_loss(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
                steps: int = 10, step_size: float | jax.Array | None = None, beta: float = 6.0,
                unroll: int | bool = 1) -> jax.Array:
    """TRADES loss (Zhang et al. 2019), per example, shape (B,), in nats:

        CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)),

    with x_adv from :func:`trades_examples` on the same ``logits_fn``. beta = 0 gives exactly
    the cross-entropy. The trainer uses the two halves separately, attacking the eval-mode
    model and computing the objective in train mode, as the reference code does.
    """
    check_inputs(x, y, eps, name="trades_loss")
    x_adv = trades_examples(logits_fn, x, key, eps, steps, step_size, unroll)
    return trades_objective(logits_fn(x), logits_fn(x_adv), y, beta)


def mart_objective(logits_clean: jax.Array, logits_adv: jax.Array, y: jax.Array, beta: float) -> jax.Array:
    """MART loss (Wang et al. 2020), per example, shape (B,), in nats:

        BCE(p(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)),
        BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k),

    with x_adv from :func:`madry_pgd_examples` (PGD on cross-entropy). The boosted CE's second
    term pushes down the strongest wrong class; the KL term is weighted up on the examples the
    model gets wrong or barely right. Small constants keep the logs finite (1e-12, and
    1.0001 - p as in the paper's code). Differentiable in both logits."""
    log_p_adv = jax.nn.log_softmax(logits_adv.astype(jnp.float32), axis=-1)
    log_p_clean = jax.nn.log_softmax(logits_clean.astype(jnp.float32), axis=-1)
    p_adv = jnp.exp(log_p_adv)
    k = p_adv.shape[-1]
    is_true = jax.nn.one_hot(y, k, dtype=bool)
    strongest_wrong = jnp.max(jnp.where(is_true, -jnp.inf, p_adv), axis=-1)
    bce = ce_loss(logits_adv, y) - jnp.log(1.0001 - strongest_wrong + 1e-12)
    p_true_clean = jnp.take_along_axis(jnp.exp(log_p_clean), y[:, None], axis=-1)[:, 0]
    kl = _kl(log_p_clean, jnp.log(p_adv + 1e-12))
    return bce + beta * kl * (1.0000001 - p_true_clean)
