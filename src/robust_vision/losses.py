"""Training losses, written per example and reduced by the caller.

Every loss maps ``(logits (B, K) float, labels (B,) int)`` to a per-example loss of shape
(B,). The caller reduces with its mask (so padded examples and mixup weights are handled
in one place). Optax supplies the cross-entropy pieces; the margin (multi-class hinge on
the logit margin) and the config-driven combination are ours.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from robust_vision.config import TrainingConfig
from robust_vision.metrics import logit_margin

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(z)_y, (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def label_smoothing(logits: jax.Array, labels: jax.Array, smoothing: float = 0.1) -> jax.Array:
    """Cross-entropy against (1 - s) * one_hot + s / K, (B,)."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def margin(logits: jax.Array, labels: jax.Array, margin_lambda: float = 1.0) -> jax.Array:
    """Hinge on the logit margin: max(0, lambda - (z_y - max_{j!=y} z_j)), (B,).

    Zero once the true logit beats every other by at least ``margin_lambda``, so lambda sets
    the target log-odds of the true class against its strongest competitor (SNR >= e^lambda).
    """
    return jax.nn.relu(margin_lambda - logit_margin(logits, labels))


def focal(logits: jax.Array, labels: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Focal loss (Lin et al. 2017) for softmax outputs: -alpha (1 - p_y)^gamma log p_y, (B,)."""
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return -alpha * (1.0 - jnp.exp(log_p)) ** gamma * log_p


def combined(logits: jax.Array, labels: jax.Array, components: dict[str, tuple[float, LossFn]]) -> jax.Array:
    """Weighted sum of component losses: sum_i w_i * loss_i, (B,)."""
    total = jnp.zeros(logits.shape[0], logits.dtype)
    for weight, fn in components.values():
        total = total + weight * fn(logits, labels)
    return total


LOSSES = ("cross_entropy", "label_smoothing", "margin", "focal", "combined")


def make_loss(cfg: TrainingConfig, name: str | None = None) -> LossFn:
    """The per-example loss named by ``cfg.loss_type`` (or ``name``) with its config parameters."""
    name = name or cfg.loss_type
    if name == "cross_entropy":
        return cross_entropy
    if name == "label_smoothing":
        return partial(label_smoothing, smoothing=cfg.label_smoothing)
    if name == "margin":
        return partial(margin, margin_lambda=cfg.margin_lambda)
    if name == "focal":
        return partial(focal, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    if name == "combined":
        components = {}
        for part, weight in cfg.loss_weights.items():
            if part not in LOSSES or part == "combined":
                valid = ", ".join(n for n in LOSSES if n != "combined")
                raise ValueError(f"training.loss_weights: unknown loss {part!r}; valid components: {valid}")
            if weight != 0.0:
                components[part] = (weight, make_loss(cfg, part))
        if not components:
            raise ValueError("training.loss_weights: every weight is 0; give at least one component a weight")
        return partial(combined, components=components)
    raise ValueError(f"training.loss_type: unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
