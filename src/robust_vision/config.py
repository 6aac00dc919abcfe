"""Typed, validated configuration.

A config is a YAML file with the sections ``model``, ``training``, ``data`` and
``evaluation`` (plus a free-form ``metadata`` section and optional ``sweep`` /
``research`` sections used by the research commands). Every section is a dataclass;
loading checks every key against it:

* an unknown key, a value of the wrong type, or a value outside its range raises
  :class:`ConfigError`, whose one-line message names the key, the bad value and what
  is accepted (the CLI prints it and exits with code 2);
* ``--override a.b=c`` sets any key, the value parsed as YAML and then converted to
  the field's type (``training.epochs=5``, ``evaluation.noise_levels=[0,0.1]``).

Keys in the seed document's older layout (``training.dataset_name``,
``training.image_size``, ``training.checkpoint_every``, ``training.margin``,
``training.margin_weight``) are accepted and moved to their current place, see
``LEGACY_KEYS``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, with a one-line message that names the key and the fix."""


def _f(default: Any = dataclasses.MISSING, *, help: str = "", min: float | None = None,
       max: float | None = None, min_exclusive: bool = False, factory: Any = None) -> Any:
    """A dataclass field with documentation and an optional numeric range."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    name: str = _f("cnn", help="model registry name: cnn, resnet18, linear (see `robust_vision.models.MODELS`)")
    n_classes: Optional[int] = _f(None, min=2, help="number of classes; null = taken from the dataset (a mismatch is an error)")
    features: list[int] = _f(factory=lambda: [32, 64, 128], help="cnn: channels of each stage (one conv block + 2x downsampling per stage after the first)")
    dropout_rate: float = _f(0.1, min=0.0, max=0.99, help="dropout before the classifier (cnn) ")
    use_residual: bool = _f(True, help="cnn: residual (True) or plain (False) conv blocks")
    use_batch_norm: bool = _f(True, help="cnn: batch norm after each convolution")
    width: int = _f(64, min=1, help="resnet18: channels of the first stage (doubles each stage)")
    hidden_units: list[int] = _f(factory=list, help="linear: optional hidden layers (empty = a pure linear classifier)")


@dataclass
class DataConfig:
    dataset_name: str = _f("digits", help="dataset registry name: digits, mnist, cifar10, image_folder, npz")
    data_dir: Optional[str] = _f(None, help="path of the dataset files (directory, archive or .npz); not needed for digits")
    image_size: Optional[list[int]] = _f(None, help="resize to [H, W] (an int means square); null = native size")
    channels: Optional[int] = _f(None, help="force 1 (grayscale) or 3 (RGB) channels; null = native")
    classes: Optional[list[int]] = _f(None, help="keep only these class labels (relabelled 0..k-1 in the given order)")
    val_fraction: float = _f(0.1, min=0.0, max=0.9, help="fraction of the training pool held out for validation")
    test_fraction: float = _f(0.2, min=0.0, max=0.9, help="fraction held out for test where the source has no test split")
    split_seed: int = _f(0, help="seed of the fixed train/val/test split")
    max_train_examples: Optional[int] = _f(None, min=1, help="cap the training split (for quick runs)")


@dataclass
class HebbianConfig:
    clip_range: Optional[list[float]] = _f(None, help="clip weights to [lo, hi] after every update (null = unconstrained)")
    eta: float = _f(0.2, min=0.0, min_exclusive=True, help="Hebbian learning rate (dW = eta * x t^T)")
    sgd_eta: float = _f(0.01, min=0.0, min_exclusive=True, help="learning rate of the SGD-MSE baseline on the same model")
    iterations: int = _f(30, min=1, help="updates per training image (pattern protocol) or epochs (classification)")
    divergence_bound: float = _f(1e6, min=0.0, min_exclusive=True, help="|W| beyond this counts as diverged")


@dataclass
class TrainingConfig:
    seed: int = _f(0, help="seed of initialisation, shuffling, dropout and augmentation")
    learning_rule: Literal["backprop", "hebbian", "sgd_mse"] = _f(
        "backprop", help="backprop (optax, any model) or the crossbar model's local rules: hebbian, sgd_mse")
    hebbian: HebbianConfig = field(default_factory=HebbianConfig, metadata={"help": "hebbian / sgd_mse options"})
    epochs: int = _f(30, min=1, help="number of epochs")
    batch_size: int = _f(128, min=1, help="global batch size (split over all devices)")
    eval_batch_size: int = _f(512, min=1, help="batch size of validation / evaluation passes")
    optimizer: Literal["adam", "adamw", "sgd"] = _f("adam", help="optimizer (Optax)")
    learning_rate: float = _f(1e-3, min=0.0, min_exclusive=True, help="peak learning rate")
    momentum: float = _f(0.9, min=0.0, max=1.0, help="sgd momentum (Nesterov off)")
    weight_decay: float = _f(0.0, min=0.0, help="adamw: decoupled weight decay; adam/sgd: L2 added to the gradient")
    lr_schedule: Literal["constant", "cosine", "warmup_cosine"] = _f("constant", help="learning-rate schedule (Optax)")
    warmup_epochs: float = _f(0.0, min=0.0, help="warmup_cosine: linear warm-up length in epochs")
    grad_clip_norm: Optional[float] = _f(None, min=0.0, min_exclusive=True, help="clip the global gradient norm (null = off)")

    loss_type: Literal["cross_entropy", "label_smoothing", "margin", "focal", "combined"] = _f(
        "cross_entropy", help="training loss (see robust_vision.losses)")
    label_smoothing: float = _f(0.1, min=0.0, max=1.0, help="label_smoothing: smoothing factor")
    margin_lambda: float = _f(1.0, min=0.0, help="margin: hinge margin on z_y - max_{j!=y} z_j")
    focal_alpha: float = _f(0.25, min=0.0, max=1.0, help="focal: class weight alpha")
    focal_gamma: float = _f(2.0, min=0.0, help="focal: focusing exponent gamma")
    loss_weights: dict[str, float] = _f(factory=lambda: {"label_smoothing": 1.0, "margin": 0.5},
                                        help="combined: weight of each component loss (names of other losses)")

    use_mixup: bool = _f(False, help="mixup augmentation")
    mixup_alpha: float = _f(0.2, min=0.0, min_exclusive=True, help="mixup: Beta(alpha, alpha) mixing coefficient")
    augment_flip: bool = _f(False, help="random horizontal flip (on device)")
    augment_crop_padding: int = _f(0, min=0, help="random crop after zero-padding by this many pixels (0 = off)")
    noise_augment_std: float = _f(0.0, min=0.0, help="add N(0, std^2) to training images (clipped to [0,1]; 0 = off)")

    ema_enabled: bool = _f(False, help="keep an exponential moving average of the parameters and evaluate with it")
    ema_decay: float = _f(0.99, min=0.0, max=1.0, help="EMA decay per step")

    eval_every: int = _f(1, min=1, help="validate every N epochs (the last epoch is always validated)")
    save_every: int = _f(5, min=1, help="keep a periodic checkpoint every N epochs (the latest is always kept)")
    best_metric: str = _f("val_accuracy", help="metrics.csv column that picks the best checkpoint")
    best_mode: Literal["max", "min"] = _f("max", help="whether a larger or smaller best_metric is better")
    checkpoint_dir: str = _f("./runs/default", help="run directory: config.yaml, metrics.csv, checkpoints/, plots/")
    log_dir: Optional[str] = _f(None, help="accepted for seed configs; logs are written to checkpoint_dir")
    progress_bar: bool = _f(True, help="show a progress bar during each epoch")


@dataclass
class EvaluationConfig:
    noise_types: list[str] = _f(factory=lambda: ["gaussian", "salt_pepper", "fog", "occlusion"],
                                help="corruptions of the robustness grid (robust_vision.corruptions registry)")
    noise_levels: list[float] = _f(factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.7],
                                   help="severities in [0, 1] (0 = clean)")
    n_draws: int = _f(1, min=1, help="noise draws per image and condition")
    split: Literal["train", "val", "test"] = _f("test", help="split the evaluator uses")
    batch_size: int = _f(512, min=1, help="images per compiled evaluation batch")
    seed: int = _f(0, help="seed of the noise draws")
    compute_snr: bool = _f(True, help="report SNR (odds of the true class vs its strongest competitor)")
    snr_threshold: float = _f(10.0, min=0.0, help="ConfidenceMonitor: SNR below this -> REVIEW_REQUIRED")
    ece_bins: int = _f(15, min=1, help="bins of the expected calibration error")
    output_dir: str = _f("./results", help="where robust-vision-eval writes tables and figures")
    generate_plots: bool = _f(True, help="draw figures after evaluation")
    plot_style: Literal["publication", "default"] = _f("publication", help="matplotlib style of the figures")
    dpi: int = _f(150, min=30, max=1200, help="resolution of PNG figures")
    format: list[str] = _f(factory=lambda: ["png", "pdf"], help="figure file formats (png, pdf, svg)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)


# Seed-document key -> current key. Moved before validation.
LEGACY_KEYS: dict[str, str] = {
    "training.dataset_name": "data.dataset_name",
    "training.image_size": "data.image_size",
    "training.checkpoint_every": "training.save_every",
    "training.margin": "training.margin_lambda",
    "training.margin_weight": "training.loss_weights.margin",
}

# Cross-field value sets that are registries elsewhere; validated lazily (see validate_names).
_FIGURE_FORMATS = ("png", "pdf", "svg")


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type or raise a one-line ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
        return value
    if origin is list:
        (arg,) = typing.get_args(tp)
        if key.endswith("image_size") and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]  # a square size may be given as one integer
        if key.endswith(("format", "noise_types")) and isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping")
        _, vtype = typing.get_args(tp)
        return {str(k): _convert(v, vtype, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping of {tp.__name__} keys")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected true/false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: got {value!r}; expected a finite number")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return _convert(float(value), float, key)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected a string")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_range(value: Any, meta: dict, key: str) -> None:
    values = value if isinstance(value, list) else [value]
    lo, hi = meta.get("min"), meta.get("max")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v is None:
            continue
        low_bad = lo is not None and (v <= lo if meta.get("min_exclusive") else v < lo)
        if low_bad or (hi is not None and v > hi):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            bracket = "(" if meta.get("min_exclusive") else "["
            raise ConfigError(f"{key}: got {v!r}; expected a value in {bracket}{lo_s}, {hi_s}]")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"{full}: unknown key; valid keys in '{prefix or 'top level'}': {', '.join(fields)}")
        converted = _convert(value, hints[key], full)
        if isinstance(converted, dict) and fields[key].default_factory is not dataclasses.MISSING:
            # Mapping fields (loss_weights) merge onto their defaults: setting one weight keeps the others.
            converted = {**fields[key].default_factory(), **converted}
        _check_range(converted, fields[key].metadata, full)
        kwargs[key] = converted
    return cls(**kwargs)


def _move_legacy_keys(raw: dict) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for old, new in LEGACY_KEYS.items():
        osec, okey = old.split(".", 1)
        section = raw.get(osec)
        if not isinstance(section, dict) or okey not in section:
            continue
        value = section.pop(okey)
        _set_dotted(raw, new, value, create=True, only_if_absent=True, legacy=old)
    return raw


def _set_dotted(raw: dict, dotted: str, value: Any, *, create: bool = True,
                only_if_absent: bool = False, legacy: str | None = None) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    if only_if_absent and parts[-1] in node and node[parts[-1]] != value:
        raise ConfigError(f"{legacy}: set together with {dotted} to a different value; keep only {dotted}")
    node[parts[-1]] = value


def _cross_checks(cfg: Config) -> None:
    for fmt in cfg.evaluation.format:
        if fmt not in _FIGURE_FORMATS:
            raise ConfigError(f"evaluation.format: got {fmt!r}; expected some of {', '.join(_FIGURE_FORMATS)}")
    for lvl in cfg.evaluation.noise_levels:
        if not 0.0 <= lvl <= 1.0:
            raise ConfigError(f"evaluation.noise_levels: got {lvl!r}; expected severities in [0, 1]")
    size = cfg.data.image_size
    if size is not None and (len(size) != 2 or min(size) < 4):
        raise ConfigError(f"data.image_size: got {size!r}; expected [H, W] with H, W >= 4 (or one integer)")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels: got {cfg.data.channels!r}; expected 1, 3 or null")
    clip = cfg.training.hebbian.clip_range
    if clip is not None and (len(clip) != 2 or clip[0] >= clip[1]):
        raise ConfigError(f"training.hebbian.clip_range: got {clip!r}; expected [lo, hi] with lo < hi, or null")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction: must be < 1 so that a training split remains")


def config_from_dict(raw: dict | None) -> Config:
    """Validate a nested mapping (as read from YAML) and return a :class:`Config`."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"top level: got {type(raw).__name__}; expected a mapping of sections "
                          "(model, training, data, evaluation)")
    cfg = _build(Config, _move_legacy_keys(raw), "")
    _cross_checks(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=c`` into the dotted key and the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--override {text!r}: expected KEY=VALUE, e.g. training.margin_lambda=1.0")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--override {text!r}: expected a dotted key such as training.epochs")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=c`` overrides to a raw (unvalidated) mapping, in order."""
    raw = _move_legacy_keys(raw or {})
    for text in overrides or []:
        key, value = parse_override(text)
        key = LEGACY_KEYS.get(key, key)
        _set_dotted(raw, key, value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file, "
                              "e.g. configs/quickstart.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    return config_from_dict(apply_overrides(raw, overrides))


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config exactly as used, so a run can be reproduced from its directory."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key: the README's configuration reference."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section.name}.{f.name}", _type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))
    return rows
