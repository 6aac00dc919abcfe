"""The seed's resistive crossbar as a Flax NNX module: one conductance matrix, no bias.

Source: the "Systematic Decomposition" study of ``shared/seeds/robust-vision.txt`` (master
table rows "Hebbian ..." and "SGD Uncon."). The local learning rules that train it live in
:mod:`robust_vision.training.hebbian`; this module only gives the model the registry's
interface so that a crossbar run is checkpointed, restored and evaluated like any other::

    W : nnx.Param (D, K) float32, D = H * W * C, initialised U[0, init_scale)
    scores    = flatten(x) @ W          x (B, H, W, C) in [0, 1] -> (B, K)
    model(x)  = log(max(scores, 0) + 1e-6)   ("logits"; see below)

The outputs are non-negative *scores* (conductance-weighted currents) while W and x are, not
softmax logits: the project's SNR of such a model is s_y / max_{j != y} s_j (DESIGN.md,
:func:`robust_vision.evaluation.metrics.log_snr_from_scores`), which
:func:`crossbar_log_scores` turns into "logits" whose logit margin is exactly that log-SNR.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from robust_vision.config import ModelConfig

__all__ = ["CrossbarModel", "crossbar_log_scores", "crossbar_options", "init_crossbar"]

SNR_EPS = 1e-6
"""The seed's 1e-6 in s_target / (s_control + 1e-6); the same eps as log_snr_from_scores."""


def init_crossbar(key: jax.Array, in_dim: int, num_outputs: int, init_scale: float = 0.01) -> jax.Array:
    """Crossbar weights W (in_dim, num_outputs) float32 drawn U[0, init_scale) from ``key``."""
    return jax.random.uniform(key, (in_dim, num_outputs), jnp.float32, 0.0, init_scale)


class CrossbarModel(nnx.Module):
    """Flatten -> x @ W -> log-scores. Input (B, H, W, C) float32 in [0, 1]; output (B, K) float32
    log(scores + 1e-6), whose logit margin is the crossbar's log-SNR; the raw scores are the
    ``scores`` feature.

    Args:
        input_shape: (H, W, C) of one image; D = H * W * C inputs.
        num_classes: K output lines.
        rngs: ``nnx.Rngs`` with a ``params`` stream (draws W).
        init_scale: W ~ U[0, init_scale) (the seed's 0.01).
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 init_scale: float = 0.01):
        if num_classes < 2:
            raise ValueError(f"crossbar: num_classes must be >= 2 (target + control lines), got {num_classes}")
        if not init_scale > 0:
            raise ValueError(f"crossbar: init_scale must be > 0, got {init_scale}")
        in_dim = math.prod(input_shape)
        # Same draw as training.hebbian.init_crossbar, so a run's initial weights are reproducible
        # from its seed whichever entry point built the model.
        self.W = nnx.Param(init_crossbar(rngs.params(), in_dim, num_classes, init_scale))

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)  # (B, D)
        scores = x @ self.W[...]  # (B, K)
        # The evaluator reads SNR as exp(logit margin); log-scores make that s_y / s_control,
        # the crossbar's SNR, so crossbar runs go through the same evaluator as every model.
        logits = crossbar_log_scores(scores)
        return (logits, {"scores": scores, "embedding": x}) if return_features else logits


def crossbar_options(cfg: ModelConfig) -> dict:
    """Constructor options picked from the config (none: the crossbar has no tunable shape).

    Registry line: ``register_model("crossbar", CrossbarModel, crossbar_options)``.
    """
    return {}


def crossbar_log_scores(scores: jax.Array, eps: float = SNR_EPS) -> jax.Array:
    """log(max(s, 0) + eps), (B, K): "logits" whose logit margin is the crossbar's log-SNR.

    z_y - max_{j != y} z_j = log(s_y + eps) - log(max_{j != y} s_j + eps), i.e. exactly
    :func:`robust_vision.evaluation.metrics.log_snr_from_scores`, so a softmax-based evaluator
    (accuracy = argmax, SNR = exp(margin)) reports the crossbar's SNR s_y / s_control. The
    argmax is that of the scores wherever the scores are non-negative (always for Hebbian
    weights); non-finite scores (diverged weights) stay non-finite, so SNR is reported as nan.
    """
    return jnp.log(jnp.maximum(scores, 0.0) + eps)
