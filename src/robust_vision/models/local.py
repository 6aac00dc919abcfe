"""Krotov-Hopfield local learning ("unsupervised learning by competing hidden units").

Source: the local-learning seed (``shared/seeds/local-learning.txt``, Holzhausen's
LocalLearning code), which builds on D. Krotov and J. J. Hopfield, "Unsupervised learning
by competing hidden units", PNAS 116(16), 2019, and Krotov's reference code
(github.com/DimaKrotov/Biological_Learning).

Learning rule (one minibatch, W of shape (n_hidden, D), inputs v of shape (B, D)):

    I_mu   = <W_mu, v>_p = sum_i sign(W_mu,i) |W_mu,i|^(p-1) v_i      (currents, (H, B))
    g      = +1 for the most active unit of each example,
             -delta for the k-th most active one (anti-Hebbian), 0 otherwise
    dW_mu  = sum_b g_mu,b (v_b - I_mu,b W_mu)
    W     <- W + lr * dW / max|dW|                                    (Krotov's normalisation)

Its fixed point has sum_i |W_mu,i|^p = 1 for every unit that keeps receiving updates:
d/dt sum_i |W_i|^p = p * g * I * (1 - sum_i |W_i|^p). The learning rate decays linearly
from lr0 to 0 over the epochs, as in the reference code.

:class:`KrotovClassifier` is the paper's two-layer classifier: a frozen local layer
h = relu(W v)^n followed by a trainable linear head. W is a :class:`LocalWeights` variable
(not ``nnx.Param``), so the project's optimizer trains only the head while checkpoints
still save W.

No maintained JAX library implements this rule; it is written by hand.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "LocalWeights",
    "krotov_update",
    "train_krotov",
    "p_norms",
    "KrotovClassifier",
]

_PREC = 1e-30  # floor of the normaliser max|dW|, as `prec` in Krotov's code


class LocalWeights(nnx.Variable):
    """Weights of a locally trained layer: model state, never updated by the optimizer."""


def _check_rule_args(p: float, k: int, n_hidden: int) -> None:
    if p < 2:
        raise ValueError(f"the Lebesgue exponent p must be >= 2 (Krotov & Hopfield), got p={p}")
    if not 2 <= k <= n_hidden:
        raise ValueError(f"the ranking parameter k must satisfy 2 <= k <= n_hidden={n_hidden}, got k={k}")


@functools.partial(jax.jit, static_argnames=("k",))
def krotov_update(W: jax.Array, x_batch: jax.Array, lr: float | jax.Array, p: float | jax.Array,
                  k: int, delta: float | jax.Array) -> jax.Array:
    """One minibatch step of the Krotov-Hopfield rule.

    Args:
      W: (n_hidden, D) float32 weights.
      x_batch: (B, D) float32 inputs (flattened images).
      lr: step size; the largest absolute change of any weight equals ``lr``.
      p: Lebesgue exponent (>= 2) of the weight norm.
      k: ranking parameter (static int, 2 <= k <= n_hidden): the k-th most active unit of
        each example receives the anti-Hebbian update.
      delta: strength of the anti-Hebbian update (>= 0).

    Returns:
      The updated (n_hidden, D) weights.
    """
    W = W.astype(jnp.float32)
    x = x_batch.astype(jnp.float32)
    n_hidden = W.shape[0]
    currents = (jnp.sign(W) * jnp.abs(W) ** (p - 1.0)) @ x.T  # (H, B)
    # Top-k over units for every example at once; column 0 is the winner, k-1 the k-th.
    _, idx = jax.lax.top_k(currents.T, k)  # (B, k)
    g = (jax.nn.one_hot(idx[:, 0], n_hidden, dtype=jnp.float32)
         - delta * jax.nn.one_hot(idx[:, k - 1], n_hidden, dtype=jnp.float32)).T  # (H, B)
    xx = jnp.sum(g * currents, axis=1)  # (H,)
    ds = g @ x - xx[:, None] * W
    nc = jnp.maximum(jnp.max(jnp.abs(ds)), _PREC)
    return W + lr * ds / nc


@functools.partial(jax.jit, static_argnames=("batch_size", "k"))
def _krotov_epoch(W: jax.Array, data: jax.Array, key: jax.Array, lr: jax.Array, p: jax.Array,
                  delta: jax.Array, *, batch_size: int, k: int) -> jax.Array:
    n_batches = data.shape[0] // batch_size
    perm = jax.random.permutation(key, data.shape[0])[: n_batches * batch_size]
    batches = data[perm].reshape(n_batches, batch_size, data.shape[1])

    def body(W, xb):
        return krotov_update(W, xb, lr, p, k, delta), None

    W, _ = jax.lax.scan(body, W, batches)
    return W


def train_krotov(key: jax.Array, images: jax.Array | np.ndarray, n_hidden: int, epochs: int,
                 batch_size: int = 100, p: float = 2.0, k: int = 2, delta: float = 0.4,
                 lr0: float = 0.02, *, W_init: Optional[jax.Array] = None,
                 init_std: float = 1.0) -> jax.Array:
    """Train a Krotov-Hopfield layer without labels.

    Args:
      key: ``jax.random`` key for the initial weights and the per-epoch shuffles.
      images: (N, H, W, C) or (N, D) inputs (float, e.g. in [0, 1]); flattened to (N, D).
      n_hidden: number of hidden units.
      epochs: passes over the data; epoch e uses lr = lr0 * (1 - e / epochs).
      batch_size: minibatch size (each epoch uses N // batch_size full minibatches of a fresh
        permutation, like the reference code; the remainder changes every epoch).
      p, k, delta: see :func:`krotov_update` (reference defaults for MNIST: p=2, k=2, delta=0.4).
      lr0: initial learning rate.
      W_init: optional (n_hidden, D) starting weights (else N(0, init_std^2), as the reference).

    Returns:
      (n_hidden, D) float32 weights. Same key and data -> same weights.
    """
    data = jnp.asarray(images, jnp.float32)
    data = data.reshape(data.shape[0], -1)
    n, d = data.shape
    _check_rule_args(p, k, n_hidden)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, N={n}], got {batch_size}")
    init_key, key = jax.random.split(key)
    if W_init is None:
        W = init_std * jax.random.normal(init_key, (n_hidden, d), jnp.float32)
    else:
        W = jnp.asarray(W_init, jnp.float32)
        if W.shape != (n_hidden, d):
            raise ValueError(f"W_init has shape {W.shape}, expected (n_hidden, D) = {(n_hidden, d)}")
    for epoch in range(epochs):  # a Python loop over epochs only; minibatches run in lax.scan
        lr = jnp.float32(lr0 * (1.0 - epoch / epochs))
        W = _krotov_epoch(W, data, jax.random.fold_in(key, epoch), lr, jnp.float32(p), jnp.float32(delta),
                          batch_size=batch_size, k=k)
    return W


def p_norms(W: jax.Array, p: float) -> jax.Array:
    """(sum_i |W_mu,i|^p)^(1/p) for every row, shape (n_hidden,). Rows that keep learning
    converge to 1 (the rule's fixed point)."""
    return jnp.sum(jnp.abs(W) ** p, axis=-1) ** (1.0 / p)


class KrotovClassifier(nnx.Module):
    """Frozen Krotov-Hopfield layer + trainable linear head (Krotov & Hopfield's classifier).

    Forward: v = flatten(x) (B, D); currents W v (B, n_hidden); hidden
    h = relu(W v)^n (the paper's power activation); logits = Linear(h) (B, num_classes).

    Options:
      n_hidden: hidden units (default 100; the paper uses 2000).
      power: the exponent n of the activation (default 4.5, the paper's MNIST value).
      W: optional (n_hidden, H*W*C) trained weights (e.g. from :func:`train_krotov`);
        None draws random rows with unit p-norm from ``rngs.params``.
      p: exponent of the norm used for the random initial rows (default 3.0).
      use_bias: bias of the linear head (default True).

    Features: ``currents`` (B, n_hidden) = W v and ``embedding`` (B, n_hidden) = h.
    Load trained weights later with :meth:`load_weights`.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 n_hidden: int = 100, power: float = 4.5, W: Optional[jax.Array] = None,
                 p: float = 3.0, use_bias: bool = True):
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
        if n_hidden < 1 or num_classes < 2:
            raise ValueError(f"need n_hidden >= 1 and num_classes >= 2, got {n_hidden}, {num_classes}")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.input_dim = int(math.prod(input_shape))
        self.n_hidden = n_hidden
        self.power = float(power)
        if W is None:
            W0 = jax.random.normal(rngs.params(), (n_hidden, self.input_dim), jnp.float32)
            W0 = W0 / p_norms(W0, p)[:, None]
        else:
            W0 = self._checked(W)
        self.local_weights = LocalWeights(W0)
        self.head = nnx.Linear(n_hidden, num_classes, use_bias=use_bias, rngs=rngs)

    def _checked(self, W: jax.Array | np.ndarray) -> jax.Array:
        W = jnp.asarray(W, jnp.float32)
        if W.shape != (self.n_hidden, self.input_dim):
            raise ValueError(f"local weights have shape {W.shape}, expected (n_hidden, H*W*C) = "
                             f"{(self.n_hidden, self.input_dim)}; train them on images of this input_shape")
        return W

    def load_weights(self, W: jax.Array | np.ndarray) -> None:
        """Replace the local layer's weights by trained ones, shape (n_hidden, H*W*C)."""
        self.local_weights[...] = self._checked(W)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        v = x.reshape(x.shape[0], -1)
        if v.shape[1] != self.input_dim:
            raise ValueError(f"input of {v.shape[1]} values per example, the model expects {self.input_dim}")
        # The local layer is frozen: no gradient flows into W even if a caller differentiates
        # with respect to every variable.
        W = jax.lax.stop_gradient(self.local_weights[...])
        currents = v @ W.T
        hidden = jax.nn.relu(currents) ** self.power
        logits = self.head(hidden)
        if return_features:
            return logits, {"currents": currents, "embedding": hidden}
        return logits
