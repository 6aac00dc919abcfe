"""A linear classifier on flattened pixels (optionally with hidden ReLU layers)."""

from __future__ import annotations

import math

import jax
from flax import nnx


class LinearClassifier(nnx.Module):
    """Flatten -> [Linear -> ReLU]* -> Linear. Input (B, H, W, C) in [0, 1]; logits (B, K)."""

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 hidden_units: tuple[int, ...] = (), dropout_rate: float = 0.0):
        sizes = [math.prod(input_shape), *hidden_units]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        x = x.reshape(x.shape[0], -1)
        features = {}
        for i, layer in enumerate(self.hidden):
            x = nnx.relu(layer(x))
            features[f"hidden{i + 1}"] = x
        features["embedding"] = x
        logits = self.head(self.dropout(x))
        return (logits, features) if return_features else logits
