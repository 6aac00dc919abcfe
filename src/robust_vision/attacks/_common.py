"""Shared pieces of the attacks: input checks, losses, input gradients and projections.

All helpers work on whole batches of NHWC float32 images in [0, 1] and are jittable.
Per-example input gradients are obtained as the gradient of the *sum* of the per-example
losses: with a model in eval mode (no batch statistics, no dropout) example i's loss depends
only on image i, so d(sum_j L_j)/dx_i = dL_i/dx_i.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_vision.metrics import logit_margin

LogitsFn = Callable[[jax.Array], jax.Array]

# Floor of a norm before dividing by it: a zero gradient / zero perturbation must give a
# zero step, never NaN (and eps = 0 must return x exactly).
_TINY = 1e-12

NORMS = ("linf", "l2")


def check_inputs(x: jax.Array, y: jax.Array, eps: float | jax.Array | None = None, *,
                 name: str = "attack") -> None:
    """Fail early, with the fix, on shapes / ranks / eps that the attacks do not accept.

    Works under ``jax.jit`` (only static shapes are inspected; ``eps`` is checked only when
    it is a concrete Python number).
    """
    if x.ndim != 4:
        raise ValueError(f"{name}: images must be NHWC of rank 4, got shape {tuple(x.shape)}; "
                         "add a batch axis (x[None]) or a channel axis (x[..., None]).")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: labels must have shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}.")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integers (int32), got dtype {y.dtype}.")
    if isinstance(eps, (int, float)) and not eps >= 0:
        raise ValueError(f"{name}: eps must be >= 0 (a budget in [0, 1] pixel units), got {eps}.")


def check_count(value: int | jax.Array, name: str, what: str = "steps", minimum: int = 0) -> None:
    """Fail early on a concrete count below ``minimum``; a traced count cannot be checked
    (the loops then treat a count below the minimum as the minimum)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value < minimum:
        raise ValueError(f"{name}: {what} must be >= {minimum}, got {value}.")


def is_static(n: int | jax.Array) -> bool:
    """True for a Python / NumPy integer (a trip count known while tracing)."""
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def count(n: int | jax.Array) -> int | jax.Array:
    """A trip count as the loops take it: a Python int stays static, anything else (a traced
    value, a 0-d array of any dtype: ``evaluate._split_hyper`` passes float32) becomes a 0-d int32
    array, so one compiled program serves every value."""
    if is_static(n):
        return int(n)
    return jnp.asarray(n).astype(jnp.int32)


def loop(lower: int | jax.Array, upper: int | jax.Array, body: Callable, init, *,
         unroll: int | bool = 1):
    """``lax.fori_loop(lower, upper, body, init)`` for a static or a traced trip count.

    Static bounds (Python ints) keep the XLA trip count known and pass ``unroll`` through (a
    new count is a new program). With a traced bound the loop is one program for every count;
    ``unroll = k > 1`` then runs an outer loop over chunks of k iterations, each chunk unrolled
    in the body, and the remaining (upper - lower) % k iterations in a rolled loop, so exactly
    the same iterations run in the same order. ``unroll=True`` (full unrolling) needs a static
    count, because the unrolled program's size is the count.
    """
    if is_static(lower) and is_static(upper):
        return jax.lax.fori_loop(int(lower), int(upper), body, init, unroll=unroll)
    if unroll is True:
        raise ValueError("unroll=True (full unrolling) needs a static step count (a Python int); "
                         "pass an int, or unroll=k for a partial unrolling of a traced count.")
    k = int(unroll) if unroll else 1
    lower = jnp.asarray(lower, jnp.int32)
    upper = jnp.maximum(jnp.asarray(upper, jnp.int32), lower)
    if k <= 1:
        return jax.lax.fori_loop(lower, upper, body, init)

    def chunk(c, carry):
        start = lower + c * k
        for j in range(k):
            carry = body(start + j, carry)
        return carry

    n_chunks = (upper - lower) // k
    carry = jax.lax.fori_loop(0, n_chunks, chunk, init)
    return jax.lax.fori_loop(lower + n_chunks * k, upper, body, carry)


def loop_until(lower: int | jax.Array, upper: int | jax.Array, body: Callable, init,
               done: Callable[[object], jax.Array]):
    """``loop(lower, upper, body, init)`` that stops early once ``done(carry)`` (a 0-d bool) holds.

    For loops whose remaining iterations cannot change the result once ``done`` holds (every
    example of the batch already fooled: later targets or queries only touch points that are
    not), so the result equals the full loop's while the work stops. Under ``jax.vmap`` (the
    AutoAttack stages vmap batch-1 attacks) each example stops on its own: JAX runs the loop
    while any example is not done and leaves the carry of the finished ones unchanged.
    """
    def cond(state):
        i, carry = state
        return (i < upper) & ~done(carry)

    def step(state):
        i, carry = state
        return i + 1, body(i, carry)

    start = jnp.asarray(lower, jnp.int32)
    return jax.lax.while_loop(cond, step, (start, init))[1]


def check_norm(norm: str, name: str = "attack") -> None:
    if norm not in NORMS:
        raise ValueError(f"{name}: unknown norm {norm!r}; valid norms: {', '.join(NORMS)}.")


def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy in nats, (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)


def margin_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example Carlini-Wagner style loss max_{j != y} z_j - z_y = -(logit margin), (B,)."""
    return -logit_margin(logits.astype(jnp.float32), y)


# Objectives the gradient attacks maximise (name -> per-example loss(logits, y)).
ATTACK_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": ce_loss,
    "margin": margin_loss,
}


def get_attack_loss(name: str | Callable) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-example loss registered under ``name``; a callable ``loss(logits, y) -> (B,)`` is
    returned as is (APGD-T passes a targeted DLR loss that closes over its target classes)."""
    if callable(name):
        return name
    try:
        return ATTACK_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown attack loss {name!r}; valid losses: {', '.join(ATTACK_LOSSES)}") from None


def loss_grad_logits(logits_fn: LogitsFn, loss_fn: Callable, x: jax.Array, y: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One forward-backward pass: per-example loss (B,), input gradient (B,H,W,C), logits (B,K)."""
    def total(xx):
        logits = logits_fn(xx)
        per_ex = loss_fn(logits, y)
        return jnp.sum(per_ex), (per_ex, logits)

    (_, (per_ex, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
    return per_ex, grad, logits


def l2_norm(v: jax.Array) -> jax.Array:
    """Per-example L2 norm over (H, W, C), shape (B, 1, 1, 1) for broadcasting."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2, 3), keepdims=True))


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
    """Steepest-ascent unit step of the norm: sign(g) for Linf, g / ||g||_2 for L2."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / jnp.maximum(l2_norm(grad), _TINY)


def project(x_adv: jax.Array, x: jax.Array, eps: float | jax.Array, norm: str) -> jax.Array:
    """Project onto {||x_adv - x|| <= eps} and then clip to [0, 1].

    Clipping after the ball projection keeps the ball constraint, because x itself is in
    [0, 1] and clipping only moves each coordinate towards x. For Linf the result is the
    exact Euclidean projection onto ball ∩ box; for L2 it is a feasible point (the usual
    approximation, exact projection onto the intersection needs an iterative solve).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    else:
        scale = jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), _TINY))
        delta = delta * scale
    return jnp.clip(x + delta, 0.0, 1.0)


def random_start(key: jax.Array, x: jax.Array, eps: float | jax.Array, norm: str) -> jax.Array:
    """A uniformly random point of the eps-ball around x (Linf: uniform cube; L2: uniform
    direction, radius eps * U^(1/d)), clipped to [0, 1]."""
    if norm == "linf":
        delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
    else:
        k_dir, k_rad = jax.random.split(key)
        direction = jax.random.normal(k_dir, x.shape, x.dtype)
        direction = direction / jnp.maximum(l2_norm(direction), _TINY)
        d = x.shape[1] * x.shape[2] * x.shape[3]
        radius = jax.random.uniform(k_rad, (x.shape[0], 1, 1, 1), x.dtype) ** (1.0 / d)
        delta = direction * radius * eps
    return jnp.clip(x + delta, 0.0, 1.0)


def bwhere(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """jnp.where with a per-example (B,) mask broadcast over the trailing axes of a / b."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
