import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.config import TrainingConfig
from robust_vision.metrics import logit_margin
from robust_vision.losses import cross_entropy, focal, label_smoothing, make_loss, margin

LOGITS = jnp.array([[2.0, 1.0, -1.0], [0.5, 0.5, 3.0]])
LABELS = jnp.array([0, 1])


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_known_values():
    expected = -_log_softmax(LOGITS)[[0, 1], [0, 1]]
    np.testing.assert_allclose(cross_entropy(LOGITS, LABELS), expected, rtol=1e-6)


def test_label_smoothing_known_values():
    s = 0.1
    logp = _log_softmax(LOGITS)
    targets = np.full((2, 3), s / 3)
    targets[[0, 1], [0, 1]] += 1 - s
    np.testing.assert_allclose(label_smoothing(LOGITS, LABELS, s), -(targets * logp).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(label_smoothing(LOGITS, LABELS, 0.0), cross_entropy(LOGITS, LABELS), rtol=1e-6)


def test_margin_known_values():
    # example 0: margin 2 - 1 = 1; example 1: 0.5 - 3 = -2.5
    np.testing.assert_allclose(logit_margin(LOGITS, LABELS), [1.0, -2.5])
    np.testing.assert_allclose(margin(LOGITS, LABELS, 1.0), [0.0, 3.5])
    np.testing.assert_allclose(margin(LOGITS, LABELS, 10.0), [9.0, 12.5])


def test_focal_known_values_and_gamma_zero_is_weighted_ce():
    logp = _log_softmax(LOGITS)[[0, 1], [0, 1]]
    p = np.exp(logp)
    np.testing.assert_allclose(focal(LOGITS, LABELS, 0.25, 2.0), -0.25 * (1 - p) ** 2 * logp, rtol=1e-5)
    np.testing.assert_allclose(focal(LOGITS, LABELS, 1.0, 0.0), cross_entropy(LOGITS, LABELS), rtol=1e-6)


def test_combined_is_weighted_sum():
    cfg = TrainingConfig(loss_type="combined", loss_weights={"label_smoothing": 1.0, "margin": 0.5},
                         label_smoothing=0.1, margin_lambda=2.0)
    expected = label_smoothing(LOGITS, LABELS, 0.1) + 0.5 * margin(LOGITS, LABELS, 2.0)
    np.testing.assert_allclose(make_loss(cfg)(LOGITS, LABELS), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="valid components"):
        make_loss(TrainingConfig(loss_type="combined", loss_weights={"hinge": 1.0}))


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing", "margin", "focal", "combined"])
def test_gradients_match_finite_differences(name):
    loss = make_loss(TrainingConfig(loss_type=name, margin_lambda=3.0))
    z = jnp.array([[0.3, -0.2, 0.1, 0.05]], jnp.float64) if jax.config.jax_enable_x64 else jnp.array([[0.3, -0.2, 0.1, 0.05]])
    y = jnp.array([2])
    grad = jax.grad(lambda v: loss(v, y).sum())(z)
    eps = 1e-3
    numeric = np.zeros(4)
    for j in range(4):
        dz = jnp.zeros_like(z).at[0, j].set(eps)
        numeric[j] = (loss(z + dz, y).sum() - loss(z - dz, y).sum()) / (2 * eps)
    np.testing.assert_allclose(grad[0], numeric, atol=2e-3)


def test_margin_gradient_pushes_true_logit_up_and_competitor_down():
    g = jax.grad(lambda z: margin(z, LABELS, 10.0).sum())(LOGITS)
    assert g[0, 0] < 0 and g[0, 1] > 0 and g[0, 2] == 0  # only y and the strongest competitor move
