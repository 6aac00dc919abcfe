"""models/conv.py: the convolution whose CPU input gradient uses a canonical-layout kernel gives
the same values as ``lax.conv_general_dilated`` and its gradients (the same convolutions on the
same operands, only the kernel's layout differs).

Ours and lax's are two different XLA programs, and XLA may sum a convolution's products in another
order in each (it does on CPUs without AVX-512), so they are compared to float rounding, not bit
for bit: an element that sums K products t_i may differ by at most ``2 K u sum|t_i|`` (the
standard bound gamma_K = K u / (1 - K u) on recursive summation, doubled for the rounding of the
cotangent it multiplies), u = 2**-24 in float32 and 2**-53 in float64. sum|t_i| is the same
convolution (or its gradient) of the absolute operands. A wrong padding, stride or layout moves
an element by the size of a whole product (>= 1e-2 here), far above the bound (< 1e-4)."""

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


def assert_rounding_close(got, ref, abs_sum, terms: int, unit: float = 2.0**-24, err_msg: str = "") -> None:
    """``|got - ref| <= 2 * terms * unit * abs_sum`` elementwise (module docstring): ``abs_sum`` is
    each element's sum of absolute products, ``terms`` how many products it sums at most,
    ``unit`` the unit round-off (2**-24 float32, 2**-53 float64)."""
    got, ref, abs_sum = (np.asarray(v, np.float64) for v in (got, ref, abs_sum))
    assert got.shape == ref.shape == abs_sum.shape, err_msg
    excess = np.abs(got - ref) - 2.0 * terms * unit * abs_sum
    assert np.all(excess <= 0), (f"{err_msg}: {int(np.sum(excess > 0))} elements beyond the rounding bound, "
                                 f"max |diff| {np.max(np.abs(got - ref)):.3g}")


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


def _all_grads(conv, operands, loop: bool, cases=CASES):
    """Input and kernel gradients of a nonlinear function of every case's conv, in one jitted
    program (one compile for all cases); with ``loop`` all taken inside the body of a rolled
    fori_loop (traced trip count 1), as attacks do."""
    def grads(operands):
        out = []
        for (x, w), (_size, _k, strides, padding, groups) in zip(operands, cases):
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


def _abs_sums(operands, cases=CASES):
    """Per case: the sums of absolute products of the forward, input- and kernel-gradient
    elements of ``_all_grads``'s loss (the convolution and its VJPs on |x|, |w|, |cos(y)|)."""
    def sums(operands):
        out = []
        for (x, w), (_size, _k, strides, padding, groups) in zip(operands, cases):
            def conv(a, b):
                return lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=DN,
                                                feature_group_count=groups)
            cotangent = jnp.abs(jnp.cos(conv(x, w)))
            abs_x, abs_w = jnp.abs(x), jnp.abs(w)
            out.append((conv(abs_x, abs_w), jax.vjp(lambda a: conv(a, abs_w), abs_x)[1](cotangent)[0],
                        jax.vjp(lambda b: conv(abs_x, b), abs_w)[1](cotangent)[0]))
        return out
    return jit(sums)(operands)


def _terms(case, x, w):
    """Products summed per element, at most: forward, input gradient, kernel gradient."""
    (_size, k, strides, _padding, groups) = case
    kh, kw, cin_per_group, cout = w.shape
    n, h, wd, _ = x.shape
    return kh * kw * cin_per_group, kh * kw * cout, n * h * wd


def test_gradients_equal_to_lax_to_float_rounding():
    """Strides 1 / 2, SAME / VALID / explicit padding, odd / even sizes, 1x1 / 3x3 kernels,
    feature groups: forward and gradients equal to JAX's gradients of the plain conv in
    straight-line code to float32 rounding of their sums (module docstring), ours also inside a
    loop body, and lax's own backward inside a loop body (the slow generic emitter)."""
    operands = _operands()
    bounds = _abs_sums(operands)

    def forwards(conv):
        return jit(lambda ops: [conv(x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups)
                                    for (x, w), (_size, _k, strides, padding, groups) in zip(ops, CASES)])(operands)
    for case, (x, w), a, b, bound in zip(CASES, operands, forwards(conv_general_dilated),
                                         forwards(lax.conv_general_dilated), bounds):
        assert_rounding_close(a, b, bound[0], _terms(case, x, w)[0], err_msg=f"forward, case {case}")
    ref = _all_grads(lax.conv_general_dilated, operands, loop=False)
    for name, got in [("jit", _all_grads(conv_general_dilated, operands, loop=False)),
                      ("fori_loop", _all_grads(conv_general_dilated, operands, loop=True)),
                      ("lax in a loop", _all_grads(lax.conv_general_dilated, operands, loop=True))]:
        for case, (x, w), pair, ref_pair, bound in zip(CASES, operands, got, ref, bounds):
            for what, a, b, abs_sum, terms in zip(("input", "kernel"), pair, ref_pair, bound[1:],
                                                  _terms(case, x, w)[1:]):
                assert_rounding_close(a, b, abs_sum, terms, err_msg=f"{name} {what} gradient, case {case}")


def test_gradients_equal_to_lax_in_float64():
    """The same comparison in float64 (bound with u = 2**-53, ~1e-13 here): a difference the
    float32 bound could hide shows here."""
    with jax.enable_x64(True):
        operands = [(x.astype(jnp.float64), w.astype(jnp.float64)) for x, w in _operands()[:4]]
        bounds = _abs_sums(operands, CASES[:4])
        got = _all_grads(conv_general_dilated, operands, False, CASES[:4])
        ref = _all_grads(lax.conv_general_dilated, operands, False, CASES[:4])
        for case, (x, w), pair, ref_pair, bound in zip(CASES, operands, got, ref, bounds):
            assert pair[0].dtype == jnp.float64
            for what, a, b, abs_sum, terms in zip(("input", "kernel"), pair, ref_pair, bound[1:],
                                                  _terms(case, x, w)[1:]):
                assert_rounding_close(a, b, abs_sum, terms, unit=2.0**-53, err_msg=f"float64 {what}, case {case}")


def test_kernel_dilation_and_other_layout():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 9, 10)), jnp.float32)  # NCHW
    w = jnp.asarray(rng.normal(size=(5, 3, 3, 3)), jnp.float32)  # OIHW
    kw = dict(window_strides=(2, 1), padding="SAME", rhs_dilation=(2, 1), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def grads(conv):
        return jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, **kw))), argnums=(0, 1)))(x, w)

    def abs_sums(x, w):
        cotangent = jnp.abs(jnp.cos(lax.conv_general_dilated(x, w, **kw)))
        x, w = jnp.abs(x), jnp.abs(w)
        return (jax.vjp(lambda a: lax.conv_general_dilated(a, w, **kw), x)[1](cotangent)[0],
                jax.vjp(lambda b: lax.conv_general_dilated(x, b, **kw), w)[1](cotangent)[0])
    terms = (3 * 3 * 5, 2 * 9 * 10)  # input: kh * kw * out channels; kernel: n * output positions (<= input's)
    for a, b, abs_sum, n in zip(grads(conv_general_dilated), grads(lax.conv_general_dilated), jit(abs_sums)(x, w),
                                terms):
        assert_rounding_close(a, b, abs_sum, n)


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
    model with plain ``lax`` convolutions: the input gradient, in float64 (two programs summing in
    different orders agree to ~1e-15 relative there; a wrong layout or padding is O(1)).
    ``rtol=1e-9`` leaves six orders of magnitude for the rounding through 18 layers."""
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

    with jax.enable_x64(True):
        to64 = functools.partial(jax.tree.map, lambda v: v.astype(jnp.float64) if v.dtype == jnp.float32 else v)
        ours = jit(input_grad, static_argnums=0)(graphdef, to64(state), to64(x))
        _set_conv(model, lax.conv_general_dilated)
        plain_graphdef, plain_state = nnx.split(model)
        ref = jit(input_grad, static_argnums=0)(plain_graphdef, to64(plain_state), to64(x))
    assert ours.dtype == np.float64 and np.all(np.isfinite(ours)) and np.any(ours != 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(ref))))


def test_conv_layer_has_nnx_conv_parameters():
    a = conv_layer(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    b = nnx.Conv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    sa, sb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_array_equal(u, v)
