"""Shared wiring of the analysis commands: config, model, split, output options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust_vision.config import Config, config_to_dict, load_config
from robust_vision.data.datasets import Dataset, Split, load_dataset
from robust_vision.runs.loading import LoadedModel, check_input_shape, load_trained_model, resolve_checkpoint
from robust_vision.evaluation.report import versions
from robust_vision.io import write_json
from robust_vision.viz._common import check_options


@dataclass
class Context:
    """Everything a subcommand needs: the config, the restored model, the dataset split and
    where / how to write its outputs."""

    cfg: Config
    model: LoadedModel
    dataset: Dataset
    split_name: str
    split: Split
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
        path = run_dir / "config.yaml"
    return load_config(path, list(overrides)), config is not None


def check_model_data(model: LoadedModel, dataset: Dataset, where: str) -> None:
    """The dataset's images and classes must be the ones the model was trained on."""
    check_input_shape(model, dataset.image_shape, where)
    if model.num_classes != dataset.num_classes:
        raise ValueError(f"{model.name} predicts {model.num_classes} classes but {where} has "
                         f"{dataset.num_classes}; analyse the model on the dataset it was trained on")


def load_context(args: argparse.Namespace) -> Context:
    """Resolve ``--checkpoint/--config/--override/--split/--output/--dpi/--format/--style``."""
    cfg, explicit = load_run_config(args.checkpoint, args.config, args.override)
    ecfg = cfg.evaluation
    split_name = args.split or ecfg.split
    model = load_trained_model(args.checkpoint, cfg if explicit else None)
    dataset = load_dataset(cfg.data)
    split = dataset.split(split_name)
    check_model_data(model, dataset, f"{cfg.data.dataset_name} ({split_name} split)")
    formats = args.format if args.format is not None else ecfg.format
    style = args.style or ecfg.plot_style
    dpi = args.dpi if args.dpi is not None else ecfg.dpi
    formats = check_options(style, dpi, formats)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Context(cfg=cfg, model=model, dataset=dataset, split_name=split_name, split=split, out_dir=out_dir,
                   style=style, dpi=dpi, formats=formats)


def check_index(index: int, split: Split, split_name: str, flag: str) -> None:
    """ValueError when ``index`` is not an image of the split."""
    n = len(split)
    if not 0 <= index < n:
        raise ValueError(f"{flag} {index} is out of range: the {split_name} split has {n} images "
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
            "n_split_images": len(ctx.split), "config": config_to_dict(ctx.cfg), "versions": versions()}
    return write_json(ctx.out_dir / f"{stem}.json", full)


def class_name(ctx: Context, label: int) -> str:
    names = ctx.dataset.class_names
    return str(names[label]) if 0 <= label < len(names) else str(label)


def as_float(x: Any) -> float:
    return float(np.asarray(x))
