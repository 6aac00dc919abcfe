"""Crossbar model + local-rule trainer: run directory, weight statistics, clipping,
divergence as an outcome, equality with hebbian.train_crossbar, and a checkpoint that the
shared loader restores to the same scores as W^T x."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from robust_vision.config import ConfigError, load_config
from robust_vision.data.sources import converted, open_splits, read_examples
from robust_vision.models import MODELS
from robust_vision.models.crossbar import CrossbarModel, crossbar_log_scores
from robust_vision.runs.history import METRIC_COLUMNS
from robust_vision.runs.resume import TrainingError
from robust_vision.training.crossbar_trainer import train_local_rule
from robust_vision.training.hebbian import LocalRule, train_crossbar
from robust_vision.training.loop import training_sources

assert "crossbar" in MODELS


def _cfg(repo_root: Path, run_dir: Path, *extra: str):
    """configs/hebbian.yaml on native 8x8 digits 0 vs 1, 3 epochs: a sub-second run."""
    return load_config(repo_root / "configs" / "hebbian.yaml", [
        "data.image_size=null", "training.hebbian.iterations=3", "training.batch_size=64",
        f"training.checkpoint_dir={run_dir}", "training.save_every=100", *extra])


def _quiet(_: str) -> None:
    pass


def test_model_forward_and_init():
    m = CrossbarModel(input_shape=(4, 4, 1), num_classes=2, rngs=nnx.Rngs(params=0))
    W = np.asarray(m.W[...])
    assert W.shape == (16, 2) and W.min() >= 0 and W.max() < 0.01
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
    logits, feats = m(x, return_features=True)
    np.testing.assert_allclose(feats["scores"], np.asarray(x).reshape(3, -1) @ W, rtol=1e-6)
    np.testing.assert_allclose(logits, np.log(np.asarray(feats["scores"]) + 1e-6), rtol=1e-6)
    assert feats["embedding"].shape == (3, 16)
    # log-scores: the logit margin is log(s_y + eps) - log(s_other + eps)
    z = crossbar_log_scores(jnp.array([[3.0, 1.0]]))
    np.testing.assert_allclose(z[0, 0] - z[0, 1], np.log((3 + 1e-6) / (1 + 1e-6)), rtol=1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        CrossbarModel(input_shape=(4, 4, 1), num_classes=1, rngs=nnx.Rngs(params=0))


def test_hebbian_run_dir_matches_train_crossbar_and_loads(repo_root, tmp_path):
    from robust_vision.runs.loading import load_trained_model

    run = tmp_path / "heb"
    cfg = _cfg(repo_root, run)
    result = train_local_rule(cfg, log=_quiet)
    assert (run / "config.yaml").is_file() and (run / "checkpoints").is_dir()
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS and len(rows) == 3 == len(result.history)
    assert rows[0]["train_loss"] == "" and float(rows[-1]["train_accuracy"]) > 0.6
    stats = json.loads((run / "weight_stats.json").read_text())
    assert {"mean", "std", "min", "max", "diverged"} <= set(stats) and stats["diverged"] is False

    # The same numbers as the study's helper: W from the last checkpoint == train_crossbar's W.
    data = training_sources(cfg)
    train_images, train_labels = read_examples(data.train)
    W_ref, _ = train_crossbar(jax.random.key(cfg.training.seed), train_images, train_labels,
                              LocalRule("hebbian", eta=0.2), epochs=3, batch_size=64, num_classes=2)
    loaded = load_trained_model(run / "checkpoints" / "epochs")
    W = np.asarray(loaded.params["W"][...])
    np.testing.assert_allclose(W, np.asarray(W_ref), rtol=1e-5, atol=1e-7)
    # The loaded forward is log(W^T x + 1e-6): the evaluator's SNR exp(margin) is s_target / s_control.
    x = read_examples(converted(open_splits(cfg.data, ("test",))["test"], data.image_shape), 5)[0]
    np.testing.assert_allclose(np.asarray(loaded.forward(loaded.variables, jnp.asarray(x))),
                               np.log(x.reshape(5, -1) @ W + 1e-6), rtol=1e-5)
    # A run directory resolves to its best checkpoint, which restores too.
    assert load_trained_model(run).num_classes == 2
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train_local_rule(cfg, log=_quiet)


def test_clip_range_bounds_weights(repo_root, tmp_path):
    run = tmp_path / "tight"
    train_local_rule(_cfg(repo_root, run, "training.hebbian.clip_range=[0.0, 0.05]"), log=_quiet)
    stats = json.loads((run / "weight_stats.json").read_text())
    assert 0.0 <= stats["min"] and stats["max"] <= 0.05 + 1e-7
    assert stats["clip_range"] == [0.0, 0.05]


def test_sgd_huge_eta_reports_divergence(repo_root, tmp_path):
    run = tmp_path / "sgd"
    lines: list[str] = []
    cfg = _cfg(repo_root, run, "training.learning_rule=sgd_mse", "training.hebbian.sgd_eta=50.0")
    result = train_local_rule(cfg, log=lines.append)
    stats = json.loads((run / "weight_stats.json").read_text())
    assert stats["diverged"] is True and stats["diverged_epoch"] == 1
    assert any("DIVERGED" in line for line in lines)
    assert len(result.history) == 3 and (run / "metrics.csv").is_file()


def test_resume_gives_the_same_weights(repo_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train_local_rule(_cfg(repo_root, full, "training.save_every=1"), log=_quiet)
    train_local_rule(_cfg(repo_root, part, "training.save_every=1", "training.hebbian.iterations=3"), log=_quiet)
    # Drop the last epoch's checkpoint and resume: the replayed epoch must match.
    import shutil

    shutil.rmtree(part / "checkpoints" / "epochs" / "3")
    shutil.rmtree(part / "checkpoints" / "best", ignore_errors=True)
    train_local_rule(_cfg(repo_root, part, "training.save_every=1"), resume=True, log=_quiet)
    a = json.loads((full / "weight_stats.json").read_text())
    b = json.loads((part / "weight_stats.json").read_text())
    assert a["mean"] == pytest.approx(b["mean"], rel=1e-6) and a["max"] == pytest.approx(b["max"], rel=1e-6)


def test_bad_config_names_the_key(repo_root, tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        train_local_rule(_cfg(repo_root, tmp_path / "x", "model.name=cnn"), log=_quiet)
    with pytest.raises(ConfigError, match="learning_rule"):
        train_local_rule(_cfg(repo_root, tmp_path / "y", "training.learning_rule=backprop"), log=_quiet)


def test_run_finished_needs_the_last_epoch_and_the_same_config(repo_root, tmp_path):
    from robust_vision.runs.resume import run_finished

    run = tmp_path / "heb"
    cfg = _cfg(repo_root, run)
    assert not run_finished(run, cfg)
    train_local_rule(cfg, log=_quiet)
    assert run_finished(run, cfg)
    assert not run_finished(run, _cfg(repo_root, run, "training.hebbian.eta=0.1"))  # another run's config
    shutil.rmtree(run / "checkpoints" / "epochs" / "3")  # the last epoch's checkpoint is missing
    assert not run_finished(run, cfg)
