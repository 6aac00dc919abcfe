"""Pure, jitted training and evaluation steps.

A step is a pure function of (train state, batch, key): the model is split into graphs and
state once (``models.state.split_model``), the train state is ``optim.init_train_state``'s dict
pytree, and every random draw (augmentation, dropout, mixup, attacks) comes from the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_vision.attacks.training import madry_pgd_examples
from robust_vision.config import TrainingConfig
from robust_vision.data.pipeline import augment
from robust_vision.evaluation.metrics import per_example_metrics
from robust_vision.models.state import ModelParts, ProgramKey, make_logits_fn
from robust_vision.optim import TrainState
from robust_vision.program_cache import model_jit

# Adversarial-training hooks. Both receive the *eval-mode* logits function of the current
# parameters (batch-norm running statistics, no dropout), as the TRADES reference code
# attacks ``model.eval()``: the attack then does not depend on how the batch is composed.
#   example_transform(logits_fn, images, labels, key) -> images the loss is computed on (Madry PGD)
#   pair_transform(logits_fn, images, labels, key) -> x_adv, then the per-example loss is
#   pair_loss(logits(images), logits(x_adv), labels) (TRADES)
ExampleTransform = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]
PairLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# training.precision -> the dtype the train step computes in (parameters stay float32).
COMPUTE_DTYPES = {"float32": jnp.float32, "bf16": jnp.bfloat16}


def set_compute_dtype(model: nnx.Module, dtype: Any) -> nnx.Module:
    """Make every Flax layer of ``model`` that has a computation ``dtype`` (Conv, Linear,
    BatchNorm, ...) compute in ``dtype``; their variables keep their own dtype (float32), and
    batch norm keeps its running statistics in float32. For a model merged inside a traced step
    (its attributes are not saved). Returns ``model``."""
    modules = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()  # flax < 0.11
    for _, module in modules:
        if hasattr(module, "dtype"):
            module.dtype = dtype
    return model


@dataclass(frozen=True)
class StepHooks:
    """The optional pieces of a train step's loss (see the hook types above).
    ``extra_loss(model, images, features, key) -> scalar`` adds a regularizer;
    ``certified_loss(model, images, labels, per_example, step) -> per_example`` replaces the
    per-example loss by its certified-training mix (``training.certified``)."""

    example_transform: ExampleTransform | None = None
    pair_transform: ExampleTransform | None = None
    pair_loss: PairLoss | None = None
    extra_loss: Callable | None = None
    certified_loss: Callable | None = None

    def __post_init__(self):
        if (self.pair_transform is None) != (self.pair_loss is None):
            raise ValueError("pair_transform and pair_loss go together (TRADES needs both)")

    def functions(self) -> list[Callable]:
        hooks = (getattr(self, field.name) for field in dataclasses.fields(self))
        return [f for f in hooks if f is not None]


@dataclass(frozen=True)
class _Inputs:
    """What the loss of one step sees: the (augmented, attacked, mixed) images with their labels,
    TRADES / MART's adversarial images ``x_adv`` and mixup's weight ``lam`` and second labels."""

    images: jax.Array
    labels: jax.Array
    x_adv: jax.Array | None = None
    lam: jax.Array | None = None
    labels_b: jax.Array | None = None


@dataclass(frozen=True)
class _TrainStep:
    """The pure step ``(state, images, labels, mask, key) -> (state, per_example)`` of ``make_train_step``."""

    parts: ModelParts
    tx: optax.GradientTransformation
    loss_fn: Callable
    cfg: TrainingConfig
    hooks: StepHooks

    def inputs(self, state: TrainState, images: jax.Array, labels: jax.Array, keys: tuple) -> _Inputs:
        """Augmentation, then the adversarial example (Madry) or pair (TRADES / MART), then mixup."""
        cfg, hooks = self.cfg, self.hooks
        aug_key, mix_key, adv_key = keys
        images = augment(aug_key, images, flip=cfg.augment_flip, crop_padding=cfg.augment_crop_padding,
                         noise_std=cfg.noise_augment_std, noise_clip=cfg.noise_augment_clip)

        def attack_logits(x, params=state["params"], model_state=state["model_state"]):
            return self.parts.merge(params, model_state, train=False)(x)

        if hooks.example_transform is not None:
            images = jax.lax.stop_gradient(hooks.example_transform(attack_logits, images, labels, adv_key))
        x_adv = None
        if hooks.pair_transform is not None:
            x_adv = jax.lax.stop_gradient(hooks.pair_transform(attack_logits, images, labels, adv_key))
        if not cfg.use_mixup:
            return _Inputs(images, labels, x_adv)
        lam_key, perm_key = jax.random.split(mix_key)
        lam = jax.random.beta(lam_key, cfg.mixup_alpha, cfg.mixup_alpha)
        perm = jax.random.permutation(perm_key, images.shape[0])
        return _Inputs(lam * images + (1.0 - lam) * images[perm], labels, x_adv, lam, labels[perm])

    def objective(self, params: nnx.State, state: TrainState, batch: _Inputs, mask: jax.Array, keys: tuple):
        """(mean masked loss, (logits, per-example loss, new model state)) in train mode."""
        hooks, compute = self.hooks, COMPUTE_DTYPES[self.cfg.precision]
        dropout_key, reg_key = keys
        # bf16: the layers cast their float32 parameters to bfloat16 as they compute (the
        # gradient flows back through the cast, so grads and updates are float32).
        model = self.parts.merge(params, state["model_state"], train=True, dropout_key=dropout_key)
        if compute != jnp.float32:
            set_compute_dtype(model, compute)
        images, labels = batch.images, batch.labels
        if hooks.extra_loss is not None:
            logits, features = model(images.astype(compute), return_features=True)
        else:
            logits = model(images.astype(compute))
        logits = logits.astype(jnp.float32)
        if hooks.pair_loss is not None:
            per_ex = hooks.pair_loss(logits, model(batch.x_adv), labels)
        else:
            per_ex = self.loss_fn(logits, labels)
        if batch.lam is not None:
            per_ex = batch.lam * per_ex + (1.0 - batch.lam) * self.loss_fn(logits, batch.labels_b)
        if hooks.certified_loss is not None:
            per_ex = hooks.certified_loss(model, images, labels, per_ex, state["step"])
        loss = jnp.sum(per_ex * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        if hooks.extra_loss is not None:
            loss = loss + hooks.extra_loss(model, images, features, reg_key)
        _, _, _, new_model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
        return loss, (logits, per_ex, new_model_state)

    def __call__(self, state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, key: jax.Array):
        aug_key, dropout_key, mix_key, adv_key, reg_key = jax.random.split(key, 5)
        batch = self.inputs(state, images, labels, (aug_key, mix_key, adv_key))
        grad_fn = jax.value_and_grad(self.objective, has_aux=True)
        (_, (logits, per_ex, new_model_state)), grads = grad_fn(state["params"], state, batch, mask,
                                                                (dropout_key, reg_key))
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = state["ema_params"]
        if ema is not None:
            # Polyak averaging, new_ema = decay * ema + (1 - decay) * params, written as an
            # increment rather than with optax.incremental_update's weighted sum so that a
            # parameter that does not move (a frozen stage) keeps a bit-identical average.
            decay = self.cfg.ema_decay
            ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
        metrics = per_example_metrics(logits, labels)
        new_state = {"params": params, "model_state": new_model_state, "opt_state": opt_state,
                     "ema_params": ema, "step": state["step"] + 1}
        return new_state, {"loss": per_ex, "correct": metrics["correct"],
                           "confidence": metrics["confidence"], "margin": metrics["margin"]}


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, loss_fn: Callable,
                    cfg: TrainingConfig, *, program_key: ProgramKey | None = None, **hooks: Callable):
    """Build the jitted train step ``(state, images, labels, mask, key) -> (state, per_example)``.

    ``cfg.precision`` "bf16" runs the model in bfloat16 (``COMPUTE_DTYPES``); parameters,
    optimizer state, batch statistics, the loss and the per-example outputs stay float32.
    images (B, H, W, C) float32 in [0, 1], labels (B,) int32, mask (B,) float32 (0 = padding),
    key a PRNG key for this step. ``per_example`` holds (B,) arrays ``loss``, ``correct``,
    ``confidence``, ``margin`` of the training forward pass (train mode, augmented inputs;
    adversarial inputs under Madry training, clean inputs under TRADES).
    ``hooks``: the fields of ``StepHooks`` (adversarial, AugMix, regularizer, certified training).
    ``program_key`` (``model_program_key`` of these parts and the configs that built ``tx``,
    ``loss_fn`` and the hooks) keeps the traced step on disk (``program_cache``); None: plain jit.
    """
    step_hooks = StepHooks(**hooks)
    step = _TrainStep(parts, tx, loss_fn, cfg, step_hooks)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, key: jax.Array):
        return step(state, images, labels, mask, key)

    return model_jit(train_step, program_key, name="train_step", donate_argnums=(0,),
                     sources=[loss_fn, *step_hooks.functions()])


def make_eval_step(parts: ModelParts, program_key: ProgramKey | None = None):
    """Jitted ``(params, model_state, images, labels) -> per_example`` metrics in eval mode
    (kept on disk under ``program_key``, as ``make_train_step``)."""
    logits_fn = make_logits_fn(parts)

    def eval_step(params, model_state, images, labels):
        return per_example_metrics(logits_fn(params, model_state, images), labels)

    return model_jit(eval_step, program_key, name="eval_step")


def make_robust_eval_step(parts: ModelParts, eps: float, steps: int, step_size: float | None,
                          program_key: ProgramKey | None = None):
    """Jitted ``(params, model_state, images, labels, key) -> {"pgd_correct": (B,) float32}``: 1
    where the eval-mode model still classifies the Linf PGD example (random start, ``steps``
    steps of ``step_size``, budget ``eps`` in [0, 1] pixel units) of an image correctly. The
    trainer's held-out robust accuracy (``training.val_attack``); kept on disk as ``make_eval_step``."""
    logits_fn = make_logits_fn(parts)

    def robust_eval_step(params, model_state, images, labels, key):
        def model_logits(x):
            return logits_fn(params, model_state, x)

        x_adv = madry_pgd_examples(model_logits, images, labels, key, eps, steps=steps, step_size=step_size)
        return {"pgd_correct": (jnp.argmax(model_logits(x_adv), -1) == labels).astype(jnp.float32)}

    return model_jit(robust_eval_step, program_key, name="robust_eval_step",
                     key={"eps": eps, "steps": steps, "step_size": step_size})
