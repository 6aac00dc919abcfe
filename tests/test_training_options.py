"""Training options beyond plain supervised training: fine-tuning with frozen stages,
adversarial training (PGD, TRADES, adversarial augmentation), regularizers, unclipped noise
augmentation, and the models registered from the other seeds (perturbative, Krotov)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from robust_vision.config import AdversarialConfig, ConfigError, ModelConfig, RegularizerConfig, load_config
from robust_vision.data.pipeline import augment
from robust_vision.data.sources import read_examples
from robust_vision.losses import make_loss
from robust_vision.models import MODELS, create_model
from robust_vision.models.local import train_krotov
from robust_vision.models.stages import frozen_labels, path_names, stage_names
from robust_vision.models.state import split_model
from robust_vision.optim import init_train_state, make_optimizer
from robust_vision.regularizers import make_regularizer
from robust_vision.runs.loading import load_trained_model
from robust_vision.training.adversarial import adversarial_examples, adversarial_hooks
from robust_vision.training.loop import training_sources
from robust_vision.training.steps import make_train_step
from robust_vision.training.trainer import train

QUIET = dict(log=lambda _msg: None)


def _cfg(run_dir: Path, epochs: int = 1, extra: list[str] = ()):
    return load_config("configs/quickstart.yaml", tiny_overrides(run_dir, epochs) + list(extra))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(_cfg(run_dir, epochs=2), **QUIET)
    return run_dir


def _leaves_by_name(tree) -> dict[str, np.ndarray]:
    return {".".join(str(n) for n in path_names(p)): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_frozen_stage_is_bit_identical_after_fine_tuning(base_run, tmp_path):
    train(_cfg(tmp_path / "ft", epochs=2, extra=[f"training.init_from={base_run}", "training.freeze_stages=1"]),
          **QUIET)
    before = _leaves_by_name(load_trained_model(base_run).params)
    after = _leaves_by_name(load_trained_model(tmp_path / "ft").params)  # EMA weights
    assert before.keys() == after.keys()
    stage1 = [k for k in before if k.startswith("blocks.0.")]
    others = [k for k in before if not k.startswith("blocks.0.")]
    assert stage1 and others
    for k in stage1:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert any(not np.array_equal(before[k], after[k]) for k in others), "unfrozen layers must train"


def test_init_from_keeps_fresh_head_when_classes_differ(base_run, tmp_path):
    messages = []
    cfg = _cfg(tmp_path / "binary", extra=[f"training.init_from={base_run}", "data.classes=[0, 1]"])
    train(cfg, log=messages.append)
    text = "\n".join(messages)
    assert "Initialised from" in text and "fresh initialisation kept for head" in text


def test_freeze_more_stages_than_the_model_has_is_an_error(tmp_path):
    model_cfg = ModelConfig(name="cnn", features=[8, 16])
    model = create_model(model_cfg, input_shape=(8, 8, 1), num_classes=10, seed=0)
    params = split_model(model).params
    assert stage_names(model_cfg) == ["stage1", "stage2"]
    labels = jax.tree.leaves(frozen_labels(params, model_cfg, 2))
    assert labels.count("trainable") == 2  # head kernel and bias: freezing every stage = linear probing
    with pytest.raises(ValueError, match="at most 2"):
        frozen_labels(params, model_cfg, 3)


def _one_step(parts, cfg, x, y, **hooks):
    tx, _ = make_optimizer(cfg, 1)
    state = jax.tree.map(jnp.copy, init_train_state(parts, tx, ema_enabled=False))  # the step donates it
    step = make_train_step(parts, tx, make_loss(cfg), cfg, **hooks)
    new_state, per_ex = step(state, x, y, jnp.ones(len(y)), jax.random.key(3))
    return _leaves_by_name(new_state["params"]), per_ex


def _plain_and_hooked_step(run_dir: Path, acfg: AdversarialConfig):
    """One train step of the same tiny CNN on the same batch, without and with the
    adversarial hooks of ``acfg``: ((params, per_example), (params, per_example))."""
    cfg = _cfg(run_dir)
    parts = split_model(create_model(cfg.model, input_shape=(8, 8, 1), num_classes=10, seed=0))
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    y = jnp.arange(16) % 10
    return (_one_step(parts, cfg.training, x, y),
            _one_step(parts, cfg.training, x, y, **adversarial_hooks(acfg)))


def test_trades_with_beta_zero_takes_the_cross_entropy_step(tmp_path):
    (plain, _), (trades, _) = _plain_and_hooked_step(
        tmp_path / "unused", AdversarialConfig(method="trades", eps=0.1, steps=2, trades_beta=0.0))
    for k in plain:
        np.testing.assert_allclose(plain[k], trades[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_pgd_training_sees_adversarial_inputs(tmp_path):
    (_, clean), (_, adv) = _plain_and_hooked_step(tmp_path / "unused",
                                                  AdversarialConfig(method="pgd", eps=0.3, steps=5))
    # The loss on PGD examples of the same parameters is higher than on the clean batch.
    assert float(jnp.mean(adv["loss"])) > float(jnp.mean(clean["loss"]))


def test_adversarial_augmentation_keeps_only_successful_attacks(base_run):
    model = load_trained_model(base_run)
    cfg = load_config(base_run / "config.yaml")
    from test_datasets import load

    data = load(cfg.data)
    images, labels = data.train.images[:100], data.train.labels[:100]
    acfg = AdversarialConfig(method="augment", eps=0.3, steps=5, augment_attack="pgd", augment_source=str(base_run))
    x_adv, y_adv, stats = adversarial_examples(model.logits_fn(), images, labels, acfg, jax.random.key(0),
                                               batch_size=64)
    assert stats["attacked"] == 100 and stats["successful"] == len(y_adv) <= stats["correct"]
    assert len(y_adv) > 0
    pred = np.asarray(jnp.argmax(model.logits_fn()(jnp.asarray(x_adv)), -1))
    assert np.all(pred != y_adv)  # every added example fools the source model, with its true label
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    capped = adversarial_examples(model.logits_fn(), images, labels,
                                  AdversarialConfig(method="augment", eps=0.3, steps=5, augment_attack="pgd",
                                                    augment_max_examples=3, augment_source="x"),
                                  jax.random.key(0), batch_size=64)
    assert len(capped[1]) == min(3, len(y_adv))


def test_augment_needs_a_source_model(tmp_path):
    with pytest.raises(ConfigError, match="augment_source"):
        _cfg(tmp_path, extra=["training.adversarial.method=augment"])


def test_adversarial_augmentation_trains_on_more_examples(base_run, tmp_path):
    messages = []
    train(_cfg(tmp_path / "aug", extra=["training.adversarial.method=augment", f"training.init_from={base_run}",
                                         "training.adversarial.augment_attack=pgd", "training.adversarial.eps=0.3",
                                         "training.adversarial.steps=5"]),
          log=messages.append)
    line = next(m for m in messages if m.startswith("Adversarial augmentation"))
    assert "examples added" in line


def test_regularizers_are_off_at_zero_weight_and_check_the_layer():
    assert make_regularizer(RegularizerConfig()) is None
    reg = make_regularizer(RegularizerConfig(spectral_weight=1.0, spectral_layer="nope"))
    with pytest.raises(ValueError, match="embedding"):
        reg(None, None, {"embedding": jnp.zeros((4, 3))}, jax.random.key(0))


@pytest.mark.parametrize("extra", [["training.regularizers.jacobian_weight=0.05"],
                                   ["training.regularizers.spectral_weight=0.1",
                                    "training.regularizers.spectral_start=2"]])
def test_regularized_training_runs(tmp_path, extra):
    result = train(_cfg(tmp_path / "reg", extra=extra), **QUIET)
    assert np.isfinite(result.history[-1]["train_loss"])


def test_jacobian_regularizer_adds_the_penalty_to_the_loss(tmp_path):
    cfg = _cfg(tmp_path / "unused")
    model = create_model(cfg.model, input_shape=(8, 8, 1), num_classes=10, seed=0)
    reg = make_regularizer(RegularizerConfig(jacobian_weight=1.0, jacobian_projections=-1))
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    logits, features = model(x, return_features=True)
    exact = jax.jacrev(lambda xb: model(xb))(x)  # (B, K, B, H, W, C); eval mode: examples independent
    per_example = jnp.stack([jnp.sum(exact[i, :, i] ** 2) for i in range(4)])
    np.testing.assert_allclose(float(reg(model, x, features, jax.random.key(1))), float(per_example.mean()),
                               rtol=1e-4)


def test_unclipped_noise_augmentation_leaves_the_unit_interval():
    x = jnp.full((8, 4, 4, 1), 0.5)
    key = jax.random.key(0)
    clipped = augment(key, x, flip=False, crop_padding=0, noise_std=1.0)
    raw = augment(key, x, flip=False, crop_padding=0, noise_std=1.0, noise_clip=False)
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0
    assert float(raw.min()) < 0.0 and float(raw.max()) > 1.0
    np.testing.assert_allclose(np.clip(raw, 0, 1), clipped, atol=1e-7)


@pytest.mark.parametrize("name,extra", [("lenet", {"nfilters": 4}), ("cifarnet", {"nfilters": 4}),
                                        ("perturb_resnet18", {"nfilters": 2}), ("krotov", {})])
def test_seed_models_are_registered(name, extra):
    assert name in MODELS
    cfg = ModelConfig(name=name)
    for k, v in extra.items():
        setattr(cfg.perturb, k, v)
    model = create_model(cfg, input_shape=(16, 16, 1), num_classes=3, seed=0)
    logits, features = model(jnp.zeros((2, 16, 16, 1)), return_features=True)
    assert logits.shape == (2, 3) and "embedding" in features
    assert stage_names(cfg) == [k for k in features if k not in ("embedding", "currents")]


def test_krotov_model_learns_its_local_layer_without_labels(tmp_path):
    run = tmp_path / "krotov"
    cfg = _cfg(run, extra=["model.name=krotov", "model.krotov.n_hidden=16", "model.krotov.epochs=20",
                           "model.krotov.p=2", "evaluation.format=[png]"])
    train(cfg, **QUIET)
    assert (run / "plots" / "receptive_fields.png").is_file()
    W = np.asarray(load_trained_model(run).model_state["local_weights"].value)
    norms = np.sum(np.abs(W) ** 2, axis=1) ** 0.5
    # The rule drives the p-norm of every row that keeps winning toward its fixed point 1; the
    # N(0, 1) rows of train_krotov start near sqrt(D) = 8 (test_local_learning checks convergence).
    assert np.median(norms) < 4.0
    # Supervised training changed only the head: the saved local layer is exactly the
    # unsupervised result.
    kc = cfg.model.krotov
    expected = train_krotov(jax.random.fold_in(jax.random.key(cfg.training.seed), 0x10CA1),
                            read_examples(training_sources(cfg).train)[0], n_hidden=kc.n_hidden, epochs=kc.epochs,
                            batch_size=kc.batch_size, p=kc.p, k=kc.k, delta=kc.delta, lr0=kc.lr)
    np.testing.assert_array_equal(W, np.asarray(expected))
