import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.config import ModelConfig
from robust_vision.models import MODELS, create_model
from robust_vision.models.state import make_logits_fn, split_model


@pytest.mark.parametrize("name, shape", [("cnn", (8, 8, 1)), ("cnn", (16, 16, 3)), ("resnet18", (8, 8, 3)),
                                         ("resnet18", (12, 10, 1)), ("linear", (8, 8, 1))])
def test_output_shape_and_features(name, shape):
    model = create_model(ModelConfig(name=name, features=[8, 16], width=4), input_shape=shape, num_classes=7, seed=0)
    x = jnp.ones((3, *shape))
    logits, features = model(x, return_features=True)
    assert logits.shape == (3, 7)
    assert list(features)[-1] == "embedding" and features["embedding"].shape[0] == 3
    np.testing.assert_allclose(model(x), logits, rtol=1e-6)  # one forward path


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid models: .*cnn"):
        create_model(ModelConfig(name="vgg"), input_shape=(8, 8, 1), num_classes=10, seed=0)


def test_same_seed_same_parameters():
    a = split_model(create_model(ModelConfig(), input_shape=(8, 8, 1), num_classes=10, seed=3)).params
    b = split_model(create_model(ModelConfig(), input_shape=(8, 8, 1), num_classes=10, seed=3)).params
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_eval_mode_is_deterministic_and_uses_running_stats():
    model = create_model(ModelConfig(dropout_rate=0.5), input_shape=(8, 8, 1), num_classes=10, seed=0)
    parts = split_model(model)
    logits_fn = jax.jit(make_logits_fn(parts))
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    first = logits_fn(parts.params, parts.model_state, x)
    np.testing.assert_array_equal(first, logits_fn(parts.params, parts.model_state, x))
    # Eval mode uses running statistics: an example's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(logits_fn(parts.params, parts.model_state, x[:1]), first[:1], rtol=1e-5, atol=1e-6)


def test_small_images_rejected_with_a_fix():
    with pytest.raises(ValueError, match="at least 8x8"):
        create_model(ModelConfig(name="resnet18"), input_shape=(4, 4, 1), num_classes=10, seed=0)
    assert set(MODELS) >= {"cnn", "resnet18", "linear"}
