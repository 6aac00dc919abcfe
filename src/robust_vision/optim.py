"""The optimizer factory and the train state it initialises.

The train state is a plain dict pytree::

    {"params": State, "model_state": State, "opt_state": optax state,
     "ema_params": State (or None), "step": int32 scalar}

built by ``init_train_state`` from a split model (``models.state.ModelParts``). The trainer and
the checkpoint loader both build the optimizer here (``make_run_optimizer``), so the optimizer
state they save and restore has the same structure.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_vision.config import ModelConfig, TrainingConfig
from robust_vision.models.stages import frozen_labels
from robust_vision.models.state import ModelParts

TrainState = dict[str, Any]


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
