"""``robust-vision-research``: rerun the seed's decomposition study with one command.

    robust-vision-research run [--protocol pattern|classification|both] [--quick] [--seeds N]
                               [--config FILE] [--override KEY=VALUE ...] [--fresh] [--verbose]
                               [--pattern-images DIR] [--experiment study|recipes] [--quiet]
                               --output DIR
    robust-vision-research report --output DIR     (redraw figures, re-decide checklist / claims)

Bad input prints one line ``error: ...`` and exits with code 2 (as the other entry points do).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["build_parser", "research_main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-vision-research",
                                     description="Reproduce 'A Systematic Decomposition of Neural Network "
                                                 "Robustness' and report what holds (docs/RESEARCH.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate every method, write tables, figures, checklist, claims")
    run.add_argument("--output", required=True, help="output directory (tables, figures, runs/)")
    run.add_argument("--protocol", choices=["pattern", "classification", "both"], default=None,
                     help="which protocol(s) to run (default: the study file's 'protocols', i.e. both)")
    run.add_argument("--quick", action="store_true",
                     help="the study file's quick preset: 2 seeds, fewer images / epochs (a few minutes on a CPU)")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    run.add_argument("--config", default=None, help="study settings YAML (default: built-in = configs/research/study.yaml)")
    run.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                     help="set a study key, e.g. --override classification.cnn.epochs=5 (repeatable)")
    run.add_argument("--fresh", action="store_true",
                     help="retrain run directories under OUTPUT/runs whose settings changed (removes them)")
    run.add_argument("--verbose", action="store_true", help="also print the per-epoch training logs")
    run.add_argument("--experiment", choices=["study", "recipes"], default="study",
                     help="study: the seed's decomposition study (default); recipes: train the same model with "
                          "each training recipe and rank them (research/recipes.py)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (recipes: no per-run lines either)")
    run.add_argument("--pattern-images", default=None, metavar="DIR",
                     help="pattern protocol on the images of DIR (e.g. the original KITTI depth-map PNGs): "
                          "grayscale, resized to image_size, pattern.n_images at evenly spaced positions of the "
                          "sorted file list")
    rep = sub.add_parser("report", help="redraw figures and re-decide checklist / claims from a run's tables")
    rep.add_argument("--output", required=True, help="the --output directory of a finished run")
    return parser


def _report_command(args: argparse.Namespace) -> int:
    from robust_vision.research.study import report

    report(args.output)
    return 0


def _run_command(args: argparse.Namespace) -> int:
    from robust_vision.config import ConfigError
    from robust_vision.research.settings import load_study
    from robust_vision.research.study import run_study

    overrides = list(args.override)
    argv = sys.argv[1:] if args.argv is None else args.argv
    if args.experiment == "recipes":
        from robust_vision.research.recipes import load_recipe_settings, run_recipes

        if args.seeds is not None and args.seeds < 1:
            raise ConfigError(f"--seeds: got {args.seeds}; expected a positive number of seeds")
        settings = load_recipe_settings(args.config, quick=args.quick, overrides=overrides, seeds=args.seeds)
        ranked = run_recipes(settings, args.output, quiet=args.quiet,
                             command=" ".join(["robust-vision-research", *argv]))
        return 0 if ranked else 1
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: got {args.seeds}; expected a positive number of seeds")
        overrides.append(f"seeds={args.seeds}")
    if args.protocol is not None:
        overrides.append("protocols=" + ("[pattern, classification]" if args.protocol == "both" else f"[{args.protocol}]"))
    if args.pattern_images is not None:
        overrides.append(f"pattern.images_dir={json.dumps(str(args.pattern_images))}")
    settings = load_study(args.config, quick=args.quick, overrides=overrides)
    outcome = run_study(settings, args.output, fresh=args.fresh, verbose=args.verbose, progress=not args.quiet,
                        command=["robust-vision-research", *sys.argv[1:]] if args.argv is None else
                        ["robust-vision-research", *args.argv])
    return 0 if outcome.records else 1


def research_main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 run failure, 2 bad input)."""
    from pathlib import Path

    from robust_vision.cli import _quiet_tensorflow_logs, _run

    _quiet_tensorflow_logs()
    args = build_parser().parse_args(argv)
    args.argv = argv
    config = getattr(args, "config", None)
    if config is not None and not Path(config).is_file():  # before JAX: a typo costs a fraction of a second
        print(f"error: --config: '{config}' not found; pass a study settings YAML (e.g. configs/research/study.yaml)",
              file=sys.stderr)
        return 2
    from robust_vision.research.protocols import StudyError
    try:
        return _run(_run_command if args.command == "run" else _report_command, args,
                    hard_exit_on_interrupt=argv is None, kept="runs that finished are kept (rerun to continue)")
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(research_main())
