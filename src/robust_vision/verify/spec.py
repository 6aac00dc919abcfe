"""What is verified: the input set (an Linf or L2 ball around the image intersected with the
pixel box [0, 1]) and the specification (the margins z_y - z_j, as a C matrix)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class InputSet:
    """{x' : ||x' - center||_norm <= eps, 0 <= x' <= 1}; center (B, H, W, C) in [0, 1], eps a
    scalar in pixel units (a traced scalar is fine: the certified-training ramp)."""

    center: jax.Array
    eps: jax.Array | float
    norm: str = "linf"

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"verify: unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")

    @property
    def lower(self) -> jax.Array:
        """Lower corner of the smallest box holding the set (the ball's box clipped to [0, 1])."""
        return jnp.clip(self.center - self.eps, 0.0, 1.0)

    @property
    def upper(self) -> jax.Array:
        return jnp.clip(self.center + self.eps, 0.0, 1.0)


def _sum_rest(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=tuple(range(2, a.ndim)))


def box_lower(coeffs: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """min of <coeffs, v> over the box lower <= v <= upper: <A, mid> - <|A|, rad>.
    coeffs (B, S, *shape), lower / upper (B, *shape) -> (B, S)."""
    lo, hi = lower[:, None], upper[:, None]
    return _sum_rest(coeffs * (hi + lo) / 2) - _sum_rest(jnp.abs(coeffs) * (hi - lo) / 2)


def concretize_lower(s: InputSet, coeffs: jax.Array, bias: jax.Array) -> jax.Array:
    """A lower bound of min over x' in ``s`` of <coeffs, x'> + bias.

    coeffs (B, S, *in), bias (B, S) -> (B, S). Over the box: <A, mid> - <|A|, rad>, exact for
    Linf (ball & [0,1] is a box). For L2 also the ball's closed form <A, x> - eps ||A||_2 (the
    dual norm); the set is inside both, so the larger of the two is a valid lower bound.
    """
    box = box_lower(coeffs, s.lower, s.upper)
    if s.norm == "l2":
        # floored at the smallest normal float: a zero row would give a NaN gradient (alpha-CROWN)
        norm = jnp.sqrt(jnp.maximum(_sum_rest(jnp.square(coeffs)), jnp.finfo(coeffs.dtype).tiny))
        ball = _sum_rest(coeffs * s.center[:, None]) - s.eps * norm
        box = jnp.maximum(box, ball)
    return box + bias


def margin_matrix(labels: jax.Array, num_classes: int, dtype=jnp.float32) -> jax.Array:
    """C (B, K, K) with row j = e_y - e_j, so C @ z = z_y - z_j (row y is zero)."""
    eye = jnp.eye(num_classes, dtype=dtype)
    return eye[labels][:, None, :] - eye[None, :, :]


def worst_margin(rows: jax.Array, labels: jax.Array) -> jax.Array:
    """min over j != y of rows[:, j]: (B, K) -> (B,). With lower bounds of z_y - z_j this is a
    lower bound of the logit margin z_y - max_{j != y} z_j; > 0 means verified."""
    own = jax.nn.one_hot(labels, rows.shape[-1], dtype=bool)
    return jnp.min(jnp.where(own, jnp.inf, rows), axis=-1)


def worst_case_logits(rows: jax.Array) -> jax.Array:
    """Logits whose cross-entropy is the bound loss of Gowal et al. / Wong & Kolter: -lb_j
    (entry y is 0, as its row): softmax CE of these at label y upper-bounds the worst-case CE."""
    return -rows
