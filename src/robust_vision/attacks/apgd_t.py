"""DLR losses, APGD-DLR and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks").

The Difference of Logits Ratio is invariant to shifting and (positively) rescaling the logits,
so a model whose cross-entropy is saturated (logits scaled by 1e4, say: the softmax is one-hot,
the CE gradient underflows to zero) still gives APGD a useful gradient:

  DLR(z, y)        = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)
  DLR_T(z, y, t)   = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

with z_pi1 >= z_pi2 >= ... the sorted logits. Both attacks run the APGD loop of
``attacks.gradient.apgd_ce`` unchanged (imported, with the loss passed as a callable), so the
step-size schedule, momentum and the choice of the returned iterate are exactly APGD-CE's.
Signature ``f(logits_fn, x, y, key, eps, **hyper) -> x_adv``; eps, ``steps`` and ``n_targets``
may be traced (one program for every budget); the targets run in a rolled loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import LogitsFn, bwhere, check_inputs, check_norm, count, is_static, loop_until
from robust_vision.attacks.gradient import apgd_ce

_DLR_EPS = 1e-12  # as the reference: keeps the ratio finite when the top logits tie


def _true_logit(z: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Untargeted DLR loss, (B,); needs K >= 3 classes. Positive iff misclassified."""
    z = logits.astype(jnp.float32)
    if z.shape[-1] < 3:
        raise ValueError(f"dlr_loss needs at least 3 classes, got {z.shape[-1]}; use loss='ce' or 'margin'.")
    zs = jnp.sort(z, axis=-1)
    z_y = _true_logit(z, y)
    top_is_y = zs[:, -1] == z_y
    other_max = jnp.where(top_is_y, zs[:, -2], zs[:, -1])
    return -(z_y - other_max) / (zs[:, -1] - zs[:, -3] + _DLR_EPS)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR loss, (B,), to be maximised (it rises as z_target overtakes z_y); K >= 4."""
    z = logits.astype(jnp.float32)
    if z.shape[-1] < 4:
        raise ValueError(f"dlr_targeted_loss needs at least 4 classes, got {z.shape[-1]}.")
    zs = jnp.sort(z, axis=-1)
    return -(_true_logit(z, y) - _true_logit(z, target)) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + _DLR_EPS)


def apgd_dlr(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
             *, norm: str = "linf", steps: int | jax.Array = 100, rho: float = 0.75, random_start: bool = True,
             unroll: int | bool = 1) -> jax.Array:
    """APGD maximising the untargeted DLR loss (AutoAttack's "apgd-dlr"). Cost: steps + 1
    forward-backward passes. Shapes and ranges as ``apgd_ce``."""
    return apgd_ce(logits_fn, x, y, key, eps, norm=norm, steps=steps, rho=rho, random_start=random_start,
                   loss=dlr_loss, unroll=unroll)


def top_targets(logits: jax.Array, n_targets: int) -> jax.Array:
    """(n_targets, B) int32: for each example the classes ranked 2nd, 3rd, ... by the clean logits
    (AutoAttack's target choice: the most likely wrong classes first)."""
    order = jnp.argsort(logits, axis=-1)  # ascending
    return jnp.stack([order[:, -(r + 2)] for r in range(n_targets)]).astype(jnp.int32)


def n_targets_for(n_targets: int | jax.Array, n_classes: int) -> int | jax.Array:
    """``n_targets`` capped to [1, K - 1] (static for a Python int, traced otherwise)."""
    if is_static(n_targets):
        return max(1, min(int(n_targets), n_classes - 1))
    return jnp.clip(count(n_targets), 1, n_classes - 1)


def target_range(first_target: int | jax.Array, n_targets: int | jax.Array, n_classes: int
                 ) -> tuple[int | jax.Array, int | jax.Array]:
    """``[start, stop)`` of the target ranks a targeted attack runs: ``n_targets`` (capped as
    ``n_targets_for``) ranks from ``first_target`` (0 = the most likely wrong class), never past
    rank K - 2 (the least likely class). Static for Python ints, traced otherwise; ``run_autoattack``
    runs one target per call (``first_target`` = r, ``n_targets`` = 1) on the points still robust."""
    n = n_targets_for(n_targets, n_classes)
    if is_static(first_target) and is_static(n):
        return int(first_target), min(int(first_target) + n, n_classes - 1)
    start = count(first_target)
    return start, jnp.minimum(start + n, n_classes - 1)


def target_at(order: jax.Array, r: int | jax.Array) -> jax.Array:
    """(B,) int32: the class ranked r + 2 by the clean logits (``order`` = argsort, ascending);
    ``top_targets(logits, n)[r]`` for a possibly traced r (a dynamic index, so the number of
    targets need not be static)."""
    return jax.lax.dynamic_index_in_dim(order, order.shape[-1] - 2 - r, axis=1, keepdims=False).astype(jnp.int32)


def apgd_t(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
           *, norm: str = "linf", steps: int | jax.Array = 100, n_targets: int | jax.Array = 9, rho: float = 0.75,
           random_start: bool = True, unroll: int | bool = 1, first_target: int | jax.Array = 0) -> jax.Array:
    """APGD-T: for each of the ``n_targets`` top classes (default 9, capped at K - 1), one APGD
    run maximising DLR_T towards that class; per example the first run that misclassifies wins
    (later targets only replace examples still correctly classified, as the reference's
    ``perturb`` loop). Targets are chosen once from the clean logits; ``first_target`` = r starts
    at the (r + 2)-th most likely class (``target_range``), target r keyed fold_in(key, r), so the
    targets run one call each give the points of one call with all of them.

    Cost: n_targets * (steps + 1) forward-backward passes + n_targets + 1 forwards (every target
    runs on the whole fixed-shape batch; ``autoattack.run_autoattack`` compacts the still-robust
    points between stages), fewer when every example is fooled before the last target (the
    loop stops there: the remaining targets could not change the result). Needs K >= 4 classes. Returns (B, H, W, C) in [0, 1] inside the ball.
    """
    check_inputs(x, y, eps, name="apgd_t")
    check_norm(norm, "apgd_t")
    clean = logits_fn(x)
    n_classes = clean.shape[-1]
    if n_classes < 4:
        raise ValueError(f"apgd_t needs at least 4 classes (targeted DLR), got {n_classes}.")
    start, stop = target_range(first_target, n_targets, n_classes)
    order = jnp.argsort(clean, axis=-1)
    fooled0 = jnp.argmax(clean, axis=-1) != y

    def per_target(r, carry):
        best_x, fooled = carry
        target = target_at(order, r)
        loss = lambda logits, labels: dlr_targeted_loss(logits, labels, target)  # noqa: E731
        x_r = apgd_ce(logits_fn, x, y, jax.random.fold_in(key, r), eps, norm=norm, steps=steps, rho=rho,
                      random_start=random_start, loss=loss, unroll=unroll)
        succ = jnp.argmax(logits_fn(x_r), axis=-1) != y
        take = ~fooled & succ
        return bwhere(take, x_r, best_x), fooled | succ

    # Once every example is fooled the remaining targets change nothing (``take`` is all False).
    best_x, _ = loop_until(start, stop, per_target, (x, fooled0), lambda carry: jnp.all(carry[1]))
    return best_x
