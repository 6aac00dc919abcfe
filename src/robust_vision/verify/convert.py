"""Conversion of the project's NNX models into a bound-able ``Graph`` (verify/graph.py).

A converter mirrors its model's ``__call__`` with a ``GraphBuilder``; the builder evaluates
every node on the clean batch as it goes, so a batch norm in training mode (certified training)
becomes the affine map of the clean batch's statistics, as in the model's own training forward.
Supported: ``cnn`` (ProductionCNN), ``resnet18``, ``preact_resnet18``, the ``wrn-*`` WideResNets,
``linear``, ``cnn7`` and ``cnn_small``. Anything else stops with a one-line ``UnsupportedLayer``
naming the model or layer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding
from jax import lax

from robust_vision.models.certified import ConvStack
from robust_vision.models.cnn import ConvBlock, ProductionCNN
from robust_vision.models.linear import LinearClassifier
from robust_vision.models.resnet import BasicBlock, ResNet18
from robust_vision.models.robustbench import InputNormalization, PreActBlock, PreActResNet18, WideBlock, WideResNet
from robust_vision.verify.graph import Add, Graph, Linear, Node, ReLU, UnsupportedLayer


class GraphBuilder:
    """Builds a ``Graph`` node by node; node handles are ints. ``x``: the clean batch (B, *in)."""

    def __init__(self, x: jax.Array):
        self.nodes = [Node(None, (), "input", tuple(x.shape[1:]))]
        self.values = [x]

    def _append(self, op, inputs: tuple[int, ...], name: str, value: jax.Array) -> int:
        self.nodes.append(Node(op, inputs, name, tuple(value.shape[1:])))
        self.values.append(value)
        return len(self.nodes) - 1

    def linear(self, h: int, op: Linear, name: str) -> int:
        return self._append(op, (h,), name, op(self.values[h]))

    def relu(self, h: int, name: str) -> int:
        return self._append(ReLU(), (h,), name, jax.nn.relu(self.values[h]))

    def add(self, a: int, b: int, name: str) -> int:
        return self._append(Add(), (a, b), name, self.values[a] + self.values[b])

    def dense(self, h: int, layer: nnx.Linear, name: str) -> int:
        kernel = layer.kernel[...]
        bias = layer.bias[...] if layer.bias is not None else None
        op = Linear("dense", lambda x: x @ kernel.astype(x.dtype), lambda x: x @ jnp.abs(kernel).astype(x.dtype), bias)
        return self.linear(h, op, name)

    def conv(self, h: int, layer: nnx.Conv, name: str) -> int:
        return self.linear(h, conv_op(layer, name), name)

    def affine(self, h: int, scale: jax.Array, shift: jax.Array, name: str, kind: str = "affine") -> int:
        """y = x * scale + shift, per channel (scale, shift (C,))."""
        op = Linear(kind, lambda x: x * scale.astype(x.dtype), lambda x: x * jnp.abs(scale).astype(x.dtype), shift)
        return self.linear(h, op, name)

    def batch_norm(self, h: int, layer: nnx.BatchNorm, name: str) -> int:
        """Batch norm as a per-channel affine map: running statistics in eval mode, the clean
        batch's statistics in training mode (``use_running_average`` False)."""
        if layer.use_running_average:
            mean, var = layer.mean[...], layer.var[...]
        else:
            axes = tuple(range(self.values[h].ndim - 1))
            mean = jnp.mean(self.values[h], axis=axes)
            var = jnp.mean(jnp.square(self.values[h] - mean), axis=axes)
        scale = lax.rsqrt(var + layer.epsilon)
        if layer.scale is not None:
            scale = scale * layer.scale[...]
        shift = -mean * scale + (layer.bias[...] if layer.bias is not None else 0.0)
        return self.affine(h, scale, shift, name, kind="batch_norm")

    def normalization(self, h: int, norm: InputNormalization | None, name: str) -> int:
        if norm is None:
            return h
        std = np.asarray(norm.std, np.float32)
        return self.affine(h, jnp.asarray(1.0 / std), jnp.asarray(-np.asarray(norm.mean, np.float32) / std), name,
                           kind="normalization")

    def avg_pool(self, h: int, window: int, name: str) -> int:
        pool = lambda x: nnx.avg_pool(x, (window, window), strides=(window, window), padding="SAME")  # noqa: E731
        return self.linear(h, Linear("avg_pool", pool, pool, None), name)

    def global_avg_pool(self, h: int, name: str) -> int:
        mean = lambda x: jnp.mean(x, axis=(1, 2))  # noqa: E731
        return self.linear(h, Linear("global_avg_pool", mean, mean, None), name)

    def flatten(self, h: int, name: str) -> int:
        flat = lambda x: x.reshape(x.shape[0], math.prod(x.shape[1:]))  # noqa: E731
        return self.linear(h, Linear("flatten", flat, flat, None), name)

    def graph(self) -> Graph:
        return Graph(tuple(self.nodes))


def conv_op(layer: nnx.Conv, name: str) -> Linear:
    """A 2-D ``nnx.Conv`` (NHWC, zero padding, any strides / dilations / groups) as a ``Linear``."""
    padding = canonicalize_padding(layer.padding, len(layer.kernel_size))
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        raise UnsupportedLayer(f"verify: cannot bound layer {name!r} (convolution with {padding} padding); "
                               "only zero padding (SAME, VALID or explicit pairs) is supported")
    if layer.mask is not None:
        raise UnsupportedLayer(f"verify: cannot bound layer {name!r} (masked convolution)")
    as_tuple = lambda v: (1, 1) if v is None else ((v, v) if isinstance(v, int) else tuple(v))  # noqa: E731
    kernel = layer.kernel[...]
    bias = layer.bias[...] if layer.bias is not None else None

    def convolve(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w.astype(x.dtype), as_tuple(layer.strides), padding,
                                        lhs_dilation=as_tuple(layer.input_dilation),
                                        rhs_dilation=as_tuple(layer.kernel_dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=layer.feature_group_count)

    return Linear("conv", lambda x: convolve(x, kernel), lambda x: convolve(x, jnp.abs(kernel)), bias)


# ---------------------------------------------------------------------------------------------
# One converter per model class: (builder, model, input handle) -> logits handle.


def _production_cnn(b: GraphBuilder, model: ProductionCNN, h: int) -> int:
    for i, block in enumerate(model.blocks):
        h = _conv_block(b, block, h, f"blocks.{i}")
        if i < len(model.blocks) - 1:
            h = b.avg_pool(h, 2, f"pool{i + 1}")
    h = b.global_avg_pool(h, "global_avg_pool")
    return b.dense(h, model.head, "head")  # dropout: identity at inference


def _conv_block(b: GraphBuilder, block: ConvBlock, x: int, name: str) -> int:
    y = b.conv(x, block.conv1, f"{name}.conv1")
    y = b.batch_norm(y, block.norm1, f"{name}.norm1") if block.norm1 is not None else y
    y = b.conv(b.relu(y, f"{name}.relu1"), block.conv2, f"{name}.conv2")
    y = b.batch_norm(y, block.norm2, f"{name}.norm2") if block.norm2 is not None else y
    if block.residual:
        shortcut = b.conv(x, block.project, f"{name}.project") if block.project is not None else x
        y = b.add(y, shortcut, f"{name}.add")
    return b.relu(y, f"{name}.relu2")


def _resnet18(b: GraphBuilder, model: ResNet18, h: int) -> int:
    h = b.relu(b.batch_norm(b.conv(h, model.stem_conv, "stem_conv"), model.stem_bn, "stem_bn"), "stem_relu")
    for i, block in enumerate(model.blocks):
        h = _basic_block(b, block, h, f"blocks.{i}")
    return b.dense(b.global_avg_pool(h, "global_avg_pool"), model.head, "head")


def _basic_block(b: GraphBuilder, block: BasicBlock, x: int, name: str) -> int:
    y = b.relu(b.batch_norm(b.conv(x, block.conv1, f"{name}.conv1"), block.bn1, f"{name}.bn1"), f"{name}.relu1")
    y = b.batch_norm(b.conv(y, block.conv2, f"{name}.conv2"), block.bn2, f"{name}.bn2")
    shortcut = x
    if block.shortcut_conv is not None:
        shortcut = b.batch_norm(b.conv(x, block.shortcut_conv, f"{name}.shortcut_conv"), block.shortcut_bn,
                                f"{name}.shortcut_bn")
    return b.relu(b.add(y, shortcut, f"{name}.add"), f"{name}.relu2")


def _preact_resnet18(b: GraphBuilder, model: PreActResNet18, h: int) -> int:
    h = b.conv(b.normalization(h, model.normalize, "normalize"), model.conv1, "conv1")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            h = _preact_block(b, block, h, f"{stage}.{i}")
    h = b.relu(b.batch_norm(h, model.bn, "bn"), "relu")
    return b.dense(b.global_avg_pool(h, "global_avg_pool"), model.linear, "linear")


def _preact_block(b: GraphBuilder, block: PreActBlock | WideBlock, x: int, name: str) -> int:
    """PreActBlock and WideBlock: the shortcut conv (if any) reads the pre-activated input."""
    pre = b.relu(b.batch_norm(x, block.bn1, f"{name}.bn1"), f"{name}.relu1")
    out = b.conv(pre, block.conv1, f"{name}.conv1")
    out = b.conv(b.relu(b.batch_norm(out, block.bn2, f"{name}.bn2"), f"{name}.relu2"), block.conv2, f"{name}.conv2")
    shortcut = x if block.shortcut is None else b.conv(pre, block.shortcut, f"{name}.shortcut")
    return b.add(out, shortcut, f"{name}.add")


def _wide_resnet(b: GraphBuilder, model: WideResNet, h: int) -> int:
    h = b.conv(b.normalization(h, model.normalize, "normalize"), model.conv1, "conv1")
    for group in ("block1", "block2", "block3"):
        for i, block in enumerate(getattr(model, group)):
            h = _preact_block(b, block, h, f"{group}.{i}")
    h = b.relu(b.batch_norm(h, model.bn1, "bn1"), "relu")
    return b.dense(b.global_avg_pool(h, "global_avg_pool"), model.fc, "fc")


def _linear_classifier(b: GraphBuilder, model: LinearClassifier, h: int) -> int:
    h = b.flatten(h, "flatten")
    for i, layer in enumerate(model.hidden):
        h = b.relu(b.dense(h, layer, f"hidden.{i}"), f"hidden.{i}.relu")
    return b.dense(h, model.head, "head")


def _conv_stack(b: GraphBuilder, model: ConvStack, h: int) -> int:
    h = b.normalization(h, model.normalize, "normalize")
    for i, (conv, norm) in enumerate(zip(model.convs, model.conv_norms)):
        h = b.conv(h, conv, f"convs.{i}")
        h = b.batch_norm(h, norm, f"conv_norms.{i}") if norm is not None else h
        h = b.relu(h, f"convs.{i}.relu")
    h = b.flatten(h, "flatten")
    for i, (layer, norm) in enumerate(zip(model.dense, model.dense_norms)):
        h = b.dense(h, layer, f"dense.{i}")
        h = b.batch_norm(h, norm, f"dense_norms.{i}") if norm is not None else h
        h = b.relu(h, f"dense.{i}.relu")
    return b.dense(h, model.head, "head")


CONVERTERS: dict[type, Callable[[GraphBuilder, nnx.Module, int], int]] = {
    ProductionCNN: _production_cnn,
    ResNet18: _resnet18,
    PreActResNet18: _preact_resnet18,
    WideResNet: _wide_resnet,
    LinearClassifier: _linear_classifier,
    ConvStack: _conv_stack,
}


def supported_models() -> Sequence[str]:
    return sorted(t.__name__ for t in CONVERTERS)


def check_supported(model: nnx.Module) -> None:
    """A one-line ``UnsupportedLayer`` unless the model's class has a converter (before any work)."""
    if type(model) not in CONVERTERS:
        raise UnsupportedLayer(f"verify: cannot bound model {type(model).__name__} (no bound-propagation "
                               f"converter); supported: {', '.join(supported_models())}")


def graph_and_values(model: nnx.Module, x: jax.Array) -> tuple[Graph, list[jax.Array]]:
    """The bound-able graph of ``model`` at the clean batch ``x`` (B, H, W, C) in [0, 1], and
    the clean value (B, *shape) of every node. ``x`` fixes the shapes, and the batch-norm
    statistics of a model in training mode."""
    check_supported(model)
    b = GraphBuilder(x)
    CONVERTERS[type(model)](b, model, 0)
    return b.graph(), b.values


def to_graph(model: nnx.Module, x: jax.Array) -> Graph:
    """``graph_and_values`` without the values."""
    return graph_and_values(model, x)[0]
