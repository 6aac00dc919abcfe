"""Lower bounds of the margins z_y - z_j over an input set, by method: the verifier's entry point.

``margin_bounds(model, x, labels, eps, norm=..., method=...)`` -> (B, K) lower bounds (column y
is 0); ``worst_margin`` of it > 0 means the example is verified: no input in the set changes
the class. Methods:

* ``ibp``: interval bounds (the spec folded into the last layer);
* ``crown-ibp``: IBP for the intermediate layers, CROWN's backward pass for the margins;
* ``crown``: CROWN for every intermediate layer and for the margins;
* ``alpha-crown``: CROWN's intermediate bounds, the margins' ReLU slopes optimised.

Each bound is also a valid bound for the methods before it in this list, so every method
returns the element-wise best of its own bound and IBP's: CROWN is never looser than IBP, and
alpha-CROWN (which starts from CROWN's slopes) never looser than CROWN.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from robust_vision.verify.alpha import alpha_crown_lower
from robust_vision.verify.backward import backward_lower, crown_relaxations
from robust_vision.verify.convert import to_graph
from robust_vision.verify.graph import Graph
from robust_vision.verify.interval import interval_bounds, interval_spec_lower
from robust_vision.verify.spec import InputSet, margin_matrix

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"verify: unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


def graph_margin_bounds(graph: Graph, s: InputSet, spec: jax.Array, method: str, *, chunk: int = 256,
                        alpha_steps: int = 20, alpha_lr: float = 0.1) -> jax.Array:
    """Lower bounds of ``spec @ logits`` over ``s`` (spec (B, S, K) -> (B, S)) by ``method``."""
    boxes = interval_bounds(graph, s)
    ibp = interval_spec_lower(graph, boxes, spec)
    if check_method(method) == "ibp":
        return ibp
    intermediate = "ibp" if method == "crown-ibp" else "crown"
    relaxations = crown_relaxations(graph, s, boxes, chunk=chunk, intermediate=intermediate)
    if method == "alpha-crown":
        bound = alpha_crown_lower(graph, s, spec, relaxations, steps=alpha_steps, learning_rate=alpha_lr)
    else:
        bound = backward_lower(graph, graph.output, spec, relaxations, s)
    return jnp.maximum(bound, ibp)


def margin_bounds(model: nnx.Module, x: jax.Array, labels: jax.Array, eps: float, *, norm: str = "linf",
                  method: str = "ibp", **options) -> jax.Array:
    """Lower bounds (B, K) of z_y - z_j over {x' : ||x' - x||_norm <= eps, x' in [0, 1]} for the
    model in its current mode; x (B, H, W, C) in [0, 1], labels (B,) int. Column y is 0.
    ``options``: ``chunk``, ``alpha_steps``, ``alpha_lr`` of ``graph_margin_bounds``."""
    graph = to_graph(model, x)
    spec = margin_matrix(labels, graph.nodes[graph.output].shape[-1], x.dtype)
    return graph_margin_bounds(graph, InputSet(x, eps, norm), spec, method, **options)


def jitted_margin_bounds(model: nnx.Module, *, norm: str, method: str,
                         **options) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """``(x, labels, eps) -> (B, K)`` lower bounds of ``model`` (eval mode, weights fixed now),
    jitted once per input shape."""
    check_method(method)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x, labels, eps):
        return margin_bounds(nnx.merge(graphdef, state), x, labels, eps, norm=norm, method=method, **options)

    return functools.partial(run, state)
