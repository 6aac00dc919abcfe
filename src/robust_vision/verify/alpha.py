"""alpha-CROWN (Xu et al. 2021): the lower slopes of the unstable ReLUs are free parameters in
[0, 1]; every choice gives a valid bound, so they are optimised (Optax Adam, projected back to
[0, 1] after every step) to maximise the specification's lower bound. One slope per neuron and
per specification row; intermediate bounds stay those of CROWN. The result is the element-wise
best bound seen, starting from CROWN's own slopes, so it is never looser than CROWN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from robust_vision.verify.backward import Relaxation, backward_lower, with_lower_slope
from robust_vision.verify.graph import Graph
from robust_vision.verify.spec import InputSet


def alpha_crown_lower(graph: Graph, s: InputSet, spec: jax.Array, relaxations: dict[int, Relaxation], *,
                      steps: int = 20, learning_rate: float = 0.1) -> jax.Array:
    """Lower bounds of ``spec @ logits`` (spec (B, S, K) -> (B, S)) with optimised slopes."""
    rows = spec.shape[1]
    alphas = {k: jnp.broadcast_to(r.lower_slope, (r.lower_slope.shape[0], rows, *r.lower_slope.shape[2:]))
              for k, r in relaxations.items()}

    def bound(alphas: dict[int, jax.Array]) -> jax.Array:
        relax = {k: with_lower_slope(r, alphas[k]) for k, r in relaxations.items()}
        return backward_lower(graph, graph.output, spec, relax, s)

    optimizer = optax.adam(learning_rate)

    def objective(alphas: dict[int, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lb = bound(alphas)
        return -jnp.sum(lb), lb

    def improve(carry, _):
        alphas, opt_state, best = carry
        (_, lb), grads = jax.value_and_grad(objective, has_aux=True)(alphas)
        updates, opt_state = optimizer.update(grads, opt_state, alphas)
        alphas = jax.tree.map(lambda a: jnp.clip(a, 0.0, 1.0), optax.apply_updates(alphas, updates))
        return (alphas, opt_state, jnp.maximum(best, lb)), None

    # The first step evaluates CROWN's own slopes, so the best bound starts at CROWN's.
    best = jnp.full(spec.shape[:2], -jnp.inf, spec.dtype)
    (alphas, _, best), _ = lax.scan(improve, (alphas, optimizer.init(alphas), best), None, length=max(steps, 1))
    return jnp.maximum(best, bound(alphas))
