"""RobustBench architectures (models/robustbench.py): shapes, normalisation, registry and
one train step through the project's trainer step. Parameter counts of the named variants
against the PyTorch reference are checked in tests/test_import.py (needs torch); here
against the reference's known counts, from abstract shapes only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from robust_vision.config import ModelConfig, TrainingConfig
from robust_vision.models import MODELS, create_model
from robust_vision.models.robustbench import CIFAR10_MEAN, CIFAR10_STD, WIDE_RESNETS, WideResNet

# Parameter counts of RobustBench's PyTorch WideResNet (without the unused sub_block1) and
# PreActResNet18, CIFAR-10 head; measured with torch 2.13 on the meta device.
REFERENCE_COUNTS = {"preact_resnet18": 11_172_170, "wrn-28-10": 36_479_194, "wrn-34-10": 46_160_474,
                    "wrn-34-20": 184_531_674, "wrn-70-16": 266_796_506}


def _count(build) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(nnx.eval_shape(build), nnx.Param)))


def test_named_variants_parameter_counts():
    for name, expected in REFERENCE_COUNTS.items():
        constructor, _ = MODELS[name]
        assert _count(lambda: constructor(input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))) == expected, name
    assert WIDE_RESNETS["wrn-70-16"] == (70, 16)


def test_tiny_wide_resnet_forward_and_normalization():
    """WRN-10-1: logits and features of the right shapes; the normalising model on x equals
    the plain model (same weights) on (x - mean) / std."""
    kwargs = dict(input_shape=(8, 8, 3), num_classes=4, depth=10, widen=1)
    normed = WideResNet(rngs=nnx.Rngs(0), normalize_mean=CIFAR10_MEAN, normalize_std=CIFAR10_STD, **kwargs)
    normed.eval()
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    logits, features = normed(x, return_features=True)
    assert logits.shape == (2, 4)
    assert list(features) == ["stem", "block1", "block2", "block3", "embedding"]
    assert features["block3"].shape == (2, 2, 2, 64) and features["embedding"].shape == (2, 64)
    z = (x - jnp.asarray(CIFAR10_MEAN)) / jnp.asarray(CIFAR10_STD)
    plain = normed
    plain.normalize = None  # the same weights without the normalisation layer
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain(z)), atol=1e-5)
    assert not np.allclose(np.asarray(logits), np.asarray(plain(x)), atol=1e-3)  # normalisation is not a no-op


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        WideResNet(input_shape=(8, 8, 3), num_classes=2, rngs=nnx.Rngs(0), depth=12, widen=1)
    with pytest.raises(ValueError, match="normalize_mean and model.normalize_std go together"):
        WideResNet(input_shape=(8, 8, 3), num_classes=2, rngs=nnx.Rngs(0), depth=10, widen=1, normalize_mean=[0.5] * 3)
    with pytest.raises(ValueError, match="need 3 values"):
        WideResNet(input_shape=(8, 8, 3), num_classes=2, rngs=nnx.Rngs(0), depth=10, widen=1,
                   normalize_mean=[0.5], normalize_std=[0.5])


def test_preact_resnet18_trains_with_the_project_step():
    """Two steps of our train step on a width-2 PreActResNet-18 from the registry: finite
    loss, parameters and batch-norm statistics move, the loss on the batch goes down."""
    from robust_vision.losses import make_loss
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_optimizer
    from robust_vision.training.steps import make_train_step

    cfg = ModelConfig(name="preact_resnet18", width=2, normalize_mean=list(CIFAR10_MEAN),
                      normalize_std=list(CIFAR10_STD))
    parts = split_model(create_model(cfg, input_shape=(8, 8, 3), num_classes=3, seed=0))
    tcfg = TrainingConfig(learning_rate=0.05, optimizer="sgd", momentum=0.0, lr_schedule="constant", weight_decay=0.0,
                          augment_flip=False, augment_crop_padding=0)
    tx, _ = make_optimizer(tcfg, 1)
    state = init_train_state(parts, tx, ema_enabled=False)
    before = jax.tree.map(np.asarray, (state["params"], state["model_state"]))
    step = make_train_step(parts, tx, make_loss(tcfg), tcfg)
    images = jax.random.uniform(jax.random.key(1), (8, 8, 8, 3))
    labels = jnp.arange(8, dtype=jnp.int32) % 3
    mask = jnp.ones(8)
    losses = []
    for i in range(3):
        state, per_ex = step(state, images, labels, mask, jax.random.key(i))
        losses.append(float(jnp.mean(per_ex["loss"])))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    for old_tree, new_tree in zip(before, (state["params"], state["model_state"])):
        old, new = jax.tree.leaves(old_tree), jax.tree.leaves(new_tree)
        assert [a.shape for a in old] == [b.shape for b in new]
        assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(old, new))  # weights and BN statistics move
