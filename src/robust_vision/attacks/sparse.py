"""The two attacks of the "Training Robust Networks" seed (Lin & Nyiam 2023):

* ``sparse_pixel``: recolour a random subset of at most k% of the pixels, the colours
  optimised by gradient ascent on the misclassification objective (an L0 attack);
* ``noise_attack``: gradient descent on an additive perturbation delta that maximises the
  probability of a wrong class while penalising penalty * ||delta||_2^2.

Same signature and conventions as the gradient attacks (see ``gradient.py``). Written by
hand: no maintained JAX library provides them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from robust_vision.attacks._common import (
    LogitsFn, bwhere, check_count, check_inputs, count, get_attack_loss, l2_norm, loop, loss_grad_logits, _TINY,
)


def sparse_pixel_count(eps: float | jax.Array, height: int, width: int) -> jax.Array:
    """Number of pixels ``sparse_pixel`` may change: floor(eps * H * W).

    The small slack (1e-4 pixel) only absorbs float32 rounding of eps * H * W
    (0.3 * 10 = 3.0000001 must give 3, and 0.29999999 * 10 must give 3, not 2).
    """
    return jnp.floor(jnp.asarray(eps, jnp.float32) * (height * width) + 1e-4).astype(jnp.int32)


def sparse_pixel(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
                 *, steps: int | jax.Array = 50, step_size: float | jax.Array = 0.1, restarts: int | jax.Array = 1,
                 loss: str = "ce") -> jax.Array:
    """Sparse (L0) pixel attack: change at most a fraction ``eps`` of the pixels.

    Here ``eps`` is the *fraction of pixels* in [0, 1] (the seed's 0.5% is eps = 0.005); a
    pixel is one spatial location, all its channels. Per example and restart we draw a
    uniformly random subset of exactly floor(eps * H * W) pixels, give them random colours
    and run ``steps`` sign-gradient ascent steps of size ``step_size`` on their colours
    (clipped to [0, 1]); all other pixels are never touched, so the L0 constraint holds
    exactly. Because the attack is sensitive to the chosen subset (as the seed notes), each
    restart draws a new subset; per example we return the first iterate that is
    misclassified, else the highest-loss iterate of all restarts.

    Args:
      x: (B, H, W, C) float32 in [0, 1]; y: (B,) int; key: PRNG key; eps: pixel fraction.
      steps, step_size, restarts: optimiser settings (Python numbers or traced); loss: "ce" or "margin".
    Returns: (B, H, W, C) float32 in [0, 1]; at most floor(eps * H * W) pixels differ from x.
    """
    check_inputs(x, y, eps, name="sparse_pixel")
    if isinstance(eps, (int, float)) and eps > 1:
        raise ValueError(f"sparse_pixel: eps is the fraction of pixels to change, in [0, 1]; got {eps} "
                         "(for k% pass eps = k / 100).")
    check_count(steps, "sparse_pixel")
    check_count(restarts, "sparse_pixel", "restarts", 1)
    steps, restarts = count(steps), count(restarts)
    loss_fn = get_attack_loss(loss)
    b, h, w, _ = x.shape
    m = sparse_pixel_count(eps, h, w)

    def run(r, carry):
        x_ret, loss_ret, succ_ret = carry
        k_mask, k_col = jax.random.split(jax.random.fold_in(key, r))
        # A uniformly random subset of m pixels per example: the m smallest of iid uniforms
        # (rank via double argsort, so m may be a traced value).
        u = jax.random.uniform(k_mask, (b, h * w))
        rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
        mask = (rank < m).reshape(b, h, w, 1)
        colour = jax.random.uniform(k_col, x.shape, x.dtype)

        def step(i, c):
            colour, x_best, loss_best, succ = c
            xa = jnp.where(mask, colour, x)
            loss_i, grad, logits = loss_grad_logits(logits_fn, loss_fn, xa, y)
            succ_i = jnp.argmax(logits, axis=-1) != y
            # Freeze an example at its first success; otherwise track the highest loss.
            take = ~succ & (succ_i | (loss_i > loss_best))
            x_best = bwhere(take, xa, x_best)
            loss_best = jnp.where(take, loss_i, loss_best)
            colour = jnp.clip(colour + step_size * jnp.sign(grad), 0.0, 1.0)
            return colour, x_best, loss_best, succ | succ_i

        # steps + 1 evaluations: the last one scores the final colours (its update is unused).
        _, x_r, loss_r, succ_r = loop(
            0, steps + 1, step, (colour, x, jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), bool)))
        take = ~succ_ret & (succ_r | (loss_r > loss_ret))
        return bwhere(take, x_r, x_ret), jnp.where(take, loss_r, loss_ret), succ_ret | succ_r

    init = (x, jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), bool))
    x_adv, _, _ = loop(0, restarts, run, init)
    return x_adv


def _log_prob_wrong(logits: jax.Array, y: jax.Array) -> jax.Array:
    """log(1 - p_y) = logsumexp_{j != y} z_j - logsumexp_j z_j, stable for p_y -> 1, (B,)."""
    logits = logits.astype(jnp.float32)
    true_mask = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    others = jax.nn.logsumexp(jnp.where(true_mask, -jnp.inf, logits), axis=-1)
    return others - jax.nn.logsumexp(logits, axis=-1)


def noise_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
                 eps: float | jax.Array = jnp.inf, *, steps: int | jax.Array = 100, lr: float = 0.01,
                 penalty: float = 1.0, init_std: float = 1e-3) -> jax.Array:
    """The seed's "Gaussian noise" attack: optimise an additive perturbation delta.

    Minimises, per example, -log(1 - p_y(clip(x + delta))) + penalty * ||delta||_2^2 with
    Adam (``optax.adam(lr)``, elementwise, so examples stay independent) for ``steps``
    steps, starting from delta ~ N(0, init_std^2) (the key). -log(1 - p_y) is the
    "inverse" of cross-entropy: it rewards probability mass on any wrong class. After each
    step delta is projected onto the L2 ball of radius ``eps`` (pass ``jnp.inf`` for the
    seed's unconstrained version, where only ``penalty`` limits the size); so the attack can
    be scored at a budget. Per example we return the first iterate that is misclassified
    (the seed stops once the image is misclassified), else the last iterate.

    Args:
      x: (B, H, W, C) float32 in [0, 1]; y: (B,) int; key: PRNG key; eps: L2 budget (>= 0).
      steps: Adam steps; lr: Adam learning rate; penalty: weight of ||delta||_2^2 (>= 0).
    Returns: (B, H, W, C) float32 in [0, 1], ||x_adv - x||_2 <= eps.
    """
    check_inputs(x, y, eps, name="noise_attack")
    check_count(steps, "noise_attack")
    if penalty < 0 or lr <= 0:
        raise ValueError(f"noise_attack: need penalty >= 0 and lr > 0; got {penalty}, {lr}.")
    steps = count(steps)
    b = x.shape[0]
    opt = optax.adam(lr)

    def to_ball(delta):
        return delta * jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), _TINY))

    def objective(delta):
        logits = logits_fn(jnp.clip(x + delta, 0.0, 1.0))
        per_ex = -_log_prob_wrong(logits, y) + penalty * jnp.sum(jnp.square(delta), axis=(1, 2, 3))
        return jnp.sum(per_ex), logits

    delta0 = to_ball(init_std * jax.random.normal(key, x.shape, x.dtype))

    def step(i, c):
        delta, opt_state, x_ret, succ = c
        (_, logits), grad = jax.value_and_grad(objective, has_aux=True)(delta)
        succ_i = jnp.argmax(logits, axis=-1) != y
        x_ret = bwhere(~succ, jnp.clip(x + delta, 0.0, 1.0), x_ret)  # frozen after first success
        updates, opt_state = opt.update(grad, opt_state, delta)
        delta = to_ball(optax.apply_updates(delta, updates))
        return delta, opt_state, x_ret, succ | succ_i

    delta, _, x_ret, succ = loop(
        0, steps, step, (delta0, opt.init(delta0), x, jnp.zeros((b,), bool)))
    return bwhere(succ, x_ret, jnp.clip(x + delta, 0.0, 1.0))
