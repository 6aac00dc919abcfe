"""The seed's ProductionCNN: conv stages (residual or plain), batch norm, global average
pooling, dropout and a linear classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from robust_vision.models.conv import conv_layer


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions with optional batch norm; with ``residual`` the input is added
    back (through a 1x1 projection when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, residual: bool, batch_norm: bool, rngs: nnx.Rngs):
        self.residual = residual
        self.conv1 = conv_layer(in_channels, out_channels, (3, 3), use_bias=not batch_norm, rngs=rngs)
        self.conv2 = conv_layer(out_channels, out_channels, (3, 3), use_bias=not batch_norm, rngs=rngs)
        self.norm1 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs) if batch_norm else None
        self.norm2 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs) if batch_norm else None
        self.project = (conv_layer(in_channels, out_channels, (1, 1), use_bias=False, rngs=rngs)
                        if residual and in_channels != out_channels else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv1(x)
        if self.norm1 is not None:
            y = self.norm1(y)
        y = nnx.relu(y)
        y = self.conv2(y)
        if self.norm2 is not None:
            y = self.norm2(y)
        if self.residual:
            y = y + (self.project(x) if self.project is not None else x)
        return nnx.relu(y)


class ProductionCNN(nnx.Module):
    """Stages of ``ConvBlock`` with 2x2 average pooling between them, global average pooling,
    dropout and a linear head.

    Input (B, H, W, C) float32 in [0, 1]; output logits (B, num_classes). Any H, W >= 2**(stages-1).
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 features: tuple[int, ...] = (32, 64, 128), dropout_rate: float = 0.1,
                 use_residual: bool = True, use_batch_norm: bool = True):
        if not features:
            raise ValueError("model.features must list at least one stage width, e.g. [32, 64]")
        min_side = 2 ** (len(features) - 1)
        if min(input_shape[:2]) < min_side:
            raise ValueError(f"cnn with {len(features)} stages needs images of at least {min_side}x{min_side}; "
                             f"got {input_shape[0]}x{input_shape[1]} (use fewer model.features or a larger data.image_size)")
        channels = [input_shape[-1], *features]
        self.blocks = nnx.List([
            ConvBlock(cin, cout, residual=use_residual, batch_norm=use_batch_norm, rngs=rngs)
            for cin, cout in zip(channels[:-1], channels[1:])
        ])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(features[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        features = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            features[f"stage{i + 1}"] = x
            if i < len(self.blocks) - 1:
                x = nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        embedding = jnp.mean(x, axis=(1, 2))
        features["embedding"] = embedding
        logits = self.head(self.dropout(embedding))
        return (logits, features) if return_features else logits
