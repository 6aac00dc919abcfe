"""Magnitude pruning of model weights (the local-learning seed prunes the weights of its
trained local layer before its spectral analysis; here any model's kernels).

``magnitude_prune`` zeroes the smallest-|w| entries of every *kernel* (a leaf with ndim >= 2:
dense and conv weights) of a parameter pytree, either with one threshold over all kernels
(``scope="global"``) or separately in each kernel (``scope="layer"``). Biases, norm scales
and other vectors/scalars are never pruned. It works on an ``nnx.State``
(``nnx.state(model, nnx.Param)``; write the result back with ``nnx.update(model, pruned)``)
or on any plain pytree of arrays.

Exactly round(sparsity * n) weights are pruned (ties broken by position, via a stable
sort), so the achieved sparsity equals the target up to rounding. Written by hand:
Optax has no magnitude pruning, and the ranking is a few lines of jnp.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp

__all__ = ["magnitude_prune", "apply_masks", "sparsity_of", "is_kernel"]

PyTree = Any


def is_kernel(path: tuple, leaf: Any) -> bool:
    """Default prunability rule: arrays with at least 2 dimensions (dense / conv kernels)."""
    return getattr(leaf, "ndim", 0) >= 2


def _prune_flags(abs_values: jax.Array, n_prune: int) -> jax.Array:
    """Boolean flags (same shape) marking the n_prune smallest entries (stable order)."""
    flat = abs_values.ravel()
    order = jnp.argsort(flat, stable=True)
    flags = jnp.zeros(flat.shape, bool).at[order[:n_prune]].set(True)
    return flags.reshape(abs_values.shape)


def magnitude_prune(params: PyTree, sparsity: float, scope: Literal["global", "layer"] = "global", *,
                    prunable: Optional[Callable[[tuple, Any], bool]] = None) -> tuple[PyTree, PyTree]:
    """Zero the smallest-magnitude kernel weights.

    Args:
      params: an ``nnx.State`` or pytree of arrays (e.g. ``nnx.state(model, nnx.Param)``;
        pass only parameters: fixed state such as noise masks is not a weight).
      sparsity: fraction in [0, 1] of the prunable weights to zero.
      scope: ``"global"`` (one magnitude ranking over all kernels together) or ``"layer"``
        (the same fraction in every kernel).
      prunable: ``(path, leaf) -> bool`` choosing the leaves to prune (default
        :func:`is_kernel`: ndim >= 2).

    Returns:
      (pruned_params, masks): both with the structure of ``params``; masks are boolean
      arrays, True = weight kept (all True for leaves that are not pruned).
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    prunable = prunable or is_kernel
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    selected = [i for i, (path, leaf) in enumerate(leaves_with_path) if prunable(path, leaf)]
    masks = [jnp.ones(jnp.shape(leaf), bool) for _, leaf in leaves_with_path]

    if selected and scope == "global":
        sizes = [leaves_with_path[i][1].size for i in selected]
        total = sum(sizes)
        flat = jnp.concatenate([jnp.abs(jnp.ravel(leaves_with_path[i][1])) for i in selected])
        flags = _prune_flags(flat, int(round(float(sparsity) * total)))
        offset = 0
        for i, size in zip(selected, sizes):
            masks[i] = ~flags[offset:offset + size].reshape(leaves_with_path[i][1].shape)
            offset += size
    else:
        for i in selected:
            leaf = leaves_with_path[i][1]
            masks[i] = ~_prune_flags(jnp.abs(leaf), int(round(float(sparsity) * leaf.size)))

    pruned = [jnp.where(m, leaf, jnp.zeros_like(leaf)) for m, (_, leaf) in zip(masks, leaves_with_path)]
    return jax.tree_util.tree_unflatten(treedef, pruned), jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Re-apply pruning masks (e.g. after an optimizer step during fine-tuning)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_of(params: PyTree, *, prunable: Optional[Callable[[tuple, Any], bool]] = None) -> float:
    """Fraction of exactly-zero entries among the prunable leaves (default: kernels, ndim >= 2)."""
    prunable = prunable or is_kernel
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if prunable(path, leaf)]
    total = sum(int(leaf.size) for leaf in leaves)
    if total == 0:
        raise ValueError("no prunable leaves (ndim >= 2) in params; pass the model's parameters or a `prunable` rule")
    zeros = sum(int(jnp.sum(leaf == 0)) for leaf in leaves)
    return zeros / total
