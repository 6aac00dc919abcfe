"""The CIFAR-10 recipes (configs/cifar10/) and the training options they need: Nesterov SGD,
the cyclic and piecewise learning-rate schedules, budgets written as fractions (8/255), the
held-out PGD accuracy (training.val_attack) that picks the early-stopped checkpoint, and
early stopping by patience."""

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT, tiny_overrides

from robust_vision.config import ConfigError, TrainingConfig, load_config
from robust_vision.models import MODELS
from robust_vision.optim import make_optimizer, make_schedule
from robust_vision.runs.history import METRIC_COLUMNS
from robust_vision.runs.resume import check_run_request
from robust_vision.training.trainer import stop_early, train

RECIPES = sorted((REPO_ROOT / "configs" / "cifar10").glob("*.yaml"))
QUIET = dict(log=lambda _msg: None)


def test_every_cifar10_recipe_validates_and_names_its_reference(tmp_path):
    names = {p.stem for p in RECIPES}
    assert {"standard_preact_resnet18", "standard_wrn28_10", "fast_at_preact_resnet18", "pgd_at_preact_resnet18",
            "trades_preact_resnet18"} <= names
    for path in RECIPES:
        text = path.read_text()
        assert "Reference:" in text, f"{path.name}: no reference number in a comment"
        cfg = load_config(path, [f"training.checkpoint_dir={tmp_path / path.stem}"])
        assert cfg.metadata.get("reference"), path.name
        assert cfg.data.dataset_name == "image_folder"
        assert cfg.data.data_dir == "../shared/data/cifar10_jpeg/train.zip"  # the shared zips, relative to the repo
        assert cfg.model.name in MODELS
        assert cfg.training.optimizer == "sgd" and cfg.training.momentum == 0.9
        assert cfg.training.augment_flip and cfg.training.augment_crop_padding == 4
        assert cfg.evaluation.attack_eps == [pytest.approx(8 / 255)]
        check_run_request(cfg, resume=False)  # best_metric known, val_attack on where it is needed
        schedule = make_schedule(cfg.training, steps_per_epoch=10)
        lrs = np.array([float(schedule(s)) for s in range(cfg.training.epochs * 10)])
        assert lrs.max() == pytest.approx(cfg.training.learning_rate, rel=1e-6) and lrs.min() >= 0.0


def test_recipe_hyperparameters_match_their_papers():
    fast = load_config(REPO_ROOT / "configs/cifar10/fast_at_preact_resnet18.yaml")
    adv = fast.training.adversarial
    assert (fast.training.epochs, adv.method, adv.steps, fast.training.lr_schedule) == (15, "pgd", 1, "cyclic")
    assert adv.eps == pytest.approx(8 / 255) and adv.step_size == pytest.approx(1.25 * 8 / 255)
    pgd = load_config(REPO_ROOT / "configs/cifar10/pgd_at_preact_resnet18.yaml").training
    assert (pgd.adversarial.steps, pgd.lr_schedule, pgd.lr_milestones) == (10, "piecewise", [100.0, 150.0])
    assert pgd.adversarial.step_size == pytest.approx(2 / 255) and pgd.best_metric == "val_pgd_accuracy"
    trades = load_config(REPO_ROOT / "configs/cifar10/trades_preact_resnet18.yaml").training
    assert trades.adversarial.method == "trades" and trades.adversarial.trades_beta == 6.0
    standard = load_config(REPO_ROOT / "configs/cifar10/standard_preact_resnet18.yaml").training
    assert standard.nesterov and standard.batch_size == 512 and standard.weight_decay == 5e-4


def test_fractions_are_read_as_numbers_and_bad_ones_are_one_line_errors():
    cfg = load_config(None, ["training.adversarial.eps=8/255", "evaluation.attack_eps=[0, 2/255, 0.5]"])
    assert cfg.training.adversarial.eps == 8 / 255
    assert cfg.evaluation.attack_eps == [0.0, 2 / 255, 0.5]
    for bad in ("8/0", "8/255/2", "eight/255"):
        with pytest.raises(ConfigError, match="training.adversarial.eps: got .*expected a number"):
            load_config(None, [f"training.adversarial.eps={bad}"])


def test_cyclic_schedule_is_the_triangle_of_wong_et_al():
    cfg = TrainingConfig(epochs=4, learning_rate=0.2, lr_schedule="cyclic", warmup_epochs=2)
    schedule = make_schedule(cfg, steps_per_epoch=5)  # 20 steps, peak at step 10
    lrs = np.array([float(schedule(s)) for s in range(21)])
    expected = np.concatenate([np.linspace(0, 0.2, 11), np.linspace(0.2, 0, 11)[1:]])
    np.testing.assert_allclose(lrs, expected, atol=1e-7)


def test_piecewise_schedule_drops_at_each_milestone():
    cfg = TrainingConfig(epochs=10, learning_rate=0.1, lr_schedule="piecewise", lr_milestones=[5, 7.5],
                         lr_decay_factor=0.1)
    schedule = make_schedule(cfg, steps_per_epoch=2)  # drops at steps 10 and 15
    lrs = [float(schedule(s)) for s in (0, 9, 10, 14, 15, 19)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    with pytest.raises(ConfigError, match="training.lr_milestones"):
        load_config(None, ["training.lr_schedule=piecewise"])


def test_nesterov_sgd_matches_the_hand_written_update():
    """PyTorch's Nesterov SGD with weight decay: g' = g + wd p; buf = m buf + g'; p -= lr (g' + m buf)."""
    lr, m, wd = 0.1, 0.9, 5e-4
    cfg = TrainingConfig(optimizer="sgd", learning_rate=lr, momentum=m, nesterov=True, weight_decay=wd)
    tx, _ = make_optimizer(cfg, 1)
    p = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [jnp.array([0.3, 0.1, -0.2]), jnp.array([-0.1, 0.4, 0.05])]
    state = tx.init(p)
    ref, buf = np.asarray(p["w"], np.float64), np.zeros(3)
    for g in grads:
        updates, state = tx.update({"w": g}, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
        g_wd = np.asarray(g, np.float64) + wd * ref
        buf = m * buf + g_wd
        ref = ref - lr * (g_wd + m * buf)
    np.testing.assert_allclose(np.asarray(p["w"]), ref, rtol=1e-6)
    plain, _ = make_optimizer(TrainingConfig(optimizer="sgd", learning_rate=lr, momentum=m, weight_decay=wd), 1)
    q = {"w": jnp.array([1.0, -2.0, 0.5])}
    plain_state = plain.init(q)
    for g in grads:
        updates, plain_state = plain.update({"w": g}, plain_state, q)
        q = jax.tree.map(lambda a, u: a + u, q, updates)
    assert not np.allclose(np.asarray(q["w"]), ref), "nesterov must change the update"


def test_stop_early_counts_validations_since_the_best_epoch():
    history = [{"epoch": e, "val_pgd_accuracy": v} for e, v in [(1, 0.2), (2, 0.3), (3, None), (4, 0.25)]]
    assert not stop_early(history, 2, None, "val_pgd_accuracy")
    assert stop_early(history, 2, 1, "val_pgd_accuracy")
    assert not stop_early(history, 2, 2, "val_pgd_accuracy")  # epoch 3 was not validated
    assert not stop_early(history, None, 1, "val_pgd_accuracy")


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_val_pgd_accuracy_column_and_early_stop(tmp_path):
    """A vanishing budget leaves every prediction unchanged (PGD accuracy = clean accuracy of the
    same images); a large one lowers it. Patience 1 on a metric that only falls stops at epoch 2."""
    tiny = tiny_overrides(tmp_path / "tiny", epochs=3) + ["training.learning_rate=0.003", "training.val_attack.steps=2",
                                                         "training.val_attack.max_examples=1000"]
    train(load_config(None, tiny + ["training.val_attack.eps=1e-7"]), **QUIET)
    rows = _rows(tmp_path / "tiny")
    assert list(rows[0]) == METRIC_COLUMNS and len(rows) == 3
    for row in rows:
        assert float(row["val_pgd_accuracy"]) == pytest.approx(float(row["val_accuracy"]), abs=1e-9)

    strong = tiny_overrides(tmp_path / "strong", epochs=3) + ["training.learning_rate=0.003",
        "training.val_attack.steps=5", "training.val_attack.eps=0.3", "training.lr_schedule=cosine",
        "training.best_metric=learning_rate", "training.early_stop_patience=1"]
    result = train(load_config(None, strong), **QUIET)
    rows = _rows(tmp_path / "strong")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and result.best_epoch == 1  # stopped early
    assert all(float(r["val_pgd_accuracy"]) < float(r["val_accuracy"]) for r in rows)


def test_best_metric_val_pgd_accuracy_needs_the_held_out_attack(tmp_path):
    cfg = load_config(None, [f"training.checkpoint_dir={tmp_path}", "training.best_metric=val_pgd_accuracy"])
    with pytest.raises(ConfigError, match="training.val_attack.steps"):
        check_run_request(cfg, resume=False)
