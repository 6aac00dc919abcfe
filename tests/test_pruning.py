"""Magnitude pruning of kernels (global and per layer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from robust_vision.pruning import apply_masks, magnitude_prune, sparsity_of


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.dense = nnx.Linear(16, 5, rngs=rngs)


def _params():
    model = _Net(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    # make the two kernels' scales very different so global and per-layer rankings differ
    state["dense"]["kernel"][...] = 10.0 * state["dense"]["kernel"][...]
    state["bn"]["bias"][...] = jnp.full((4,), 0.001)  # tiny, but not a kernel
    return model, state


def _kernels(state):
    return {"conv": np.asarray(state["conv"]["kernel"][...]), "dense": np.asarray(state["dense"]["kernel"][...])}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_reached_and_non_kernels_untouched(scope, sparsity):
    model, state = _params()
    pruned, masks = magnitude_prune(state, sparsity, scope)
    n_kernels = 2
    assert abs(sparsity_of(pruned) - sparsity) <= n_kernels / (3 * 3 * 2 * 4 + 16 * 5)
    if scope == "layer":
        for name, k in _kernels(pruned).items():
            assert abs(np.mean(k == 0) - sparsity) <= 1.0 / k.size + 1e-12
    for name in ("conv", "dense"):
        np.testing.assert_array_equal(np.asarray(pruned[name]["bias"][...]), np.asarray(state[name]["bias"][...]))
        assert bool(jnp.all(masks[name]["bias"][...]))
    np.testing.assert_array_equal(np.asarray(pruned["bn"]["scale"][...]), np.asarray(state["bn"]["scale"][...]))
    np.testing.assert_array_equal(np.asarray(pruned["bn"]["bias"][...]), 0.001 * np.ones(4, np.float32))


def test_largest_weights_are_kept():
    _, state = _params()
    before = _kernels(state)
    pruned, masks = magnitude_prune(state, 0.5, "global")
    kept = np.concatenate([np.abs(before[n][np.asarray(masks[n]["kernel"][...])]) for n in before])
    dropped = np.concatenate([np.abs(before[n][~np.asarray(masks[n]["kernel"][...])]) for n in before])
    assert kept.min() >= dropped.max()
    # global ranking: the large dense kernel keeps more of its weights than the conv kernel
    after = _kernels(pruned)
    assert np.mean(after["dense"] == 0) < np.mean(after["conv"] == 0)
    for n in before:  # kept weights are unchanged, pruned ones are exactly zero
        m = np.asarray(masks[n]["kernel"][...])
        np.testing.assert_array_equal(after[n][m], before[n][m])
        assert np.all(after[n][~m] == 0)

    pruned_l, masks_l = magnitude_prune(state, 0.5, "layer")
    for n in before:
        m = np.asarray(masks_l[n]["kernel"][...])
        assert np.abs(before[n][m]).min() >= np.abs(before[n][~m]).max()


def test_works_on_plain_pytrees_model_update_and_masks_reapply():
    model, state = _params()
    pruned, masks = magnitude_prune(state, 0.6)
    nnx.update(model, pruned)
    assert abs(sparsity_of(nnx.state(model, nnx.Param)) - 0.6) < 0.02
    # after a (fake) optimizer step the masks restore the zeros
    bumped = jax.tree.map(lambda p: p + 1.0, pruned)
    again = apply_masks(bumped, masks)
    np.testing.assert_allclose(sparsity_of(again), sparsity_of(pruned))

    tree = {"w": jnp.arange(1.0, 13.0).reshape(3, 4), "b": jnp.ones(4)}
    p, m = magnitude_prune(tree, 0.25, "layer")
    np.testing.assert_array_equal(np.asarray(p["w"]).ravel()[:3], 0.0)
    np.testing.assert_array_equal(np.asarray(p["w"]).ravel()[3:], np.arange(4.0, 13.0))
    assert bool(jnp.all(m["b"])) and sparsity_of(p) == 0.25


def test_errors():
    _, state = _params()
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(state, 1.5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(state, 0.5, "row")
    with pytest.raises(ValueError, match="no prunable"):
        sparsity_of({"b": jnp.ones(3)})
