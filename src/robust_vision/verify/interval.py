"""Interval bound propagation (IBP, Gowal et al. 2018): a box per node, forward."""

from __future__ import annotations

import jax

from robust_vision.verify.graph import Add, Graph, Linear, ReLU, bias_dot, transpose
from robust_vision.verify.spec import InputSet, box_lower

Box = tuple[jax.Array, jax.Array]


def interval_bounds(graph: Graph, s: InputSet) -> list[Box]:
    """(lower, upper) of every node, each (B, *shape), over the input set's box.

    A linear map sends centre / radius to ``apply(mid) + bias`` / ``apply_abs(rad)``; ReLU is
    monotone; a residual add adds the boxes.
    """
    boxes: list[Box] = [(s.lower, s.upper)]
    for node in graph.nodes[1:]:
        ins = [boxes[i] for i in node.inputs]
        if isinstance(node.op, ReLU):
            boxes.append((jax.nn.relu(ins[0][0]), jax.nn.relu(ins[0][1])))
        elif isinstance(node.op, Add):
            boxes.append((ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]))
        else:
            lo, hi = ins[0]
            mid, rad = node.op((hi + lo) / 2), node.op.apply_abs((hi - lo) / 2)
            boxes.append((mid - rad, mid + rad))
    return boxes


def interval_spec_lower(graph: Graph, boxes: list[Box], spec: jax.Array) -> jax.Array:
    """Lower bounds of ``spec @ logits``, spec (B, S, K) -> (B, S). The spec is folded into the
    last layer when it is linear (tighter than bounding the logits first: Gowal et al. 2018)."""
    out = graph.nodes[graph.output]
    if not isinstance(out.op, Linear):
        return box_lower(spec, *boxes[graph.output])
    (src,) = out.inputs
    src_shape = graph.nodes[src].shape
    coeffs = transpose(out.op, spec.reshape(-1, *out.shape), src_shape).reshape(*spec.shape[:2], *src_shape)
    return box_lower(coeffs, *boxes[src]) + bias_dot(out.op, spec)
