"""Crossbar model and local rules (training/hebbian.py): exact Hebbian accumulation, clipping,
SGD-MSE convergence / divergence as an outcome, finite-safe weight statistics, the seed's
single-pattern protocol and the classification helper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.models.crossbar import init_crossbar
from robust_vision.training.hebbian import (
    RULES,
    LocalRule,
    crossbar_accuracy,
    crossbar_scores,
    get_rule,
    hebbian_update,
    is_diverged,
    pattern_protocol,
    sgd_mse_update,
    train_crossbar,
    train_single_pattern,
    weight_stats,
)

T = jnp.array([1.0, 0.0])


def _images(n: int, seed: int = 0, size: int = 8) -> jax.Array:
    """(n, size, size, 1) images in [0.2, 1]."""
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 1), minval=0.2, maxval=1.0)


# ------------------------------------------------------------------------------ model


def test_init_and_scores():
    W = init_crossbar(jax.random.key(0), 48, 3)
    assert W.shape == (48, 3) and W.dtype == jnp.float32
    assert float(W.min()) >= 0.0 and float(W.max()) < 0.01
    np.testing.assert_array_equal(W, init_crossbar(jax.random.key(0), 48, 3))
    assert not np.array_equal(W, init_crossbar(jax.random.key(1), 48, 3))
    images = _images(5, size=4)[..., :1].repeat(3, axis=-1)  # (5, 4, 4, 3): D = 48
    s = crossbar_scores(W, images)
    assert s.shape == (5, 3)
    np.testing.assert_allclose(s, np.asarray(images).reshape(5, -1) @ np.asarray(W), rtol=1e-5)


def test_unknown_rule_lists_valid_names():
    with pytest.raises(KeyError, match="hebbian.*sgd_mse"):
        get_rule("oja")
    assert set(RULES) == {"hebbian", "sgd_mse"}


# ---------------------------------------------------------------------------- hebbian


def test_hebbian_n_updates_is_exact_accumulation():
    n, eta = 30, 0.25
    # Dyadic values: every partial sum is exact in float32, so "exactly" means bit for bit.
    x = jnp.arange(16, dtype=jnp.float32) / 8.0
    W0 = jnp.zeros((16, 2), jnp.float32)
    W = train_single_pattern(W0, x, T, rule="hebbian", eta=eta, iterations=n)
    np.testing.assert_array_equal(W, W0 + n * eta * jnp.outer(x, T))
    # A random init and random image: the same identity up to float32 rounding.
    x = jax.random.uniform(jax.random.key(3), (64,))
    W0 = init_crossbar(jax.random.key(4), 64, 2)
    W = train_single_pattern(W0, x, T, rule="hebbian", eta=0.2, iterations=n)
    np.testing.assert_allclose(W, W0 + n * 0.2 * np.outer(x, T), rtol=1e-6, atol=1e-6)
    # The control column (target 0) is untouched by the Hebbian rule.
    np.testing.assert_array_equal(W[:, 1], W0[:, 1])


def test_batched_updates_are_batch_means():
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    W = init_crossbar(key1, 32, 3)
    xb = jax.random.uniform(key2, (5, 32))
    tb = jax.nn.one_hot(jnp.array([0, 2, 1, 0, 2]), 3)
    np.testing.assert_allclose(hebbian_update(W, xb, tb, 0.3), W + 0.3 * xb.T @ tb / 5, rtol=1e-6)
    np.testing.assert_allclose(sgd_mse_update(W, xb, tb, 0.01),
                               W - 0.01 * xb.T @ (xb @ W - tb) / 5, rtol=1e-5, atol=1e-7)
    # A batch of B copies of x equals one single-example update.
    x = jax.random.uniform(key3, (32,))
    copies = jnp.broadcast_to(x, (4, 32))
    for rule in (hebbian_update, sgd_mse_update):
        np.testing.assert_allclose(rule(W, copies, jnp.array([1.0, 0.0, 0.0]), 0.05),
                                   rule(W, x, jnp.array([1.0, 0.0, 0.0]), 0.05), rtol=1e-6, atol=1e-7)


def test_clipping_keeps_weights_in_range():
    x = jax.random.uniform(jax.random.key(1), (64,))
    W0 = init_crossbar(jax.random.key(2), 64, 2)
    lo, hi = 0.0, 0.5
    W = train_single_pattern(W0, x, T, rule="hebbian", eta=0.2, iterations=30, clip_range=(lo, hi))
    assert float(W.min()) >= lo and float(W.max()) <= hi
    assert float(W[:, 0].max()) == hi  # the target column saturates at the boundary
    # SGD with a diverging learning rate stays inside the box (and finite) when clipped.
    W = train_single_pattern(W0, x, T, rule="sgd_mse", eta=1.0, iterations=30, clip_range=(-0.1, 0.1))
    assert bool(jnp.all(jnp.isfinite(W))) and float(jnp.abs(W).max()) <= np.float32(0.1)
    # No clip is the identity, bit for bit; jit with a clip range as a traced argument works.
    np.testing.assert_array_equal(hebbian_update(W0, x, T, 0.2, None), W0 + 0.2 * jnp.outer(x, T))
    Wj = jax.jit(hebbian_update)(W0, x, T, 10.0, (0.0, 1.0))
    assert float(Wj.max()) <= 1.0
    with pytest.raises(ValueError, match="lo <= hi"):
        pattern_protocol(jax.random.key(0), _images(2), LocalRule(clip_range=(1.0, 0.0)))


# ------------------------------------------------------------------ sgd and divergence


def test_sgd_mse_converges_for_small_eta_and_diverges_for_large():
    x = jax.random.uniform(jax.random.key(5), (64,))
    sq = float(x @ x)  # residual factor per step: 1 - eta * ||x||^2
    W0 = init_crossbar(jax.random.key(6), 64, 2)
    W = train_single_pattern(W0, x, T, rule="sgd_mse", eta=0.5 / sq, iterations=60)
    np.testing.assert_allclose(x @ W, T, atol=1e-4)
    assert not bool(is_diverged(W, 1e6))
    # eta * ||x||^2 = 5: |residual| grows 4x per step -> past any bound, reported not raised.
    W = train_single_pattern(W0, x, T, rule="sgd_mse", eta=5.0 / sq, iterations=30)
    assert bool(is_diverged(W, 1e6))
    stats = weight_stats(W, bound=1e6)
    assert stats["diverged"] and stats["max_abs"] > 1e6
    # Long enough to overflow float32: non-finite weights are flagged, stats stay defined.
    W = train_single_pattern(W0, x, T, rule="sgd_mse", eta=5.0 / sq, iterations=200)
    stats = weight_stats(W, bound=1e6)
    assert stats["diverged"] and (stats["has_inf"] or stats["has_nan"])
    assert stats["n_finite"] + stats["n_nan"] + stats["n_posinf"] + stats["n_neginf"] == stats["n"]


def test_is_diverged_on_known_matrices():
    ok = jnp.array([[0.5, -2.0], [3.0, 1.0]])
    assert not bool(is_diverged(ok, 10.0))
    assert bool(is_diverged(ok, 2.5))  # max|W| = 3 > 2.5
    assert bool(is_diverged(ok.at[0, 0].set(jnp.nan), 1e6))
    assert bool(is_diverged(ok.at[1, 1].set(-jnp.inf), 1e6))
    stack = jnp.stack([ok, ok.at[0, 1].set(jnp.inf), ok * 100.0])
    np.testing.assert_array_equal(is_diverged(stack, 10.0, axes=(1, 2)), [False, True, True])


def test_weight_stats_on_known_matrix():
    W = np.array([[0.0, 1.0], [2.0, 3.0], [np.inf, np.nan], [-np.inf, 2.0]], np.float32)
    s = weight_stats(W, bound=10.0)
    finite = np.array([0.0, 1.0, 2.0, 3.0, 2.0])
    assert s["mean"] == pytest.approx(finite.mean()) and s["std"] == pytest.approx(finite.std())
    assert (s["min"], s["max"], s["max_abs"]) == (0.0, 3.0, 3.0)
    assert (s["n"], s["n_finite"], s["n_nan"], s["n_posinf"], s["n_neginf"]) == (8, 5, 1, 1, 1)
    assert s["has_nan"] and s["has_inf"] and s["diverged"]
    s = weight_stats(np.array([[0.25, 0.75], [0.5, 1.0]]), bound=10.0)
    assert s["mean"] == pytest.approx(0.625) and s["std"] == pytest.approx(np.std([0.25, 0.75, 0.5, 1.0]))
    assert not (s["has_nan"] or s["has_inf"] or s["diverged"])
    s = weight_stats(np.full((2, 2), np.nan))
    assert np.isnan(s["mean"]) and s["n_finite"] == 0 and "diverged" not in s


# ------------------------------------------------------------------- pattern protocol


def _row(result, noise, level):
    (row,) = [r for r in result["rows"] if r["noise_type"] == noise and r["level"] == level]
    return row


def test_pattern_protocol_hebbian():
    images = _images(6)
    levels = (0.0, 0.2, 0.5, 0.9)
    kw = dict(noise_types=("gaussian", "occlusion"), levels=levels, n_noisy=16)
    res = pattern_protocol(jax.random.key(0), images, LocalRule("hebbian"), **kw)
    assert res["n_images"] == 6 and res["n_diverged"] == 0 and res["eta"] == 0.2
    assert len(res["rows"]) == 2 * len(levels)
    clean = _row(res, "gaussian", 0.0)
    assert clean["accuracy"] == 1.0 and clean["n"] == 6 * 16 and clean["n_nonfinite"] == 0
    snr = [_row(res, "gaussian", lv)["snr"] for lv in levels]
    assert all(a > b for a, b in zip(snr, snr[1:])), snr
    assert clean["snr"] > 10.0  # 30 Hebbian steps dominate the U[0, 0.01) control column
    # Determinism given the key; a different key changes the noise (and the init).
    again = pattern_protocol(jax.random.key(0), images, LocalRule("hebbian"), **kw)
    assert again["rows"] == res["rows"] and again["weight_stats"] == res["weight_stats"]
    other = pattern_protocol(jax.random.key(1), images, LocalRule("hebbian"), **kw)
    assert _row(other, "gaussian", 0.5)["snr"] != _row(res, "gaussian", 0.5)["snr"]
    # Clipping: weights in range, and a lower clean SNR than unconstrained.
    clipped = pattern_protocol(jax.random.key(0), images, LocalRule("hebbian", clip_range=(0.0, 0.5)), **kw)
    assert clipped["weight_stats"]["max"] <= 0.5 and clipped["weight_stats"]["min"] >= 0.0
    assert _row(clipped, "gaussian", 0.0)["accuracy"] == 1.0
    assert _row(clipped, "gaussian", 0.0)["snr"] < clean["snr"]


def test_pattern_protocol_sgd_divergence_is_an_outcome():
    images = _images(4)
    # ||x||^2 ~ 25 for these 8x8 images, so eta = 0.5 is far beyond the stability limit 2/||x||^2.
    res = pattern_protocol(jax.random.key(0), images, LocalRule("sgd_mse", eta=0.5, bound=1e6), iterations=30,
                           noise_types=("gaussian",), levels=(0.0,), n_noisy=4)
    assert res["n_diverged"] == 4 and all(res["diverged"])
    assert res["weight_stats"]["diverged"]
    row = res["rows"][0]
    assert 0.0 <= row["accuracy"] <= 1.0 and row["n"] == 16
    # A stable learning rate: converged to W^T x = [1, 0] -> correct on the clean image.
    res = pattern_protocol(jax.random.key(0), images, LocalRule("sgd_mse", eta=0.01), iterations=100,
                           noise_types=("gaussian",), levels=(0.0,), n_noisy=4)
    assert res["n_diverged"] == 0 and res["rows"][0]["accuracy"] == 1.0


# ------------------------------------------------------------- classification protocol


def _two_class(n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    protos = jax.random.uniform(k1, (2, 36))
    y = jax.random.randint(k2, (n,), 0, 2)
    x = jnp.clip(protos[y] + 0.1 * jax.random.normal(k3, (n, 36)), 0.0, 1.0)
    return x, y


def test_train_crossbar_hebbian_closed_form_and_accuracy():
    x, y = _two_class(40)
    key = jax.random.key(0)
    W, stats = train_crossbar(key, x, y, LocalRule("hebbian", eta=0.2), epochs=3, batch_size=40)
    W0 = init_crossbar(jax.random.split(key)[0], 36, 2)
    expected = W0 + 3 * 0.2 * x.T @ jax.nn.one_hot(y, 2) / 40  # full batch: class correlations
    np.testing.assert_allclose(W, expected, rtol=1e-5)
    assert not stats["diverged"] and stats["train_accuracy"] == crossbar_accuracy(W, x, y)
    # Last partial batch (40 = 16 + 16 + 8) counts once with its own mean: identical rows
    # give eta * x t^T per batch, 3 batches per epoch.
    same = jnp.broadcast_to(x[0], (40, 36))
    W, _ = train_crossbar(key, same, jnp.zeros(40, jnp.int32), LocalRule(eta=0.1), epochs=2, batch_size=16,
                          num_classes=2)
    np.testing.assert_allclose(W, W0 + 2 * 3 * 0.1 * jnp.outer(x[0], jnp.array([1.0, 0.0])), rtol=1e-5)


def test_train_crossbar_sgd_and_divergence():
    x, y = _two_class(200, seed=1)
    W, stats = train_crossbar(jax.random.key(0), x, y, LocalRule("sgd_mse", eta=0.02), epochs=20, batch_size=32)
    assert not stats["diverged"] and stats["train_accuracy"] > 0.95
    W, stats = train_crossbar(jax.random.key(0), x, y, LocalRule("sgd_mse", eta=2.0), epochs=5, batch_size=32)
    assert stats["diverged"]
