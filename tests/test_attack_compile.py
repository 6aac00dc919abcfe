"""One compiled program per attack: traced step counts, budgets and restarts do not recompile,
and a traced step count gives the iterates of the static one (to float rounding: two programs).

tests/data/attack_reference.npz holds a tiny tanh MLP (its weights), 8 images, their labels and
the outputs of PGD / APGD / APGD-T / FAB-T / Square computed with the static-step code before the
step count could be traced (commit 65292e7 of src/robust_vision/attacks), key 11, eps 0.05.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.attacks import apgd_ce, apgd_checkpoints, pgd
from robust_vision.attacks._common import loop
from robust_vision.attacks.apgd_l1 import apgd_l1
from robust_vision.attacks.apgd_t import apgd_t
from robust_vision.attacks.fab import fab_t
from robust_vision.attacks.gradient import apgd_schedule
from robust_vision.attacks.sparse import noise_attack, sparse_pixel
from robust_vision.attacks.square import square, square_trace

REF = Path(__file__).parent / "data" / "attack_reference.npz"
EPS = 0.05


@pytest.fixture(scope="module")
def ref():
    data = dict(np.load(REF))
    params = {k[len("param_"):]: jnp.asarray(v) for k, v in data.items() if k.startswith("param_")}

    def f(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"]) @ params["w2"]

    return f, jnp.asarray(data["x"]), jnp.asarray(data["y"]), data


# name -> (attack(f, x, y, key, eps, n) with n the traced or static count, the reference's count)
CASES = {
    "pgd_linf_7": (lambda f, x, y, k, e, n: pgd(f, x, y, k, e, steps=n), 7),
    "pgd_l2_5_r3": (lambda f, x, y, k, e, n: pgd(f, x, y, k, e * 10, norm="l2", steps=n, restarts=3), 5),
    "apgd_linf_13": (lambda f, x, y, k, e, n: apgd_ce(f, x, y, k, e, steps=n), 13),
    "apgd_l2_10": (lambda f, x, y, k, e, n: apgd_ce(f, x, y, k, e * 10, norm="l2", steps=n), 10),
    "apgd_t_6": (lambda f, x, y, k, e, n: apgd_t(f, x, y, k, e, steps=n, n_targets=3), 6),
    "fab_linf_5": (lambda f, x, y, k, e, n: fab_t(f, x, y, k, e, steps=n, n_targets=2), 5),
    "square_linf_30": (lambda f, x, y, k, e, n: square(f, x, y, k, e, n_queries=n), 30),
}


@pytest.mark.parametrize("name", list(CASES))
def test_traced_count_equals_static_count_and_the_pre_change_reference(ref, name):
    f, x, y, data = ref
    attack, n = CASES[name]
    key = jax.random.key(11)
    static = jax.jit(lambda x, y, e: attack(f, x, y, key, e, n))(x, y, jnp.float32(EPS))
    traced = jax.jit(lambda x, y, e, n: attack(f, x, y, key, e, n))(x, y, jnp.float32(EPS), jnp.int32(n))
    # Two XLA programs (a traced and a static trip count): equal to float rounding, not bit for bit
    # on every CPU. The iterates are pixels in [0, 1] after float32 sums of ~10 terms per step
    # (rounding ~1e-7 each); 1e-6 allows that, while one step taken differently moves a pixel by a
    # step size (>= 1e-3 here).
    np.testing.assert_allclose(np.asarray(traced), np.asarray(static), rtol=0, atol=1e-6)
    # Against the saved pre-change outputs: bit for bit on the machine that wrote them; the 1e-6
    # slack only allows another CPU's float round-off (one changed step would move a pixel by
    # a step size, >= 1e-3 here).
    np.testing.assert_allclose(np.asarray(static), data[name], rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(static - x))) > 1e-3  # the attack moved the points


def test_one_program_for_every_step_count_eps_and_restarts(ref):
    f, x, y, _ = ref
    fn = jax.jit(lambda x, y, k, e, n, r, s: pgd(f, x, y, k, e, steps=n, restarts=r, step_size=s))
    outs = []
    for e, n, r, s in ((0.03, 3, 1, 0.01), (0.05, 7, 2, 0.02), (0.1, 20, 3, 0.005), (0.0, 0, 1, 0.01)):
        outs.append(fn(x, y, jax.random.key(0), jnp.float32(e), jnp.int32(n), jnp.int32(r), jnp.float32(s)))
    assert fn._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(outs[-1]), np.asarray(x))  # eps = 0, 0 steps: x itself
    # ... and the traced program computes what a new static program would.
    static = jax.jit(lambda x, y, k: pgd(f, x, y, k, 0.1, steps=20, restarts=3, step_size=0.005))
    np.testing.assert_array_equal(np.asarray(outs[2]), np.asarray(static(x, y, jax.random.key(0))))


@pytest.mark.parametrize("name, attack", [
    ("apgd_ce", lambda f, x, y, k, e, n: apgd_ce(f, x, y, k, e, steps=n)),
    ("apgd_t", lambda f, x, y, k, e, n: apgd_t(f, x, y, k, e, steps=n, n_targets=n)),
    ("fab_t", lambda f, x, y, k, e, n: fab_t(f, x, y, k, e, steps=n, n_targets=n)),
    ("square", lambda f, x, y, k, e, n: square(f, x, y, k, e, n_queries=n)),
    ("apgd_l1", lambda f, x, y, k, e, n: apgd_l1(f, x, y, k, e * 40, steps=n)),
    ("sparse_pixel", lambda f, x, y, k, e, n: sparse_pixel(f, x, y, k, e, steps=n, restarts=n)),
    ("noise_attack", lambda f, x, y, k, e, n: noise_attack(f, x, y, k, e, steps=n)),
])
def test_other_attacks_compile_once_for_every_count(ref, name, attack):
    f, x, y, _ = ref
    x, y = x[:2], y[:2]
    fn = jax.jit(lambda x, y, e, n: attack(f, x, y, jax.random.key(1), e, n))
    a = fn(x, y, jnp.float32(EPS), jnp.int32(2))
    b = fn(x, y, jnp.float32(2 * EPS), jnp.int32(3))
    assert fn._cache_size() == 1, name
    assert not np.array_equal(np.asarray(a), np.asarray(b)), name  # the new values were used


def test_apgd_schedule_on_device_matches_the_host_schedule():
    sched = jax.jit(jax.vmap(apgd_schedule, in_axes=(0, None)))
    for steps in (*range(1, 60), 99, 100, 101, 137, 250, 1000):
        expected_ckpt, expected_win, prev = np.zeros(steps, bool), np.zeros(steps), -1
        for c in apgd_checkpoints(steps):
            expected_ckpt[c], expected_win[c], prev = True, c - prev, c
        at, win = sched(jnp.arange(1000, dtype=jnp.int32), jnp.int32(steps))  # iterations >= steps unused
        np.testing.assert_array_equal(np.asarray(at)[:steps], expected_ckpt, err_msg=f"steps={steps}")
        np.testing.assert_array_equal(np.asarray(win)[:steps][expected_ckpt], expected_win[expected_ckpt])
    assert sched._cache_size() == 1


@pytest.mark.parametrize("unroll", [1, 2, 3, 4])
def test_loop_with_a_traced_count_runs_exactly_the_iterations_in_order(unroll):
    # Body records the order of the iterations: carry = carry * 7 + i (mod 2^31) is order-sensitive.
    def body(i, c):
        return (c * 7 + i) % 2_147_483_647

    fn = jax.jit(lambda lo, hi: loop(lo, hi, body, jnp.int32(1), unroll=unroll))
    for lo, hi in ((0, 0), (0, 1), (0, 5), (2, 11), (3, 3), (5, 2)):
        expected = 1
        for i in range(lo, hi):
            expected = (expected * 7 + i) % 2_147_483_647
        assert int(fn(jnp.int32(lo), jnp.int32(hi))) == expected, (lo, hi, unroll)
    assert fn._cache_size() == 1


def test_partial_unroll_with_a_traced_count_matches_the_rolled_loop(ref):
    f, x, y, _ = ref
    fn = jax.jit(lambda x, y, n, u: pgd(f, x, y, jax.random.key(2), 0.05, steps=n, unroll=u), static_argnums=3)
    rolled = fn(x, y, jnp.int32(7), 1)
    for u in (3,):  # 7 = 2 chunks of 3 + a remainder of 1
        np.testing.assert_allclose(np.asarray(fn(x, y, jnp.int32(7), u)), np.asarray(rolled), atol=1e-6)


def test_full_unroll_needs_a_static_count(ref):
    f, x, y, _ = ref
    with pytest.raises(ValueError, match="static step count"):
        jax.jit(lambda n: pgd(f, x, y, jax.random.key(0), 0.05, steps=n, unroll=True))(jnp.int32(3))


def test_square_trace_and_square_give_the_same_point(ref):
    f, x, y, _ = ref
    x, y = x[:2], y[:2]
    key = jax.random.key(4)
    for norm, e in (("linf", EPS), ("l2", 0.5)):
        traced = jax.jit(lambda n: square(f, x, y, key, e, norm=norm, n_queries=n))(jnp.int32(12))
        x_adv, history = square_trace(f, x, y, key, e, norm=norm, n_queries=12)
        assert history.shape == (12, 2)
        np.testing.assert_array_equal(np.asarray(traced), np.asarray(x_adv))


def test_autoattack_stage_compiles_once_for_every_budget(ref):
    from robust_vision.attacks import autoattack

    f, x, y, _ = ref
    x, y = x[:2], y[:2]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
    autoattack._STAGE_CACHE.clear()
    outs = {}
    for steps, queries in ((2, 3), (3, 5)):
        for name, attack, hyper in autoattack.stages("standard", "linf", steps=steps, n_targets=steps,
                                                     fab_steps=steps, n_queries=queries):
            fn = autoattack._stage_fn(attack, hyper, f, "linf")
            outs.setdefault(name, []).append(np.asarray(fn(x, y, keys, jnp.float32(EPS))[0]))
    assert len(autoattack._STAGE_CACHE) == 4
    assert all(fn._cache_size() == 1 for fn in autoattack._STAGE_CACHE.values())
    for name in ("apgd-ce", "square"):  # the second budget was used (FAB may find nothing in 2-3 steps)
        assert not np.array_equal(*outs[name]), name


def test_evaluator_compiles_once_for_every_step_count():
    """robust_accuracy passes ``steps`` traced: PGD-2 and PGD-5 share one program, and each
    equals the attack called directly with a static count."""
    import numpy as np

    from robust_vision.attacks import evaluate as ev
    from robust_vision.attacks import get_attack

    w = jax.random.normal(jax.random.key(0), (64, 10)) * 0.1

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w

    x = np.asarray(jax.random.uniform(jax.random.key(1), (8, 8, 8, 1)))
    y = np.arange(8) % 10
    ev._JIT_CACHE.clear()
    key = jax.random.key(2)
    margins = {}
    for steps in (2, 5):
        per = ev.per_example_robustness(logits_fn, x, y, key, "pgd", [0.05], 8, steps=steps, step_size=0.02)
        margins[steps] = per[0]["margin"]
    programs = [f._cache_size() for k, f in ev._JIT_CACHE.items() if k[0] is get_attack("pgd")]
    assert programs == [1]
    for steps in (2, 5):  # the same per-example keys as the evaluator: fold_in(key, batch 0)
        x_adv = get_attack("pgd")(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.fold_in(key, 0),
                                  jnp.float32(0.05), steps=steps, step_size=jnp.float32(0.02))
        z = logits_fn(x_adv)
        true = jnp.take_along_axis(z, jnp.asarray(y)[:, None], 1)[:, 0]
        other = jnp.max(jnp.where(jax.nn.one_hot(y, 10) > 0, -jnp.inf, z), axis=1)
        np.testing.assert_allclose(margins[steps], np.asarray(true - other), rtol=0, atol=1e-6)
