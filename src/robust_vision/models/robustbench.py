"""The RobustBench model-zoo architectures (Croce et al. 2021): PreActResNet-18 and the
WideResNets WRN-28-10, WRN-34-10, WRN-34-20 and WRN-70-16, in Flax NNX.

Layer for layer these follow ``robustbench/model_zoo/architectures`` (``resnet.py``
``PreActResNet`` and ``wide_resnet.py`` ``WideResNet``), so that a PyTorch ``state_dict`` of
those models maps one-to-one onto ours (``runs/import_weights.py``):

* convolutions pad explicitly by 1 on every side, as PyTorch's ``padding=1`` does (Flax's
  ``"SAME"`` pads a stride-2 convolution asymmetrically and would shift every feature map);
* batch norm uses PyTorch's epsilon 1e-5 and momentum 0.1 (Flax ``momentum=0.9``);
* the classifier sees the global average of the last feature map (RobustBench's
  ``avg_pool2d(out, 4)`` / ``avg_pool2d(out, 8)`` on 32x32 inputs is exactly that).

An optional input normalisation ``(x - mean) / std`` per channel is the first operation,
as in the zoo's models trained on normalised CIFAR (``model.normalize_mean`` /
``model.normalize_std``; ``CIFAR10_MEAN`` / ``CIFAR10_STD`` are RobustBench's values).
Inputs are (B, H, W, C) float32 in [0, 1]; outputs logits (B, num_classes).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_vision.models.conv import conv_layer

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

_PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1


def _conv3x3(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv_layer(cin, cout, (3, 3), strides=stride, padding=_PAD1, use_bias=False, rngs=rngs)


def _conv1x1(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv_layer(cin, cout, (1, 1), strides=stride, padding="VALID", use_bias=False, rngs=rngs)


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class InputNormalization(nnx.Module):
    """``(x - mean) / std`` per channel; mean and std are constants, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"model.normalize_mean / normalize_std need {channels} values (one per input channel); "
                             f"got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"model.normalize_std must be positive; got {list(std)}")
        self.mean = tuple(float(m) for m in mean)  # plain tuples: static, never trained or saved
        self.std = tuple(float(s) for s in std)

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def _normalization(mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                   channels: int) -> Optional[InputNormalization]:
    if (mean is None) != (std is None):
        raise ValueError("model.normalize_mean and model.normalize_std go together: set both or neither")
    return None if mean is None else InputNormalization(mean, std, channels)


def _staged_forward(model: nnx.Module, x: jax.Array, stages: tuple[str, ...], final_bn: nnx.Module,
                    head: nnx.Module, return_features: bool):
    """The forward both RobustBench nets share: input normalisation, the stem conv, the residual
    stages (each one feature, (B, h, w, C)), BN-ReLU, global average pooling (the embedding,
    (B, C)) and the linear head (logits, (B, K))."""
    features = {}
    if model.normalize is not None:
        x = model.normalize(x)
    x = model.conv1(x)
    features["stem"] = x
    for name in stages:
        for block in getattr(model, name):
            x = block(x)
        features[name] = x
    embedding = jnp.mean(nnx.relu(final_bn(x)), axis=(1, 2))
    features["embedding"] = embedding
    logits = head(embedding)
    return (logits, features) if return_features else logits


class PreActBlock(nnx.Module):
    """Pre-activation basic block (He et al. 2016b): BN-ReLU-conv3x3-BN-ReLU-conv3x3, the
    shortcut (a strided 1x1 conv when the shape changes) taken after the first BN-ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.bn1 = _bn(in_planes, rngs)
        self.conv1 = _conv3x3(in_planes, planes, stride, rngs)
        self.bn2 = _bn(planes, rngs)
        self.conv2 = _conv3x3(planes, planes, 1, rngs)
        self.shortcut = _conv1x1(in_planes, planes, stride, rngs) if stride != 1 or in_planes != planes else None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(nnx.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nnx.Module):
    """PreActResNet-18: conv3x3 stem, four stages of two ``PreActBlock`` with widths
    w, 2w, 4w, 8w (w = 64 in RobustBench) and strides 1, 2, 2, 2, a final BN-ReLU, global
    average pooling and a linear head (11,172,170 parameters at w = 64, 10 classes)."""

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 width: int = 64, normalize_mean: Optional[Sequence[float]] = None,
                 normalize_std: Optional[Sequence[float]] = None):
        if min(input_shape[:2]) < 8:
            raise ValueError(f"preact_resnet18 needs images of at least 8x8; got {input_shape[0]}x{input_shape[1]} "
                             "(set data.image_size)")
        self.normalize = _normalization(normalize_mean, normalize_std, input_shape[-1])
        self.conv1 = _conv3x3(input_shape[-1], width, 1, rngs)
        in_planes = width
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            planes = width * mult
            setattr(self, f"layer{stage}", nnx.List([PreActBlock(in_planes, planes, stride, rngs=rngs),
                                                     PreActBlock(planes, planes, 1, rngs=rngs)]))
            in_planes = planes
        self.bn = _bn(in_planes, rngs)
        self.linear = nnx.Linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        return _staged_forward(self, x, ("layer1", "layer2", "layer3", "layer4"), self.bn, self.linear,
                               return_features)


class WideBlock(nnx.Module):
    """RobustBench's WideResNet ``BasicBlock``: BN-ReLU-conv3x3-BN-ReLU-conv3x3. When the
    channel count changes, the shortcut is a strided 1x1 conv of the pre-activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, *, rngs: nnx.Rngs):
        self.bn1 = _bn(in_planes, rngs)
        self.conv1 = _conv3x3(in_planes, out_planes, stride, rngs)
        self.bn2 = _bn(out_planes, rngs)
        self.conv2 = _conv3x3(out_planes, out_planes, 1, rngs)
        # As in the reference, a shortcut conv exists exactly when the widths differ.
        self.shortcut = _conv1x1(in_planes, out_planes, stride, rngs) if in_planes != out_planes else None

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = nnx.relu(self.bn1(x))
        out = self.conv2(nnx.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nnx.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016) as in RobustBench: conv3x3 to 16
    channels, three groups of (depth - 4) / 6 ``WideBlock`` with 16k, 32k, 64k channels
    (k = widen) and strides 1, 2, 2, a final BN-ReLU, global average pooling and a linear head.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 depth: int = 28, widen: int = 10, normalize_mean: Optional[Sequence[float]] = None,
                 normalize_std: Optional[Sequence[float]] = None):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 70, ...); got {depth}")
        if min(input_shape[:2]) < 4:
            raise ValueError(f"WideResNet needs images of at least 4x4; got {input_shape[0]}x{input_shape[1]}")
        n = (depth - 4) // 6
        channels = (16, 16 * widen, 32 * widen, 64 * widen)
        self.normalize = _normalization(normalize_mean, normalize_std, input_shape[-1])
        self.conv1 = _conv3x3(input_shape[-1], channels[0], 1, rngs)
        for group, stride in zip((1, 2, 3), (1, 2, 2)):
            cin, cout = channels[group - 1], channels[group]
            setattr(self, f"block{group}", nnx.List([
                WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, rngs=rngs) for i in range(n)]))
        self.bn1 = _bn(channels[3], rngs)
        self.fc = nnx.Linear(channels[3], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        return _staged_forward(self, x, ("block1", "block2", "block3"), self.bn1, self.fc, return_features)


# model.name -> (depth, widen) of RobustBench's named WideResNets
WIDE_RESNETS: dict[str, tuple[int, int]] = {
    "wrn-28-10": (28, 10),
    "wrn-34-10": (34, 10),
    "wrn-34-20": (34, 20),
    "wrn-70-16": (70, 16),
}


def wide_resnet(depth: int, widen: int):
    """A constructor of WRN-depth-widen with the registry's signature."""

    def build(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs, **options) -> WideResNet:
        return WideResNet(input_shape=input_shape, num_classes=num_classes, rngs=rngs, depth=depth, widen=widen,
                          **options)

    build.__name__ = f"wrn_{depth}_{widen}"
    return build
