"""Pure, jitted training and evaluation steps.

The model is split once into a static graph and three pieces of state
(``nnx.split(model, nnx.Param, nnx.RngState, ...)``): trainable parameters, the RNG streams
(re-seeded every step from an explicit key, so they never need to be saved) and the rest
(batch-norm statistics, fixed noise masks, ...). The train state is a plain dict pytree::

    {"params": State, "model_state": State, "opt_state": optax state,
     "ema_params": State (or None), "step": int32 scalar}

so the whole training run is a sequence of pure functions of (state, batch, key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_vision.attacks.training import madry_pgd_examples
from robust_vision.config import ModelConfig, TrainingConfig
from robust_vision.data.pipeline import augment
from robust_vision.metrics import per_example_metrics
from robust_vision.models.stages import frozen_labels
from robust_vision.program_cache import array_digest, model_jit

TrainState = dict[str, Any]


def merge_fresh(graph: nnx.GraphDef, *states: nnx.State) -> nnx.Module:
    """``nnx.merge`` on copies of ``states``, for use inside a traced function.

    nnx.merge reuses the Variable objects it is given; copying the states makes fresh ones at
    the current trace level, so batch-norm updates and re-seeding inside the traced function
    never mutate Variables that belong to an outer trace.
    """
    return nnx.merge(graph, *(jax.tree.map(lambda leaf: leaf, state) for state in states))


class Graphs:
    """A model's static graphs (train mode, eval mode), or a function that builds them when first
    asked: a loaded model whose every program is read from disk (``program_cache``) never traces
    its constructor."""

    def __init__(self, train: nnx.GraphDef | None = None, eval: nnx.GraphDef | None = None, *,
                 build: Callable[[], tuple[nnx.GraphDef, nnx.GraphDef]] | None = None):
        if (train is None or eval is None) and build is None:
            raise ValueError("Graphs needs both graphs or a function that builds them")
        self._graphs = None if build is not None else (train, eval)
        self._build = build

    @property
    def built(self) -> bool:
        return self._graphs is not None

    def get(self) -> tuple[nnx.GraphDef, nnx.GraphDef]:
        if self._graphs is None:
            self._graphs = self._build()
        return self._graphs


@dataclass(frozen=True)
class ModelParts:
    """A model split into its static graphs (train and eval mode) and its state."""

    graphs: Graphs
    params: nnx.State
    rng_state: nnx.State
    model_state: nnx.State

    @property
    def train_graph(self) -> nnx.GraphDef:
        return self.graphs.get()[0]

    @property
    def eval_graph(self) -> nnx.GraphDef:
        return self.graphs.get()[1]

    def merge(self, params: nnx.State, model_state: nnx.State, *, train: bool,
              dropout_key: jax.Array | None = None) -> nnx.Module:
        """A model object for use inside a traced function; ``dropout_key`` seeds its dropout."""
        graph = self.train_graph if train else self.eval_graph
        model = merge_fresh(graph, params, self.rng_state, model_state)
        if dropout_key is not None:
            nnx.reseed(model, dropout=dropout_key)
        return model


def split_model(model: nnx.Module) -> ModelParts:
    """Split ``model`` into train/eval graphs and state. The model object itself is left in eval mode."""
    model.train()
    train_graph, params, rng_state, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
    model.eval()
    eval_graph, _, _, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return ModelParts(Graphs(train_graph, eval_graph), params, rng_state, model_state)


# Run-config keys that say where a run writes or how it reports, never what a step computes:
# left out of program keys, so one run's cached programs serve a run in another directory.
_UNTRACED_TRAINING_KEYS = frozenset({"checkpoint_dir", "log_dir", "progress_bar", "compile_cache_dir", "write_figures",
                                     "eval_every", "save_every", "best_metric", "best_mode", "init_from"})


@dataclass(frozen=True)
class ProgramKey:
    """What a model's traced programs depend on beyond their arguments (``program_cache``):
    ``key`` (JSON-able) and ``sources``, the model's node types, whose source files count too."""

    key: dict
    sources: tuple


def model_program_key(parts: ModelParts, model_cfg: ModelConfig, training_cfg: TrainingConfig | None = None,
                      *, sources: tuple = (), **extra: Any) -> ProgramKey:
    """The key of programs that close over ``parts`` (its graphs and RNG streams, which are
    baked in as constants) built from these configs. ``extra``: anything else they close over
    (JSON-able); ``sources``: code they depend on beyond the package's own.

    With its graphs built, the key also holds the graph text, which names every static attribute
    of every module (the addresses in the text of function attributes dropped: they change from
    process to process), and the module types count as sources. Graphs not built yet (a loaded
    model) stay unbuilt: the model config, the input shape and the constructor name them.
    """
    training = {} if training_cfg is None else dataclasses.asdict(training_cfg)
    key = {"rng": array_digest(parts.rng_state), "model": dataclasses.asdict(model_cfg),
           "training": {k: v for k, v in training.items() if k not in _UNTRACED_TRAINING_KEYS}, **extra}
    types = set()
    if parts.graphs.built:
        graphs = re.sub(r" at 0x[0-9a-fA-F]+", "", f"{parts.train_graph}\n{parts.eval_graph}")
        key["graphs"] = hashlib.sha256(graphs.encode()).hexdigest()
        types = {node.type for graph in parts.graphs.get() for node in graph.nodes
                 if isinstance(getattr(node, "type", None), type)}
    ordered = sorted(types, key=lambda t: f"{t.__module__}.{t.__qualname__}")
    return ProgramKey(key, (*ordered, *sources))


def make_schedule(cfg: TrainingConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate of ``cfg.lr_schedule`` as a function of the step (0-based), over
    ``cfg.epochs * steps_per_epoch`` steps; epoch-valued keys (warm-up, peak, milestones) are
    converted to steps by rounding."""
    total_steps = max(cfg.epochs * steps_per_epoch, 1)
    peak = cfg.learning_rate
    if cfg.lr_schedule == "constant":
        return optax.constant_schedule(peak)
    if cfg.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(peak, total_steps)
    if cfg.lr_schedule == "piecewise":
        drops: dict[int, float] = {}
        for epoch in cfg.lr_milestones:
            at = int(round(epoch * steps_per_epoch))
            drops[at] = drops.get(at, 1.0) * cfg.lr_decay_factor  # equal milestones compound
        return optax.piecewise_constant_schedule(peak, drops)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
    if cfg.lr_schedule == "cyclic":  # triangle 0 -> peak -> 0, as torch's CyclicLR of Wong et al. (2020)
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.linear_schedule(peak, 0.0, total_steps - warmup)], [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)  # warmup_cosine


def make_optimizer(cfg: TrainingConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Callable]:
    """The Optax optimizer and learning-rate schedule (``make_schedule``) described by the config."""
    schedule = make_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adamw":
        core = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        core = optax.adam(schedule)
    else:
        core = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov and cfg.momentum > 0)
    chain = []
    if cfg.grad_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and cfg.optimizer != "adamw":
        chain.append(optax.add_decayed_weights(cfg.weight_decay))  # classic L2 for adam / sgd
    chain.append(core)
    return optax.chain(*chain), schedule


def init_train_state(parts: ModelParts, tx: optax.GradientTransformation, ema_enabled: bool) -> TrainState:
    params = parts.params
    return {
        "params": params,
        "model_state": parts.model_state,
        "opt_state": tx.init(params),
        # A copy, not an alias, so that donated / updated buffers never share storage.
        "ema_params": jax.tree.map(jnp.array, params) if ema_enabled else None,
        "step": jnp.zeros((), jnp.int32),
    }


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


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, loss_fn: Callable,
                    cfg: TrainingConfig, *, example_transform: ExampleTransform | None = None,
                    pair_transform: ExampleTransform | None = None, pair_loss: PairLoss | None = None,
                    extra_loss: Callable | None = None, certified_loss: Callable | None = None,
                    program_key: ProgramKey | None = None):
    """Build the jitted train step ``(state, images, labels, mask, key) -> (state, per_example)``.

    ``cfg.precision`` "bf16" runs the model in bfloat16 (``COMPUTE_DTYPES``); parameters,
    optimizer state, batch statistics, the loss and the per-example outputs stay float32.
    images (B, H, W, C) float32 in [0, 1], labels (B,) int32, mask (B,) float32 (0 = padding),
    key a PRNG key for this step. ``per_example`` holds (B,) arrays ``loss``, ``correct``,
    ``confidence``, ``margin`` of the training forward pass (train mode, augmented inputs;
    adversarial inputs under Madry training, clean inputs under TRADES).
    ``extra_loss(model, images, features, key) -> scalar`` adds a regularizer.
    ``certified_loss(model, images, labels, per_example, step) -> per_example`` replaces the
    per-example loss by its certified-training mix (``training.certified``).
    ``program_key`` (``model_program_key`` of these parts and the configs that built ``tx``,
    ``loss_fn`` and the hooks) keeps the traced step on disk (``program_cache``); None: plain jit.
    """
    if (pair_transform is None) != (pair_loss is None):
        raise ValueError("pair_transform and pair_loss go together (TRADES needs both)")
    decay = cfg.ema_decay
    compute = COMPUTE_DTYPES[cfg.precision]

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, key: jax.Array):
        aug_key, dropout_key, mix_key, adv_key, reg_key = jax.random.split(key, 5)
        images = augment(aug_key, images, flip=cfg.augment_flip, crop_padding=cfg.augment_crop_padding,
                         noise_std=cfg.noise_augment_std, noise_clip=cfg.noise_augment_clip)

        def attack_logits(x, params=state["params"], model_state=state["model_state"]):
            return parts.merge(params, model_state, train=False)(x)

        if example_transform is not None:
            images = jax.lax.stop_gradient(example_transform(attack_logits, images, labels, adv_key))
        x_adv = None
        if pair_transform is not None:
            x_adv = jax.lax.stop_gradient(pair_transform(attack_logits, images, labels, adv_key))
        if cfg.use_mixup:
            lam_key, perm_key = jax.random.split(mix_key)
            lam = jax.random.beta(lam_key, cfg.mixup_alpha, cfg.mixup_alpha)
            perm = jax.random.permutation(perm_key, images.shape[0])
            images = lam * images + (1.0 - lam) * images[perm]
            labels_b = labels[perm]

        def objective(params):
            # bf16: the layers cast their float32 parameters to bfloat16 as they compute (the
            # gradient flows back through the cast, so grads and updates are float32).
            model = parts.merge(params, state["model_state"], train=True, dropout_key=dropout_key)
            if compute != jnp.float32:
                set_compute_dtype(model, compute)
            if extra_loss is not None:
                logits, features = model(images.astype(compute), return_features=True)
            else:
                logits = model(images.astype(compute))
            logits = logits.astype(jnp.float32)
            if pair_loss is not None:
                per_ex = pair_loss(logits, model(x_adv), labels)
            else:
                per_ex = loss_fn(logits, labels)
            if cfg.use_mixup:
                per_ex = lam * per_ex + (1.0 - lam) * loss_fn(logits, labels_b)
            if certified_loss is not None:
                per_ex = certified_loss(model, images, labels, per_ex, state["step"])
            loss = jnp.sum(per_ex * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            if extra_loss is not None:
                loss = loss + extra_loss(model, images, features, reg_key)
            _, _, _, new_model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
            return loss, (logits, per_ex, new_model_state)

        (_, (logits, per_ex, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = state["ema_params"]
        if ema is not None:
            # Polyak averaging, new_ema = decay * ema + (1 - decay) * params, written as an
            # increment rather than with optax.incremental_update's weighted sum so that a
            # parameter that does not move (a frozen stage) keeps a bit-identical average.
            ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
        metrics = per_example_metrics(logits, labels)
        new_state = {"params": params, "model_state": new_model_state, "opt_state": opt_state,
                     "ema_params": ema, "step": state["step"] + 1}
        return new_state, {"loss": per_ex, "correct": metrics["correct"],
                           "confidence": metrics["confidence"], "margin": metrics["margin"]}

    hooks = [f for f in (loss_fn, example_transform, pair_transform, pair_loss, extra_loss, certified_loss)
             if f is not None]
    return model_jit(step, program_key, name="train_step", donate_argnums=(0,), sources=hooks)


def freeze(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
    """Wrap ``tx`` so that leaves labelled "frozen" get zero updates (and no optimizer state)."""
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def make_run_optimizer(tcfg: TrainingConfig, model_cfg: ModelConfig, params: nnx.State,
                       steps_per_epoch: int) -> tuple[optax.GradientTransformation, Callable]:
    """The run's optimizer: ``make_optimizer`` with the first ``tcfg.freeze_stages`` stages of
    the model frozen. The trainer and the checkpoint loader both build it here, so the
    optimizer state they save and restore has the same structure."""
    tx, schedule = make_optimizer(tcfg, steps_per_epoch)
    if tcfg.freeze_stages:
        tx = freeze(tx, frozen_labels(params, model_cfg, tcfg.freeze_stages))
    return tx, schedule


def make_logits_fn(parts: ModelParts) -> Callable[[nnx.State, nnx.State, jax.Array], jax.Array]:
    """Pure eval-mode forward ``(params, model_state, images) -> logits`` (not jitted: callers
    close over it inside their own jitted computations)."""

    def logits_fn(params: nnx.State, model_state: nnx.State, images: jax.Array) -> jax.Array:
        return parts.merge(params, model_state, train=False)(images)

    return logits_fn


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
