"""Model registry. Every model is an ``nnx.Module`` built as
``Model(*, input_shape=(H, W, C), num_classes=K, rngs=nnx.Rngs(...), **options)`` with one
forward path ``model(x, return_features=False)``: x (B, H, W, C) float32 in [0, 1] ->
logits (B, K), or ``(logits, features)`` where ``features`` maps stage names to
activations and ends with ``"embedding"``, the representation feeding the classifier.
"""

from __future__ import annotations

from typing import Callable

from flax import nnx

from robust_vision.config import ModelConfig
from robust_vision.models.certified import cnn7, cnn_small
from robust_vision.models.cnn import ProductionCNN
from robust_vision.models.crossbar import CrossbarModel, crossbar_options
from robust_vision.models.linear import LinearClassifier
from robust_vision.models.local import KrotovClassifier
from robust_vision.models.perturb import cifarnet, lenet, perturb_resnet18, resnet18_matched
from robust_vision.models.resnet import ResNet18
from robust_vision.models.robustbench import WIDE_RESNETS, PreActResNet18, wide_resnet


def _cnn_options(cfg: ModelConfig) -> dict:
    return dict(features=tuple(cfg.features), dropout_rate=cfg.dropout_rate,
                use_residual=cfg.use_residual, use_batch_norm=cfg.use_batch_norm)


def _resnet_options(cfg: ModelConfig) -> dict:
    return dict(width=cfg.width, dropout_rate=cfg.dropout_rate)


def _normalize_options(cfg: ModelConfig) -> dict:
    return dict(normalize_mean=cfg.normalize_mean, normalize_std=cfg.normalize_std)


def _preact_options(cfg: ModelConfig) -> dict:
    return dict(width=cfg.width, **_normalize_options(cfg))


def _linear_options(cfg: ModelConfig) -> dict:
    return dict(hidden_units=tuple(cfg.hidden_units), dropout_rate=cfg.dropout_rate)


def _perturb_options(cfg: ModelConfig) -> dict:
    """The PerturbConfig keys that are set (null keeps the model's own default)."""
    pc = cfg.perturb
    keys = ("nfilters", "nmasks", "noise_level", "noise_type", "scale_noise", "filter_size", "first_filter_size",
            "unique_masks", "train_masks", "mix_maps", "use_act", "activation", "pool_type")
    return {k: getattr(pc, k) for k in keys if getattr(pc, k) is not None}


def _convnet_options(cfg: ModelConfig) -> dict:
    extra = {k: getattr(cfg.perturb, k) for k in ("linear", "dropout") if getattr(cfg.perturb, k) is not None}
    return {**_perturb_options(cfg), **extra}


def _matched_options(cfg: ModelConfig) -> dict:
    # The baseline's width is chosen so that its parameter count equals that of the
    # perturb_resnet18 described by model.perturb (the perturbative-nets seed's control).
    return dict(match=_perturb_options(cfg), dropout_rate=cfg.dropout_rate)


def _krotov_options(cfg: ModelConfig) -> dict:
    return dict(n_hidden=cfg.krotov.n_hidden, power=cfg.krotov.power, p=cfg.krotov.p)


# name -> (constructor, function that picks the constructor's options from the config)
MODELS: dict[str, tuple[Callable[..., nnx.Module], Callable[[ModelConfig], dict]]] = {
    "cnn": (ProductionCNN, _cnn_options),
    "resnet18": (ResNet18, _resnet_options),
    "linear": (LinearClassifier, _linear_options),
    "crossbar": (CrossbarModel, crossbar_options),
    "lenet": (lenet, _convnet_options),
    "cifarnet": (cifarnet, _convnet_options),
    "perturb_resnet18": (perturb_resnet18, _perturb_options),
    "resnet18_matched": (resnet18_matched, _matched_options),
    "krotov": (KrotovClassifier, _krotov_options),
    # RobustBench model-zoo architectures (models/robustbench.py)
    "preact_resnet18": (PreActResNet18, _preact_options),
    **{name: (wide_resnet(depth, widen), _normalize_options) for name, (depth, widen) in WIDE_RESNETS.items()},
    # plain conv stacks of certified training (models/certified.py)
    "cnn7": (cnn7, _normalize_options),
    "cnn_small": (cnn_small, _normalize_options),
}


def register_model(name: str, constructor: Callable[..., nnx.Module], options: Callable[[ModelConfig], dict]) -> None:
    """Add a model to the registry (used by optional model families)."""
    MODELS[name] = (constructor, options)


def model_builder(cfg: ModelConfig, *, input_shape: tuple[int, int, int], num_classes: int,
                  seed: int) -> Callable[[], nnx.Module]:
    """A function that builds the model named by ``cfg.name`` with parameters drawn from
    ``seed``, in eval mode. The registry is read now, so a later build (a traced one) makes the
    same model whatever is registered by then. ``builder.constructor`` is the registered one."""
    if cfg.name not in MODELS:
        raise ValueError(f"model.name: unknown model {cfg.name!r}; valid models: {', '.join(sorted(MODELS))}")
    constructor, options = MODELS[cfg.name]
    kwargs = options(cfg)

    def build() -> nnx.Module:
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        model = constructor(input_shape=tuple(input_shape), num_classes=num_classes, rngs=rngs, **kwargs)
        model.eval()  # inference mode unless a trainer asks otherwise
        return model

    build.constructor = constructor
    return build


def create_model(cfg: ModelConfig, *, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nnx.Module:
    """Build the model named by ``cfg.name`` with parameters drawn from ``seed``, in eval mode."""
    return model_builder(cfg, input_shape=input_shape, num_classes=num_classes, seed=seed)()
