"""Soundness of the bound propagation (robust_vision.verify): for every layer type and method,
lower <= z_y - z_j at 10,000 points of the input set and at the point PGD finds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from robust_vision.attacks.gradient import pgd
from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.models.robustbench import WideResNet
from robust_vision.verify import UnsupportedLayer, graph_and_values, margin_bounds
from verify_nets import TINY, all_bounds, margins, points_in_set, randomize_batch_stats, tiny_model

TOL = 1e-5
N_POINTS = 10_000


def _inputs(shape, classes, batch=2, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(kx, (batch, *shape)), jax.random.randint(ky, (batch,), 0, classes)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
@pytest.mark.parametrize("name", sorted(TINY))
def test_bounds_hold_at_sampled_and_pgd_points(name, norm, eps):
    model, shape, classes = tiny_model(name)
    x, y = _inputs(shape, classes)
    x = x.at[0, 0, 0].set(0.0).at[1, 0, 0].set(1.0)  # pixels on the edge of [0, 1]: the clipping matters
    sampled = jax.jit(jax.vmap(lambda p: margins(model(p), y)))(points_in_set(jax.random.key(2), x, eps, norm, N_POINTS))
    x_pgd = pgd(model, x, y, jax.random.key(3), eps, norm=norm, steps=20, loss="margin")
    assert float(jnp.max(jnp.abs(x_pgd - x))) <= eps + 1e-6
    at_pgd = margins(model(x_pgd), y)
    lowest = jnp.minimum(jnp.min(sampled, axis=0), at_pgd)  # (B, K)
    bound_fn = all_bounds(model, norm, alpha_steps=5)
    bounds = bound_fn(x, y, eps)
    for method, lb in bounds.items():
        assert lb.shape == (x.shape[0], classes)
        violation = float(jnp.max(lb - lowest))
        assert violation <= TOL, f"{method}: a bound exceeds a reachable margin by {violation}"
        np.testing.assert_allclose(jnp.take_along_axis(lb, y[:, None], 1), 0.0, atol=1e-6)
    # CROWN and CROWN-IBP never looser than IBP, alpha-CROWN never looser than CROWN
    for tighter, looser in [("crown", "ibp"), ("crown-ibp", "ibp"), ("alpha-crown", "crown")]:
        assert bool(jnp.all(bounds[tighter] >= bounds[looser] - 1e-6)), (tighter, looser)
    # at eps = 0 CROWN is exact: the converted graph computes the model's own margins
    np.testing.assert_allclose(bound_fn(x, y, 0.0)["crown"], margins(model(x), y), atol=1e-4)


def _residual_models():
    rngs = nnx.Rngs(0)
    return {
        "preact_resnet18": create_model(ModelConfig(name="preact_resnet18", width=1, normalize_mean=[0.5] * 3,
                                                    normalize_std=[0.25] * 3), input_shape=(8, 8, 3), num_classes=3,
                                        seed=0),
        "resnet18": create_model(ModelConfig(name="resnet18", width=1), input_shape=(8, 8, 3), num_classes=3, seed=0),
        "wrn-10-1": WideResNet(input_shape=(8, 8, 3), num_classes=3, rngs=rngs, depth=10, widen=1),
    }


def test_residual_networks_convert_exactly_and_ibp_holds():
    """The deep residual models convert exactly and their interval bounds hold (IBP only: cheap)."""
    x, y = _inputs((8, 8, 3), 3)
    points = points_in_set(jax.random.key(2), x, 0.002, "linf", 500)
    for name, model in _residual_models().items():
        model.eval()
        randomize_batch_stats(model, 0)

        @jax.jit
        def check(x, points):
            _, values = graph_and_values(model, x)
            sampled = jax.vmap(lambda p: margins(model(p), y))(points)
            lb = margin_bounds(model, x, y, 0.002, method="ibp")
            return values[-1], model(x), lb, jnp.min(sampled, axis=0)

        graph_logits, logits, lb, lowest = check(x, points)
        np.testing.assert_allclose(graph_logits, logits, rtol=1e-5, atol=1e-5, err_msg=name)
        assert float(jnp.max(lb - lowest)) <= TOL, name


def test_unsupported_model_names_itself():
    model = create_model(ModelConfig(name="lenet"), input_shape=(8, 8, 1), num_classes=3, seed=0)
    with pytest.raises(UnsupportedLayer, match="cannot bound model"):
        graph_and_values(model, jnp.zeros((1, 8, 8, 1)))
