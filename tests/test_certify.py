"""Randomized-smoothing certification (robust_vision.evaluation.certify).

A linear binary classifier with logits [s, -s], s = w.x + b and ||w|| = 1 has a known
geometry: the L2 distance from x to its decision boundary is |s(x)|, and the smoothed
classifier's top-class probability is exactly Phi(|s| / sigma), so the exact certified
radius of Cohen et al. equals the true distance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from robust_vision.evaluation.certify import (
    ABSTAIN, certified_accuracy_curve, certify, clopper_pearson_lower, predict, sample_counts, sign_test_pvalue,
)

SHAPE = (4, 4, 1)
D = 16
SIGMA = 0.25


def make_linear():
    w = jax.random.normal(jax.random.key(0), (D,))
    w = w / jnp.linalg.norm(w)
    centre = jnp.full((D,), 0.5)
    b = -jnp.dot(w, centre)  # the centre lies on the boundary
    return w, b, centre


def linear_logits(w, b, x):
    s = x.reshape(x.shape[0], -1) @ w + b
    return jnp.stack([s, -s], axis=-1)


@pytest.fixture(scope="module")
def linear():
    w, b, centre = make_linear()
    f = functools.partial(linear_logits, w, b)
    dist = jnp.array([0.05, -0.1, 0.15, -0.2, 0.25, 0.3])  # signed distance to the boundary
    x = (centre[None] + dist[:, None] * w[None]).reshape((-1,) + SHAPE)
    labels = np.where(np.asarray(dist) > 0, 0, 1)
    return f, x, np.abs(np.asarray(dist)), labels


def test_clopper_pearson_matches_scipy_definition():
    for k, n, alpha in [(90, 100, 0.05), (500, 1000, 0.001), (1, 10, 0.01), (7, 7, 0.1)]:
        lower = float(clopper_pearson_lower(k, n, alpha))
        # The exact lower bound p_L solves P(X >= k | n, p_L) = alpha.
        assert stats.binom.sf(k - 1, n, lower) == pytest.approx(alpha, rel=1e-6)
    # Known closed forms: k = n gives alpha^(1/n); k = 0 gives 0.
    assert float(clopper_pearson_lower(100, 100, 0.001)) == pytest.approx(0.001 ** 0.01, rel=1e-9)
    assert float(clopper_pearson_lower(0, 50, 0.05)) == 0.0
    np.testing.assert_allclose(clopper_pearson_lower(np.array([90, 500]), np.array([100, 1000]), 0.05),
                               [stats.beta.ppf(0.05, 90, 11), stats.beta.ppf(0.05, 500, 501)])


def test_sign_test_matches_scipy_binomtest():
    for c1, c2 in [(60, 40), (40, 60), (50, 50), (0, 12), (520, 480), (3, 0)]:
        assert float(sign_test_pvalue(c1, c2)) == pytest.approx(stats.binomtest(c1, c1 + c2, 0.5).pvalue,
                                                                rel=1e-9)


def test_sample_counts_sum_and_determinism(linear):
    f, x, _, _ = linear
    # n not a multiple of the per-pass sample count: the masked last pass counts exactly n.
    counts = jax.jit(functools.partial(sample_counts, f, n=1001, batch_size=6 * 64))
    a, b, c = (counts(x, jax.random.key(k), SIGMA) for k in (1, 1, 2))
    assert a.shape == (6, 2) and a.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(a).sum(axis=1), 1001)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # Eager and jitted agree (the function is pure).
    np.testing.assert_array_equal(np.asarray(sample_counts(f, x, jax.random.key(1), SIGMA, 1001, 6 * 64)),
                                  np.asarray(a))


def test_certified_radius_below_and_close_to_true_distance(linear):
    f, x, dist, labels = linear
    pred, radius = certify(f, x, jax.random.key(3), SIGMA, n0=100, n=50_000, alpha=0.001, batch_size=6 * 5000)
    np.testing.assert_array_equal(pred, labels)
    assert np.all(radius <= dist + 1e-9)
    # With n = 5e4 the bound is within ~0.005 of the exact radius sigma * Phi^-1(p_A) = dist.
    np.testing.assert_allclose(radius, dist, atol=0.012)
    # The smoothed prediction agrees and does not abstain far from the boundary.
    np.testing.assert_array_equal(predict(f, x, jax.random.key(4), SIGMA, n=2000, alpha=0.001,
                                          batch_size=6 * 500), labels)


def test_abstains_on_a_tie(linear):
    f, _, _, _ = linear
    _, _, centre = make_linear()
    x_tie = jnp.tile(centre.reshape((1,) + SHAPE), (4, 1, 1, 1))  # exactly on the boundary: p_A = 1/2
    assert np.all(predict(f, x_tie, jax.random.key(5), SIGMA, n=1000, alpha=0.001) == ABSTAIN)
    pred, radius = certify(f, x_tie, jax.random.key(6), SIGMA, n0=100, n=1000, alpha=0.001)
    assert np.all(pred == ABSTAIN) and np.all(radius == 0.0)


def test_certified_accuracy_curve_counts_abstentions_as_wrong():
    preds = np.array([0, 1, ABSTAIN, 1, 0])
    radii = np.array([0.5, 0.2, 0.0, 1.0, 0.1])
    labels = np.array([0, 1, 1, 0, 1])
    rows = certified_accuracy_curve(preds, radii, labels, [0.0, 0.25, 0.6])
    assert [r["certified_accuracy"] for r in rows] == [0.4, 0.2, 0.0]
    assert all(r["abstain_fraction"] == 0.2 and r["n"] == 5 for r in rows)
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy_curve(preds, radii[:3], labels, [0.0])


def test_bad_sigma_is_rejected(linear):
    f, x, _, _ = linear
    with pytest.raises(ValueError, match="sigma must be > 0"):
        certify(f, x, jax.random.key(0), 0.0)
