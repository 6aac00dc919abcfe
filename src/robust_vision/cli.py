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


# --------------------------------------------------------------------------- plot


def plot_main(argv: list[str] | None = None) -> int:
    """robust-vision-plot RESULTS_DIR... : redraw every figure from saved tables."""
    from robust_vision.viz import main

    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
