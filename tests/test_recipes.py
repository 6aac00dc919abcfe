"""Training recipes: AugMix (augmentation chain + Jensen-Shannon loss) and MART."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.attacks.training import mart_objective
from robust_vision.training.augmix import OPS, apply_op, augmix_objective, augmix_views, js_consistency


def _images(b=3, h=8, w=8, c=1):
    return jax.random.uniform(jax.random.key(0), (b, h, w, c))


def test_js_loss_zero_for_identical_views_and_positive_otherwise():
    z = jax.random.normal(jax.random.key(1), (4, 5))
    np.testing.assert_allclose(js_consistency(z, z, z), 0.0, atol=1e-6)
    y = jnp.array([0, 1, 2, 3])
    views = jnp.concatenate([z, z])
    ce = -jax.nn.log_softmax(z)[jnp.arange(4), y]
    np.testing.assert_allclose(augmix_objective(z, views, y, 12.0), ce, rtol=1e-5, atol=1e-6)
    # a hand-computed JS: p = (1, 0)-ish vs uniform
    a, b = jnp.array([[10.0, -10.0]]), jnp.array([[0.0, 0.0]])
    p = np.array([jax.nn.softmax(a)[0], jax.nn.softmax(b)[0], jax.nn.softmax(b)[0]], np.float64)
    m = p.mean(0)
    expected = np.mean([np.sum(pi * np.log(pi / m)) for pi in p])
    assert float(js_consistency(a, b, b)[0]) == pytest.approx(expected, rel=1e-4)


_ALL_OPS = jax.jit(jax.vmap(lambda i, x, k: apply_op(i, x, k, 10.0), in_axes=(0, None, None)))
_VIEWS = jax.jit(lambda k, x: augmix_views(k, x))


def test_each_op_keeps_shape_range_and_is_deterministic():
    x = _images(1, 8, 8, 3)[0]
    key = jax.random.key(5)
    out = _ALL_OPS(jnp.arange(len(OPS)), x, key)                 # (n_ops, H, W, C)
    assert out.shape == (len(OPS),) + x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(out, _ALL_OPS(jnp.arange(len(OPS)), x, key))
    changed = [not np.allclose(o, x) for o in np.asarray(out)]
    assert sum(changed) >= len(OPS) - 1   # at full severity every op but (possibly) a no-op draw changes x


def test_augmix_views_shape_range_determinism():
    x = _images()
    v = _VIEWS(jax.random.key(2), x)
    assert v.shape == (6, 8, 8, 1) and float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    np.testing.assert_array_equal(v, _VIEWS(jax.random.key(2), x))
    assert not np.array_equal(v, _VIEWS(jax.random.key(3), x))
    assert not np.allclose(v[:3], x) and not np.allclose(v[:3], v[3:])  # views differ from x and each other


def test_solarize_posterize_rotate_known_values():
    x = jnp.full((4, 4, 1), 0.9)
    out = _ALL_OPS(jnp.arange(len(OPS)), x, jax.random.key(0))
    # solarize (index 7): values above the threshold (<= 1 - 0.1 * mag) are inverted
    np.testing.assert_allclose(out[7], 0.1, atol=1e-6)
    # rotating a constant image keeps the centre pixels
    assert float(out[1][1, 1, 0]) == pytest.approx(0.9, abs=1e-5)
    # posterize keeps a value already on the coarsest grid (128 is a multiple of 16)
    y = jnp.full((4, 4, 1), 128 / 255)
    np.testing.assert_allclose(_ALL_OPS(jnp.arange(len(OPS)), y, jax.random.key(0))[6], 128 / 255, atol=1e-6)


def test_mart_matches_hand_computed_value():
    logits_clean = jnp.array([[2.0, 1.0, 0.0]])
    logits_adv = jnp.array([[0.5, 1.5, 0.0]])
    y = jnp.array([0])
    beta = 6.0
    pc = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    pa = np.exp([0.5, 1.5, 0.0]) / np.exp([0.5, 1.5, 0.0]).sum()
    bce = -np.log(pa[0]) - np.log(1.0001 - pa[1] + 1e-12)          # strongest wrong class: 1
    kl = np.sum(pc * (np.log(pc) - np.log(pa + 1e-12)))
    expected = bce + beta * kl * (1.0000001 - pc[0])
    assert float(mart_objective(logits_clean, logits_adv, y, beta)[0]) == pytest.approx(expected, rel=1e-5)
    # beta = 0 and a correct, confident adversarial prediction -> small BCE only
    assert float(mart_objective(logits_clean, jnp.array([[20.0, 0.0, 0.0]]), y, 0.0)[0]) < 1e-3


def test_trainer_hooks_pick_augmix_or_adversarial():
    from robust_vision.config import ConfigError, config_from_dict
    from robust_vision.training.trainer import _train_hooks

    cfg = config_from_dict({"training": {"augmix": {"enabled": True}}})
    assert set(_train_hooks(cfg.training)) == {"pair_transform", "pair_loss"}
    mart = config_from_dict({"training": {"adversarial": {"method": "mart"}}})
    assert set(_train_hooks(mart.training)) == {"pair_transform", "pair_loss"}
    with pytest.raises(ConfigError, match="pick one"):
        _train_hooks(config_from_dict({"training": {"augmix": {"enabled": True},
                                                    "adversarial": {"method": "mart"}}}).training)


def test_recipe_configs_and_settings(tmp_path):
    from robust_vision.config import ConfigError
    from robust_vision.research.recipes import RECIPES, load_recipe_settings, recipe_config

    s = load_recipe_settings(None, quick=True, seeds=1)
    assert s["training"]["epochs"] == 6 and s["seeds"] == 1 and len(s["recipes"]) == 10
    assert s["training"]["adversarial"]["steps"] == 3 and s["attack_examples"] == 200
    assert s["training"]["batch_size"] == 32 and s["training"]["lr_schedule"] == "cosine"
    cfgs = {r.key: recipe_config(s, r, 3, tmp_path / r.key) for r in RECIPES}
    assert cfgs["mart"].training.adversarial.method == "mart" and cfgs["augmix"].training.augmix.enabled
    assert cfgs["gauss_0.25"].training.noise_augment_std == 0.25 and cfgs["margin_10"].training.margin_lambda == 10
    # only the recipe's keys differ: same model, data, seed, epochs everywhere
    assert {c.training.seed for c in cfgs.values()} == {3} and len({str(c.model) for c in cfgs.values()}) == 1
    assert cfgs["ce"].training.eval_every == 6 and not cfgs["ce"].training.write_figures
    assert {(c.training.batch_size, c.training.lr_schedule) for c in cfgs.values()} == {(32, "cosine")}
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe_settings(None, overrides=["recipes=[ce,nope]"])
    with pytest.raises(ConfigError, match="pgd_eps"):
        load_recipe_settings(None, overrides=["pgd_eps=[0.1]"])


def test_rank_recipes_orders_by_score_with_intervals():
    from robust_vision.research.recipes import rank_recipes

    def row(key, seed, noise, cerr, pgd):
        return {"recipe_key": key, "recipe": key.upper(), "seed": seed, "clean_accuracy": 0.9, "noise_accuracy": noise,
                "corruption_error": cerr, "pgd_accuracy_small": pgd, "pgd_accuracy_large": pgd, "ece": 0.05,
                "mean_snr": 3.0, "noise_accuracy_gaussian": noise, "train_time_s": 1.0}

    rows = [row("a", 0, 0.5, 0.5, 0.0), row("a", 1, 0.6, 0.4, 0.1),
            row("b", 0, 0.9, 0.1, 0.5), row("b", 1, 0.8, 0.2, 0.4)]
    ranked = rank_recipes(rows)
    assert [r["recipe_key"] for r in ranked] == ["b", "a"] and [r["rank"] for r in ranked] == [1, 2]
    b = ranked[0]
    assert b["score"] == pytest.approx(np.mean([(0.9 + 0.9 + 0.5) / 3, (0.8 + 0.8 + 0.4) / 3]))
    assert b["noise_accuracy_lo"] >= 0.8 - 1e-12 and b["noise_accuracy_hi"] <= 0.9 + 1e-12
    assert b["n_seeds"] == 2 and b["train_time_s"] == 2.0


def test_seed_stability_spearman_and_top_bottom():
    from robust_vision.research.recipes import render_stability, seed_stability

    def row(key, seed, noise):
        return {"recipe_key": key, "recipe": key, "seed": seed, "noise_accuracy": noise, "corruption_error": 0.5,
                "pgd_accuracy_large": 0.0}

    # seed 1 swaps the middle two of four recipes: ranks (1,2,3,4) vs (1,3,2,4), rho = 1 - 6*2/(4*15) = 0.8
    rows = [row(k, 0, v) for k, v in zip("abcd", (0.9, 0.7, 0.5, 0.1))]
    rows += [row(k, 1, v) for k, v in zip("abcd", (0.8, 0.4, 0.6, 0.2))]
    (st,) = seed_stability(rows)
    assert st["spearman"] == pytest.approx(0.8) and st["n_recipes"] == 4
    assert st["top_a"] == st["top_b"] == "a" and st["bottom_a"] == st["bottom_b"] == "d"
    assert "0.80" in render_stability([st], {k: k.upper() for k in "abcd"})[0]
    assert seed_stability([r for r in rows if r["seed"] == 0]) == []


def _linear_forward(variables, x):
    return x.reshape(x.shape[0], -1) @ variables


def test_recipe_evaluators_agree_with_clean_predictions():
    from robust_vision.research.recipes import _correct_stack, _pgd_correct

    x = _images(6, 4, 4, 1)
    w = jax.random.normal(jax.random.key(3), (16, 3))
    y = jnp.argmax(_linear_forward(w, x), -1).at[0].set(0)
    clean = np.asarray(jnp.argmax(_linear_forward(w, x), -1) == y)
    stack = np.asarray(_correct_stack(_linear_forward, w, jnp.stack([x, x]), y))
    assert stack.shape == (2, 6) and (stack == clean).all()
    # eps 0: PGD cannot move the images; a large budget can only lower the accuracy
    at0 = np.asarray(_pgd_correct(_linear_forward, w, x, y, jax.random.key(0), jnp.float32(0.0), steps=2))
    big = np.asarray(_pgd_correct(_linear_forward, w, x, y, jax.random.key(0), jnp.float32(0.5), steps=2))
    assert (at0 == clean).all() and big.sum() <= clean.sum()
