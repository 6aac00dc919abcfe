"""Plain convolutional stacks used by certified (bound-propagation) training.

``ConvStack``: [conv -> (BN) -> ReLU]* -> flatten -> [dense -> (BN) -> ReLU]* -> dense, with an
optional input normalisation first. Two registry entries fix its layers:

* ``cnn7``: the CNN7 of CTBench / Shi et al. 2021: conv64, conv64, conv128 stride 2, conv128,
  conv128 (3x3, padding 1), each with BN and ReLU, FC512 with BN and ReLU, FC to the classes
  (17,191,626 parameters on 32x32x3 inputs, 10 classes);
* ``cnn_small``: a small MNIST-sized CNN (the "DM-small"-like model of CROWN-IBP): conv16 4x4
  stride 2, conv32 4x4 stride 2 (padding 1), FC100, FC to the classes, no BN.

Input (B, H, W, C) float32 in [0, 1]; output logits (B, num_classes).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
from flax import nnx

from robust_vision.models.conv import conv_layer
from robust_vision.models.robustbench import _normalization

# (out channels, kernel, stride, padding) of each convolution
ConvSpec = tuple[int, int, int, int]

CNN7_CONVS: tuple[ConvSpec, ...] = ((64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1))
CNN_SMALL_CONVS: tuple[ConvSpec, ...] = ((16, 4, 2, 1), (32, 4, 2, 1))


def _out_side(side: int, kernel: int, stride: int, pad: int) -> int:
    return (side + 2 * pad - kernel) // stride + 1


class ConvStack(nnx.Module):
    """Convolutions, then dense layers, each followed by (optional) batch norm and ReLU; a
    linear head. ``convs``: (channels, kernel, stride, padding) per convolution; ``dense``: the
    hidden widths."""

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 convs: Sequence[ConvSpec], dense: Sequence[int], batch_norm: bool,
                 normalize_mean: Optional[Sequence[float]] = None, normalize_std: Optional[Sequence[float]] = None):
        self.normalize = _normalization(normalize_mean, normalize_std, input_shape[-1])
        h, w, cin = input_shape
        conv_list, norm_list = [], []
        for cout, k, s, p in convs:
            conv_list.append(conv_layer(cin, cout, (k, k), strides=s, padding=((p, p), (p, p)),
                                        use_bias=not batch_norm, rngs=rngs))
            norm_list.append(nnx.BatchNorm(cout, momentum=0.9, rngs=rngs) if batch_norm else None)
            h, w, cin = _out_side(h, k, s, p), _out_side(w, k, s, p), cout
        if h < 1 or w < 1:
            raise ValueError(f"images of {input_shape[0]}x{input_shape[1]} are too small for these convolutions")
        sizes = [h * w * cin, *dense]
        self.convs = nnx.List(conv_list)
        self.conv_norms = nnx.List(norm_list)
        self.dense = nnx.List([nnx.Linear(a, b, use_bias=not batch_norm, rngs=rngs)
                               for a, b in zip(sizes[:-1], sizes[1:])])
        self.dense_norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs) if batch_norm else None
                                     for b in sizes[1:]])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        features = {}
        if self.normalize is not None:
            x = self.normalize(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.conv_norms)):
            x = conv(x)
            x = nnx.relu(norm(x) if norm is not None else x)
            features[f"conv{i + 1}"] = x
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        for i, (layer, norm) in enumerate(zip(self.dense, self.dense_norms)):
            x = layer(x)
            x = nnx.relu(norm(x) if norm is not None else x)
            features[f"dense{i + 1}"] = x
        features["embedding"] = x
        logits = self.head(x)
        return (logits, features) if return_features else logits


def cnn7(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs, **options) -> ConvStack:
    """CTBench's CNN7 (module docstring)."""
    return ConvStack(input_shape=input_shape, num_classes=num_classes, rngs=rngs, convs=CNN7_CONVS, dense=(512,),
                     batch_norm=True, **options)


def cnn_small(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs, **options) -> ConvStack:
    """The small MNIST CNN (module docstring)."""
    return ConvStack(input_shape=input_shape, num_classes=num_classes, rngs=rngs, convs=CNN_SMALL_CONVS, dense=(100,),
                     batch_norm=False, **options)
