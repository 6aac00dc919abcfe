"""Jacobian (Hoffman et al. 2019) and spectral (Nassar et al. 2020) penalties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.regularizers import jacobian_penalty, spectral_penalty


def test_jacobian_estimate_of_linear_map_is_unbiased():
    A = jax.random.normal(jax.random.key(0), (12, 5))
    x = jax.random.uniform(jax.random.key(1), (32, 12))
    fn = lambda x: x @ A
    keys = jax.random.split(jax.random.key(2), 300)
    estimates = jax.jit(jax.vmap(lambda k: jacobian_penalty(fn, x, k)))(keys)
    target = float(jnp.sum(A ** 2))
    assert abs(float(jnp.mean(estimates)) - target) / target < 0.03
    assert float(jnp.std(estimates)) > 0  # it is a random estimate
    exact = jacobian_penalty(fn, x, keys[0], n_proj=-1)
    np.testing.assert_allclose(float(exact), target, rtol=1e-5)


def test_jacobian_of_image_model_and_parameter_gradient():
    # A small nonlinear model on NHWC images; the exact value is computed with jax.jacrev.
    k1, k2 = jax.random.split(jax.random.key(3))
    params = {"w": 0.3 * jax.random.normal(k1, (4 * 4 * 2, 3)), "b": jnp.zeros(3)}
    f = lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ p["w"] + p["b"])
    x = jax.random.uniform(k2, (6, 4, 4, 2))

    @jax.jit
    def check(params, x):
        J = jax.vmap(jax.jacrev(lambda xi: f(params, xi[None])[0]))(x)  # (B, C, 4, 4, 2)
        exact = jnp.mean(jnp.sum(J ** 2, axis=(1, 2, 3, 4)))
        mine_exact = jacobian_penalty(lambda x: f(params, x), x, jax.random.key(0), n_proj=-1)
        many = jnp.mean(jax.vmap(lambda k: jacobian_penalty(lambda x: f(params, x), x, k, n_proj=4))(
            jax.random.split(jax.random.key(4), 200)))
        grads = jax.grad(lambda p: jacobian_penalty(lambda x: f(p, x), x, jax.random.key(5), n_proj=2))(params)
        return exact, mine_exact, many, grads

    exact, mine_exact, many, grads = check(params, x)
    np.testing.assert_allclose(float(mine_exact), float(exact), rtol=1e-5)
    assert abs(float(many) - float(exact)) / float(exact) < 0.05
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["w"]).max()) > 0
    with pytest.raises(ValueError, match="n_proj"):
        jacobian_penalty(lambda x: f(params, x), x, jax.random.key(0), n_proj=0)


def _representation(key, n, d, spectrum):
    """(n, d) Gaussian features whose covariance has the given eigenvalues in a random basis."""
    kz, kq = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(kq, (d, d)))
    return (jax.random.normal(kz, (n, d)) * jnp.sqrt(spectrum)) @ q.T


def test_power_law_representation_has_near_zero_penalty():
    d, n = 32, 4000
    ranks = jnp.arange(1, d + 1, dtype=jnp.float32)
    one_over_n = _representation(jax.random.key(0), n, d, 1.0 / ranks)
    white = _representation(jax.random.key(1), n, d, jnp.ones(d))
    steep = _representation(jax.random.key(2), n, d, ranks ** -2.0)
    penalty = jax.jit(spectral_penalty, static_argnames=("start",))
    p_1n = float(penalty(one_over_n, 1.0, start=5))
    p_white = float(penalty(white, 1.0, start=5))
    assert p_1n < 0.05
    assert p_white > 20 * p_1n and p_white > 1.0
    # the exponent is a parameter: the 1/n^2 representation fits alpha=2, not alpha=1
    assert float(penalty(steep, 2.0, start=5)) < 0.05 < float(penalty(one_over_n, 2.0, start=5))
    # externally supplied eigenvectors (as the reference computes on the full dataset)
    cov = jnp.cov(one_over_n.T)
    _, v = jnp.linalg.eigh(cov)
    np.testing.assert_allclose(float(spectral_penalty(one_over_n, 1.0, start=5, eigvecs=v)), p_1n, rtol=1e-3)


def test_spectral_penalty_gradients_are_finite():
    d = 16
    x = jax.random.uniform(jax.random.key(0), (64, 20))
    w = jax.random.normal(jax.random.key(1), (20, d))
    white = jax.random.normal(jax.random.key(2), (256, d))
    penalty = lambda h: spectral_penalty(h, 1.0, start=3)

    @jax.jit
    def check(w, white):
        g = jax.grad(lambda w: penalty(jnp.tanh(x @ w)))(w)
        gh = jax.grad(penalty)(white)
        # a normalised gradient step on the representation
        h2 = white - 0.5 * gh / jnp.abs(gh).max()
        return g, gh, penalty(white), penalty(h2)

    g, gh, before, after = check(w, white)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
    # nearly degenerate (white) spectrum: still finite thanks to the fixed eigenvectors
    assert bool(jnp.all(jnp.isfinite(gh)))
    assert float(after) < float(before)  # and the step lowers the penalty


def test_spectral_penalty_argument_errors():
    h = jnp.ones((8, 6))
    with pytest.raises(ValueError, match="start"):
        spectral_penalty(h, start=5)
    with pytest.raises(ValueError, match="batch"):
        spectral_penalty(jnp.ones((3, 20)), start=4)


def test_jacobian_conventions_differ_by_exactly_two():
    A = jax.random.normal(jax.random.key(7), (6, 4))
    x = jax.random.uniform(jax.random.key(8), (5, 6))
    fn = lambda x: x @ A
    target = float(jnp.sum(A ** 2))
    for n_proj in (-1, 3):
        full = jacobian_penalty(fn, x, jax.random.key(9), n_proj=n_proj, convention="frobenius_sq")
        half = jacobian_penalty(fn, x, jax.random.key(9), n_proj=n_proj, convention="half_frobenius_sq")
        assert float(full) == 2.0 * float(half)  # same key, same projections: exactly 2x (a power of 2)
    np.testing.assert_allclose(float(jacobian_penalty(fn, x, jax.random.key(9), -1, "half_frobenius_sq")),
                               0.5 * target, rtol=1e-5)
    np.testing.assert_allclose(float(jacobian_penalty(fn, x, jax.random.key(9), -1)), target, rtol=1e-5)  # default
    with pytest.raises(ValueError, match="half_frobenius_sq"):
        jacobian_penalty(fn, x, jax.random.key(9), convention="half")


def test_jacobian_convention_is_a_config_option():
    from robust_vision.config import RegularizerConfig
    from robust_vision.regularizers import JACOBIAN_CONVENTIONS

    assert RegularizerConfig().jacobian_convention == "frobenius_sq"  # default: ||J||_F^2, unchanged
    assert set(JACOBIAN_CONVENTIONS) == {"frobenius_sq", "half_frobenius_sq"}
    from robust_vision.config import ConfigError, config_from_dict

    cfg = config_from_dict({"training": {"regularizers": {"jacobian_convention": "half_frobenius_sq"}}})
    assert cfg.training.regularizers.jacobian_convention == "half_frobenius_sq"
    with pytest.raises(ConfigError, match="jacobian_convention"):
        config_from_dict({"training": {"regularizers": {"jacobian_convention": "half"}}})
