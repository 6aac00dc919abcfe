"""Import PyTorch weights of the RobustBench architectures into a robust-vision run directory.

A RobustBench ``state_dict`` (``robustbench/model_zoo/architectures``: ``PreActResNet`` and
``WideResNet``) maps one-to-one onto ``models/robustbench.py``:

=====================================  ===================================  ====================
PyTorch key                            ours (path in the NNX state)         transform
=====================================  ===================================  ====================
``<conv>.weight`` (O, I, kH, kW)       ``<conv>.kernel`` (kH, kW, I, O)      OIHW -> HWIO
``<linear>.weight`` (out, in)          ``<linear>.kernel`` (in, out)         transpose
``<linear>.bias``                      ``<linear>.bias``
``<bn>.weight`` / ``.bias``            ``<bn>.scale`` / ``.bias``            (params)
``<bn>.running_mean`` / ``_var``       ``<bn>.mean`` / ``.var``              (batch statistics)
=====================================  ===================================  ====================

with the module names ``blockN.layer.i`` -> ``blockN[i]`` and ``convShortcut`` -> ``shortcut``
(WideResNet), ``shortcut.0`` -> ``shortcut`` (PreActResNet). Ignored: ``num_batches_tracked``
counters, a ``module.`` prefix (DataParallel) and the WideResNet's ``sub_block1`` (built but
never called by the reference forward pass). Any other difference is an error naming the
missing and unexpected keys.

``.safetensors`` files are read with ``safetensors.numpy``; ``.pt`` / ``.pth`` files only
through ``torch.load(weights_only=True)`` (the optional ``torch`` extra) and never with plain
pickle, because unpickling a checkpoint can run arbitrary code.

The run directory has the layout ``robust-vision-train`` writes (``config.yaml``,
``checkpoints/best/0/`` and ``checkpoints/epochs/0/`` with the same ``meta`` fields), so
``robust-vision-eval --checkpoint RUN`` and ``evaluation.loading.load_trained_model`` read it
unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.config import Config, ConfigError, config_to_dict, load_config, save_config
from robust_vision.models.robustbench import WIDE_RESNETS
from robust_vision.models.stages import path_names
from robust_vision.preflight import IMPORTABLE_MODELS


class WeightImportError(ValueError):
    """A weight file that cannot be read or does not match the architecture (exit code 2)."""


IMPORTABLE = IMPORTABLE_MODELS  # named without JAX for the command line (preflight)

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}


def _family(model_name: str) -> str:
    if model_name == "preact_resnet18":
        return "preact"
    if model_name in WIDE_RESNETS:
        return "wrn"
    raise WeightImportError(f"--model {model_name!r}: weights can be imported for {', '.join(IMPORTABLE)} only")


def torch_key(names: tuple, family: str) -> str:
    """The PyTorch ``state_dict`` key of one leaf of our state, from its path names
    (e.g. ``("block1", 0, "shortcut", "kernel")`` -> ``"block1.layer.0.convShortcut.weight"``)."""
    names = [n for n in names if n != "value"]
    parts = [str(n) for n in names[:-1]]
    if family == "wrn" and parts and re.fullmatch(r"block\d", parts[0]):
        parts.insert(1, "layer")
    parts = [("convShortcut" if family == "wrn" else "shortcut.0") if p == "shortcut" else p for p in parts]
    return ".".join([*parts, _LEAF_TO_TORCH[names[-1]]])


def _ignored(key: str, family: str) -> bool:
    return key.endswith("num_batches_tracked") or (family == "wrn" and key.startswith("sub_block1."))


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (or, with torch installed, a ``.pt``/``.pth``
    state_dict) as NumPy arrays keyed by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--from {str(path)!r}: file not found; pass a PyTorch state_dict saved as .safetensors")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _read_torch(path)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightImportError(f"--from {str(path)!r}: not a readable safetensors file ({first[:200]}); save it with "
                                "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')") from None


def torch_refusal(text: str) -> str:
    """The cause in PyTorch's multi-paragraph refusal of a file, in whole words: the Python object
    a pickle asked for (``Unsupported global: GLOBAL os.system``), else its first sentence."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for the Python object {found.group(1)}, which a file of weights never needs"
    first = text.strip().splitlines()[0] if text.strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0]
    if len(sentence) > 200:
        return sentence[:200].rsplit(" ", 1)[0] + " ..."
    return sentence.rstrip(".")


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightImportError(f"--from {str(path)!r}: reading .pt files needs PyTorch; install the torch extra "
                                "(pip install 'robust-vision[torch]') or convert the file to .safetensors") from None
    try:
        # weights_only=True: tensors and plain containers only; never executes pickled code.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise WeightImportError(f"--from {str(path)!r}: torch.load(weights_only=True) refused the file "
                                f"({torch_refusal(str(exc)) or type(exc).__name__}); nothing in it was run; save a "
                                "plain state_dict or a .safetensors file") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightImportError(f"--from {str(path)!r}: expected a state_dict (a dict of tensors); save "
                                "model.state_dict() instead of the model object")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
            for k, v in obj.items()}


def _strip_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _to_ours(array: np.ndarray, target_shape: tuple) -> np.ndarray:
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif array.ndim == 2:
        array = array.T  # (out, in) -> (in, out)
    return array


def convert_state_dict(state_dict: dict[str, np.ndarray], model_name: str, params, model_state):
    """Our ``(params, model_state)`` with every leaf taken from ``state_dict``.

    ``params`` / ``model_state`` are the NNX states of the freshly built model (they give the
    structure and shapes). Raises WeightImportError naming the missing and unexpected keys,
    or the first key whose shape does not match.
    """
    family = _family(model_name)
    state_dict = _strip_prefix(state_dict)
    expected: dict[str, tuple] = {}
    for tree in (params, model_state):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            expected[torch_key(path_names(path), family)] = tuple(leaf.shape)
    given = {k for k in state_dict if not _ignored(k, family)}
    missing = sorted(set(expected) - given)
    unexpected = sorted(given - set(expected))
    if missing or unexpected:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = ([f"missing keys: {listing(missing)}"] if missing else []) + \
                ([f"unexpected keys: {listing(unexpected)}"] if unexpected else [])
        raise WeightImportError(f"the state_dict does not match {model_name}: {'; '.join(parts)}; pass the matching "
                                "--model (and --num-classes, --override model.width=W) or the right weight file")

    def take(path, leaf):
        key = torch_key(path_names(path), family)
        value = _to_ours(np.asarray(state_dict[key]), tuple(leaf.shape))
        if tuple(value.shape) != tuple(leaf.shape):
            raise WeightImportError(f"{key}: shape {tuple(state_dict[key].shape)} in the file does not fit {model_name} "
                                    f"(expects {tuple(leaf.shape)} after conversion); pass the matching --model")
        return jnp.asarray(value, dtype=leaf.dtype)

    return (jax.tree_util.tree_map_with_path(take, params),
            jax.tree_util.tree_map_with_path(take, model_state))


def _head_classes(state_dict: dict[str, np.ndarray], model_name: str) -> Optional[int]:
    key = "linear.weight" if _family(model_name) == "preact" else "fc.weight"
    weight = _strip_prefix(state_dict).get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def import_weights(source: str | Path, model_name: str, output: str | Path, *, config_path: str | Path | None = None,
                   overrides: list[str] | None = None, image_size: int = 32, channels: int = 3,
                   num_classes: int | None = None) -> Path:
    """Convert the PyTorch weights at ``source`` into the run directory ``output``.

    The run's config is ``config_path`` (default: the built-in defaults) with ``model.name``
    set to ``model_name`` and ``training.checkpoint_dir`` to ``output``; images are
    (image_size, image_size, channels) in [0, 1] (use ``model.normalize_mean`` / ``_std``
    for models that expect normalised input). ``num_classes`` defaults to the rows of the
    file's classifier weight. Returns the run directory.
    """
    from robust_vision.data.pipeline import num_batches
    from robust_vision.models import create_model
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_run_optimizer
    from robust_vision.runs.checkpoint import CheckpointStore
    from robust_vision.runs.paths import checkpoints_dir, config_file

    _family(model_name)
    output = Path(output)
    if checkpoints_dir(output).exists():
        raise WeightImportError(f"--output {str(output)!r} already holds checkpoints; choose a new run directory")
    cfg: Config = load_config(config_path, [*(overrides or []), f"model.name={model_name}",
                                            f"training.checkpoint_dir={output}"])
    state_dict = read_state_dict(source)
    num_classes = num_classes or cfg.model.n_classes or _head_classes(state_dict, model_name) or 10
    if cfg.model.n_classes is not None and cfg.model.n_classes != num_classes:
        raise ConfigError(f"model.n_classes={cfg.model.n_classes} but --num-classes={num_classes}; make them agree")
    input_shape = (int(image_size), int(image_size), int(channels))
    model = create_model(cfg.model, input_shape=input_shape, num_classes=num_classes, seed=cfg.training.seed)
    parts = split_model(model)
    params, model_state = convert_state_dict(state_dict, model_name, parts.params, parts.model_state)
    parts = dataclasses.replace(parts, params=params, model_state=model_state)
    # The same optimizer the loader rebuilds, so the saved state has the structure it restores into.
    tx, _ = make_run_optimizer(cfg.training, cfg.model, parts.params, num_batches(1, cfg.training.batch_size))
    state = init_train_state(parts, tx, ema_enabled=False)
    output.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_file(output))
    meta = {"epoch": 0, "metrics": {"epoch": 0}, "best_metric": cfg.training.best_metric, "best_value": None,
            "best_epoch": 0, "model": config_to_dict(cfg)["model"], "input_shape": list(input_shape),
            "num_classes": num_classes, "class_names": [str(i) for i in range(num_classes)], "ema": False,
            "imported_from": str(Path(source).name)}
    store = CheckpointStore(output, save_every=cfg.training.save_every, best_mode=cfg.training.best_mode)
    try:
        store.save(0, state, meta, is_best=True)
    finally:
        store.close()
    return output
