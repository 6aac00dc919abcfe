"""Tightness of interval bounds (Mao et al. 2023, "Understanding certified training with
interval bound propagation"): how much of IBP's box is real.

At a clean input x the ReLU network is locally the linear map of its activation pattern D(x).
Propagating the input box (radius r, the eps-ball & [0, 1]) through that linear map,

* the optimal box of node k has radius |J_k| r (J_k the Jacobian of node k with the pattern
  fixed: the exact box of a linear map), computed by CROWN's backward pass with every ReLU
  replaced by its pattern (``backward.node_bounds``, never a dense per-pixel matrix);
* IBP's box has radius |W_k| D |W_k-1| ... D |W_1| r (absolute values layer by layer).

tightness_k = mean(optimal radius) / mean(IBP radius) over the neurons of node k, in (0, 1]:
1 when no cancellation is lost (e.g. one linear layer), small for deep generic networks. Mao
et al. show IBP training drives it up. Reported at every ReLU's pre-activation and the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robust_vision.verify.backward import Relaxation, node_bounds
from robust_vision.verify.graph import Add, Graph, ReLU, evaluate
from robust_vision.verify.spec import InputSet


def _pattern_relaxations(graph: Graph, values: list[jax.Array]) -> dict[int, Relaxation]:
    """Each ReLU as the fixed 0/1 diagonal of the clean input's activation pattern."""
    out = {}
    for k in graph.relus():
        d = (values[graph.nodes[k].inputs[0]] > 0).astype(values[0].dtype)[:, None]
        out[k] = Relaxation(d, d, jnp.zeros_like(d), jnp.zeros_like(d, dtype=bool))
    return out


def _ibp_radii(graph: Graph, values: list[jax.Array], radius: jax.Array) -> list[jax.Array]:
    """IBP's radius of every node for the fixed pattern: |W| per linear layer, D per ReLU."""
    radii = [radius]
    for node in graph.nodes[1:]:
        r = [radii[i] for i in node.inputs]
        if isinstance(node.op, ReLU):
            radii.append(r[0] * (values[node.inputs[0]] > 0))
        elif isinstance(node.op, Add):
            radii.append(r[0] + r[1])
        else:
            radii.append(node.op.apply_abs(r[0]))
    return radii


def depth_nodes(graph: Graph) -> list[int]:
    """The nodes tightness is reported at: each ReLU's pre-activation in forward order, then the logits."""
    return [graph.nodes[k].inputs[0] for k in graph.relus()] + [graph.output]


def mean_radii_by_depth(graph: Graph, x: jax.Array, eps: float, *, chunk: int = 256) -> tuple[jax.Array, jax.Array]:
    """Mean optimal and mean IBP radius at every node of ``depth_nodes``: two (depths,) arrays,
    averaged over the neurons and the batch x (B, H, W, C) in [0, 1]; tightness = their ratio."""
    s = InputSet(x, eps, "linf")
    values = evaluate(graph, x)
    relax = _pattern_relaxations(graph, values)
    radii = _ibp_radii(graph, values, (s.upper - s.lower) / 2)
    optimal, ibp = [], []
    for k in depth_nodes(graph):
        lower, upper = node_bounds(graph, k, relax, s, chunk)
        optimal.append(jnp.mean((upper - lower) / 2))
        ibp.append(jnp.mean(radii[k]))
    return jnp.stack(optimal), jnp.stack(ibp)
