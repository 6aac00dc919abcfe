"""Command-line entry points. Each one only parses arguments and wires library functions.

Bad input (config, dataset path, checkpoint) prints one line ``error: ...`` to stderr and
exits with code 2; a run that fails for another reason exits with code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def _quiet_tensorflow_logs() -> None:
    # Orbax / XLA print C++ INFO lines on import; keep the user's terminal for our output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    from robust_vision.config import ConfigError
    from robust_vision.training.checkpoint import CheckpointError
    from robust_vision.training.trainer import TrainingError

    try:
        return int(main(args) or 0)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except _USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed checkpoint is kept", file=sys.stderr)
        return 130


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. --override training.margin_lambda=1.0 (repeatable)")


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from robust_vision.config import load_config
    from robust_vision.training.trainer import train

    overrides = list(args.override)
    if args.run_dir:
        overrides.append(f"training.checkpoint_dir={args.run_dir}")
    if args.no_progress:
        overrides.append("training.progress_bar=false")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(f"Run directory: {result.run_dir}")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """robust-vision-train --config FILE [--override K=V ...] [--resume] [--run-dir DIR]"""
    _quiet_tensorflow_logs()
    parser = argparse.ArgumentParser(prog="robust-vision-train", description="Train a classifier from a YAML config.")
    _add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    parser.add_argument("--run-dir", help="run directory (same as --override training.checkpoint_dir=DIR)")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    return _run(_train, parser.parse_args(argv))


# --------------------------------------------------------------------------- eval


def _eval_config(args: argparse.Namespace):
    from robust_vision.config import load_config
    from robust_vision.evaluation.loading import resolve_checkpoint

    overrides = list(args.override)
    flag_keys = {"noise_types": "evaluation.noise_types", "levels": "evaluation.noise_levels",
                 "split": "evaluation.split", "n_draws": "evaluation.n_draws", "seed": "evaluation.seed",
                 "batch_size": "evaluation.batch_size", "dpi": "evaluation.dpi", "style": "evaluation.plot_style",
                 "format": "evaluation.format", "output": "evaluation.output_dir"}
    for attr, key in flag_keys.items():
        value = getattr(args, attr)
        if value is not None:
            if isinstance(value, list):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            overrides.append(f"{key}={value}")
    if args.no_plots:
        overrides.append("evaluation.generate_plots=false")
    config_path = args.config
    if config_path is None:  # evaluate with the run's own config
        run_dir, _ = resolve_checkpoint(args.checkpoint)
        config_path = run_dir / "config.yaml"
    return load_config(config_path, overrides), args.config is not None


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robust_vision.config import config_to_dict
    from robust_vision.data.datasets import load_dataset
    from robust_vision.evaluation.loading import check_input_shape, load_trained_model
    from robust_vision.evaluation.report import (comparison_at, format_comparison, format_summary, versions,
                                                 write_json, write_robustness_tables)
    from robust_vision.evaluation.robustness import evaluate_robustness

    cfg, explicit_config = _eval_config(args)
    ecfg = cfg.evaluation
    model = load_trained_model(args.checkpoint, cfg if explicit_config else None)
    models = [model]
    if args.baseline:
        baseline = load_trained_model(args.baseline, None)
        if baseline.name == model.name:
            baseline.name = f"{baseline.name} (baseline)"
        models.append(baseline)
    dataset = load_dataset(cfg.data)
    split = dataset.split(ecfg.split)
    levels = list(ecfg.noise_levels)
    noise_types = list(ecfg.noise_types)
    if args.baseline and ("gaussian" not in noise_types or 0.5 not in levels):
        # The seed's comparison block is at 50% Gaussian noise: make sure that condition is measured.
        noise_types = noise_types if "gaussian" in noise_types else [*noise_types, "gaussian"]
        levels = sorted({*levels, 0.5})
    rows, confidences = [], {}
    for m in models:
        check_input_shape(m, dataset.image_shape, f"{cfg.data.dataset_name} ({ecfg.split} split)")
        if m.num_classes != dataset.num_classes:
            raise ValueError(f"{m.name} predicts {m.num_classes} classes but {cfg.data.dataset_name} has "
                             f"{dataset.num_classes}; evaluate on the dataset the model was trained on")
        res = evaluate_robustness(m.forward, m.variables, split.images, split.labels, model_name=m.name,
                                  noise_types=noise_types, levels=levels, n_draws=ecfg.n_draws,
                                  batch_size=ecfg.batch_size, seed=ecfg.seed, ece_bins=ecfg.ece_bins)
        rows += res.rows
        confidences.update(res.confidences)
    out_dir = Path(ecfg.output_dir)
    write_robustness_tables(out_dir, rows, confidences)
    summary = format_summary(rows)
    print(summary)
    comparison = None
    if args.baseline:
        comparison = comparison_at(rows, models[0].name, models[1].name)
        print()
        print(format_comparison(comparison))
    write_json(out_dir / "results.json", {
        "models": [{"name": m.name, "run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint_dir),
                    "epoch": m.meta.get("epoch"), "input_shape": list(m.input_shape)} for m in models],
        "split": ecfg.split, "n_images": len(split.labels), "config": config_to_dict(cfg),
        "versions": versions(), "results": rows, "comparison": comparison})
    print(f"\nTables written to {out_dir}")
    if ecfg.generate_plots:
        from robust_vision.viz import redraw

        paths = redraw([out_dir], None, style=ecfg.plot_style, dpi=ecfg.dpi, formats=ecfg.format)
        print(f"{len(paths)} figure files written to {out_dir / 'plots'}")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """robust-vision-eval --checkpoint RUN [--config FILE] --output DIR [--baseline RUN] ..."""
    _quiet_tensorflow_logs()
    parser = argparse.ArgumentParser(prog="robust-vision-eval",
                                     description="Evaluate a checkpoint under noise (and attacks / corruptions).")
    parser.add_argument("--checkpoint", required=True, help="run directory (uses its best checkpoint) or checkpoint")
    _add_config_args(parser, required=False)
    parser.add_argument("--output", help="output directory (default: evaluation.output_dir)")
    parser.add_argument("--baseline", help="a second run directory to compare against")
    parser.add_argument("--split", choices=["train", "val", "test"], help="split to evaluate (default: test)")
    parser.add_argument("--noise-types", dest="noise_types", nargs="+", help="e.g. gaussian salt_pepper fog occlusion")
    parser.add_argument("--levels", nargs="+", type=float, help="severities in [0, 1], e.g. 0 0.1 0.3 0.5")
    parser.add_argument("--n-draws", dest="n_draws", type=int, help="noise draws per image")
    parser.add_argument("--seed", type=int, help="seed of the noise draws")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="images per compiled batch")
    parser.add_argument("--dpi", type=int, help="figure resolution")
    parser.add_argument("--style", choices=["publication", "default"], help="figure style")
    parser.add_argument("--format", help="figure formats, e.g. png,pdf")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")
    return _run(_eval, parser.parse_args(argv))


# --------------------------------------------------------------------------- plot


def plot_main(argv: list[str] | None = None) -> int:
    """robust-vision-plot RESULTS_DIR... : redraw every figure from saved tables."""
    from robust_vision.viz import main

    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
