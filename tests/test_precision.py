"""training.precision: bf16 (training/steps.py): the model computes in bfloat16 while
parameters, optimizer state and batch statistics stay float32; the loss stays close to the
float32 step's; runs are deterministic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.config import ConfigError, ModelConfig, TrainingConfig, load_config
from robust_vision.losses import make_loss
from robust_vision.models import create_model
from robust_vision.models.state import split_model
from robust_vision.optim import init_train_state, make_optimizer
from robust_vision.training.steps import make_train_step


def _run(precision: str, steps: int = 3):
    """``steps`` SGD steps of a small CNN with batch norm on one fixed batch: (state, per-step losses)."""
    parts = split_model(create_model(ModelConfig(name="cnn", features=[8, 16], dropout_rate=0.0),
                                     input_shape=(8, 8, 3), num_classes=4, seed=0))
    tcfg = TrainingConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, lr_schedule="constant",
                          precision=precision)
    tx, _ = make_optimizer(tcfg, 1)
    state = init_train_state(parts, tx, ema_enabled=False)
    step = make_train_step(parts, tx, make_loss(tcfg), tcfg)
    images = jax.random.uniform(jax.random.key(1), (16, 8, 8, 3))
    labels = jnp.arange(16, dtype=jnp.int32) % 4
    losses = []
    for i in range(steps):
        state, per_ex = step(state, images, labels, jnp.ones(16), jax.random.key(i))
        losses.append(float(jnp.mean(per_ex["loss"])))
    return state, np.array(losses)


def _float_dtypes(tree) -> set:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


@pytest.fixture(scope="module")
def bf16_run():
    return _run("bf16")


def test_bf16_keeps_float32_state_and_tracks_the_float32_loss(bf16_run):
    state32, loss32 = _run("float32")
    state16, loss16 = bf16_run
    for part in ("params", "model_state", "opt_state"):
        assert _float_dtypes(state16[part]) == {"float32"}, part
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2% per operation); through a
    # two-stage CNN the mean loss moved by < 1% here. 0.02 relative would still catch a wrong
    # cast (a float16 overflow, unscaled uint8 pixels, a lost batch-norm update: all > 10%).
    np.testing.assert_allclose(loss16, loss32, rtol=0.02)
    assert not np.array_equal(loss16, loss32)  # the compute really ran in bf16
    assert loss16[-1] < loss16[0]  # and it trains
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state16["params"]),
                                                             jax.tree.leaves(state32["params"]))]
    assert max(moved) < 0.05  # parameters after 3 steps stay close to float32's


def test_bf16_is_deterministic(bf16_run):
    a_state, a_loss = bf16_run
    b_state, b_loss = _run("bf16")
    np.testing.assert_array_equal(a_loss, b_loss)
    for a, b in zip(jax.tree.leaves(a_state["params"]), jax.tree.leaves(b_state["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unknown_precision_is_a_clear_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  precision: fp8\n")
    with pytest.raises(ConfigError, match="precision"):
        load_config(path)
