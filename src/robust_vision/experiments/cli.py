"""Entry points ``robust-vision-sweep`` and ``robust-vision-compare``.

Also ``python -m robust_vision sweep|compare ARGS``. Errors map to exit codes as in
:mod:`robust_vision.cli`: bad input prints one ``error: ...`` line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from robust_vision.cli import _quiet_tensorflow_logs, _run


def _sweep(args: argparse.Namespace) -> int:
    from robust_vision.config import load_config
    from robust_vision.experiments.optuna_search import check_storage
    from robust_vision.experiments.sweep import SweepOptions, run_sweep

    check_storage(args.storage)

    overrides = list(args.override)
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    out = args.output
    if out is None:  # the config's evaluation.output_dir names the sweep directory
        out = load_config(args.config, overrides).evaluation.output_dir
    result = run_sweep(args.config, out, overrides, SweepOptions(
        max_trials=args.max_trials, retry_failed=args.retry_failed, verbose=args.verbose, plots=not args.no_plots,
        dry_run=args.dry_run, progress=not args.quiet, storage=args.storage))
    if args.dry_run:
        return 0
    if not any(r.get("status") == "complete" for r in result.rows) and result.rows:
        print("error: no trial completed; see the error column of trials.csv", file=sys.stderr)
        return 1
    return 0


def _parser(prog: str, description: str, flags: list[tuple[tuple[str, ...], dict]]) -> argparse.ArgumentParser:
    """An argument parser from a table of (flag names, ``add_argument`` keywords)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for names, kwargs in flags:
        parser.add_argument(*names, **kwargs)
    return parser


_SWEEP_FLAGS = [
    (("--config",), dict(required=True, help="YAML config with a sweep section (e.g. configs/research/lambda_sweep.yaml)")),
    (("--output",), dict(help="sweep directory (default: the config's evaluation.output_dir)")),
    (("--override",), dict(action="append", default=[], metavar="KEY=VALUE",
                           help="set a config key for every trial, e.g. training.epochs=5 (repeatable); sweep.* keys "
                                "too, e.g. 'sweep.parameters={training.margin_lambda: [1, 10]}'")),
    (("--epochs",), dict(type=int, help="same as --override training.epochs=N")),
    (("--max-trials",), dict(dest="max_trials", type=int, help="train at most N trials in this run (finished ones do "
                                                                "not count); rerun to continue")),
    (("--retry-failed",), dict(dest="retry_failed", action="store_true",
                               help="rerun trials recorded as failed (e.g. diverged)")),
    (("--dry-run",), dict(dest="dry_run", action="store_true",
                          help="validate the sweep and list its trials without training")),
    (("--no-plots",), dict(dest="no_plots", action="store_true", help="do not draw the sweep figure")),
    (("--verbose",), dict(action="store_true", help="show each trial's training log")),
    (("--storage",), dict(metavar="STORAGE", help="Optuna storage shared by several sweep workers: journal "
                          "(DIR/optuna.journal), FILE.journal or an RDB URL (default: DIR/optuna.db); "
                          "docs/DISTRIBUTED.md")),
    (("--quiet",), dict(action="store_true", help="no progress bars (trials and epochs)")),
]


def build_sweep_parser() -> argparse.ArgumentParser:
    return _parser("robust-vision-sweep", "Run a hyper-parameter sweep (grid or Optuna) from a config's sweep section: "
                   "one training run and one noisy evaluation per trial. Finished trials are never rerun.", _SWEEP_FLAGS)


def sweep_main(argv: list[str] | None = None) -> int:
    """robust-vision-sweep --config FILE --output DIR [--override K=V ...] [--max-trials N]"""
    _quiet_tensorflow_logs()
    return _run(_sweep, build_sweep_parser().parse_args(argv), hard_exit_on_interrupt=argv is None,
                kept="finished trials are kept (rerun the same command to continue)")


def _compare(args: argparse.Namespace) -> int:
    from robust_vision.experiments.compare import compare

    paths = [args.exp1, args.exp2, *args.exp]
    compare(paths, args.output, args.names, style=args.style, dpi=args.dpi, formats=args.format.split(","),
            plots=not args.no_plots)
    return 0


_COMPARE_FLAGS = [
    (("--exp1",), dict(required=True, help="reference experiment: run or results directory")),
    (("--exp2",), dict(required=True, help="second experiment")),
    (("--exp",), dict(action="append", default=[], metavar="DIR", help="further experiments (repeatable)")),
    (("--output",), dict(required=True, help="directory for comparison.csv/.md and plots/")),
    (("--names",), dict(nargs="+", help="display names, one per experiment (default: directory names)")),
    (("--style",), dict(choices=["publication", "default"], default="publication", help="figure style")),
    (("--dpi",), dict(type=int, default=150, help="figure resolution")),
    (("--format",), dict(default="png,pdf", help="figure formats, e.g. png,pdf")),
    (("--no-plots",), dict(dest="no_plots", action="store_true", help="write tables only")),
]


def build_compare_parser() -> argparse.ArgumentParser:
    return _parser("robust-vision-compare", "Compare experiments side by side: run directories (metrics.csv) and/or "
                   "evaluation results (robustness_results.csv). The first experiment is the reference.",
                   _COMPARE_FLAGS)


def compare_main(argv: list[str] | None = None) -> int:
    """robust-vision-compare --exp1 DIR --exp2 DIR [--exp DIR ...] --output DIR [--names A B ...]"""
    _quiet_tensorflow_logs()
    return _run(_compare, build_compare_parser().parse_args(argv), hard_exit_on_interrupt=argv is None,
                kept="the comparison did not finish")
