"""Which stage of a model each parameter belongs to, for fine-tuning with frozen stages.

A model's *stages* are its feature-extracting blocks in forward order, named as in its
``return_features`` dictionary (``stage1``, ``stage2`` for the CNN; ``stem``, ``layer1`` ..
``layer4`` for the ResNets). The classifier head is not a stage, so freezing every stage
still trains the head (linear probing).

A stage map is a function ``(names along the parameter path) -> stage index or None``; the
path is the one of ``jax.tree_util.tree_flatten_with_path`` over the model's ``nnx.Param``
state, e.g. ``("blocks", 0, "conv1", "kernel", "value")``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax

StageMap = Callable[[Sequence[Any]], Optional[int]]


def path_names(path: Sequence[Any]) -> tuple:
    """Plain names of a pytree key path: DictKey -> key, SequenceKey -> index, GetAttrKey -> name."""
    out = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                out.append(getattr(entry, attr))
                break
    return tuple(out)


def _indexed(container: str, per_stage: int = 1, offset: int = 0) -> StageMap:
    def stage(names: Sequence[Any]) -> Optional[int]:
        if len(names) > 1 and names[0] == container and isinstance(names[1], int):
            return offset + names[1] // per_stage
        return None
    return stage


def _resnet(names: Sequence[Any]) -> Optional[int]:
    if names and names[0] in ("stem_conv", "stem_bn"):
        return 0
    return _indexed("blocks", per_stage=2, offset=1)(names)


def _perturb_resnet(names: Sequence[Any]) -> Optional[int]:
    if names and names[0] == "stem":
        return 0
    return _indexed("stages", offset=1)(names)


# model name -> (stage names in forward order, stage map)
STAGES: dict[str, tuple[Callable[[Any], list[str]], StageMap]] = {
    "cnn": (lambda cfg: [f"stage{i + 1}" for i in range(len(cfg.features))], _indexed("blocks")),
    "resnet18": (lambda cfg: ["stem", "layer1", "layer2", "layer3", "layer4"], _resnet),
    "resnet18_matched": (lambda cfg: ["stem", "layer1", "layer2", "layer3", "layer4"], _resnet),
    "linear": (lambda cfg: [f"hidden{i + 1}" for i in range(len(cfg.hidden_units))], _indexed("hidden")),
    "lenet": (lambda cfg: ["stage1", "stage2", "stage3"], _indexed("layers")),
    "cifarnet": (lambda cfg: ["stage1", "stage2", "stage3"], _indexed("layers", per_stage=2)),
    "perturb_resnet18": (lambda cfg: ["stem", "layer1", "layer2", "layer3", "layer4"], _perturb_resnet),
}


def stage_names(model_cfg: Any) -> list[str]:
    """Names of the stages of ``model_cfg.name`` in forward order ([] if it has none)."""
    entry = STAGES.get(model_cfg.name)
    return entry[0](model_cfg) if entry else []


def frozen_labels(params: Any, model_cfg: Any, freeze_stages: int) -> Any:
    """A pytree like ``params`` with "frozen" for every leaf of the first ``freeze_stages``
    stages and "trainable" elsewhere (the labels of ``optax.multi_transform``)."""
    names = stage_names(model_cfg)
    if freeze_stages > len(names):
        raise ValueError(f"training.freeze_stages: got {freeze_stages}; model {model_cfg.name!r} has "
                         f"{len(names)} stage(s) ({', '.join(names) or 'none'}), so at most {len(names)} can be frozen")
    stage_of = STAGES[model_cfg.name][1] if names else (lambda _n: None)

    def label(path, _leaf):
        index = stage_of(path_names(path))
        return "frozen" if index is not None and index < freeze_stages else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)
