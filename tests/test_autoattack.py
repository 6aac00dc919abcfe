"""AutoAttack ensemble and its attacks (APGD-T, FAB-T, Square) on tiny models with known answers."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.attacks import get_attack
from robust_vision.attacks.apgd_t import apgd_t, dlr_loss, dlr_targeted_loss
from robust_vision.attacks.autoattack import CARD_KEYS, card_dataset, card_eps, run_autoattack, write_autoattack_json
from robust_vision.attacks.fab import fab_t_minimal
from robust_vision.preflight import parse_card
from robust_vision.attacks.gradient import apgd_ce
from robust_vision.attacks.square import square_trace

SHAPE = (8, 8, 1)


def _mlp(seed: int, n_classes: int = 10, scale: float = 1.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (int(np.prod(SHAPE)), 32)) / 4.0
    w2 = jax.random.normal(k2, (32, n_classes)) / 2.0

    def logits_fn(x):
        return scale * (jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 0.5) @ w2)
    return logits_fn


def _data(logits_fn, n: int, seed: int = 1):
    x = jax.random.uniform(jax.random.key(seed), (n,) + SHAPE)
    return x, jnp.argmax(logits_fn(x), -1).astype(jnp.int32)  # labels = clean predictions


@jax.custom_vjp
def _no_grad_identity(x):
    return x


def _fwd(x):
    return x, None


def _bwd(_, g):
    # Any use of a gradient through this model fails loudly (at trace time, under jit).
    raise AssertionError("a gradient of the model was requested")


_no_grad_identity.defvjp(_fwd, _bwd)


@jax.custom_vjp
def _zero_grad_identity(x):
    return x


_zero_grad_identity.defvjp(lambda x: (x, None), lambda _, g: (jnp.zeros_like(g),))


def test_dlr_losses_known_values_and_scale_invariance():
    z = jnp.array([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    y = jnp.array([0, 0])
    # Row 0 correct: -(3 - 1) / (3 - 0); row 1 wrong: -(0 - 2) / (2 - 0).
    np.testing.assert_allclose(dlr_loss(z, y), [-2 / 3, 1.0], rtol=1e-6)
    t = jnp.array([3, 1])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    np.testing.assert_allclose(dlr_targeted_loss(z, y, t), [-4 / 3.5, 2 / 2.5], rtol=1e-6)
    np.testing.assert_allclose(dlr_loss(1e4 * z + 7.0, y), dlr_loss(z, y), rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_analytic_distance_of_linear_classifier(norm):
    d = int(np.prod(SHAPE))
    w = jax.random.normal(jax.random.key(3), (d, 2)) * 0.3
    b = jnp.array([0.4, 0.0])

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w + b

    x = 0.4 + 0.2 * jax.random.uniform(jax.random.key(4), (6,) + SHAPE)
    y = jnp.argmax(logits_fn(x), -1).astype(jnp.int32)
    t = 1 - y
    wd = (w[:, 1] - w[:, 0])[None] * jnp.where(t == 1, 1.0, -1.0)[:, None]  # w_t - w_y per example
    gap = jnp.take_along_axis(logits_fn(x), y[:, None], 1)[:, 0] - jnp.take_along_axis(logits_fn(x), t[:, None], 1)[:, 0]
    if norm == "linf":
        dist = gap / jnp.sum(jnp.abs(wd), -1)
        step = dist[:, None] * jnp.ones_like(wd)
    else:
        dist = gap / jnp.linalg.norm(wd, axis=-1)
        step = jnp.abs(dist[:, None] * wd / jnp.linalg.norm(wd, axis=-1, keepdims=True))
    assert float(jnp.max(step)) < 0.4  # the minimal perturbation stays inside [0, 1]: the formula is exact

    x_adv, found = jax.jit(lambda x, y: fab_t_minimal(logits_fn, x, y, None, norm=norm, steps=30))(x, y)
    np.testing.assert_array_less(np.asarray(dist) * (1 - 1e-4), np.asarray(found))  # never below the optimum
    np.testing.assert_array_less(np.asarray(found), np.asarray(dist) * 1.01)       # and within 1% of it
    assert bool(jnp.all(jnp.argmax(logits_fn(x_adv), -1) != y))
    delta = (x_adv - x).reshape(x.shape[0], -1)
    size = jnp.max(jnp.abs(delta), -1) if norm == "linf" else jnp.linalg.norm(delta, axis=-1)
    np.testing.assert_allclose(size, found, rtol=1e-5)


def test_apgd_t_beats_apgd_ce_on_a_model_that_masks_the_ce_gradient():
    masked = _mlp(0, scale=1e4)  # softmax saturates: the CE gradient underflows to zero
    x, y = _data(masked, 32)
    eps = 0.15
    key = jax.random.key(5)
    x_ce = jax.jit(lambda x, y: apgd_ce(masked, x, y, key, eps, steps=20))(x, y)
    x_t = jax.jit(lambda x, y: apgd_t(masked, x, y, key, eps, steps=20, n_targets=3))(x, y)
    succ_ce = float(jnp.mean(jnp.argmax(masked(x_ce), -1) != y))
    succ_t = float(jnp.mean(jnp.argmax(masked(x_t), -1) != y))
    assert succ_t >= succ_ce
    assert succ_t >= 0.5 and succ_t > succ_ce + 0.25, (succ_ce, succ_t)
    assert float(jnp.max(jnp.abs(x_t - x))) <= eps + 1e-6


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_square_is_gradient_free_and_lowers_the_margin_monotonically(norm, eps):
    base = _mlp(0)
    model = lambda x: base(_no_grad_identity(x))  # noqa: E731  (any gradient raises)
    x, y = _data(base, 16)
    x_adv, history = jax.jit(lambda x, y: square_trace(model, x, y, jax.random.key(6), eps, norm=norm,
                                                       n_queries=300))(x, y)
    history = np.asarray(history)
    assert history.shape == (300, 16)
    assert np.all(np.diff(history, axis=0) <= 0.0)          # never accepts a worse point
    assert np.all((history[-1] < history[0]) | (history[0] <= 0))  # improves every point not fooled at the start
    success = np.mean(np.asarray(jnp.argmax(base(x_adv), -1) != y))
    assert success >= 0.5, success
    delta = (x_adv - x).reshape(16, -1)
    size = jnp.max(jnp.abs(delta), -1) if norm == "linf" else jnp.linalg.norm(delta, axis=-1)
    assert float(jnp.max(size)) <= eps * (1 + 1e-5)
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    # Square at eps = 0 returns x exactly.
    x0, _ = square_trace(model, x, y, jax.random.key(6), 0.0, norm=norm, n_queries=3)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x))


SMALL = dict(steps=5, fab_steps=5, n_queries=100, n_targets=3, batch_size=16)


def test_ensemble_not_weaker_than_any_stage_and_deterministic(tmp_path):
    model = _mlp(2)
    x, y = _data(model, 24, seed=7)
    x, y = np.array(x), np.array(y)
    y[:3] = (y[:3] + 1) % 10  # a few misclassified points: clean accuracy < 1
    r = run_autoattack(model, x, y, 0.06, "linf", jax.random.key(8), standalone=True, return_adversarial=True,
                       **SMALL)
    accs = [s["robust_accuracy"] for s in r["stages"]]
    assert [s["attack"] for s in r["stages"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert r["clean_accuracy"] == pytest.approx(21 / 24)
    assert all(b <= a for a, b in zip(accs, accs[1:])) and r["robust_accuracy"] == accs[-1]
    assert all(r["robust_accuracy"] <= s["standalone_robust_accuracy"] for s in r["stages"])
    assert r["robust_accuracy"] < r["clean_accuracy"]
    assert sum(s["new_adversarial"] for s in r["stages"]) == round((r["clean_accuracy"] - r["robust_accuracy"]) * 24)
    # The kept points are adversarial and inside the ball; the robust ones are misclassified nowhere.
    fooled = ~r["robust"] & (np.asarray(jnp.argmax(model(jnp.asarray(x)), -1)) == y)
    assert np.all(np.asarray(jnp.argmax(model(jnp.asarray(r["x_adv"][fooled])), -1)) != y[fooled])
    assert np.max(np.abs(r["x_adv"] - x)) <= 0.06 + 1e-6
    # Same key -> the same result, bit for bit (the compiled stages are reused).
    again = run_autoattack(model, x, y, 0.06, "linf", jax.random.key(8), return_adversarial=True, **SMALL)
    np.testing.assert_array_equal(again["x_adv"], r["x_adv"])

    path = write_autoattack_json(tmp_path / "autoattack.json", r, model_name="mlp", dataset="cifar10",
                                 architecture="wrn-28-10", card={"authors": "A. B", "additional_data": False})
    rec = json.loads(path.read_text())
    assert list(rec) == list(CARD_KEYS)  # RobustBench's model card, in its order
    assert rec["threat_model"] == "Linf" and rec["eps"] == "0.06" and rec["dataset"] == "cifar10"
    assert rec["autoattack_acc"] == f"{100 * r['robust_accuracy']:.2f}" and rec["clean_acc"] == f"{100 * 21 / 24:.2f}"
    assert (rec["name"], rec["architecture"], rec["number_forward_passes"]) == ("mlp", "WideResNet-28-10", 1)
    assert (rec["authors"], rec["additional_data"], rec["link"], rec["venue"], rec["reported"]) == (
        "A. B", False, None, None, None)


def test_flags_gradient_free_attack_beats_gradients_on_a_zero_gradient_model():
    base = _mlp(0)
    model = lambda x: base(_zero_grad_identity(x))  # noqa: E731  (input gradient exactly zero)
    x, y = _data(base, 16)
    r = run_autoattack(model, np.asarray(x), np.asarray(y), 0.15, "linf", jax.random.key(9), **SMALL)
    new = {s["attack"]: s["new_adversarial"] for s in r["stages"]}
    assert new["square"] > 0
    assert r["flags"]["gradient_free_beat_gradient"] and r["flags"]["later_stage_found_new"]
    assert "square" in r["flags"]["stages_finding_new"]


def test_registry_and_bad_input():
    for name in ("apgd_t", "apgd_dlr", "fab_t", "square"):
        assert callable(get_attack(name))
    with pytest.raises(ValueError, match="version"):
        run_autoattack(_mlp(0), np.zeros((2,) + SHAPE, np.float32), np.zeros(2, np.int32), 0.1, "linf",
                       jax.random.key(0), version="plus")
    with pytest.raises(ValueError, match="norm"):
        square_trace(_mlp(0), jnp.zeros((2,) + SHAPE), jnp.zeros(2, jnp.int32), jax.random.key(0), 0.1, norm="l1")


def test_l1_projection_and_apgd_l1_stay_in_the_l1_ball_and_box():
    from robust_vision.attacks.apgd_l1 import apgd_l1, project_l1_box

    x = jnp.full((2, 2, 2, 1), 0.5)
    u = jnp.array([0.3, -0.2, 0.1, 0.0, 0.05, 0.05, 0.05, 0.05]).reshape(2, 2, 2, 1)
    d = project_l1_box(x, u, 0.3)
    # Row 0: soft-threshold at lam = 0.1 -> (0.2, -0.1, 0, 0), L1 = 0.3; row 1 is inside already.
    np.testing.assert_allclose(np.asarray(d).reshape(2, -1), [[0.2, -0.1, 0.0, 0.0], [0.05] * 4], atol=1e-6)
    # The box binds: x = 0.9 leaves 0.1 of room upwards.
    d = project_l1_box(jnp.full((1, 1, 2, 1), 0.9), jnp.array([0.5, 0.0]).reshape(1, 1, 2, 1), 1.0)
    np.testing.assert_allclose(np.asarray(d).ravel(), [0.1, 0.0], atol=1e-6)

    model = _mlp(0)
    x, y = _data(model, 16)
    eps = 3.0
    x_adv = jax.jit(lambda x, y: apgd_l1(model, x, y, jax.random.key(1), eps, steps=20))(x, y)
    l1 = jnp.sum(jnp.abs(x_adv - x).reshape(16, -1), -1)
    assert float(jnp.max(l1)) <= eps * (1 + 1e-4)
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    assert float(jnp.mean(jnp.argmax(model(x_adv), -1) != y)) >= 0.5


def test_targets_one_call_each_and_early_stops_give_the_same_points():
    """APGD-T and FAB-T run target by target on the still-robust points (``first_target``, as
    run_autoattack does) give each example the point of one call with every target; Square's
    query loop, stopped once every point is fooled, gives the iterates of the full search
    (``square_trace`` runs every query)."""
    from robust_vision.attacks.fab import fab_t
    from robust_vision.attacks.square import square

    model = _mlp(3)
    x, y = _data(model, 16, seed=4)
    key, eps = jax.random.key(5), 0.04  # target 0 fools 9 of 16, target 1 one more, 6 stay robust
    for attack, hyper in ((apgd_t, {"steps": 6}), (fab_t, {"steps": 6})):
        whole = np.asarray(jax.jit(lambda x, y: attack(model, x, y, key, eps, n_targets=3, **hyper))(x, y))
        one = jax.jit(lambda x, y, r: attack(model, x, y, key, eps, n_targets=1, first_target=r, **hyper))
        split, robust, found = np.asarray(x).copy(), np.ones(len(y), bool), []
        for r in range(3):
            x_r = np.asarray(one(x, y, jnp.int32(r)))
            fooled = robust & (np.asarray(jnp.argmax(model(x_r), -1)) != np.asarray(y))
            split[fooled], robust = x_r[fooled], robust & ~fooled
            found.append(int(fooled.sum()))
        assert found[0] > 0 and found[1] > 0 and robust.sum() > 0, (attack.__name__, found)
        np.testing.assert_array_equal(split, whole, err_msg=attack.__name__)
    big = 0.3  # 13 of 16 points robust at the start, every one fooled after 28 of 50 queries
    x_sq = jax.jit(lambda x, y: square(model, x, y, key, big, n_queries=50))(x, y)
    x_tr, history = jax.jit(lambda x, y: square_trace(model, x, y, key, big, n_queries=50))(x, y)
    assert bool(jnp.all(history[-1] <= 0)) and bool(jnp.any(history[10] > 0))
    np.testing.assert_array_equal(np.asarray(x_sq), np.asarray(x_tr))


def test_square_in_query_chunks_gives_the_points_of_one_call():
    """run_autoattack's Square: queries in chunks (query_chunks), fooled examples dropped in
    between, each example resumed from its last iterate: the same fooled set and points as one
    call with every query, with the example keys of run_autoattack."""
    from robust_vision.attacks import autoattack
    from robust_vision.attacks.square import square

    model = _mlp(3)
    x, y = _data(model, 16, seed=4)
    x, y = np.asarray(x), np.asarray(y)
    key, eps, hyper = jax.random.key(7), 0.2, {"norm": "linf", "n_queries": 50}
    assert autoattack.query_chunks(50) == [(1, 4), (4, 8), (8, 16), (16, 32), (32, 50)]
    x_adv, robust = x.copy(), np.ones(len(y), bool)
    new = autoattack._run_attack(square, hyper, model, "linf", 10, x, y, np.arange(len(y)), key, eps, 8, x_adv, robust)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(y)))
    whole = np.asarray(jax.vmap(lambda xi, yi, ki: square(model, xi[None], yi[None], ki, eps, n_queries=50)[0])(x, y, keys))
    fooled_whole = np.asarray(jnp.argmax(model(whole), -1)) != y
    assert 0 < new == fooled_whole.sum() < len(y)
    np.testing.assert_array_equal(~robust, fooled_whole)
    np.testing.assert_array_equal(x_adv[~robust], whole[fooled_whole])


def test_model_card_fields_are_written_as_robustbench_writes_them():
    assert [card_eps(e) for e in (8 / 255, 4 / 255, 0.031, 0.5, 0.1)] == ["8/255", "4/255", "0.031", "0.5", "0.1"]
    cifar = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert card_dataset("image_folder", cifar, (32, 32, 3)) == "cifar10"  # the CIFAR-10 zips
    assert card_dataset("image_folder", cifar[::-1], (32, 32, 3)) == "image_folder"
    assert card_dataset("cifar100", ("a", "b"), (32, 32, 3)) == "cifar100"
    card = parse_card(["link=https://arxiv.org/abs/2001.03994", "additional_data=false", "reported=46.06",
                       "number_forward_passes=2", "authors=Eric Wong, Leslie Rice"])
    assert card == {"link": "https://arxiv.org/abs/2001.03994", "additional_data": False, "reported": "46.06",
                    "number_forward_passes": 2, "authors": "Eric Wong, Leslie Rice"}
    for bad in ("colour=red", "authors", "additional_data=maybe", "number_forward_passes=0"):
        with pytest.raises(ValueError, match="--card") as info:
            parse_card([bad])
        assert "\n" not in str(info.value)
