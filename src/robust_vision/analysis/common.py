"""Shared wiring of the analysis commands: config, model, split, output options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust_vision.config import Config, config_to_dict, load_config
from robust_vision.data.sources import converted_splits, read_examples
from robust_vision.runs.loading import LoadedModel, load_trained_model, resolve_checkpoint
from robust_vision.runs.loading import check_model_data as runs_check_model_data
from robust_vision.runs.paths import config_file
from robust_vision.evaluation.report import versions
from robust_vision.io import write_json
from robust_vision.viz._common import check_options


@dataclass
class Context:
    """Everything a subcommand needs: the config, the restored model, the split in memory
    (``images`` float32 (N, H, W, C) in [0, 1], ``labels`` int32 (N,), the data's
    ``class_names``) and where / how to write its outputs."""

    cfg: Config
    model: LoadedModel
    split_name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    out_dir: Path
    style: str
    dpi: int
    formats: list[str]


def load_run_config(checkpoint: str, config: str | None, overrides: list[str]) -> tuple[Config, bool]:
    """(config, explicit): the given ``--config`` file, or the run's own ``config.yaml``,
    with the ``--override`` values applied."""
    path: Any = config
    if path is None:
        run_dir, _ = resolve_checkpoint(checkpoint)
        path = config_file(run_dir)
    return load_config(path, list(overrides)), config is not None


def check_model_data(model: LoadedModel, images: np.ndarray, class_names: tuple[str, ...], where: str) -> None:
    """The split's images (N, H, W, C) and classes must be the ones the model was trained on."""
    runs_check_model_data(model, tuple(images.shape[1:]), len(class_names), where,
                          "analyse the model on the dataset it was trained on")


def load_context(args: argparse.Namespace) -> Context:
    """Resolve ``--checkpoint/--config/--override/--split/--output/--dpi/--format/--style``."""
    cfg, explicit = load_run_config(args.checkpoint, args.config, args.override)
    ecfg = cfg.evaluation
    split_name = args.split or ecfg.split
    model = load_trained_model(args.checkpoint, cfg if explicit else None)
    source = converted_splits(cfg.data, (split_name,))[split_name]
    images, labels = read_examples(source)
    check_model_data(model, images, source.info.class_names, f"{cfg.data.dataset_name} ({split_name} split)")
    formats = args.format if args.format is not None else ecfg.format
    style = args.style or ecfg.plot_style
    dpi = args.dpi if args.dpi is not None else ecfg.dpi
    formats = check_options(style, dpi, formats)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Context(cfg=cfg, model=model, split_name=split_name, images=images, labels=labels,
                   class_names=source.info.class_names, out_dir=out_dir, style=style, dpi=dpi, formats=formats)


def check_index(index: int, ctx: Context, flag: str) -> None:
    """ValueError when ``index`` is not an image of the split."""
    n = len(ctx.labels)
    if not 0 <= index < n:
        raise ValueError(f"{flag} {index} is out of range: the {ctx.split_name} split has {n} images "
                         f"(valid indices 0..{n - 1})")


def parse_noise(spec: str) -> tuple[str, float]:
    """``"gaussian:0.3"`` -> ("gaussian", 0.3); the name must be in the corruption registry
    (``robust_vision.corruptions.NOISES``) and the severity in [0, 1]."""
    from robust_vision.corruptions import get_noise

    name, sep, level = str(spec).partition(":")
    if not sep or not name:
        raise ValueError(f"--noise {spec!r}: expected TYPE:SEVERITY, e.g. gaussian:0.3")
    try:
        severity = float(level)
    except ValueError:
        raise ValueError(f"--noise {spec!r}: severity {level!r} is not a number; use e.g. gaussian:0.3") from None
    get_noise(name)  # unknown names fail here, listing the valid ones
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"--noise {spec!r}: severity must be in [0, 1] (e.g. the Gaussian std in image units)")
    return name, severity


def model_info(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "run_dir": str(model.run_dir), "checkpoint": str(model.checkpoint_dir),
            "epoch": model.meta.get("epoch"), "input_shape": list(model.input_shape),
            "num_classes": model.num_classes}


def write_summary(ctx: Context, stem: str, payload: dict[str, Any]) -> Path:
    """``<output>/<stem>.json``: the command's numbers plus where they came from."""
    full = {**payload, "model": model_info(ctx.model), "split": ctx.split_name,
            "n_split_images": len(ctx.labels), "config": config_to_dict(ctx.cfg), "versions": versions()}
    return write_json(ctx.out_dir / f"{stem}.json", full)


def class_name(ctx: Context, label: int) -> str:
    names = ctx.class_names
    return str(names[label]) if 0 <= label < len(names) else str(label)


def as_float(x: Any) -> float:
    return float(np.asarray(x))
