"""CROWN (Zhang et al. 2018): linear relaxation of every ReLU and a backward pass of linear
coefficients from a specification to the input.

A lower bound of <A, v_k> (v_k the value of node k, A (B, S, *shape_k): S linear functions per
example) is found by walking the graph backwards: a linear node maps A to ``apply^T A``
(``jax.linear_transpose``: for a convolution a transposed convolution, never a dense matrix)
and adds <A, bias>; a residual add sends A to both inputs; a ReLU with pre-activation bounds
[l, u] is replaced by lines below and above it, lower line for positive and upper line for
negative coefficients. At the input the linear function is minimised over the input set.

Memory per image of one backward pass with S functions: about S x (the largest node) floats at
a time (a few copies while transposing). Intermediate bounds need S = 2 x (neurons of the
layer), so they are computed ``chunk`` neurons at a time (``lax.map``): the peak is
2 x chunk x (largest node) floats per image, e.g. chunk 256 on a 32x32x64 layer: 512 x 65,536
x 4 bytes = 128 MiB per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
from jax import lax

from robust_vision.verify.graph import Graph, Linear, ReLU, bias_dot, transpose
from robust_vision.verify.interval import Box
from robust_vision.verify.spec import InputSet, concretize_lower


@dataclass(frozen=True)
class Relaxation:
    """Lines around ReLU(z) for l <= z <= u: lower_slope * z <= relu(z) <= upper_slope * z +
    upper_intercept. Arrays broadcast against (B, S, *shape): (B, 1, *shape), or (B, S, *shape)
    for per-specification slopes (alpha-CROWN). ``unstable``: l < 0 < u (the only neurons
    whose lower slope is free in [0, 1])."""

    lower_slope: jax.Array
    upper_slope: jax.Array
    upper_intercept: jax.Array
    unstable: jax.Array


def relu_relaxation(lower: jax.Array, upper: jax.Array) -> Relaxation:
    """CROWN's relaxation of the pre-activation box (B, *shape): the chord above; below, slope 1
    where u > -l else 0 (the adaptive choice of Zhang et al. 2018); exact for stable neurons."""
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    width = jnp.where(unstable, upper - lower, 1.0)
    upper_slope = jnp.where(unstable, upper / width, active.astype(lower.dtype))
    upper_intercept = jnp.where(unstable, -lower * upper / width, 0.0)
    lower_slope = jnp.where(unstable, (upper > -lower).astype(lower.dtype), active.astype(lower.dtype))
    expand = lambda a: a[:, None]  # noqa: E731  (the spec axis)
    return Relaxation(expand(lower_slope), expand(upper_slope), expand(upper_intercept), expand(unstable))


def with_lower_slope(relax: Relaxation, slope: jax.Array) -> Relaxation:
    """``relax`` with the lower slope of its unstable neurons replaced by ``slope`` (in [0, 1])."""
    return replace(relax, lower_slope=jnp.where(relax.unstable, slope, relax.lower_slope))


def backward_lower(graph: Graph, start: int, coeffs: jax.Array, relaxations: dict[int, Relaxation],
                   s: InputSet) -> jax.Array:
    """A lower bound of <coeffs, v_start> over the input set: coeffs (B, S, *shape_start) ->
    (B, S). ``relaxations`` must hold every ReLU node that ``start`` depends on."""
    pending = {start: coeffs}
    bias = jnp.zeros(coeffs.shape[:2], coeffs.dtype)
    for k in range(start, 0, -1):
        a = pending.pop(k, None)
        if a is None:
            continue
        node = graph.nodes[k]
        if isinstance(node.op, ReLU):
            r = relaxations[k]
            positive, negative = jnp.maximum(a, 0), jnp.minimum(a, 0)
            bias = bias + jnp.sum(negative * r.upper_intercept, axis=tuple(range(2, a.ndim)))
            a = positive * r.lower_slope + negative * r.upper_slope
        elif isinstance(node.op, Linear):
            bias = bias + bias_dot(node.op, a)
            in_shape = graph.nodes[node.inputs[0]].shape
            a = transpose(node.op, a.reshape(-1, *node.shape), in_shape).reshape(*a.shape[:2], *in_shape)
        for i in node.inputs:  # Add: the same coefficients to both inputs
            pending[i] = pending[i] + a if i in pending else a
    return concretize_lower(s, pending[0], bias)


def node_bounds(graph: Graph, node: int, relaxations: dict[int, Relaxation], s: InputSet,
                chunk: int = 256) -> Box:
    """CROWN bounds (lower, upper), each (B, *shape), of every neuron of ``node``: backward passes
    from the identity (and its negation), ``chunk`` neurons at a time."""
    shape = graph.nodes[node].shape
    n = math.prod(shape)
    chunk = min(chunk, n)
    batch = s.center.shape[0]
    ids = jnp.arange(-(-n // chunk) * chunk).reshape(-1, chunk)

    def one_chunk(neurons: jax.Array) -> tuple[jax.Array, jax.Array]:
        eye = jax.nn.one_hot(neurons, n, dtype=s.center.dtype).reshape(chunk, *shape)  # rows past n are 0
        signed = jnp.concatenate([eye, -eye])
        lb = backward_lower(graph, node, jnp.broadcast_to(signed, (batch, *signed.shape)), relaxations, s)
        return lb[:, :chunk], -lb[:, chunk:]

    lower, upper = lax.map(one_chunk, ids)  # (chunks, B, chunk)
    flat = lambda v: jnp.moveaxis(v, 0, 1).reshape(batch, -1)[:, :n].reshape(batch, *shape)  # noqa: E731
    return flat(lower), flat(upper)


def crown_relaxations(graph: Graph, s: InputSet, boxes: list[Box], *, chunk: int = 256,
                      intermediate: str = "crown") -> dict[int, Relaxation]:
    """The relaxation of every ReLU, from pre-activation bounds by CROWN (``intermediate``
    "crown", intersected with the IBP ``boxes``: both hold, so their intersection does) or by
    IBP alone ("ibp": CROWN-IBP, Zhang et al. 2020)."""
    relaxations: dict[int, Relaxation] = {}
    for k in graph.relus():
        (pre,) = graph.nodes[k].inputs
        lower, upper = boxes[pre]
        if intermediate == "crown":
            c_lower, c_upper = node_bounds(graph, pre, relaxations, s, chunk)
            lower, upper = jnp.maximum(lower, c_lower), jnp.minimum(upper, c_upper)
        relaxations[k] = relu_relaxation(lower, upper)
    return relaxations
