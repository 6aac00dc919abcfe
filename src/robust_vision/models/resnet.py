"""ResNet-18 with the CIFAR-style stem (3x3 conv, stride 1, no max-pool), for any input
of at least 8x8 pixels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from robust_vision.models.conv import conv_layer


class BasicBlock(nnx.Module):
    """Two 3x3 conv + BN layers with an identity (or strided 1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = conv_layer(in_channels, out_channels, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        self.conv2 = conv_layer(out_channels, out_channels, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = conv_layer(in_channels, out_channels, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.shortcut_bn = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return nnx.relu(y + shortcut)


class ResNet18(nnx.Module):
    """ResNet-18 (He et al. 2016), stages of 2 BasicBlocks with widths w, 2w, 4w, 8w and
    strides 1, 2, 2, 2; global average pooling and a linear head.

    Input (B, H, W, C) float32 in [0, 1] with H, W >= 8; output logits (B, num_classes).
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 width: int = 64, dropout_rate: float = 0.0):
        if min(input_shape[:2]) < 8:
            raise ValueError(f"resnet18 needs images of at least 8x8; got {input_shape[0]}x{input_shape[1]} "
                             "(set data.image_size)")
        self.stem_conv = conv_layer(input_shape[-1], width, (3, 3), use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        blocks = []
        in_ch = width
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2))):
            out_ch = width * mult
            blocks.append(BasicBlock(in_ch, out_ch, stride, rngs=rngs))
            blocks.append(BasicBlock(out_ch, out_ch, 1, rngs=rngs))
            in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(in_ch, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        features = {}
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        features["stem"] = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2 == 1:
                features[f"layer{i // 2 + 1}"] = x
        embedding = jnp.mean(x, axis=(1, 2))
        features["embedding"] = embedding
        logits = self.head(self.dropout(embedding))
        return (logits, features) if return_features else logits
