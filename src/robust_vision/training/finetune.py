"""Fine-tuning: initialise from a trained checkpoint and freeze the first k stages.

``transfer_weights`` copies every leaf of a checkpoint whose path and shape match the new
model (parameters and batch-norm statistics alike); the rest (typically a classifier head
for a different number of classes) keeps its fresh initialisation and is listed, as
big_vision's and timm's checkpoint loaders do. Freezing is ``optax.multi_transform`` with
``optax.set_to_zero`` on the frozen leaves (``steps.freeze``), so a frozen stage's
parameters stay bit-identical; its batch-norm running statistics still follow the new data
in train mode, as with ``requires_grad=False`` in PyTorch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from robust_vision.models.stages import path_names
from robust_vision.runs.loading import load_trained_model


def _name(path) -> str:
    return ".".join(str(n) for n in path_names(path) if n != "value")


def transfer_weights(target: Any, source: Any) -> tuple[Any, list[str], list[str]]:
    """Copy the leaves of ``source`` into ``target`` where path and shape agree.

    Returns (new target pytree, names of copied leaves, names of leaves left as they were).
    """
    source_leaves = {_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
    copied, kept = [], []

    def pick(path, leaf):
        name = _name(path)
        other = source_leaves.get(name)
        if other is not None and np.shape(other) == np.shape(leaf):
            copied.append(name)
            return jax.numpy.asarray(other, dtype=leaf.dtype)
        kept.append(name)
        return leaf

    return jax.tree_util.tree_map_with_path(pick, target), copied, kept


def load_initial_weights(init_from: str, params: Any, model_state: Any,
                         log: Callable[[str], None] = print) -> tuple[Any, Any]:
    """(params, model_state) with the weights of the checkpoint ``init_from`` copied in
    (its evaluation weights: EMA when the run used EMA). Raises ValueError when nothing
    matches (a different architecture)."""
    source = load_trained_model(init_from)
    params, copied_p, kept_p = transfer_weights(params, source.params)
    model_state, copied_s, _ = transfer_weights(model_state, source.model_state)
    if not copied_p:
        raise ValueError(f"training.init_from: no parameter of {init_from} matches this model (it is a "
                         f"{source.config.model.name!r} model); use a checkpoint of the same architecture")
    log(f"Initialised from {source.checkpoint_dir} (epoch {source.meta.get('epoch')}): {len(copied_p)} parameter "
        f"arrays and {len(copied_s)} state arrays copied"
        + (f"; fresh initialisation kept for {', '.join(kept_p)}" if kept_p else ""))
    return params, model_state
