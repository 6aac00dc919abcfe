"""A model as pure state: static graphs plus parameter, RNG and other state (Flax NNX).

The model is split once into a static graph and three pieces of state
(``nnx.split(model, nnx.Param, nnx.RngState, ...)``): trainable parameters, the RNG streams
(re-seeded every step from an explicit key, so they never need to be saved) and the rest
(batch-norm statistics, fixed noise masks, ...). Training (``training/steps.py``) and model
loading (``runs/loading.py``) both build on these pieces; ``ProgramKey`` names the traced
programs that close over them (``program_cache``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable

import jax
from flax import nnx

from robust_vision.config import ModelConfig, TrainingConfig
from robust_vision.program_cache import array_digest


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


def make_logits_fn(parts: ModelParts) -> Callable[[nnx.State, nnx.State, jax.Array], jax.Array]:
    """Pure eval-mode forward ``(params, model_state, images) -> logits`` (not jitted: callers
    close over it inside their own jitted computations)."""

    def logits_fn(params: nnx.State, model_state: nnx.State, images: jax.Array) -> jax.Array:
        return parts.merge(params, model_state, train=False)(images)

    return logits_fn
