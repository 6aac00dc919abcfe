"""Tiny networks and reference computations shared by the tests/test_verify_*.py files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.verify import METHODS, margin_bounds

# name -> (model config, input shape, classes): together every layer type the verifier converts
TINY = {
    # conv with stride 2 and padding 1, flatten, dense, ReLU, input normalisation
    "cnn_small": (ModelConfig(name="cnn_small", normalize_mean=[0.4], normalize_std=[0.3]), (8, 8, 1), 4),
    # conv SAME, batch norm, residual add with a 1x1 projection, 2x2 average pool, global average pool, dropout
    "cnn": (ModelConfig(name="cnn", features=[3, 4], dropout_rate=0.2), (6, 6, 2), 3),
    # dense layers on flattened pixels
    "linear": (ModelConfig(name="linear", hidden_units=[8, 6]), (3, 3, 1), 3),
}


def tiny_model(name: str, seed: int = 0, dtype=jnp.float32) -> tuple[nnx.Module, tuple[int, ...], int]:
    """The model ``name`` of TINY, with random (non-trivial) batch-norm statistics, in eval mode."""
    cfg, shape, classes = TINY[name]
    model = create_model(cfg, input_shape=shape, num_classes=classes, seed=seed)
    randomize_batch_stats(model, seed)
    return cast_params(model, dtype), shape, classes


def cast_params(model: nnx.Module, dtype) -> nnx.Module:
    """``model`` with its floating-point state (parameters, batch statistics) cast to ``dtype``."""
    if dtype != jnp.float32:
        state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
        nnx.update(model, jax.tree.map(lambda a: a.astype(dtype), state))
    return model


def randomize_batch_stats(model: nnx.Module, seed: int) -> None:
    """Running means in [-0.5, 0.5] and variances in [0.25, 2]: batch norm is no identity."""
    key = jax.random.key(seed + 7)
    for path, bn in nnx.iter_graph(model):
        if isinstance(bn, nnx.BatchNorm):
            key, k1, k2, k3 = jax.random.split(key, 4)
            bn.mean[...] = jax.random.uniform(k1, bn.mean.shape, bn.mean.dtype, minval=-0.5, maxval=0.5)
            bn.var[...] = jax.random.uniform(k2, bn.var.shape, bn.var.dtype, minval=0.25, maxval=2.0)
            bn.scale[...] = jax.random.uniform(k3, bn.scale.shape, bn.scale.dtype, minval=-1.5, maxval=1.5)


def margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """z_y - z_j for every j: (..., K) with labels broadcasting against the leading axes."""
    own = jnp.take_along_axis(logits, labels[..., None], axis=-1)
    return own - logits


def points_in_set(key: jax.Array, x: jax.Array, eps: float, norm: str, n: int) -> jax.Array:
    """n points per example of {x' : ||x' - x||_norm <= eps} & [0, 1]: (n, B, *x.shape[1:]).

    Linf: half uniform in the box, half at its vertices. L2: half uniform in the ball, half on
    its sphere, then clipped to [0, 1] (projection onto the box cannot leave the ball: x is in it)."""
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (n, *x.shape)
    half = np.zeros((n,) + (1,) * x.ndim, bool)
    half[: n // 2] = True
    if norm == "linf":
        uniform = jax.random.uniform(k1, shape, minval=-eps, maxval=eps)
        vertex = eps * jax.random.rademacher(k2, shape, dtype=x.dtype)
        delta = jnp.where(half, uniform, vertex)
    else:
        direction = jax.random.normal(k1, shape, dtype=x.dtype)
        axes = tuple(range(2, direction.ndim))
        direction = direction / jnp.sqrt(jnp.sum(direction ** 2, axis=axes, keepdims=True))
        dim = np.prod(x.shape[1:])
        radius = eps * jax.random.uniform(k3, (n, x.shape[0]) + (1,) * (x.ndim - 1), dtype=x.dtype) ** (1.0 / dim)
        delta = jnp.where(half, radius, eps) * direction
    return jnp.clip(x[None] + delta, 0.0, 1.0)


def all_bounds(model: nnx.Module, norm: str, **options):
    """Jitted ``(x, labels, eps) -> {method: (B, K) lower bounds}`` for every method at once
    (one program: the methods share their interval and intermediate bounds)."""
    return jax.jit(lambda x, y, eps: {m: margin_bounds(model, x, y, eps, norm=norm, method=m, **options)
                                      for m in METHODS})
