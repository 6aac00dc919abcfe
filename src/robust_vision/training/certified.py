"""Certified training by bound propagation: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al.
2020), with the fast-training recipe of Shi et al. 2021 (IBP initialisation, a smooth eps ramp
after a natural warm-up, and a regulariser on the interval bounds during the ramp).

Per example, at step t with budget eps_t (``eps_at``) and ramp progress p = eps_t / eps:

    loss = kappa * CE(f(x), y) + (1 - kappa) * CE(-lb(x, eps_t), y),   kappa = kappa_start + (kappa_end - kappa_start) p

where lb (B, K) are lower bounds of the margins z_y - z_j (``verify``): CE of -lb bounds the
cross-entropy of every input in the ball from above. CROWN-IBP uses
lb = beta * lb_CROWN-IBP + (1 - beta) * lb_IBP with beta moving from beta_start to beta_end the
same way. The regulariser (weight ``regularizer_weight`` * (1 - p)) is added to every example.

It plugs into the one train step as its ``certified_loss`` hook (``certified_hooks``): the
bounds are of the model in training mode, batch norm normalising with the clean batch's
statistics (``verify.convert``), as the model's own training forward does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_vision.config import CertifiedConfig
from robust_vision.verify.backward import backward_lower, crown_relaxations
from robust_vision.verify.convert import to_graph
from robust_vision.verify.graph import Graph, Linear
from robust_vision.verify.interval import Box, interval_bounds, interval_spec_lower
from robust_vision.verify.spec import InputSet, margin_matrix

SMOOTH_MID = 0.25  # fraction of the ramp that grows as a power, then linear (Shi et al. 2021)
SMOOTH_POWER = 4.0


def ramp_fraction(r: jax.Array, schedule: str) -> jax.Array:
    """The ramp's value in [0, 1] at progress r in [0, 1] (clipped). ``smooth``: a * r^4 up to
    r = 1/4, then the straight line to (1, 1); a makes value and slope continuous at 1/4."""
    r = jnp.clip(r, 0.0, 1.0)
    if schedule == "linear":
        return r
    m, k = SMOOTH_MID, SMOOTH_POWER
    a = 1.0 / (m ** (k - 1) * (k * (1 - m) + m))
    mid_value = a * m ** k
    return jnp.where(r < m, a * r ** k, mid_value + (1 - mid_value) * (r - m) / (1 - m))


def eps_at(step: jax.Array, ccfg: CertifiedConfig, steps_per_epoch: int) -> jax.Array:
    """Training budget at optimizer step ``step`` (0-based): 0 during the warm-up, then the ramp."""
    start = ccfg.warmup_epochs * steps_per_epoch
    length = max(ccfg.ramp_epochs * steps_per_epoch, 1.0)
    return ccfg.eps * ramp_fraction((step.astype(jnp.float32) - start + 1) / length, ccfg.schedule)


def ibp_initialize(model: nnx.Module, seed: int) -> None:
    """IBP initialisation (Shi et al. 2021), in place: every dense / conv kernel ~ N(0, sigma^2)
    with sigma = sqrt(2 pi) / fan_in, so an interval's width neither grows nor shrinks on average
    through a layer and ReLU at initialisation; biases 0."""
    key = jax.random.key(seed)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, (nnx.Linear, nnx.Conv)):
            key, sub = jax.random.split(key)
            kernel = layer.kernel[...]
            fan_in = math.prod(kernel.shape[:-1])
            layer.kernel[...] = jax.random.normal(sub, kernel.shape, kernel.dtype) * (math.sqrt(2 * math.pi) / fan_in)
            if layer.bias is not None:
                layer.bias[...] = jnp.zeros_like(layer.bias[...])


def _input_radius(graph: Graph, boxes: list[Box]) -> jax.Array:
    """Mean radius of the box entering the first dense / conv layer (after any input normalisation)."""
    for node in graph.nodes[1:]:
        if isinstance(node.op, Linear) and node.op.kind in ("dense", "conv"):
            lo, hi = boxes[node.inputs[0]]
            return jnp.mean(hi - lo) / 2
    return jnp.mean(boxes[0][1] - boxes[0][0]) / 2


def bound_regularizer(graph: Graph, boxes: list[Box], tau: float) -> jax.Array:
    """Shi et al. 2021's warm-up regulariser (a scalar), averaged over the ReLU layers: a
    tightness term relu(tau - r_in / r_layer) / tau (the mean pre-activation radius should not
    outgrow the input's), and a balance term pushing the means and the spreads of the centres of
    the active (l > 0) and inactive (u < 0) neurons toward each other (ratios min(q, 1/q) >= tau)."""
    r_in = _input_radius(graph, boxes)
    terms = []
    for k in graph.relus():
        lo, hi = boxes[graph.nodes[k].inputs[0]]
        centre, radius = (hi + lo) / 2, jnp.mean(hi - lo) / 2
        tightness = jax.nn.relu(tau - r_in / jnp.maximum(radius, 1e-12)) / tau
        active, inactive = (lo > 0).astype(lo.dtype), (hi < 0).astype(lo.dtype)
        spread = jnp.square(centre - jnp.mean(centre))
        mean_ratio = jnp.mean(centre * active) / -jnp.mean(centre * inactive)
        var_ratio = jnp.sum(spread * active) / jnp.sum(spread * inactive)
        balance = sum(jax.nn.relu(tau - jnp.minimum(q, 1 / jnp.maximum(q, 1e-12))) for q in (mean_ratio, var_ratio)) / tau
        terms.append(tightness + jnp.where(jnp.isfinite(balance), balance, 0.0))
    return sum(terms) / max(len(terms), 1)


def margin_lower_bounds(graph: Graph, images: jax.Array, labels: jax.Array, eps: jax.Array, method: str,
                        beta: jax.Array) -> tuple[jax.Array, list[Box]]:
    """(B, K) margin lower bounds for training (IBP, or beta * CROWN-IBP + (1 - beta) * IBP) and
    the interval boxes of every node."""
    s = InputSet(images, eps, "linf")
    spec = margin_matrix(labels, graph.nodes[graph.output].shape[-1], images.dtype)
    boxes = interval_bounds(graph, s)
    lb = interval_spec_lower(graph, boxes, spec)
    if method == "crown-ibp":
        relaxations = crown_relaxations(graph, s, boxes, intermediate="ibp")
        lb = beta * backward_lower(graph, graph.output, spec, relaxations, s) + (1 - beta) * lb
    return lb, boxes


def certified_hooks(ccfg: CertifiedConfig, steps_per_epoch: int) -> dict:
    """``{"certified_loss": fn}`` for ``training.steps.make_train_step`` (empty when off):
    fn(model, images, labels, natural (B,), step) -> (B,) per-example loss (module docstring)."""
    if ccfg.method == "none":
        return {}

    def certified_loss(model: nnx.Module, images: jax.Array, labels: jax.Array, natural: jax.Array,
                       step: jax.Array) -> jax.Array:
        eps = eps_at(step, ccfg, steps_per_epoch)
        progress = eps / ccfg.eps
        kappa = ccfg.kappa_start + (ccfg.kappa_end - ccfg.kappa_start) * progress
        beta = ccfg.beta_start + (ccfg.beta_end - ccfg.beta_start) * progress
        graph = to_graph(model, images)
        lb, boxes = margin_lower_bounds(graph, images, labels, eps, ccfg.method, beta)
        robust = optax.softmax_cross_entropy_with_integer_labels(-lb, labels)
        loss = kappa * natural + (1 - kappa) * robust
        if ccfg.regularizer_weight > 0:
            loss = loss + ccfg.regularizer_weight * (1 - progress) * bound_regularizer(graph, boxes, ccfg.regularizer_tau)
        return loss

    return {"certified_loss": certified_loss}
