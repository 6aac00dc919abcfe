"""models/conv.py: the convolution whose CPU input gradient uses a canonical-layout kernel gives
the same values as ``lax.conv_general_dilated`` and its gradients, bit for bit on XLA:CPU (the
same convolutions on the same operands, only the kernel's layout differs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.models.conv import conv_general_dilated, conv_layer, input_grad_padding

from conftest import DEFAULT_OPT_LEVEL

DN = ("NHWC", "HWIO", "NHWC")
# Bit-for-bit claims are about the programs users run: XLA's default optimisation level, not the
# test session's fast-compile level (tests/conftest.py).
jit = functools.partial(jax.jit, compiler_options=DEFAULT_OPT_LEVEL)


CASES = [  # (input H, W, kernel, strides, padding, groups)
    ((8, 8), 3, (1, 1), "SAME", 1),
    ((9, 7), 3, (2, 2), "SAME", 1),
    ((8, 8), 3, (2, 2), "SAME", 1),
    ((9, 8), 3, (2, 2), "VALID", 1),
    ((8, 8), 3, (2, 1), ((1, 1), (1, 1)), 1),  # PyTorch padding=1 (robustbench)
    ((7, 7), 3, (2, 2), ((1, 1), (1, 1)), 1),
    ((8, 9), 3, (1, 1), ((0, 2), (2, 1)), 1),
    ((8, 8), 1, (2, 2), "VALID", 1),  # strided 1x1 shortcut
    ((9, 9), 1, (2, 2), "SAME", 1),
    ((6, 6), 1, (1, 1), "SAME", 4),  # grouped 1x1 (perturb layers)
    ((7, 6), 3, (2, 2), "SAME", 2),
]


def _operands():
    # numpy draws: an eager jax.random call per new shape would compile one program each
    cin, cout = 4, 8
    rng = np.random.default_rng(0)
    return [(jnp.asarray(rng.normal(size=(2, *size, cin)), jnp.float32),
             jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)), jnp.float32))
            for size, k, _s, _p, groups in CASES]


def _all_grads(conv, operands, loop: bool):
    """Input and kernel gradients of a nonlinear function of every case's conv, in one jitted
    program (one compile for all cases); with ``loop`` all taken inside the body of a rolled
    fori_loop (traced trip count 1), as attacks do."""
    def grads(operands):
        out = []
        for (x, w), (_size, _k, strides, padding, groups) in zip(operands, CASES):
            def loss(x, w):
                return jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=DN,
                                            feature_group_count=groups)))
            out.append(jax.grad(loss, argnums=(0, 1))(x, w))
        return out

    if not loop:
        return jit(grads)(operands)

    @jit
    def looped(operands, n):
        # x + 0 * carry: exactly x, but loop-dependent, so XLA cannot hoist it out of the body
        return lax.fori_loop(0, n, lambda i, c: grads(jax.tree.map(lambda a, b: a + 0.0 * b, operands, c)),
                             jax.tree.map(jnp.zeros_like, operands))
    return looped(operands, jnp.int32(1))


def test_gradients_bit_identical_to_lax():
    """Strides 1 / 2, SAME / VALID / explicit padding, odd / even sizes, 1x1 / 3x3 kernels,
    feature groups: forward and gradients bit for bit equal to JAX's gradients of the plain conv
    in straight-line code, ours also inside a loop body. JAX's own backward inside a loop body
    is the slow generic emitter, whose summation order differs: equal to rounding only."""
    operands = _operands()

    def forwards(conv):
        return jit(lambda ops: [conv(x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups)
                                    for (x, w), (_size, _k, strides, padding, groups) in zip(ops, CASES)])(operands)
    for case, a, b in zip(CASES, forwards(conv_general_dilated), forwards(lax.conv_general_dilated)):
        np.testing.assert_array_equal(a, b, err_msg=f"forward, case {case}")
    ref = _all_grads(lax.conv_general_dilated, operands, loop=False)
    for name, got in [("jit", _all_grads(conv_general_dilated, operands, loop=False)),
                      ("fori_loop", _all_grads(conv_general_dilated, operands, loop=True))]:
        for case, pair, ref_pair in zip(CASES, got, ref):
            for what, a, b in zip(("input", "kernel"), pair, ref_pair):
                assert a.shape == b.shape
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {what} gradient, case {case}")
    for case, pair, ref_pair in zip(CASES, _all_grads(lax.conv_general_dilated, operands, loop=True), ref):
        for a, b in zip(pair, ref_pair):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"lax in a loop, case {case}")


def test_kernel_dilation_and_other_layout():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 9, 10)), jnp.float32)  # NCHW
    w = jnp.asarray(rng.normal(size=(5, 3, 3, 3)), jnp.float32)  # OIHW
    kw = dict(window_strides=(2, 1), padding="SAME", rhs_dilation=(2, 1), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def grads(conv):
        return jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, **kw))), argnums=(0, 1)))(x, w)
    for a, b in zip(grads(conv_general_dilated), grads(lax.conv_general_dilated)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n, k, s, lo, hi", [(8, 3, 2, 0, 1), (9, 3, 2, 1, 1), (8, 3, 2, 1, 1), (9, 3, 2, 0, 0),
                                             (8, 1, 2, 0, 0), (7, 3, 1, 1, 1), (10, 3, 3, 1, 0)])
def test_input_grad_padding_closed_form(n, k, s, lo, hi):
    out = (n + lo + hi - k) // s + 1
    expected = (k - 1 - lo, k - 1 - hi + (n + lo + hi - k) % s)
    assert input_grad_padding([n], [k], [s], [(lo, hi)], [out]) == [expected]
    # and that padding maps the stride-dilated cotangent back onto exactly n input positions
    assert (out - 1) * s + 1 + sum(expected) - k + 1 == n


def test_cpu_loop_body_conv_uses_canonical_kernel_layout():
    """The reason for the module: inside a while body the input-gradient conv has the forward
    kernel layout (HWIO, ``_01io``), not JAX's transposed ``_01oi``."""
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 4))

    def hlo(conv):
        def loss(z):
            return jnp.sum(conv(z, w, (2, 2), "SAME", dimension_numbers=DN) ** 2)
        f = jax.jit(lambda x, n: lax.fori_loop(0, n, lambda i, z: z + jax.grad(loss)(z), x))
        return f.lower(x, jnp.int32(3)).compile().as_text()

    if jax.default_backend() != "cpu":
        pytest.skip("the canonical-layout backward is used on CPU only")
    assert "_01oi" in hlo(lax.conv_general_dilated)  # what the module works around
    assert "_01oi" not in hlo(conv_general_dilated)


def _set_conv(model: nnx.Module, fn) -> None:
    for _path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = fn


def test_model_input_gradient_equals_plain_conv_model():
    """ResNet-18 (3x3 and 1x1 convs, strides 1 and 2, an odd input size) against the same
    model with plain ``lax`` convolutions: the input gradient bit for bit."""
    shape = (9, 8, 3)
    # The structure from eval_shape, values from numpy: initialising (eagerly or jitted) compiles
    # random-number programs that take longer than the test itself. Batch-norm variances > 0.
    model = nnx.eval_shape(lambda: create_model(ModelConfig(name="resnet18", width=2), input_shape=shape,
                                                num_classes=5, seed=0))
    rng = np.random.default_rng(0)
    graphdef, state = nnx.split(model)

    def value(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # dropout's key (unused in eval mode)
            return jax.random.key(0)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if "var" in jax.tree_util.keystr(path):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.5 * rng.normal(size=leaf.shape), leaf.dtype)
    state = jax.tree_util.tree_map_with_path(value, state)
    model = nnx.merge(graphdef, state)
    x = jnp.asarray(rng.uniform(size=(3, *shape)), jnp.float32)
    graphdef, state = nnx.split(model)

    def input_grad(graphdef, state, x):
        m = nnx.merge(graphdef, state)
        return jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(m(z))[:, 0]))(x)

    ours = jit(input_grad, static_argnums=0)(graphdef, state, x)
    _set_conv(model, lax.conv_general_dilated)
    plain_graphdef, plain_state = nnx.split(model)
    ref = jit(input_grad, static_argnums=0)(plain_graphdef, plain_state, x)
    assert np.all(np.isfinite(ours)) and np.any(ours != 0)
    np.testing.assert_array_equal(ours, ref)


def test_conv_layer_has_nnx_conv_parameters():
    a = conv_layer(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    b = nnx.Conv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    sa, sb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_array_equal(u, v)
