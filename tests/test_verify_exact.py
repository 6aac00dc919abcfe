"""The bound propagation against exact answers: the closed form of a linear model, the exact
range of a tiny ReLU network (one linear program per activation pattern, scipy), and float64
variants of the soundness checks."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.verify import METHODS
from verify_nets import all_bounds, cast_params, margins, points_in_set, tiny_model


def _linear_model(hidden=(), shape=(2, 3, 1), classes=4, seed=0, dtype=jnp.float32):
    model = create_model(ModelConfig(name="linear", hidden_units=list(hidden)), input_shape=shape,
                         num_classes=classes, seed=seed)
    return cast_params(model, dtype)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_linear_layer_equals_closed_form(dtype, tol):
    """z_y - z_j = x.w + c with w = W_y - W_j: the bound is x.w + c - eps * ||w||_dual
    (L1 for Linf, L2 for L2), the input kept inside [eps, 1 - eps] so the pixel box does not bind."""
    with jax.enable_x64(dtype == jnp.float64):
        model = _linear_model(dtype=dtype)
        x = jax.random.uniform(jax.random.key(1), (3, 2, 3, 1), dtype, minval=0.2, maxval=0.8)
        y = jnp.array([0, 2, 3])
        kernel, bias = np.asarray(model.head.kernel[...], np.float64), np.asarray(model.head.bias[...], np.float64)
        w = kernel[:, np.asarray(y)].T[:, None, :] - kernel.T[None]  # (B, K, D)
        center = np.einsum("bkd,bd->bk", w, np.asarray(x, np.float64).reshape(3, -1))
        center += (bias[np.asarray(y)][:, None] - bias[None])
        for norm, eps, dual in [("linf", 0.1, 1), ("l2", 0.15, 2)]:
            expected = center - eps * np.linalg.norm(w, ord=dual, axis=-1)
            bounds = all_bounds(model, norm, alpha_steps=3)(x, y, eps)
            for method in METHODS:
                if method == "ibp" and norm == "l2":  # IBP bounds the ball by its box: looser, still sound
                    assert np.all(np.asarray(bounds[method]) <= expected + tol)
                    continue
                np.testing.assert_allclose(bounds[method], expected, rtol=0, atol=tol, err_msg=f"{norm} {method}")


def _exact_min_margins(model, x: np.ndarray, y: int, eps: float) -> np.ndarray:
    """min over the Linf box & [0, 1] of z_y - z_j for every j, exactly: for every activation
    pattern of the two hidden layers the network is affine, and min over {box, pattern} is an LP."""
    layers = [(np.asarray(l.kernel[...], np.float64), np.asarray(l.bias[...], np.float64)) for l in model.hidden]
    head_w, head_b = np.asarray(model.head.kernel[...], np.float64), np.asarray(model.head.bias[...], np.float64)
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    sizes = [w.shape[1] for w, _ in layers]
    best = np.full(head_w.shape[1], np.inf)
    for pattern in itertools.product((0, 1), repeat=sum(sizes)):
        masks = np.split(np.asarray(pattern, np.float64), np.cumsum(sizes)[:-1])
        a, c = np.eye(x.size), np.zeros(x.size)  # the current layer's input as a x' + c
        rows, rhs = [], []
        for (w, b), m in zip(layers, masks):
            pre_a, pre_c = a @ w, c @ w + b
            # active: pre >= 0, i.e. -pre <= 0; inactive: pre <= 0
            sign = np.where(m > 0, -1.0, 1.0)
            rows.append((pre_a * sign).T)
            rhs.append(-(pre_c * sign))
            a, c = pre_a * m, pre_c * m
        out_a, out_c = a @ head_w, c @ head_w + head_b
        for j in range(head_w.shape[1]):
            obj = out_a[:, y] - out_a[:, j]
            res = linprog(obj, A_ub=np.concatenate(rows), b_ub=np.concatenate(rhs), bounds=list(zip(lo, hi)),
                          method="highs")
            if res.status == 0:
                best[j] = min(best[j], res.fun + out_c[y] - out_c[j])
    return best


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-9)])
def test_bounds_contain_exact_range_of_tiny_relu_net(dtype, tol):
    with jax.enable_x64(dtype == jnp.float64):
        model = _linear_model(hidden=(4, 3), shape=(1, 3, 1), classes=3, seed=3, dtype=dtype)
        x = jax.random.uniform(jax.random.key(4), (2, 1, 3, 1), dtype)
        y = jnp.array([1, 2])
        eps = 0.15
        bounds = all_bounds(model, "linf", alpha_steps=20)(x, y, eps)
        sampled = jax.vmap(lambda p: margins(model(p), y))(points_in_set(jax.random.key(5), x, eps, "linf", 4000))
        for b in range(2):
            exact = _exact_min_margins(model, np.asarray(x[b], np.float64).ravel(), int(y[b]), eps)
            # the LPs are right: no sampled point goes below the exact minimum, and some come close
            assert np.all(np.asarray(jnp.min(sampled[:, b], axis=0)) >= exact - 1e-6)
            for method in METHODS:
                assert np.all(np.asarray(bounds[method][b]) <= exact + tol), (method, bounds[method][b], exact)
            # alpha-CROWN on a 7-neuron net is close to exact (a loose bound would pass the line above too)
            gap = exact - np.asarray(bounds["alpha-crown"][b])
            assert np.all(gap[np.arange(3) != int(y[b])] < 0.5 * np.abs(exact[np.arange(3) != int(y[b])]) + 0.05)


def test_float64_bounds_hold():
    """Every layer type of the residual CNN (conv, batch norm, add, pools, dense) in float64."""
    name = "cnn"
    with jax.enable_x64(True):
        model, shape, classes = tiny_model(name, dtype=jnp.float64)
        x = jax.random.uniform(jax.random.key(1), (2, *shape), jnp.float64)
        y = jnp.array([0, 1])
        eps = 0.05
        bounds = all_bounds(model, "linf", alpha_steps=3)(x, y, eps)
        points = points_in_set(jax.random.key(2), x, eps, "linf", 2000)
        assert points.dtype == jnp.float64
        lowest = jnp.min(jax.jit(jax.vmap(lambda p: margins(model(p), y)))(points), axis=0)
        for method in METHODS:
            assert bounds[method].dtype == jnp.float64
            assert float(jnp.max(bounds[method] - lowest)) <= 1e-10, method
        assert bool(jnp.all(bounds["crown"] >= bounds["ibp"])) and bool(jnp.all(bounds["alpha-crown"] >= bounds["crown"]))


def test_tightness_against_the_jacobian():
    """Optimal radius = |J| r with J the Jacobian at x (pattern fixed); IBP's radius is never
    smaller; one linear layer is perfectly tight."""
    from robust_vision.verify import to_graph
    from robust_vision.verify.tightness import mean_radii_by_depth

    x = jax.random.uniform(jax.random.key(6), (2, 1, 3, 1), minval=0.3, maxval=0.7)
    eps = 0.05
    linear = _linear_model(shape=(1, 3, 1), classes=3)
    optimal, ibp = mean_radii_by_depth(to_graph(linear, x), x, eps)
    np.testing.assert_allclose(optimal, ibp, rtol=1e-6)
    model = _linear_model(hidden=(16, 12), shape=(1, 3, 1), classes=3, seed=3)
    optimal, ibp = mean_radii_by_depth(to_graph(model, x), x, eps)
    jac = jax.vmap(jax.jacobian(lambda v: model(v[None])[0]))(x).reshape(2, 3, -1)  # (B, K, D)
    np.testing.assert_allclose(optimal[-1], jnp.mean(jnp.sum(jnp.abs(jac), -1) * eps), rtol=1e-5)
    assert bool(jnp.all(optimal <= ibp * (1 + 1e-6))) and float(optimal[-1] / ibp[-1]) < 1.0
