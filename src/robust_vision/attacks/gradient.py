"""Gradient attacks under an Lp budget: FGSM, PGD (with restarts) and APGD-CE.

Signature: ``f(logits_fn, x, y, key, eps, **hyper) -> x_adv`` where ``logits_fn`` maps
images (B, H, W, C) float32 in [0, 1] to logits (B, K) (parameters closed over, eval mode),
``y`` is (B,) int32 and ``eps`` is the budget in pixel units ([0, 1] scale; e.g. 8/255).
Results are always in [0, 1] and inside the eps-ball; ``eps = 0`` returns ``x`` exactly.
Every function is pure and jittable with ``logits_fn`` and the integer / string
hyper-parameters static (``functools.partial``); ``eps``, ``step_size``, ``restarts`` and
the step count ``steps`` may be traced (0-d arrays), so one compiled program serves every
budget and step count. Iterations run in rolled ``lax.fori_loop`` / ``while`` loops
(``_common.loop``); ``unroll`` is an option, off by default. No attack library exists for JAX that we could
depend on (cleverhans-jax is unmaintained), so PGD and APGD are written here by hand,
following the papers and the reference implementation of AutoAttack.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import (
    LogitsFn, ascent_direction, bwhere, check_count, check_inputs, check_norm, count, get_attack_loss, loop,
    loss_grad_logits, project,
)
from robust_vision.attacks._common import random_start as _random_point


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None, eps: float | jax.Array,
         *, loss: str = "ce") -> jax.Array:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), Linf.

    x_adv = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1). One forward-backward pass.
    ``key`` is unused (the attack is deterministic) and accepted for a uniform signature.

    Args:
      x: (B, H, W, C) float32 in [0, 1]. y: (B,) int labels. eps: Linf budget >= 0.
      loss: objective to maximise, "ce" (cross-entropy) or "margin" (max_{j!=y} z_j - z_y).
    Returns: (B, H, W, C) float32 in [0, 1] with ||x_adv - x||_inf <= eps.
    """
    del key
    check_inputs(x, y, eps, name="fgsm")
    _, grad, _ = loss_grad_logits(logits_fn, get_attack_loss(loss), x, y)
    return project(x + eps * jnp.sign(grad), x, eps, "linf")


def _pgd_single(logits_fn, loss_fn, x, y, key, eps, norm, steps, step_size, use_random_start, unroll):
    """One PGD run from one start; returns x_adv after ``steps`` ascent steps."""
    x0 = _random_point(key, x, eps, norm) if use_random_start else x

    def body(_, x_adv):
        _, grad, _ = loss_grad_logits(logits_fn, loss_fn, x_adv, y)
        return project(x_adv + step_size * ascent_direction(grad, norm), x, eps, norm)

    return loop(0, steps, body, x0, unroll=unroll)


def default_step_size(eps: float | jax.Array, steps: int | jax.Array) -> float | jax.Array:
    """PGD's default step size 2.5 * eps / steps (Madry et al.), steps floored at 1; traced when
    either is traced."""
    if isinstance(steps, int):
        return 2.5 * eps / max(steps, 1)
    return 2.5 * eps / jnp.maximum(steps, 1).astype(jnp.float32)


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
        *, norm: str = "linf", steps: int | jax.Array = 10, step_size: float | jax.Array | None = None,
        random_start: bool = True, restarts: int | jax.Array = 1, loss: str = "ce",
        unroll: int | bool = 1) -> jax.Array:
    """Projected Gradient Descent (Madry et al. 2018) under an Linf or L2 budget.

    Each step: x_adv <- Proj_{B(x, eps) ∩ [0,1]}(x_adv + step_size * d), d = sign(g) (Linf) or
    g / ||g||_2 (L2). Cost: ``steps`` forward-backward passes per restart (plus one forward
    per restart when ``restarts > 1``, to choose among them).

    Args:
      x: (B, H, W, C) float32 in [0, 1]; y: (B,) int; key: PRNG key (random starts);
      eps: budget (>= 0) of the chosen norm, in [0, 1] pixel units.
      norm: "linf" or "l2". steps: ascent steps (>= 0; a Python int or a traced int).
      step_size: default 2.5 * eps / steps (Madry et al.), so the iterates can cross the ball.
      random_start: start from a uniform point of the ball instead of x.
      restarts: independent runs (a Python int or a traced int32); per example we keep the
        first run that misclassifies, otherwise the run with the highest loss.
      loss: "ce" or "margin".
      unroll: unrolling of the steps (default 1 = rolled; k > 1 = chunks of k steps, also
        with a traced ``steps``; True = fully, only with a Python-int ``steps``). Unrolling
        costs compile time proportional to the unrolled length (APGD-100 fully unrolled
        compiled for minutes on CPU); see benchmarks/attack_cost.py for the run-time side.
    Returns: (B, H, W, C) float32 in [0, 1] inside the eps-ball.
    """
    check_inputs(x, y, eps, name="pgd")
    check_norm(norm, "pgd")
    check_count(steps, "pgd")
    check_count(restarts, "pgd", "restarts", 1)
    loss_fn = get_attack_loss(loss)
    steps, restarts = count(steps), count(restarts)
    if step_size is None:
        step_size = default_step_size(eps, steps)
    if isinstance(restarts, int) and restarts == 1:  # a traced restarts takes the loop (one program)
        return _pgd_single(logits_fn, loss_fn, x, y, key, eps, norm, steps, step_size, random_start, unroll)

    def restart(r, carry):
        best_x, best_loss, best_succ = carry
        x_r = _pgd_single(logits_fn, loss_fn, x, y, jax.random.fold_in(key, r), eps, norm, steps,
                          step_size, random_start, unroll)
        logits = logits_fn(x_r)
        loss_r = loss_fn(logits, y)
        succ_r = jnp.argmax(logits, axis=-1) != y
        # Keep the first successful run; among unsuccessful ones keep the highest loss.
        take = ~best_succ & (succ_r | (loss_r > best_loss))
        return (bwhere(take, x_r, best_x), jnp.where(take, loss_r, best_loss), best_succ | succ_r)

    init = (x, jnp.full(x.shape[:1], -jnp.inf, jnp.float32), jnp.zeros(x.shape[:1], bool))
    best_x, _, _ = loop(0, restarts if isinstance(restarts, int) else jnp.maximum(restarts, 1), restart, init)
    return best_x


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (0-based, < steps) after which APGD checks its step size.

    Croce & Hein 2020: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06);
    checkpoint w_j = ceil(p_j * steps). Checking after iteration index w_j - 1 means the
    window [w_{j-1}, w_j) has exactly w_j - w_{j-1} iterations.
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first: 0.57 * 100 is 57.000000000000007 in floating point, and ceil must give 57.
    w = sorted({math.ceil(round(pj * steps, 9)) for pj in p[1:]})
    w = [wj for wj in w if wj <= steps]
    return [wj - 1 for wj in w if wj >= 1]


def _checkpoint_percents() -> tuple[int, ...]:
    """The p_j of ``apgd_checkpoints`` (j >= 1) in whole percent: every p_j is a multiple of 0.01
    (0.22 + steps of 0.19, 0.16, ... floored at 0.06), so ceil(p_j * steps) is exact in integers."""
    p = [0, 22]
    while p[-1] < 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return tuple(p[1:])


_CKPT_PERCENTS = _checkpoint_percents()


def apgd_schedule(i: jax.Array, steps: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(is iteration i a checkpoint, iterations in the window that ends there) for a static or
    traced ``steps``, computed on device: the same schedule as ``apgd_checkpoints(steps)``, with
    w_j = ceil(p_j * steps) in exact integer arithmetic. i: 0-d int32 in [0, steps)."""
    w = (jnp.asarray(_CKPT_PERCENTS, jnp.int32) * steps + 99) // 100   # (J,) non-decreasing
    w = jnp.where(w <= steps, w, 0)                                    # checkpoints past the end never fire
    t = i + 1
    at_ckpt = jnp.any(w == t)
    window = t - jnp.max(jnp.where(w < t, w, 0))                       # since the previous checkpoint
    return at_ckpt, window.astype(jnp.float32)


def apgd_ce(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
            *, norm: str = "linf", steps: int | jax.Array = 100, rho: float = 0.75, alpha: float = 0.75,
            random_start: bool = True, loss: str = "ce", unroll: int | bool = 1) -> jax.Array:
    """Auto-PGD with the cross-entropy loss (Croce & Hein 2020, "Reliable evaluation of
    adversarial robustness with an ensemble of diverse parameter-free attacks").

    Step size starts at 2 * eps and is halved at checkpoints w_j (see ``apgd_checkpoints``)
    when (1) the loss increased in fewer than rho * (w_j - w_{j-1}) of the iterations since
    the last checkpoint, or (2) the step was not halved at the last checkpoint and the best
    loss did not improve since; after halving, the iterate restarts from the best point.
    Update with momentum alpha:
      z = P(x_k + eta * d(g_k)),  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))
    (alpha = 1 at the first step), d = sign (Linf) or g/||g|| (L2), P = projection onto the
    ball ∩ [0, 1]. Cost: steps + 1 forward-backward passes. ``steps`` (>= 1) may be traced: the
    checkpoint schedule is then computed on device (``apgd_schedule``).

    Returns per example the last iterate that was misclassified if any (as AutoAttack),
    otherwise the highest-loss iterate. Shapes / ranges and ``unroll`` as ``pgd``.
    """
    check_inputs(x, y, eps, name="apgd_ce")
    check_norm(norm, "apgd_ce")
    check_count(steps, "apgd_ce", minimum=1)
    steps = count(steps)
    loss_fn = get_attack_loss(loss)
    b = x.shape[0]

    x0 = _random_point(key, x, eps, norm) if random_start else x
    loss0, grad0, logits0 = loss_grad_logits(logits_fn, loss_fn, x0, y)
    succ0 = jnp.argmax(logits0, axis=-1) != y
    step0 = jnp.broadcast_to(jnp.asarray(2.0 * eps, jnp.float32), (b,))

    init = dict(
        x=x0, x_prev=x0, grad=grad0, loss=loss0, step=step0,
        x_best=x0, loss_best=loss0, grad_best=grad0,
        x_succ=x0, succ=succ0,
        n_inc=jnp.zeros((b,), jnp.float32),
        reduced_last=jnp.zeros((b,), bool), loss_best_last=loss0,
    )

    def body(i, c):
        a = jnp.where(i > 0, alpha, 1.0)
        eta = c["step"].reshape(b, 1, 1, 1)
        z = project(c["x"] + eta * ascent_direction(c["grad"], norm), x, eps, norm)
        x_new = project(c["x"] + a * (z - c["x"]) + (1.0 - a) * (c["x"] - c["x_prev"]), x, eps, norm)
        loss_new, grad_new, logits_new = loss_grad_logits(logits_fn, loss_fn, x_new, y)

        succ_new = jnp.argmax(logits_new, axis=-1) != y
        x_succ = bwhere(succ_new, x_new, c["x_succ"])
        improved = loss_new > c["loss_best"]
        x_best = bwhere(improved, x_new, c["x_best"])
        grad_best = bwhere(improved, grad_new, c["grad_best"])
        loss_best = jnp.where(improved, loss_new, c["loss_best"])
        n_inc = c["n_inc"] + (loss_new > c["loss"]).astype(jnp.float32)

        # Step-size check (only acts at checkpoints).
        at_ckpt, window = apgd_schedule(i, steps)
        oscillating = n_inc < rho * window
        no_improvement = ~c["reduced_last"] & (c["loss_best_last"] >= loss_best)
        halve = at_ckpt & (oscillating | no_improvement)
        step = jnp.where(halve, c["step"] / 2.0, c["step"])
        return dict(
            x=bwhere(halve, x_best, x_new), x_prev=c["x"],
            grad=bwhere(halve, grad_best, grad_new), loss=loss_new, step=step,
            x_best=x_best, loss_best=loss_best, grad_best=grad_best,
            x_succ=x_succ, succ=c["succ"] | succ_new,
            n_inc=jnp.where(at_ckpt, 0.0, n_inc),
            reduced_last=jnp.where(at_ckpt, halve, c["reduced_last"]),
            loss_best_last=jnp.where(at_ckpt, loss_best, c["loss_best_last"]),
        )

    out = loop(0, steps, body, init, unroll=unroll)
    return bwhere(out["succ"], out["x_succ"], out["x_best"])
