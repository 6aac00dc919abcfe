"""Perturbative neural networks (PNN) and their parameter-matched ResNet-18 baseline.

Source: the perturbative-nets seed (``shared/seeds/perturbative-nets.txt``), a corrected
re-implementation of Juefei-Xu et al., "Perturbative Neural Networks", CVPR 2018. A
perturbation layer replaces an n x n convolution by

    y = act(BN(conv1x1(act?(x + N))))          N: fixed noise masks, one per (channel, mask)

where the masks N are drawn once at construction (uniform in [-level, level] or
level * N(0, 1)), have the spatial shape of the layer's input feature map, and are *added*
to the input before the 1x1 convolution. With ``nmasks`` > 1 every input channel is
perturbed by ``nmasks`` different masks (the paper's "fan-out") and the 1x1 convolution is
grouped per input channel, as in the seed's code; ``mix_maps`` adds a second (ungrouped)
1x1 convolution so that channels exchange information.

``filter_size`` selects the layer type: 0 = perturbation layer, n > 0 = a regular n x n
convolution (+ BN + activation). ``first_filter_size`` does the same for the first layer.
The seed's finding to keep in mind (and to re-measure, never to copy): noise masks gave no
benefit over plain 1x1 convolutions, and a ResNet-18 with 3x3 convolutions and fewer
filters (same parameter count, :func:`resnet18_matched`) was ~5 points better.

All models follow the project's model conventions: ``Model(*, input_shape, num_classes,
rngs, **options)`` and ``model(x, return_features=False)`` with x (B, H, W, C) float32 in
[0, 1]; train / eval mode through ``model.train()`` / ``model.eval()`` (BatchNorm, Dropout
and the random slope of ``rrelu`` follow it). Fixed masks are :class:`NoiseMask` variables
(not ``nnx.Param``): the optimizer leaves them alone and checkpoints still save them; with
``train_masks=True`` they are ``nnx.Param`` and are trained with the weights.

Everything here is written by hand because no maintained JAX library provides PNN layers;
the building blocks (Conv, BatchNorm, Dropout, PReLU, pooling) are Flax NNX's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from robust_vision.models.conv import conv_layer
from robust_vision.models.resnet import ResNet18

__all__ = [
    "ACTIVATIONS",
    "NoiseMask",
    "RReLU",
    "Activation",
    "PerturbLayer",
    "PerturbLeNet",
    "PerturbCifarNet",
    "PerturbResNet18",
    "lenet",
    "cifarnet",
    "perturb_resnet18",
    "resnet18_matched",
    "count_params",
    "matched_width",
    "PERTURB_MODELS",
]

ACTIVATIONS = ("relu", "rrelu", "prelu", "elu", "selu", "tanh", "sigmoid")
NoiseType = Literal["uniform", "normal"]
PoolType = Literal["max", "avg"]


class NoiseMask(nnx.Variable):
    """Fixed perturbation noise masks: state of the model, but not a trainable parameter."""


# --------------------------------------------------------------------------- activations


class RReLU(nnx.Module):
    """Randomized leaky ReLU (Xu et al. 2015), as ``torch.nn.RReLU``.

    Training mode: each element's negative slope is drawn from U(lower, upper) (needs an
    rng stream: pass ``rngs``). Eval mode (``deterministic=True``, set by ``model.eval()``):
    a leaky ReLU with the fixed slope (lower + upper) / 2.
    """

    def __init__(self, lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0, *,
                 deterministic: bool = False, rngs: nnx.Rngs | None = None,
                 rng_collection: str = "dropout"):
        if not 0.0 <= lower <= upper:
            raise ValueError(f"RReLU needs 0 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper
        self.deterministic = deterministic
        # Same stream handling as nnx.Dropout, so that one Rngs drives both.
        self.rngs = rngs[rng_collection].fork() if rngs is not None else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            slope = jnp.asarray(0.5 * (self.lower + self.upper), x.dtype)
        else:
            if self.rngs is None:
                raise ValueError("RReLU in training mode draws random slopes and needs an rng stream: "
                                 "construct it with rngs=nnx.Rngs(...) or call model.eval()")
            slope = jax.random.uniform(self.rngs(), x.shape, x.dtype, self.lower, self.upper)
        return jnp.where(x >= 0, x, slope * x)


class Activation(nnx.Module):
    """One activation by name: relu, rrelu (leaky in eval), prelu, elu, selu, tanh, sigmoid.

    ``prelu`` owns a trainable slope (initialised to 0.25 as in PyTorch) and ``rrelu`` an
    rng stream, so every layer gets its own instance.
    """

    def __init__(self, name: str, *, rngs: nnx.Rngs):
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}")
        self.name = name
        self.prelu = nnx.PReLU(negative_slope_init=0.25) if name == "prelu" else None
        self.rrelu = RReLU(rngs=rngs) if name == "rrelu" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.name == "relu":
            return jax.nn.relu(x)
        if self.name == "rrelu":
            return self.rrelu(x)
        if self.name == "prelu":
            return self.prelu(x)
        if self.name == "elu":
            return jax.nn.elu(x)
        if self.name == "selu":
            return jax.nn.selu(x)
        if self.name == "tanh":
            return jnp.tanh(x)
        return jax.nn.sigmoid(x)


def _pool(x: jax.Array, pool_type: str, window: int, stride: int, padding: Any) -> jax.Array:
    """Max or average pooling over H, W of an NHWC batch (padding excluded from averages)."""
    if pool_type == "max":
        return nnx.max_pool(x, (window, window), (stride, stride), padding)
    return nnx.avg_pool(x, (window, window), (stride, stride), padding, count_include_pad=False)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(tuple(input_shape)) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)  # type: ignore[return-value]


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


# --------------------------------------------------------------------------- the layer


class PerturbLayer(nnx.Module):
    """A perturbation layer (``filter_size=0``) or a regular n x n conv layer (``filter_size=n``).

    Args:
      in_channels, out_channels: channels of the input and output feature maps.
      input_size: (H, W) of the input feature map; the masks have this spatial shape.
      filter_size: 0 = noise masks + 1x1 conv; n > 0 = n x n conv (padding n // 2; bias only
        for n = 1, as in the seed's code), followed by BN and the activation.
      nmasks: masks per input channel (fan-out). The 1x1 conv then sees
        in_channels * nmasks maps.
      noise_level: masks are U(-level, level) (``uniform``) or level * N(0, 1) (``normal``).
      noise_type: ``"uniform"`` or ``"normal"``.
      unique_masks: a different set of ``nmasks`` masks for every input channel (True) or
        one set shared by all channels (False).
      train_masks: masks are ``nnx.Param`` and trained (True) or fixed ``NoiseMask`` (False).
      mix_maps: a second 1x1 conv (+ BN + activation) after the first, so that the maps of
        different input channels mix even when the first conv is grouped.
      use_act: apply the activation to the perturbed input before the 1x1 conv.
      activation: one of :data:`ACTIVATIONS`.
      stride: stride of a regular conv; a perturbation layer must have stride 1 (the models
        downsample with pooling, as the seed does).
      grouped: group the first 1x1 conv per input channel. None = grouped when nmasks > 1
        (the seed's rule); needs out_channels divisible by in_channels.
      use_batch_norm: BN after each conv (default True, as in the seed).
      rngs: draws the masks and the initial weights (``rngs.params``) and, for rrelu, slopes.

    Shapes: x (B, H, W, in_channels) -> (B, H', W', out_channels); H' = H for a
    perturbation layer.
    """

    def __init__(self, in_channels: int, out_channels: int, *, input_size: tuple[int, int],
                 filter_size: int = 0, nmasks: int = 1, noise_level: float = 0.1,
                 noise_type: NoiseType = "uniform", unique_masks: bool = True,
                 train_masks: bool = False, mix_maps: bool = False, use_act: bool = False,
                 activation: str = "relu", stride: int = 1, grouped: Optional[bool] = None,
                 use_batch_norm: bool = True, rngs: nnx.Rngs):
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
        if filter_size < 0:
            raise ValueError(f"filter_size must be 0 (perturbation layer) or a kernel size n > 0, got {filter_size}")
        if nmasks < 1:
            raise ValueError(f"nmasks must be >= 1, got {nmasks}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        _check_choice("noise_type", noise_type, ("uniform", "normal"))
        _check_choice("activation", activation, ACTIVATIONS)
        h, w = (int(input_size[0]), int(input_size[1]))
        self.filter_size = int(filter_size)
        self.use_act = use_act
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_size = (h, w)
        self.nmasks = nmasks
        self.unique_masks = unique_masks
        self.train_masks = train_masks
        bn = (lambda n: nnx.BatchNorm(n, momentum=0.9, rngs=rngs)) if use_batch_norm else (lambda n: None)

        if self.filter_size > 0:
            pad = self.filter_size // 2
            self.conv = conv_layer(in_channels, out_channels, (self.filter_size, self.filter_size),
                                   strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                                   use_bias=self.filter_size == 1, rngs=rngs)
            self.output_size = (_conv_out(h, self.filter_size, stride, pad),
                                _conv_out(w, self.filter_size, stride, pad))
            self.noise = None
            self.mix = None
            self.mix_bn = None
            self.mix_act = None
        else:
            if stride != 1:
                raise ValueError("a perturbation layer (filter_size=0) has stride 1; downsample with pooling "
                                 "or use filter_size > 0 for a strided conv")
            grouped = nmasks > 1 if grouped is None else grouped
            if grouped and out_channels % in_channels != 0:
                raise ValueError(f"a grouped 1x1 conv needs out_channels ({out_channels}) divisible by "
                                 f"in_channels ({in_channels}); change nfilters or pass grouped=False")
            noise_channels = in_channels if unique_masks else 1
            shape = (h, w, noise_channels, nmasks)
            key = rngs.params()
            if noise_type == "uniform":
                masks = jax.random.uniform(key, shape, jnp.float32, -noise_level, noise_level)
            else:
                masks = noise_level * jax.random.normal(key, shape, jnp.float32)
            self.noise = nnx.Param(masks) if train_masks else NoiseMask(masks)
            # Channel order c * nmasks + m keeps the maps of one input channel contiguous,
            # which is what feature_group_count=in_channels expects.
            self.conv = conv_layer(in_channels * nmasks, out_channels, (1, 1),
                                   feature_group_count=in_channels if grouped else 1, use_bias=True, rngs=rngs)
            self.output_size = (h, w)
            if mix_maps:
                self.mix = conv_layer(out_channels, out_channels, (1, 1), use_bias=True, rngs=rngs)
                self.mix_bn = bn(out_channels)
                self.mix_act = Activation(activation, rngs=rngs)
            else:
                self.mix = None
                self.mix_bn = None
                self.mix_act = None
        self.pre_act = Activation(activation, rngs=rngs) if (self.filter_size == 0 and use_act) else None
        self.bn = bn(out_channels)
        self.act = Activation(activation, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.filter_size == 0:
            b, h, w, c = x.shape
            if (h, w) != self.input_size or c != self.in_channels:
                raise ValueError(f"PerturbLayer built for inputs (B, {self.input_size[0]}, {self.input_size[1]}, "
                                 f"{self.in_channels}) got {x.shape}; masks have the input's spatial shape, "
                                 "so build the model with the input_shape you feed it")
            # (B, H, W, C, 1) + (H, W, C or 1, nmasks) -> (B, H, W, C, nmasks): every channel
            # perturbed by each of its masks, all in one broadcast add.
            y = x[..., None] + self.noise[...]
            if self.pre_act is not None:
                y = self.pre_act(y)
            x = y.reshape(b, h, w, c * self.nmasks)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = self.act(x)
        if self.mix is not None:
            x = self.mix(x)
            if self.mix_bn is not None:
                x = self.mix_bn(x)
            x = self.mix_act(x)
        return x


def _first_layer_masks(first_filter_size: int, nmasks: int, nfilters: int) -> tuple[int, Optional[bool]]:
    """The seed's first-layer rule: with nmasks=1 a perturbed RGB/gray input would give the
    1x1 conv only C distinct maps, so the first perturbation layer uses one mask per output
    filter (nmasks = nfilters) with an ungrouped 1x1 conv."""
    if first_filter_size == 0 and nmasks == 1:
        return nfilters, False
    return nmasks, None


# --------------------------------------------------------------------------- LeNet / CifarNet


class _PerturbConvNet(nnx.Module):
    """Shared body of :class:`PerturbLeNet` and :class:`PerturbCifarNet`: stages of perturb
    layers each followed by a 3x3 / stride 2 pooling, then dropout -> linear -> BN -> act ->
    dropout -> linear (the seed's classifier)."""

    # (stages, perturb layers per stage, default nfilters, default hidden units): per subclass
    LAYOUT: tuple[int, int, int, int]

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 nfilters: Optional[int] = None, nmasks: int = 1, noise_level: float = 0.1,
                 noise_type: NoiseType = "uniform", filter_size: int = 0, first_filter_size: int = 0,
                 unique_masks: bool = True, train_masks: bool = False, mix_maps: bool = False,
                 use_act: bool = False, activation: str = "relu", pool_type: PoolType = "max",
                 linear: Optional[int] = None, dropout: float = 0.5, scale_noise: float = 1.0):
        stages, layers_per_stage, default_nfilters, default_linear = self.LAYOUT
        nfilters = default_nfilters if nfilters is None else nfilters
        linear = default_linear if linear is None else linear
        h, w, c = _check_input_shape(input_shape)
        _check_choice("pool_type", pool_type, ("max", "avg"))
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.pool_type = pool_type
        common = dict(noise_type=noise_type, unique_masks=unique_masks, train_masks=train_masks,
                      mix_maps=mix_maps, activation=activation, rngs=rngs)
        first_nmasks, first_grouped = _first_layer_masks(first_filter_size, nmasks, nfilters)
        layers = []
        size = (h, w)
        in_ch = c
        for s in range(stages):
            for j in range(layers_per_stage):
                first = s == 0 and j == 0
                layer = PerturbLayer(
                    in_ch, nfilters, input_size=size,
                    filter_size=first_filter_size if first else filter_size,
                    nmasks=first_nmasks if first else nmasks,
                    grouped=first_grouped if first else None,
                    noise_level=noise_level * (scale_noise if first else 1.0),
                    # the seed applies the activation to the perturbed input in every layer
                    # but the first, where --use_act decides (it loses information on RGB)
                    use_act=use_act if first else True, **common)
                layers.append(layer)
                size = layer.output_size
                in_ch = nfilters
            size = (_conv_out(size[0], 3, 2, 1), _conv_out(size[1], 3, 2, 1))
        self.layers = nnx.List(layers)
        self.layers_per_stage = layers_per_stage
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.linear1 = nnx.Linear(nfilters * size[0] * size[1], linear, rngs=rngs)
        self.bn = nnx.BatchNorm(linear, momentum=0.9, rngs=rngs)
        self.act = Activation(activation, rngs=rngs)
        self.linear2 = nnx.Linear(linear, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        features: dict[str, jax.Array] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if (i + 1) % self.layers_per_stage == 0:
                x = _pool(x, self.pool_type, 3, 2, ((1, 1), (1, 1)))
                features[f"stage{(i + 1) // self.layers_per_stage}"] = x
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(x)
        x = self.act(self.bn(self.linear1(x)))
        features["embedding"] = x
        logits = self.linear2(self.dropout(x))
        return (logits, features) if return_features else logits


_PNN_DOC_OPTIONS = """
    Options (keyword arguments; defaults in the signature, nfilters and linear in LAYOUT):
      nfilters: channels of every conv layer. nmasks: masks per input channel (fan-out).
      noise_level, noise_type ("uniform" | "normal"), scale_noise (multiplies the first
      layer's noise level). filter_size / first_filter_size: 0 = perturbation layer,
      n > 0 = n x n conv. unique_masks, train_masks, mix_maps, use_act (activation on the
      perturbed input of the first layer), activation (one of ACTIVATIONS),
      pool_type ("max" | "avg"), dropout (rate before each linear layer).
"""


class PerturbLeNet(_PerturbConvNet):
    """The seed's ``lenet``: 3 perturb layers, each followed by 3x3/2 pooling, then a 128-unit
    hidden layer and the classifier. Features: stage1..3 (B, h, w, nfilters) and
    embedding (B, linear)."""

    __doc__ += _PNN_DOC_OPTIONS

    LAYOUT = (3, 1, 64, 128)


class PerturbCifarNet(_PerturbConvNet):
    """The seed's ``cifarnet``: 6 perturb layers in 3 stages of 2 (3x3/2 pooling after each
    stage), then a 256-unit hidden layer and the classifier. Features: stage1..3 and
    embedding (B, linear)."""

    __doc__ += _PNN_DOC_OPTIONS

    LAYOUT = (3, 2, 128, 256)


# --------------------------------------------------------------------------- ResNet-18s


class _PerturbBasicBlock(nnx.Module):
    """perturb layer -> pool(stride) -> perturb layer, + shortcut, relu (the seed's block)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, size: tuple[int, int], *,
                 layer_kwargs: dict, pool_type: str, rngs: nnx.Rngs):
        self.a = PerturbLayer(in_ch, out_ch, input_size=size, rngs=rngs, **layer_kwargs)
        self.stride = stride
        self.pool_type = pool_type
        # 'SAME' pooling = ceil(size / stride), the size a strided 1x1 shortcut conv gives.
        mid = (-(-self.a.output_size[0] // stride), -(-self.a.output_size[1] // stride))
        self.b = PerturbLayer(out_ch, out_ch, input_size=mid, rngs=rngs, **layer_kwargs)
        if stride != 1 or in_ch != out_ch:
            self.short_conv = conv_layer(in_ch, out_ch, (1, 1), strides=(stride, stride), use_bias=False, rngs=rngs)
            self.short_bn = nnx.BatchNorm(out_ch, momentum=0.9, rngs=rngs)
        else:
            self.short_conv = None
            self.short_bn = None
        self.output_size = self.b.output_size

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.a(x)
        if self.stride > 1:
            y = _pool(y, self.pool_type, self.stride, self.stride, "SAME")
        y = self.b(y)
        residual = x if self.short_conv is None else self.short_bn(self.short_conv(x))
        return jax.nn.relu(y + residual)


class PerturbResNet18(nnx.Module):
    """The seed's ``perturb_resnet18``: a first layer (``first_filter_size``; 7 = 7x7/2 conv +
    3x3/2 max pool as in ImageNet ResNets), four stages of two perturb basic blocks with
    nfilters x (1, 2, 4, 8) channels (strides 1, 2, 2, 2; downsampling by pooling), global
    average pooling and a linear classifier. With ``filter_size=3`` and
    ``first_filter_size=3`` it is a plain ResNet-18-like network; with ``filter_size=1`` a
    1x1-conv ResNet without noise (the seed's control).

    Features: stem, layer1..layer4 (B, h, w, c) and embedding (B, 8 * nfilters).
    """

    __doc__ += _PNN_DOC_OPTIONS

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                 nfilters: int = 64, nmasks: int = 1, noise_level: float = 0.1,
                 noise_type: NoiseType = "uniform", filter_size: int = 0, first_filter_size: int = 3,
                 unique_masks: bool = True, train_masks: bool = False, mix_maps: bool = False,
                 use_act: bool = False, activation: str = "relu", pool_type: PoolType = "max",
                 scale_noise: float = 1.0):
        h, w, c = _check_input_shape(input_shape)
        _check_choice("pool_type", pool_type, ("max", "avg"))
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        first_nmasks, first_grouped = _first_layer_masks(first_filter_size, nmasks, nfilters)
        self.stem = PerturbLayer(c, nfilters, input_size=(h, w), filter_size=first_filter_size,
                                 nmasks=first_nmasks, grouped=first_grouped,
                                 noise_level=noise_level * scale_noise, noise_type=noise_type,
                                 unique_masks=unique_masks, train_masks=train_masks, mix_maps=mix_maps,
                                 use_act=use_act, activation=activation,
                                 stride=2 if first_filter_size == 7 else 1, rngs=rngs)
        size = self.stem.output_size
        self.stem_pool = first_filter_size == 7
        if self.stem_pool:
            size = (_conv_out(size[0], 3, 2, 1), _conv_out(size[1], 3, 2, 1))
        layer_kwargs = dict(filter_size=filter_size, nmasks=nmasks, noise_level=noise_level,
                            noise_type=noise_type, unique_masks=unique_masks, train_masks=train_masks,
                            mix_maps=mix_maps, use_act=True, activation=activation)
        stages = []
        in_ch = nfilters
        for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
            blocks = []
            for s in (stride, 1):
                blk = _PerturbBasicBlock(in_ch, nfilters * mult, s, size, layer_kwargs=layer_kwargs,
                                         pool_type=pool_type, rngs=rngs)
                blocks.append(blk)
                size = blk.output_size
                in_ch = nfilters * mult
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.linear = nnx.Linear(8 * nfilters, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        x = self.stem(x)
        if self.stem_pool:
            x = nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        features = {"stem": x}
        for i, stage in enumerate(self.stages):
            for blk in stage:
                x = blk(x)
            features[f"layer{i + 1}"] = x
        x = jnp.mean(x, axis=(1, 2))
        features["embedding"] = x
        logits = self.linear(x)
        return (logits, features) if return_features else logits


# --------------------------------------------------------------------------- parameter matching


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param``) of a model, concrete or abstract
    (``nnx.eval_shape``). Fixed noise masks are state, not parameters, and are not counted;
    with ``train_masks=True`` they are parameters and are counted."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(math.prod(leaf.shape) for leaf in leaves))


def _baseline_params(width: int, input_shape: tuple[int, int, int], num_classes: int) -> int:
    # eval_shape: count without allocating (a wide ResNet-18 has millions of weights).
    model = nnx.eval_shape(lambda: ResNet18(input_shape=input_shape, num_classes=num_classes,
                                            rngs=nnx.Rngs(0), width=width))
    return count_params(model)


def matched_width(target_params: int, *, input_shape: tuple[int, int, int], num_classes: int,
                  max_width: int = 4096) -> int:
    """The width of the project's :class:`~robust_vision.models.resnet.ResNet18` whose parameter count is closest to
    ``target_params``.

    The count is a quadratic a w^2 + b w + c in the width w (convolutions ~ w^2; the stem,
    BatchNorm and classifier ~ w), so three exact counts give the coefficients, the positive
    root gives the width, and the integers around it are compared with exact counts.
    """
    if target_params < 1:
        raise ValueError(f"target_params must be positive, got {target_params}")
    count = lambda w: _baseline_params(w, input_shape, num_classes)
    p1, p2, p3 = count(1), count(2), count(3)
    a = (p3 - 2 * p2 + p1) / 2.0
    b = p2 - p1 - 3 * a
    c = p1 - a - b
    root = (-b + math.sqrt(max(b * b - 4 * a * (c - target_params), 0.0))) / (2 * a)
    if root > max_width:
        raise ValueError(f"matching {target_params} parameters needs nfilters ~ {root:.0f} > max_width={max_width}")
    candidates = sorted({max(1, math.floor(root)), max(1, math.ceil(root))})
    return min(candidates, key=lambda w: abs(count(w) - target_params))


# --------------------------------------------------------------------------- constructors


def lenet(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs, **options: Any) -> PerturbLeNet:
    """Build :class:`PerturbLeNet` (options and defaults: see its signature)."""
    return PerturbLeNet(input_shape=input_shape, num_classes=num_classes, rngs=rngs, **options)


def cifarnet(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
             **options: Any) -> PerturbCifarNet:
    """Build :class:`PerturbCifarNet` (options and defaults: see its signature)."""
    return PerturbCifarNet(input_shape=input_shape, num_classes=num_classes, rngs=rngs, **options)


def perturb_resnet18(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                     **options: Any) -> PerturbResNet18:
    """Build :class:`PerturbResNet18` (options and defaults: see its signature)."""
    return PerturbResNet18(input_shape=input_shape, num_classes=num_classes, rngs=rngs, **options)


def resnet18_matched(*, input_shape: tuple[int, int, int], num_classes: int, rngs: nnx.Rngs,
                     nfilters: Optional[int] = None, match: Optional[dict[str, Any]] = None,
                     dropout_rate: float = 0.0) -> ResNet18:
    """The seed's parameter-matched baseline: the project's 3x3-conv CIFAR ResNet-18
    (:class:`~robust_vision.models.resnet.ResNet18`, the seed's ``resnet18``) with its width
    chosen so that its parameter count matches ``perturb_resnet18(**match)`` on the same
    input shape and number of classes.

    Args:
      nfilters: use this width directly (skips matching).
      match: options of the :class:`PerturbResNet18` to match (default: its defaults).
      dropout_rate: dropout before the classifier (ResNet18's option; default 0).
    """
    if nfilters is None:
        target_model = nnx.eval_shape(lambda: PerturbResNet18(input_shape=input_shape, num_classes=num_classes,
                                                             rngs=nnx.Rngs(0), **(match or {})))
        nfilters = matched_width(count_params(target_model), input_shape=input_shape, num_classes=num_classes)
    elif match is not None:
        raise ValueError("pass either nfilters (a fixed width) or match (PNN options to match), not both")
    return ResNet18(input_shape=input_shape, num_classes=num_classes, rngs=rngs, width=nfilters,
                    dropout_rate=dropout_rate)


PERTURB_MODELS: dict[str, Callable[..., nnx.Module]] = {
    "lenet": lenet,
    "cifarnet": cifarnet,
    "perturb_resnet18": perturb_resnet18,
    "resnet18_matched": resnet18_matched,
}
