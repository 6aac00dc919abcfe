"""Attacks, adversarial-training losses and robust-accuracy evaluation (robust_vision.attacks).

Models are written in plain jnp: a linear binary classifier with known geometry and a small
random tanh network whose labels are its own clean predictions (clean accuracy 100%).
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_vision.attacks import (
    ATTACKS, AttackSanityWarning, apgd_checkpoints, fgsm, get_attack, madry_pgd_examples, per_example_robustness,
    pgd, robust_accuracy,
    sanity_checks, sparse_pixel, trades_loss,
)
from robust_vision.metrics import logit_margin

H, W, C, K = 6, 6, 2, 4
D = H * W * C


def linear_params(seed: int = 0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (D,)), 0.1 * jax.random.normal(k2, ())


def linear_logits(params, x):
    w, b = params
    s = x.reshape(x.shape[0], -1) @ w + b
    return jnp.stack([s, -s], axis=-1)


def mlp_params(seed: int = 1, hidden: int = 32):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {"w1": jax.random.normal(k1, (D, hidden)) * 2.0 / math.sqrt(D),
            "b1": jax.random.normal(k3, (hidden,)) * 0.5,
            "w2": jax.random.normal(k2, (hidden, K)) * 3.0 / math.sqrt(hidden)}


def mlp_logits(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"]


def images(n: int, seed: int = 2) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, H, W, C))


@pytest.fixture(scope="module")
def mlp_data():
    params = mlp_params()
    f = functools.partial(mlp_logits, params)
    x = images(48)
    y = jnp.argmax(f(x), axis=-1).astype(jnp.int32)
    return f, x, y


_JIT_CACHE: dict = {}


def run(name, f, x, y, key, eps, **hyper):
    """The attack, jitted once per (attack, model, hyper-parameters); eps and key are traced."""
    cache_key = (name, f, tuple(sorted(hyper.items())))
    if cache_key not in _JIT_CACHE:
        _JIT_CACHE[cache_key] = jax.jit(functools.partial(get_attack(name), f, **hyper))
    return _JIT_CACHE[cache_key](x, y, key, eps)


def linf(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def l2_per_example(a, b):
    return np.sqrt(np.sum(np.square(np.asarray(a - b)).reshape(a.shape[0], -1), axis=1))


# ---------------------------------------------------------------- registry and input checks


def test_registry_lists_valid_names_on_unknown():
    assert set(ATTACKS) == {"fgsm", "pgd", "apgd_ce", "sparse_pixel", "noise_attack", "apgd_dlr", "apgd_l1", "apgd_t", "fab_t", "square"}
    assert get_attack("pgd") is pgd
    with pytest.raises(ValueError, match="valid attacks: apgd_ce, apgd_dlr, apgd_l1, apgd_t, fab_t, fgsm, noise_attack, pgd, sparse_pixel, square"):
        get_attack("cw")


def test_bad_input_errors(mlp_data):
    f, x, y = mlp_data
    with pytest.raises(ValueError, match="NHWC"):
        fgsm(f, x[0], y, None, 0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pgd(f, x, y, jax.random.key(0), -0.1)
    with pytest.raises(ValueError, match="valid norms: linf, l2"):
        pgd(f, x, y, jax.random.key(0), 0.1, norm="l1")
    with pytest.raises(ValueError, match="fraction of pixels"):
        sparse_pixel(f, x, y, jax.random.key(0), 5.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robust_accuracy(f, x * 255.0, y, jax.random.key(0), "fgsm", [0.1])


# ---------------------------------------------------------------- eps = 0, constraints, determinism


# One configuration per attack, shared by the tests below so each compiles once.
CONFIGS = {
    "fgsm": ("fgsm", {}, "linf"),
    "pgd_linf": ("pgd", {"steps": 5, "restarts": 2}, "linf"),
    "pgd_l2": ("pgd", {"steps": 5, "norm": "l2", "step_size": 0.2}, "l2"),  # explicit step: eps=0 still exact
    "apgd_linf": ("apgd_ce", {"steps": 10}, "linf"),
    "apgd_l2": ("apgd_ce", {"steps": 10, "norm": "l2"}, "l2"),
    "sparse": ("sparse_pixel", {"steps": 10, "step_size": 0.2, "restarts": 2}, "l0"),
    "noise": ("noise_attack", {"steps": 10, "lr": 0.05}, "l2"),
}
BUDGET = {"linf": 0.05, "l2": 0.5, "l0": 0.25}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_eps_zero_returns_x_exactly(mlp_data, config):
    f, x, y = mlp_data
    name, hyper, _ = CONFIGS[config]
    x_adv = run(name, f, x, y, jax.random.key(3), 0.0, **hyper)
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


@pytest.mark.parametrize("config", [c for c in CONFIGS if CONFIGS[c][2] != "l0"])
def test_budget_and_range_respected(mlp_data, config):
    f, x, y = mlp_data
    name, hyper, norm = CONFIGS[config]
    eps = BUDGET[norm]
    # Images touching 0 and 1 exercise the clipping.
    x = jnp.clip(x * 1.4 - 0.2, 0.0, 1.0)
    x_adv = run(name, f, x, y, jax.random.key(4), eps, **hyper)
    assert x_adv.shape == x.shape and x_adv.dtype == jnp.float32
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if norm == "linf":
        assert linf(x_adv, x) <= eps + 1e-6
    else:
        assert np.all(l2_per_example(x_adv, x) <= eps * (1 + 1e-5))
    # The attack moved something and lowered the mean margin.
    assert linf(x_adv, x) > 0
    assert float(jnp.mean(logit_margin(f(x_adv), y))) < float(jnp.mean(logit_margin(f(x), y)))


@pytest.mark.parametrize("config", ["pgd_linf", "apgd_linf", "sparse", "noise"])
def test_same_key_same_output(mlp_data, config):
    f, x, y = mlp_data
    name, hyper, norm = CONFIGS[config]
    eps = BUDGET[norm]
    a = run(name, f, x, y, jax.random.key(5), eps, **hyper)
    b = run(name, f, x, y, jax.random.key(5), eps, **hyper)
    c = run(name, f, x, y, jax.random.key(6), eps, **hyper)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_jit_matches_eager(mlp_data):
    f, x, y = mlp_data
    jitted = jax.jit(functools.partial(pgd, f, steps=4, norm="linf"))
    eager = np.asarray(pgd(f, x, y, jax.random.key(7), 0.05, steps=4))
    np.testing.assert_allclose(np.asarray(jitted(x, y, jax.random.key(7), 0.05)), eager, atol=1e-6)
    unrolled = jax.jit(functools.partial(pgd, f, steps=4, norm="linf", unroll=True))
    np.testing.assert_allclose(np.asarray(unrolled(x, y, jax.random.key(7), 0.05)), eager, atol=1e-6)


# ---------------------------------------------------------------- strength


def test_fgsm_is_analytic_worst_case_on_linear_model():
    params = linear_params()
    f = functools.partial(linear_logits, params)
    w, b = params
    x = jnp.clip(images(16, seed=8) * 1.2 - 0.1, 0.0, 1.0)
    y = jnp.argmax(f(x), axis=-1).astype(jnp.int32)
    eps = 0.03
    # Worst case of a linear score under Linf + box: move every pixel by eps against the
    # true class's score direction (s for class 0, -s for class 1), clipped to [0, 1].
    direction = jnp.where(y == 0, -1.0, 1.0)[:, None] * jnp.sign(w)[None, :]
    x_star = jnp.clip(x.reshape(16, -1) + eps * direction, 0.0, 1.0).reshape(x.shape)
    x_adv = fgsm(f, x, y, None, eps)
    np.testing.assert_allclose(np.asarray(x_adv), np.asarray(x_star), atol=1e-7)
    # PGD cannot do better than the exact optimum and gets there.
    x_pgd = run("pgd", f, x, y, jax.random.key(0), eps, steps=20)
    np.testing.assert_allclose(np.asarray(logit_margin(f(x_pgd), y)),
                               np.asarray(logit_margin(f(x_star), y)), rtol=1e-4, atol=1e-4)


def test_pgd_at_least_as_strong_as_fgsm_and_monotone(mlp_data):
    f, x, y = mlp_data
    eps_list = [0.0, 0.02, 0.05, 0.1]
    key = jax.random.key(9)
    fg = robust_accuracy(f, x, y, key, "fgsm", eps_list, batch_size=48)
    pg = robust_accuracy(f, x, y, key, "pgd", eps_list, batch_size=48, steps=10, norm="linf")
    ap = robust_accuracy(f, x, y, key, "apgd_ce", eps_list[-1:], batch_size=48, steps=20)
    assert fg[0]["accuracy"] == pg[0]["accuracy"] == 1.0  # labels are clean predictions
    for a, b in zip(fg, pg):
        assert b["accuracy"] <= a["accuracy"] and b["margin"] <= a["margin"] + 1e-6
    accs = [r["accuracy"] for r in pg]
    assert all(b <= a for a, b in zip(accs, accs[1:]))
    assert accs[-1] < 0.5  # eps = 0.1 breaks this model
    assert ap[0]["accuracy"] <= pg[-1]["accuracy"] and ap[0]["margin"] <= pg[-1]["margin"] + 1e-3


def test_pgd_restarts_never_weaker(mlp_data):
    f, x, y = mlp_data
    one = robust_accuracy(f, x, y, jax.random.key(10), "pgd", [0.03], batch_size=48, steps=10, norm="linf")[0]
    many = robust_accuracy(f, x, y, jax.random.key(10), "pgd", [0.03], batch_size=48, steps=10, norm="linf",
                           restarts=3)[0]
    # Per example the best of 3 runs is kept, so accuracy can only drop (up to the noise of
    # one run's random start against another's: allow 2 examples).
    assert many["accuracy"] <= one["accuracy"] + 2 / 48


def test_apgd_checkpoints_follow_paper():
    # w_j = ceil(p_j N) for N = 100: p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert [c + 1 for c in apgd_checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]


def test_sparse_pixel_l0_exact(mlp_data):
    f, x, y = mlp_data
    for frac in (0.03, 0.1, 0.25):
        x_adv = run("sparse_pixel", f, x, y, jax.random.key(11), frac, **CONFIGS["sparse"][1])
        changed = np.any(np.asarray(x_adv) != np.asarray(x), axis=-1).reshape(x.shape[0], -1).sum(axis=1)
        assert changed.max() <= math.floor(frac * H * W)
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # With a quarter of the pixels the attack hurts: the mean margin drops.
    assert float(jnp.mean(logit_margin(f(x_adv), y))) < float(jnp.mean(logit_margin(f(x), y)))


def test_noise_attack_penalty_controls_size():
    params = linear_params(3)
    f = functools.partial(linear_logits, params)
    x = images(16, seed=12)
    y = jnp.argmax(f(x), axis=-1).astype(jnp.int32)
    small = run("noise_attack", f, x, y, jax.random.key(0), jnp.inf, steps=60, lr=0.02, penalty=50.0)
    large = run("noise_attack", f, x, y, jax.random.key(0), jnp.inf, steps=60, lr=0.02, penalty=0.0)
    # Without a penalty the unconstrained attack flips every example of a linear model.
    assert float(jnp.mean(jnp.argmax(f(large), -1) != y)) == 1.0
    assert l2_per_example(small, x).mean() < l2_per_example(large, x).mean()


# ---------------------------------------------------------------- robust_accuracy bookkeeping


def test_robust_accuracy_counts_each_example_once(mlp_data):
    f, x, y = mlp_data
    y_bad = y.at[:5].set((y[:5] + 1) % K)  # 5 wrong labels -> clean accuracy 43/48
    rows7 = robust_accuracy(f, x, y_bad, jax.random.key(0), "fgsm", [0.0, 0.02], batch_size=7)
    rows48 = robust_accuracy(f, x, y_bad, jax.random.key(0), "fgsm", [0.0, 0.02], batch_size=48)
    assert rows7[0]["n"] == 48 and rows7[0]["accuracy"] == pytest.approx(43 / 48)
    for a, b in zip(rows7, rows48):
        assert a["accuracy"] == b["accuracy"]
        assert a["margin"] == pytest.approx(b["margin"], rel=1e-5)
    expected = float(jnp.mean(logit_margin(f(fgsm(f, x, y_bad, None, 0.02)), y_bad)))
    assert rows7[1]["margin"] == pytest.approx(expected, rel=1e-5)


def test_one_program_for_every_eps_step_size_and_restarts(mlp_data):
    """eps, step_size and restarts are traced: one compilation serves all of them, and the
    traced path gives the same examples as calling pgd directly with Python values."""
    from robust_vision.attacks import evaluate

    f, x, y = mlp_data
    key = jax.random.key(3)
    evaluate._JIT_CACHE.clear()
    for step_size, restarts in ((0.01, 1), (0.02, 2), (0.005, 3)):
        per_example_robustness(f, x, y, key, "pgd", [0.0, 0.03, 0.1], batch_size=16, steps=3,
                               step_size=step_size, restarts=restarts)
    (fn,) = evaluate._JIT_CACHE.values()
    assert fn._cache_size() == 1
    traced = per_example_robustness(f, x, y, key, "pgd", [0.05], batch_size=48, steps=4, step_size=0.02,
                                    restarts=2)[0]
    x_adv = pgd(f, x, y, jax.random.fold_in(key, 0), 0.05, steps=4, step_size=0.02, restarts=2)
    direct = np.asarray(jnp.argmax(f(x_adv), -1) == y)
    np.testing.assert_array_equal(traced["correct"], direct)
    np.testing.assert_allclose(traced["margin"], np.asarray(logit_margin(f(x_adv), y)), atol=1e-5)


# ---------------------------------------------------------------- sanity checks


def test_sanity_checks_pass_on_sound_model(mlp_data):
    f, x, y = mlp_data
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttackSanityWarning)
        res = sanity_checks(f, x, y, jax.random.key(0), 0.05, batch_size=48)
    assert res == {k: True for k in ("deterministic", "outputs_are_logits", "eps0_unchanged", "monotone_in_eps",
                                     "pgd_stronger_than_fgsm", "gradients_nonzero")}


def test_sanity_checks_flag_probabilities_and_masked_gradients(mlp_data):
    f, x, y = mlp_data
    probs_fn = lambda z: jax.nn.softmax(f(z))  # noqa: E731
    with pytest.warns(AttackSanityWarning, match="outputs_are_logits"):
        res = sanity_checks(probs_fn, x, y, jax.random.key(0), 0.05, batch_size=48, checks=["outputs_are_logits"])
    assert res == {"outputs_are_logits": False}
    # Quantising the input makes the input gradient exactly zero (shattered gradients).
    masked = lambda z: f(jnp.round(z * 4) / 4)  # noqa: E731
    with pytest.warns(AttackSanityWarning, match="gradients_nonzero"):
        res = sanity_checks(masked, x, y, jax.random.key(0), 0.05, batch_size=48, checks=["gradients_nonzero"])
    assert res == {"gradients_nonzero": False}
    with pytest.raises(ValueError, match="valid checks: deterministic"):
        sanity_checks(f, x, y, jax.random.key(0), 0.05, checks=["psychic"])


# ---------------------------------------------------------------- adversarial-training losses


def test_trades_beta_zero_is_cross_entropy(mlp_data):
    f, x, y = mlp_data
    trades = jax.jit(functools.partial(trades_loss, f, steps=3))
    loss = trades(x, y, jax.random.key(0), 0.03, beta=0.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(f(x), y)
    assert loss.shape == (x.shape[0],)
    # float32 rounding of two differently fused programs (a few ulp); a KL term left in is >= 1e-4
    np.testing.assert_allclose(np.asarray(loss), np.asarray(ce), rtol=1e-5)
    # With beta > 0 the KL term is non-negative and positive for a non-trivial attack.
    loss6 = trades(x, y, jax.random.key(0), 0.03, beta=6.0)
    assert np.all(np.asarray(loss6) >= np.asarray(ce) - 1e-6) and float(jnp.mean(loss6 - ce)) > 1e-4


def test_training_losses_differentiable_in_params(mlp_data):
    _, x, y = mlp_data
    params = mlp_params()

    def madry(p):
        f = functools.partial(mlp_logits, p)
        x_adv = madry_pgd_examples(f, x, y, jax.random.key(1), 0.03, steps=3, step_size=0.01)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f(x_adv), y))

    def trades(p):
        return jnp.mean(trades_loss(functools.partial(mlp_logits, p), x, y, jax.random.key(1), 0.03, 3, None, 6.0))

    grads = {}
    for name, loss_fn in (("madry", madry), ("trades", trades)):
        grads[name] = jax.jit(jax.grad(loss_fn))(params)
        flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[name])])
        assert np.all(np.isfinite(flat)) and np.abs(flat).max() > 0
    # Madry examples are constants for the outer gradient: it equals the gradient of CE
    # evaluated at the fixed x_adv (Danskin).
    f0 = functools.partial(mlp_logits, params)
    x_adv = madry_pgd_examples(f0, x, y, jax.random.key(1), 0.03, steps=3, step_size=0.01)
    fixed = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, x_adv), y)))
    for a, b in zip(jax.tree.leaves(grads["madry"]), jax.tree.leaves(fixed(params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
