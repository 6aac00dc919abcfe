"""A convolution whose input gradient runs fast inside rolled loops on XLA:CPU.

``conv_general_dilated`` is a drop-in replacement for ``jax.lax.conv_general_dilated`` (same
signature; ``flax.nnx.Conv(..., conv_general_dilated=conv_general_dilated)``, or ``conv_layer``
below). The forward pass is the same ``lax`` convolution on every platform. Only the backward
pass differs, and only on CPU, where the input gradient is computed by an explicit convolution of
the cotangent with a kernel flipped in space and transposed to the canonical layout, and the
kernel gradient by JAX's own rule. The gradients are the same values as JAX's own (bit for bit on
XLA:CPU, tests/test_conv_vjp.py); on GPU / TPU the backward *is* JAX's own
(``lax.platform_dependent``; lowered for ``cuda`` / ``tpu`` the program holds JAX's reversed-kernel
convolution and no barrier), so those platforms are unaffected.

Why: JAX's input gradient of a convolution is a convolution whose kernel operand is the forward
kernel reversed in space with its I/O roles swapped through the dimension numbers
(``dim_labels=..._01oi``). In straight-line code XLA:CPU inserts a kernel transpose and uses
its fast (Eigen) convolution, but inside a while-loop body (``lax.fori_loop``: every rolled
attack loop) it keeps the ``01oi`` layout and emits a generic, several times slower, loop nest
(benchmarks/attack_cost.py --conv-layout, docs/ATTACKS.md). Making the flipped, I/O-swapped
kernel an explicit array behind ``lax.optimization_barrier`` stops XLA from folding the transpose
back into the dimension numbers, so the backward convolution has the forward layout
(``..._01io``, i.e. HWIO for NHWC) wherever it is.

Written by hand because neither JAX nor Flax offers a convolution with this backward; the
backward follows ``jax._src.lax.convolution._conv_general_dilated_transpose_lhs`` (padding, group
reshapes), which is private API and so restated here.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
from flax import nnx
from jax import lax


class _Config(NamedTuple):
    """The static (hashable) arguments of one convolution, with the padding made explicit."""
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    dimension_numbers: lax.ConvDimensionNumbers
    feature_group_count: int
    precision: Any
    preferred_element_type: Any


def _plain(lhs: jax.Array, rhs: jax.Array, cfg: _Config) -> jax.Array:
    return lax.conv_general_dilated(
        lhs, rhs, cfg.window_strides, cfg.padding, lhs_dilation=cfg.lhs_dilation,
        rhs_dilation=cfg.rhs_dilation, dimension_numbers=cfg.dimension_numbers,
        feature_group_count=cfg.feature_group_count, precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type)


def _dilate(size: int, dilation: int) -> int:
    return 0 if size == 0 else 1 + dilation * (size - 1)


def input_grad_padding(in_size: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int],
                       padding: Sequence[tuple[int, int]], out_size: Sequence[int],
                       lhs_dilation: Optional[Sequence[int]] = None,
                       rhs_dilation: Optional[Sequence[int]] = None) -> list[tuple[int, int]]:
    """Padding of the transposed convolution that maps an output cotangent back to the input.

    Per spatial dim, with no dilation: ``(k - 1 - lo, k - 1 - hi + (in + lo + hi - k) % stride)``
    (the cotangent is dilated by ``stride``; the remainder re-adds the input rows a strided
    convolution never reached). Dilated sizes are used in general, as in JAX's own rule.
    """
    n = len(in_size)
    lhs_dilation = lhs_dilation or (1,) * n
    rhs_dilation = rhs_dilation or (1,) * n
    pads = []
    for i, k, s, (lo, _hi), o, ld, rd in zip(in_size, kernel_size, strides, padding, out_size,
                                             lhs_dilation, rhs_dilation):
        k_d = _dilate(k, rd)
        before = k_d - lo - 1
        after = _dilate(i, ld) + k_d - 1 - _dilate(o, s) - before
        pads.append((int(before), int(after)))
    return pads


def _canonical_back_kernel(rhs: jax.Array, cfg: _Config) -> jax.Array:
    """The kernel of the input-gradient convolution as an array in the canonical layout
    (spatial..., I, O): reversed in space, input and output features swapped, and with groups
    the group axis moved from the output features into the (new) output features, group-major
    (what JAX's transpose rule does with reshapes)."""
    rhs_spec = cfg.dimension_numbers.rhs_spec  # (O axis, I axis, spatial axes...)
    n = len(rhs_spec) - 2
    w = lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # (*S, I/G, O)
    w = lax.rev(w, tuple(range(n)))
    g = cfg.feature_group_count
    *spatial, i_g, o = w.shape
    w = w.reshape(*spatial, i_g, g, o // g)  # O = (group, O/G), group-major like lax
    w = w.transpose(*range(n), n + 2, n + 1, n)  # (*S, O/G, G, I/G)
    return w.reshape(*spatial, o // g, g * i_g)  # (*S, I' = O/G, O' = I)


def _input_grad_canonical(g: jax.Array, rhs: jax.Array, lhs_shape: tuple[int, ...], lhs_dtype: Any,
                          cfg: _Config) -> jax.Array:
    """d(conv)/d(lhs) applied to the cotangent ``g``, with the kernel in the canonical layout."""
    lhs_spec, rhs_spec, out_spec = cfg.dimension_numbers
    n = len(rhs_spec) - 2
    # The barrier keeps XLA from folding the explicit transpose back into the dimension numbers
    # (it would restore the slow ``01oi`` labels inside loop bodies).
    w = lax.optimization_barrier(_canonical_back_kernel(rhs, cfg))
    if w.dtype != g.dtype:
        w = w.astype(g.dtype)
    padding = input_grad_padding(
        [lhs_shape[d] for d in lhs_spec[2:]], [rhs.shape[d] for d in rhs_spec[2:]], cfg.window_strides,
        cfg.padding, [g.shape[d] for d in out_spec[2:]], cfg.lhs_dilation, cfg.rhs_dilation)
    dnums = lax.ConvDimensionNumbers(out_spec, (n + 1, n, *range(n)), lhs_spec)
    out = lax.conv_general_dilated(
        g, w, window_strides=cfg.lhs_dilation, padding=padding, lhs_dilation=cfg.window_strides,
        rhs_dilation=cfg.rhs_dilation, dimension_numbers=dnums,
        feature_group_count=cfg.feature_group_count, precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type)
    return out.astype(lhs_dtype) if out.dtype != lhs_dtype else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs: jax.Array, rhs: jax.Array, cfg: _Config) -> jax.Array:
    return _plain(lhs, rhs, cfg)


def _conv_fwd(lhs, rhs, cfg):
    return _plain(lhs, rhs, cfg), (lhs, rhs)


def _conv_bwd(cfg, res, g):
    lhs, rhs = res
    _, vjp_rhs = jax.vjp(lambda w: _plain(lhs, w, cfg), rhs)  # the kernel gradient: JAX's own
    (d_rhs,) = vjp_rhs(g)

    def jax_input_grad(g, rhs):
        return jax.vjp(lambda x: _plain(x, rhs, cfg), lhs)[1](g)[0]

    def cpu_input_grad(g, rhs):
        return _input_grad_canonical(g, rhs, lhs.shape, lhs.dtype, cfg)

    # Resolved at lowering: the compiled program holds only the branch of its platform.
    d_lhs = lax.platform_dependent(g, rhs, cpu=cpu_input_grad, default=jax_input_grad)
    return d_lhs, d_rhs


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Union[str, Sequence[tuple[int, int]]],
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    """``jax.lax.conv_general_dilated`` (same arguments, same result, same gradient values) whose
    input gradient on CPU is a convolution with an explicit canonical-layout kernel (module
    docstring). Any layout, strides, padding (strings or pairs), dilations and feature groups.

    Falls back to the plain ``lax`` convolution (JAX's own backward) for ``batch_group_count > 1``
    and for an ``out_sharding``: neither is used by the models, and both only change the backward
    we would have to restate.
    """
    if batch_group_count != 1 or out_sharding is not None:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding)
    dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    n = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation) if lhs_dilation is not None else (1,) * n
    rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * n
    if isinstance(padding, str):
        if any(d != 1 for d in lhs_dilation):
            raise ValueError("string padding is not implemented for a transposed convolution "
                             "(lhs_dilation > 1), as in lax.conv_general_dilated; pass (low, high) pairs")
        kernel = [_dilate(rhs.shape[d], r) for d, r in zip(dnums.rhs_spec[2:], rhs_dilation)]
        padding = lax.padtype_to_pads([lhs.shape[d] for d in dnums.lhs_spec[2:]], kernel,
                                      window_strides, padding)
    cfg = _Config(tuple(int(s) for s in window_strides), tuple((int(lo), int(hi)) for lo, hi in padding),
                  lhs_dilation, rhs_dilation, dnums, int(feature_group_count), precision,
                  preferred_element_type)
    return _conv(lhs, rhs, cfg)


def conv_layer(in_features: int, out_features: int, kernel_size: Union[int, Sequence[int]],
               **kwargs: Any) -> nnx.Conv:
    """``nnx.Conv`` with ``conv_general_dilated`` above: the same parameters (names, shapes,
    initialisation), so checkpoints are unchanged; only the CPU backward differs."""
    return nnx.Conv(in_features, out_features, kernel_size, conv_general_dilated=conv_general_dilated, **kwargs)
