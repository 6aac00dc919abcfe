"""Perturbative networks: the layer's algebra, fixed vs trained masks, model shapes and the
parameter-matched baseline.

Model construction is eager in NNX and compiles every initializer shape, which is slow on a
shared CPU; whole models are therefore checked abstractly (``nnx.eval_shape`` +
``jax.eval_shape``: exact shapes and parameter counts, no arrays), and the numerical
checks use single layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from robust_vision.models.perturb import (
    PERTURB_MODELS,
    NoiseMask,
    PerturbLayer,
    count_params,
    matched_width,
    perturb_resnet18,
    resnet18_matched,
)


def _abstract_forward(name: str, input_shape, **options):
    model = nnx.eval_shape(lambda: PERTURB_MODELS[name](input_shape=input_shape, num_classes=10,
                                                        rngs=nnx.Rngs(0), **options))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    logits, feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, return_features=True), state, x)
    return model, logits, feats


def _identity_layer(use_batch_norm: bool) -> PerturbLayer:
    layer = PerturbLayer(4, 4, input_size=(5, 5), filter_size=0, nmasks=1, noise_level=0.0,
                         use_batch_norm=use_batch_norm, rngs=nnx.Rngs(0))
    layer.conv.kernel[...] = jnp.eye(4).reshape(1, 1, 4, 4)
    layer.conv.bias[...] = jnp.zeros(4)
    return layer


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_zero_noise_identity_conv_returns_input(use_batch_norm):
    layer = _identity_layer(use_batch_norm)
    layer.eval()  # BN with its initial running stats (mean 0, var 1) is x / sqrt(1 + eps)
    x = jax.random.uniform(jax.random.key(1), (3, 5, 5, 4))
    y = layer(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-4 if use_batch_norm else 1e-6)


def test_masks_are_added_to_every_channel():
    layer = PerturbLayer(2, 2, input_size=(3, 3), filter_size=0, nmasks=1, noise_level=0.5,
                         unique_masks=True, use_batch_norm=False, activation="tanh", rngs=nnx.Rngs(3))
    assert isinstance(layer.noise, NoiseMask) and layer.noise.shape == (3, 3, 2, 1)
    masks = np.asarray(layer.noise[...])
    assert np.abs(masks).max() <= 0.5 and np.abs(masks).max() > 0.1  # U(-0.5, 0.5)
    layer.conv.kernel[...] = jnp.eye(2).reshape(1, 1, 2, 2)
    layer.conv.bias[...] = jnp.zeros(2)
    x = jnp.full((1, 3, 3, 2), 0.25)
    np.testing.assert_allclose(np.asarray(layer(x))[0], np.tanh(0.25 + masks[..., 0]), atol=1e-6)


def test_masks_fixed_unless_train_masks():
    x = jax.random.uniform(jax.random.key(0), (4, 6, 6, 2))

    def after_one_step(train_masks: bool):
        layer = PerturbLayer(2, 4, input_size=(6, 6), filter_size=0, nmasks=2, noise_level=0.2,
                             train_masks=train_masks, rngs=nnx.Rngs(1))
        before = np.asarray(layer.noise[...]).copy()
        kernel_before = np.asarray(layer.conv.kernel[...]).copy()
        opt = nnx.Optimizer(layer, optax.sgd(0.5), wrt=nnx.Param)

        @nnx.jit
        def step(layer, opt, x):
            grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2 + m(x)))(layer)
            opt.update(layer, grads)

        step(layer, opt, x)
        return before, np.asarray(layer.noise[...]), kernel_before, np.asarray(layer.conv.kernel[...]), layer

    before, after, kb, ka, layer = after_one_step(False)
    assert not isinstance(layer.noise, nnx.Param)
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(kb, ka)  # the step did update the weights
    assert "noise" in nnx.state(layer, NoiseMask)  # saved with the model state

    before, after, _, _, layer = after_one_step(True)
    assert isinstance(layer.noise, nnx.Param)
    assert np.abs(after - before).max() > 1e-6


def test_masks_deterministic_given_rngs_and_shared_when_not_unique():
    make = lambda seed, unique: PerturbLayer(3, 6, input_size=(4, 4), nmasks=2, unique_masks=unique,
                                             noise_type="normal", rngs=nnx.Rngs(seed))
    a, b, c = make(0, True), make(0, True), make(1, True)
    np.testing.assert_array_equal(np.asarray(a.noise[...]), np.asarray(b.noise[...]))
    assert not np.allclose(np.asarray(a.noise[...]), np.asarray(c.noise[...]))
    assert make(0, False).noise.shape == (4, 4, 1, 2)


def test_regular_conv_layer_and_errors():
    conv = PerturbLayer(3, 8, input_size=(8, 8), filter_size=3, rngs=nnx.Rngs(0))
    assert conv.noise is None and conv.conv.kernel.shape == (3, 3, 3, 8)
    assert conv(jnp.zeros((1, 8, 8, 3))).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        PerturbLayer(3, 8, input_size=(4, 4), nmasks=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation"):
        PerturbLayer(3, 3, input_size=(4, 4), activation="gelu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_shape"):
        _identity_layer(False)(jnp.zeros((1, 6, 6, 4)))


def test_rrelu_random_in_train_leaky_in_eval():
    layer = PerturbLayer(2, 2, input_size=(3, 3), filter_size=1, activation="rrelu",
                         use_batch_norm=False, rngs=nnx.Rngs(0))
    layer.conv.kernel[...] = -jnp.eye(2).reshape(1, 1, 2, 2)
    layer.conv.bias[...] = jnp.zeros(2)
    x = jnp.ones((1, 3, 3, 2))
    layer.eval()
    np.testing.assert_allclose(np.asarray(layer(x)), -0.5 * (1 / 8 + 1 / 3), rtol=1e-6)
    layer.train()
    y = -np.asarray(layer(x))
    assert y.min() >= 1 / 8 - 1e-6 and y.max() <= 1 / 3 + 1e-6 and y.std() > 0


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (28, 28, 1)])
@pytest.mark.parametrize("name,options", [
    ("lenet", dict(nfilters=6)),
    ("cifarnet", dict(nfilters=6, nmasks=2, mix_maps=True, pool_type="avg", activation="prelu")),
    ("perturb_resnet18", dict(nfilters=6, nmasks=2, unique_masks=False)),
    ("perturb_resnet18", dict(nfilters=4, first_filter_size=7, filter_size=1, activation="rrelu")),
    ("resnet18_matched", dict(nfilters=4)),
])
def test_model_output_shapes(name, options, input_shape):
    _, logits, feats = _abstract_forward(name, input_shape, **options)
    assert logits.shape == (2, 10)
    # (jax transforms return dicts in sorted key order; insertion order is checked eagerly below)
    assert "embedding" in feats and feats["embedding"].ndim == 2
    assert all(v.shape[0] == 2 for v in feats.values())


def test_features_are_insertion_ordered_stages_then_embedding():
    order = []

    def forward(state, x):
        _, feats = nnx.merge(graphdef, state)(x, return_features=True)
        order.extend(feats)  # recorded while tracing, before jax sorts the dict keys
        return feats

    for name, expected in [("lenet", ["stage1", "stage2", "stage3", "embedding"]),
                           ("perturb_resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "embedding"])]:
        model = nnx.eval_shape(lambda: PERTURB_MODELS[name](input_shape=(16, 16, 3), num_classes=4,
                                                            rngs=nnx.Rngs(0), nfilters=3))
        graphdef, state = nnx.split(model)
        order.clear()
        jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
        assert order == expected


def test_matched_baseline_parameter_count_within_10_percent():
    # The seed's PNN configuration (experiment 6): 3x3 first layer, perturbation layers with
    # 64 masks per channel, unique masks, mixing convs; counted abstractly (millions of weights).
    pnn_options = dict(nfilters=128, nmasks=64, first_filter_size=3, filter_size=0, mix_maps=True)
    pnn = nnx.eval_shape(lambda: perturb_resnet18(input_shape=(32, 32, 3), num_classes=10,
                                                  rngs=nnx.Rngs(0), **pnn_options))
    base = nnx.eval_shape(lambda: resnet18_matched(input_shape=(32, 32, 3), num_classes=10,
                                                   rngs=nnx.Rngs(0), match=pnn_options))
    n_pnn, n_base = count_params(pnn), count_params(base)
    assert abs(n_base - n_pnn) / n_pnn < 0.10
    assert base.head.in_features < 8 * 64  # a ResNet-18 narrower than the standard one
    assert base.stem_conv.kernel.shape[:2] == (3, 3)
    # the fixed masks are state, not parameters
    assert count_params(pnn) < sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(pnn)))


def test_count_params_and_width_search():
    base = nnx.eval_shape(lambda: PERTURB_MODELS["resnet18_matched"](input_shape=(32, 32, 3), num_classes=10,
                                                                     rngs=nnx.Rngs(0), nfilters=64))
    assert count_params(base) == 11_173_962  # the standard CIFAR ResNet-18
    assert matched_width(11_173_962, input_shape=(32, 32, 3), num_classes=10) == 64
