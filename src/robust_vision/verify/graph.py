"""The bound-able form of a model: a small DAG of linear maps, ReLUs and residual adds.

Every layer the verifier understands becomes one of three ops:

* ``Linear``: ``y = apply(x) + bias`` with ``apply`` linear (dense, convolution, batch norm in
  inference mode folded to a per-channel affine map, input normalisation, average / global
  average pooling, flatten). ``apply_abs`` is the same map with every weight replaced by its
  absolute value (interval propagation), and its transpose is taken with
  ``jax.linear_transpose`` (for a convolution: a transposed convolution, never a dense matrix);
* ``ReLU``;
* ``Add`` (a residual connection: the sum of its two inputs).

Node 0 is the input; ``Node.inputs`` index earlier nodes, so the node list is in topological
order. Shapes are per example (no batch axis); every function here takes batched arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp


class UnsupportedLayer(ValueError):
    """A model or layer the bound propagation cannot handle (the message names it)."""


@dataclass(frozen=True)
class Linear:
    """``y = apply(x) + bias``: ``apply`` maps (N, *in) -> (N, *out) linearly; ``bias`` is None
    or broadcasts against one example's output (*out) (e.g. per channel); ``kind`` names the layer type (dense, conv, affine, pool, ...)."""

    kind: str
    apply: Callable[[jax.Array], jax.Array]
    apply_abs: Callable[[jax.Array], jax.Array]
    bias: Optional[jax.Array]

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.apply(x)
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class ReLU:
    kind: str = "relu"


@dataclass(frozen=True)
class Add:
    kind: str = "add"


Op = Union[Linear, ReLU, Add]


@dataclass(frozen=True)
class Node:
    """One value of the network: ``op`` applied to the nodes ``inputs`` (None for the input)."""

    op: Optional[Op]
    inputs: tuple[int, ...]
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """The nodes of a network in topological order; the last node is the logits (K,)."""

    nodes: tuple[Node, ...]

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def relus(self) -> list[int]:
        """Indices of the ReLU nodes, in forward order."""
        return [i for i, n in enumerate(self.nodes) if isinstance(n.op, ReLU)]


def apply_op(op: Op, args: list[jax.Array]) -> jax.Array:
    """The op on concrete (batched) values."""
    if isinstance(op, ReLU):
        return jax.nn.relu(args[0])
    if isinstance(op, Add):
        return args[0] + args[1]
    return op(args[0])


def evaluate(graph: Graph, x: jax.Array) -> list[jax.Array]:
    """The value of every node for input ``x`` (B, *in): a list, one (B, *shape) array per node."""
    values = [x]
    for node in graph.nodes[1:]:
        values.append(apply_op(node.op, [values[i] for i in node.inputs]))
    return values


def transpose(op: Linear, cotangent: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
    """``apply^T`` on a stack of cotangents (N, *out) -> (N, *in) (the VJP of the linear map)."""
    primal = jax.ShapeDtypeStruct((cotangent.shape[0], *in_shape), cotangent.dtype)
    (out,) = jax.linear_transpose(op.apply, primal)(cotangent)
    return out


def bias_dot(op: Linear, coeffs: jax.Array) -> jax.Array:
    """sum over the output of ``coeffs * bias`` for coeffs (B, S, *out): (B, S) (0 without bias)."""
    if op.bias is None:
        return jnp.zeros(coeffs.shape[:2], coeffs.dtype)
    return jnp.sum(coeffs * op.bias, axis=tuple(range(2, coeffs.ndim)))
