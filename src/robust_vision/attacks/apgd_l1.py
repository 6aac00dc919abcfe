"""L1-APGD (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers"): APGD under an L1 budget intersected with the image box [0, 1].

The L1 steepest-ascent step moves a single coordinate, which stalls against the box. L1-APGD
instead steps along the sign of the gradient on its top-k coordinates (k adapted to the sparsity
of the best point found so far) with total L1 length eta, then projects exactly onto
{||delta||_1 <= eps} ∩ {x + delta in [0, 1]}. Every max(4% of the iterations, 1) iterations:
the fraction of coordinates stepped becomes ||x_best - x||_0 / (1.5 D); if that sparsity fell
by more than 5% the step is reset to eps and the iterate restarts from the best point, otherwise
the step is divided by 1.5 (within [eps / 10, eps]). No momentum (as the reference's L1 branch).

Written by hand (no JAX library has it); differences from the reference: a single run at eps
(the reference's AutoAttack L1 setting first runs at 3 eps and 2 eps, 30% of the iterations
each, ``use_largereps``); the projection is solved by bisection on its one multiplier instead of
the reference's sort-based algorithm (same solution).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import (
    LogitsFn, bwhere, check_count, check_inputs, count, get_attack_loss, is_static, loop, loss_grad_logits,
)

_BISECT_STEPS = 40


def project_l1_box(x: jax.Array, delta: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Euclidean projection of ``delta`` onto {||d||_1 <= eps, x + d in [0, 1]}, per example.

    The problem is separable given the multiplier lam of the L1 constraint (KKT):
    d_i = clip(soft_threshold(delta_i, lam), -x_i, 1 - x_i), and ||d(lam)||_1 decreases in lam,
    so lam is found by bisection on [0, max |delta|] (lam = 0 when the box alone is enough).
    Shapes: x, delta (B, H, W, C); returns (B, H, W, C).
    """
    b = x.shape[0]
    xf, uf = x.reshape(b, -1), delta.reshape(b, -1)
    lo, hi = -xf, 1.0 - xf

    def d_of(lam):
        soft = jnp.sign(uf) * jnp.maximum(jnp.abs(uf) - lam[:, None], 0.0)
        return jnp.clip(soft, lo, hi)

    def l1(lam):
        return jnp.sum(jnp.abs(d_of(lam)), axis=-1)

    def body(_, bounds):
        a, c = bounds
        mid = 0.5 * (a + c)
        ok = l1(mid) <= eps
        return jnp.where(ok, a, mid), jnp.where(ok, mid, c)

    lam_hi = jnp.max(jnp.abs(uf), axis=-1)
    _, lam = jax.lax.fori_loop(0, _BISECT_STEPS, body, (jnp.zeros((b,), uf.dtype), lam_hi))
    lam = jnp.where(l1(jnp.zeros((b,), uf.dtype)) <= eps, 0.0, lam)
    return d_of(lam).reshape(x.shape)


def _l0(v: jax.Array) -> jax.Array:
    return jnp.sum((v != 0).reshape(v.shape[0], -1), axis=-1).astype(jnp.float32)


def apgd_l1(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
            *, steps: int | jax.Array = 100, loss: str = "ce", random_start: bool = True, topk_init: float = 0.2) -> jax.Array:
    """L1-APGD with the cross-entropy loss (``loss="ce"``; "margin" or a callable also work).

    Args: x (B, H, W, C) in [0, 1]; y (B,) int; key (random start: a Gaussian point projected
      onto the ball ∩ box); eps: L1 radius in pixel units summed over H*W*C (e.g. 12 on CIFAR-10,
      the reference's threat model); steps: iterations (a Python int or a traced int).
    Cost: steps + 1 forward-backward passes. Returns per example the last misclassified iterate if
    any, otherwise the highest-loss one; always ||x_adv - x||_1 <= eps (up to float round-off) and
    x_adv in [0, 1]; eps = 0 returns x.
    """
    check_inputs(x, y, eps, name="apgd_l1")
    check_count(steps, "apgd_l1", minimum=1)
    steps = count(steps)
    loss_fn = get_attack_loss(loss)
    b = x.shape[0]
    n_fts = x.shape[1] * x.shape[2] * x.shape[3]
    # max(int(0.04 * steps), 1) in exact integers (equal for every steps up to 20,000 at least).
    check_every = max(4 * steps // 100, 1) if is_static(steps) else jnp.maximum(4 * steps // 100, 1)
    eps_f = jnp.asarray(eps, jnp.float32)

    if random_start:
        t = jax.random.normal(key, x.shape, x.dtype)
        x0 = jnp.clip(x + project_l1_box(x, t, eps_f), 0.0, 1.0)
    else:
        x0 = x
    loss0, grad0, logits0 = loss_grad_logits(logits_fn, loss_fn, x0, y)
    init = dict(
        x=x0, grad=grad0, x_best=x0, grad_best=grad0, loss_best=loss0,
        x_succ=x0, succ=jnp.argmax(logits0, axis=-1) != y,
        step=jnp.full((b,), eps_f), topk=jnp.full((b,), topk_init, jnp.float32),
        sp_old=jnp.full((b,), float(n_fts), jnp.float32),
    )

    def body(i, c):
        g = c["grad"].reshape(b, -1)
        mag = jnp.abs(g)
        idx = jnp.clip(((1.0 - c["topk"]) * n_fts).astype(jnp.int32), 0, n_fts - 1)
        thr = jnp.take_along_axis(jnp.sort(mag, axis=-1), idx[:, None], axis=-1)
        direction = jnp.sign(g) * (mag >= thr)
        count = jnp.sum(jnp.abs(direction), axis=-1, keepdims=True)
        step = (c["step"][:, None] * direction / (count + 1e-10)).reshape(x.shape)
        x_new = jnp.clip(x + project_l1_box(x, c["x"] + step - x, eps_f), 0.0, 1.0)
        loss_new, grad_new, logits_new = loss_grad_logits(logits_fn, loss_fn, x_new, y)

        succ_new = jnp.argmax(logits_new, axis=-1) != y
        improved = loss_new > c["loss_best"]
        x_best = bwhere(improved, x_new, c["x_best"])
        grad_best = bwhere(improved, grad_new, c["grad_best"])
        loss_best = jnp.where(improved, loss_new, c["loss_best"])

        # Sparsity / step-size update every ``check_every`` iterations.
        at_check = (i + 1) % check_every == 0
        sp_curr = _l0(x_best - x)
        reset = at_check & (sp_curr / c["sp_old"] < 0.95)
        new_step = jnp.clip(jnp.where(reset, eps_f, c["step"] / 1.5), eps_f / 10.0, eps_f)
        return dict(
            x=bwhere(reset, x_best, x_new), grad=bwhere(reset, grad_best, grad_new),
            x_best=x_best, grad_best=grad_best, loss_best=loss_best,
            x_succ=bwhere(succ_new, x_new, c["x_succ"]), succ=c["succ"] | succ_new,
            step=jnp.where(at_check, new_step, c["step"]),
            topk=jnp.where(at_check, sp_curr / n_fts / 1.5, c["topk"]),
            sp_old=jnp.where(at_check, sp_curr, c["sp_old"]),
        )

    out = loop(0, steps, body, init)
    return bwhere(out["succ"], out["x_succ"], out["x_best"])
