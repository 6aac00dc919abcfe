"""Krotov-Hopfield local learning: the rule's fixed point, its competition, determinism, and
the classifier built on a frozen local layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from robust_vision.models.local import (
    KrotovClassifier,
    LocalWeights,
    krotov_update,
    p_norms,
    train_krotov,
)
from robust_vision.viz.receptive_fields import plot_receptive_fields


def _clustered_images(n: int = 600, seed: int = 0) -> jax.Array:
    """(n, 8, 8, 1) images in [0, 1]: noisy copies of 6 random prototypes."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    prototypes = jax.random.uniform(k1, (6, 8, 8, 1))
    labels = jax.random.randint(k2, (n,), 0, 6)
    return jnp.clip(prototypes[labels] + 0.1 * jax.random.normal(k3, (n, 8, 8, 1)), 0.0, 1.0)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_row_p_norms_converge_to_one(p):
    images = _clustered_images(1200)
    W = train_krotov(jax.random.key(1), images, n_hidden=8, epochs=40, batch_size=50, p=p, k=2,
                     delta=0.4, lr0=0.05, init_std=0.3)
    assert W.shape == (8, 64)
    norms = np.asarray(p_norms(W, p))
    start = np.asarray(p_norms(0.3 * jax.random.normal(jax.random.key(2), (8, 64)), p))
    assert np.all(np.abs(start - 1.0) > 0.1)  # the initial rows are far from the fixed point
    # every unit approaches the fixed point; rarely winning units approach it more slowly
    np.testing.assert_allclose(norms, 1.0, atol=0.05)
    assert abs(np.median(norms) - 1.0) < 0.01


def _cos(a, b):
    return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_winner_moves_toward_input_and_kth_unit_away():
    W = jax.random.normal(jax.random.key(0), (6, 20))
    x = jax.random.uniform(jax.random.key(1), (1, 20))
    currents = np.asarray(W @ x[0])  # p = 2: currents are plain overlaps
    order = np.argsort(-currents)
    winner, second = order[0], order[1]
    W_new = krotov_update(W, x, 0.1, 2.0, 2, 0.4)
    assert _cos(W_new[winner], x[0]) > _cos(W[winner], x[0])
    assert _cos(W_new[second], x[0]) < _cos(W[second], x[0])  # anti-Hebbian push (k = 2)
    others = order[2:]
    np.testing.assert_array_equal(np.asarray(W_new[others]), np.asarray(W[others]))
    # Krotov's normalisation: the largest change of any weight is the learning rate
    np.testing.assert_allclose(float(jnp.max(jnp.abs(W_new - W))), 0.1, rtol=1e-5)


def test_minibatch_update_sums_per_example_increments():
    # A minibatch update is the sum of the per-example increments, normalised once.
    W = jax.random.normal(jax.random.key(3), (5, 10))
    x = jax.random.uniform(jax.random.key(4), (4, 10))
    W_new = krotov_update(W, x, 0.5, 2.0, 3, 0.3)
    inc = sum(_raw_increment(W, x[i], k=3, delta=0.3) for i in range(4))
    np.testing.assert_allclose(np.asarray(W_new - W), 0.5 * inc / np.abs(inc).max(), atol=1e-5)
    assert np.count_nonzero(np.abs(inc).sum(axis=1)) >= 2  # several units took part


def _raw_increment(W, x, *, k, delta):
    currents = np.asarray(W) @ np.asarray(x)
    order = np.argsort(-currents)
    g = np.zeros(W.shape[0])
    g[order[0]] = 1.0
    g[order[k - 1]] = -delta
    return g[:, None] * np.asarray(x)[None, :] - (g * currents)[:, None] * np.asarray(W)


def test_training_is_deterministic_given_key():
    images = _clustered_images(200)
    run = lambda seed: train_krotov(jax.random.key(seed), images, n_hidden=5, epochs=3, batch_size=40, lr0=0.05)
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bad_arguments_raise():
    images = _clustered_images(50)
    with pytest.raises(ValueError, match="p must be >= 2"):
        train_krotov(jax.random.key(0), images, n_hidden=4, epochs=1, p=1.5)
    with pytest.raises(ValueError, match="ranking parameter k"):
        train_krotov(jax.random.key(0), images, n_hidden=4, epochs=1, k=5)


def test_classifier_trains_head_only_and_loads_weights(tmp_path):
    model = KrotovClassifier(input_shape=(8, 8, 1), num_classes=3, rngs=nnx.Rngs(0), n_hidden=6, power=3.0)
    assert isinstance(model.local_weights, LocalWeights) and model.local_weights.shape == (6, 64)
    np.testing.assert_allclose(np.asarray(p_norms(model.local_weights[...], 3.0)), 1.0, rtol=1e-5)
    x = _clustered_images(16)
    y = jnp.arange(16) % 3
    logits, feats = model(x, return_features=True)
    assert logits.shape == (16, 3) and list(feats) == ["currents", "embedding"]
    np.testing.assert_allclose(np.asarray(feats["embedding"]),
                               np.maximum(np.asarray(feats["currents"]), 0) ** 3.0, rtol=1e-5)

    W_trained = train_krotov(jax.random.key(5), x, n_hidden=6, epochs=2, batch_size=8, p=3.0, lr0=0.05)
    model.load_weights(W_trained)
    np.testing.assert_array_equal(np.asarray(model.local_weights[...]), np.asarray(W_trained))
    with pytest.raises(ValueError, match="expected"):
        model.load_weights(jnp.zeros((6, 63)))

    head_before = np.asarray(model.head.kernel[...]).copy()
    opt = nnx.Optimizer(model, optax.sgd(1e-3), wrt=nnx.Param)
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    opt.update(model, nnx.grad(loss)(model))
    assert not np.allclose(np.asarray(model.head.kernel[...]), head_before)
    np.testing.assert_array_equal(np.asarray(model.local_weights[...]), np.asarray(W_trained))

    png = plot_receptive_fields(W_trained, (8, 8), tmp_path / "fields.png")
    pdf = plot_receptive_fields(np.random.default_rng(0).normal(size=(4, 48)), (4, 4, 3), tmp_path / "rgb.pdf")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
