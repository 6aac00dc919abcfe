"""Load a trained model from a run directory or a checkpoint directory."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx

from robust_vision.config import Config, ConfigError, config_to_dict, load_config
from robust_vision.data.pipeline import num_batches
from robust_vision.models import MODELS, model_builder
from robust_vision.models.state import Graphs, ModelParts, ProgramKey, make_logits_fn, model_program_key, split_model
from robust_vision.optim import init_train_state, make_run_optimizer
from robust_vision.program_cache import cached_jit, cached_shapes
from robust_vision.runs.checkpoint import restore_checkpoint
from robust_vision.runs.paths import CheckpointError, config_file, read_meta, resolve_checkpoint  # noqa: F401 (re-exported)


@dataclass
class LoadedModel:
    """A restored model: ``logits(images)`` is a pure, jittable eval-mode forward pass
    (B, H, W, C) in [0, 1] -> (B, K) with the checkpoint's weights (EMA weights when the run
    used EMA)."""

    name: str
    run_dir: Path
    checkpoint_dir: Path
    config: Config
    meta: dict
    parts: ModelParts
    params: object
    model_state: object

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def __post_init__(self) -> None:
        # One function object per model, so jitted evaluators keyed on it compile once; its
        # program_key lets them keep their traced programs on disk (program_cache).
        key = model_program_key(self.parts, self.config.model, input_shape=list(self.input_shape),
                                num_classes=self.num_classes, sources=(MODELS[self.config.model.name][0],))
        self.forward = Forward(make_logits_fn(self.parts), key)

    @property
    def variables(self) -> tuple:
        """The ``forward`` function's first argument: (params, model_state)."""
        return (self.params, self.model_state)

    def logits_fn(self) -> "BoundLogits":
        """images -> logits with the weights closed over (for attacks and analyses)."""
        return BoundLogits(self.forward, self.variables)


class Forward:
    """A model's pure eval-mode forward ``(variables, images) -> logits``, variables =
    (params, model_state), images (B, H, W, C) in [0, 1], logits (B, K). ``program_key``: what
    the programs that trace it depend on beyond their arguments (``steps.model_program_key``).
    Hashed and compared by identity, as a static argument of jit."""

    def __init__(self, logits: Callable, program_key: ProgramKey):
        self._logits, self.program_key = logits, program_key

    def __call__(self, variables: tuple, images: jax.Array) -> jax.Array:
        return self._logits(variables[0], variables[1], images)


class BoundLogits:
    """``images -> logits`` of a ``Forward`` with its variables closed over. Evaluators that
    know it (attacks) pass ``variables`` to their programs as an argument instead, so a program
    kept on disk never holds the weights."""

    def __init__(self, forward: Forward, variables: tuple):
        self.forward, self.variables = forward, variables

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.forward(self.variables, images)


def _check_compatible(cfg: Config, meta: dict, checkpoint_dir: Path) -> None:
    saved_model = meta.get("model", {})
    wanted = config_to_dict(cfg)["model"]
    differing = [k for k in wanted if k in saved_model and saved_model[k] != wanted[k] and k != "n_classes"]
    if differing:
        k = differing[0]
        raise CheckpointError(f"{checkpoint_dir}: the checkpoint is a {saved_model.get('name')!r} model with "
                              f"model.{k}={saved_model[k]!r} but the config says {wanted[k]!r}; use the run's "
                              "own config.yaml or a matching checkpoint")


def load_trained_model(checkpoint: str | Path, cfg: Config | None = None, *, name: str | None = None) -> LoadedModel:
    """Restore the model saved at ``checkpoint``.

    ``cfg`` (the evaluation config) must describe the same model as the checkpoint; when None,
    the run directory's ``config.yaml`` is used. The restored weights are the EMA weights
    when the run used EMA (the ones its validation metrics were computed with).
    """
    run_dir, ckpt_dir = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt_dir)
    run_cfg_path = config_file(run_dir)
    if not run_cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: config.yaml missing; the checkpoint cannot be rebuilt without the run's config")
    try:
        run_cfg = load_config(run_cfg_path)
    except ConfigError as exc:
        raise CheckpointError(f"{run_cfg_path}: {exc}") from None
    if cfg is not None:
        _check_compatible(cfg, meta, ckpt_dir)
    parts = _abstract_parts(run_cfg, tuple(meta["input_shape"]), int(meta["num_classes"]))
    tx, _ = make_run_optimizer(run_cfg.training, run_cfg.model, parts.params,
                               num_batches(1, run_cfg.training.batch_size))
    ema = bool(meta.get("ema", run_cfg.training.ema_enabled))
    abstract = jax.eval_shape(lambda p: init_train_state(dataclasses.replace(parts, params=p), tx, ema), parts.params)
    state, meta = restore_checkpoint(ckpt_dir, abstract)
    params = state["ema_params"] if state.get("ema_params") is not None else state["params"]
    _check_finite({"params": params, "model_state": state["model_state"]}, ckpt_dir)
    parts = dataclasses.replace(parts, params=params, model_state=state["model_state"])
    return LoadedModel(name=name or run_dir.name, run_dir=run_dir, checkpoint_dir=ckpt_dir,
                       config=cfg or run_cfg, meta=meta, parts=parts, params=params,
                       model_state=state["model_state"])


def _check_finite(tree, checkpoint_dir: Path) -> None:
    """A CheckpointError when a weight is NaN or infinite: every number computed from it would be
    meaningless (a run that diverged, or NaN pixels trained on). Checked on the host copy."""
    bad, total = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        if value.dtype.kind != "f":
            continue
        total += 1
        if not np.isfinite(value).all():
            bad.append(jax.tree_util.keystr(path))
    if bad:
        raise CheckpointError(f"{checkpoint_dir}: {len(bad)} of {total} weight tensors hold NaN or infinite values "
                              f"(first: {bad[0]}); the run diverged or trained on non-finite data: use an earlier "
                              "checkpoint (checkpoints/epochs/<epoch>) or retrain")


def _abstract_parts(run_cfg: Config, input_shape: tuple[int, int, int], num_classes: int) -> ModelParts:
    """The run's model split into parts: parameters and model state as ShapeDtypeStructs (the
    checkpoint fills them in), the RNG streams (not checkpointed) as arrays, and the graphs,
    built from ``nnx.eval_shape`` only when a program has to be traced.

    The shapes and the streams are kept on disk (``program_cache``: the shapes as JSON, the
    streams' jitted construction as a program) under the model config, input shape, class count
    and seed, so a second run does not trace the constructor; when every evaluator's program is
    read from disk too, nothing asks for the graphs. Why not build the model eagerly: that
    initialises every parameter only for the checkpoint to overwrite it, and each eager
    initialiser is its own small XLA program (one per shape), traced and lowered again on every
    run. The streams hold the very keys and counters an eager construction gives.
    """
    build = model_builder(run_cfg.model, input_shape=input_shape, num_classes=num_classes, seed=run_cfg.training.seed)

    @functools.lru_cache(maxsize=1)
    def abstract() -> ModelParts:  # one trace of the constructor gives both shapes and graphs
        return split_model(nnx.eval_shape(build))

    key = {"model": dataclasses.asdict(run_cfg.model), "seed": run_cfg.training.seed,
           "input_shape": list(input_shape), "num_classes": num_classes}
    params, model_state = cached_shapes(lambda: (abstract().params, abstract().model_state),
                                        name="model_shapes", key=key, sources=[build.constructor])
    streams = cached_jit(lambda: nnx.state(build(), nnx.RngState), name="rng_streams", key=key,
                         sources=[build.constructor])
    return ModelParts(Graphs(build=lambda: abstract().graphs.get()), params, streams(), model_state)


def check_model_data(model: LoadedModel, image_shape: tuple[int, int, int], num_classes: int, where: str,
                     fix: str) -> None:
    """Clear errors when data of ``image_shape`` (H, W, C) with ``num_classes`` classes is not what
    ``model`` was trained on; ``fix`` ends the class-count message (what the user should do)."""
    check_input_shape(model, image_shape, where)
    if model.num_classes != num_classes:
        raise ValueError(f"{model.name} predicts {model.num_classes} classes but {where} has {num_classes}; {fix}")


def check_input_shape(model: LoadedModel, image_shape: tuple[int, int, int], where: str) -> None:
    """Clear error when a dataset's images do not match what the model was trained on."""
    if tuple(image_shape) != model.input_shape:
        h, w, c = model.input_shape
        raise ConfigError(f"data.image_size / data.channels: {where} gives images of shape {tuple(image_shape)} but "
                          f"{model.name} was trained on {model.input_shape}; set data.image_size: [{h}, {w}] and "
                          f"data.channels: {c}")
