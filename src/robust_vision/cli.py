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


def _exit_code(exc: BaseException) -> int | None:
    """2 for bad input, 1 for a fault, None for a bug (re-raised). Error classes are looked up in
    modules already imported only: a failure before JAX was imported must not import it."""
    def classes(module: str, *names: str) -> tuple[type, ...]:
        mod = sys.modules.get(module)
        return tuple(getattr(mod, n) for n in names) if mod is not None else ()

    if isinstance(exc, classes("robust_vision.config", "ConfigError")
                  + classes("robust_vision.runs.paths", "CheckpointError")):
        return 2
    if isinstance(exc, classes("robust_vision.runs.checkpoint", "CheckpointWriteError")
                  + classes("robust_vision.runs.resume", "TrainingError")):
        return 1
    if isinstance(exc, _USER_ERRORS):
        return 2
    return None


def _interrupted(kept: str, hard_exit: bool) -> int:
    """Ctrl-C: one line saying what was kept; 130. ``hard_exit`` (console scripts): leave with
    ``os._exit(130)`` rather than a normal interpreter shutdown, which can crash (SIGSEGV) while
    XLA's threads are still being torn down (every ``finally`` has run by now)."""
    print(f"interrupted; {kept}", file=sys.stderr)
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


def _run(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, *,
         hard_exit_on_interrupt: bool = False, kept: str = "the last completed checkpoint is kept") -> int:
    """Run ``main(args)`` and map its errors to one line on stderr and an exit code: bad input 2,
    a fault (divergence, disk full) 1, Ctrl-C 130 with ``interrupted; <kept>`` (what is left on
    disk, in the command's words). ``hard_exit_on_interrupt``: see :func:`_interrupted`."""
    from robust_vision.compile_cache import enable_compile_cache_early
    from robust_vision.interrupts import check_interrupt, sigint_guard, was_interrupted

    try:
        with sigint_guard(kept):
            try:
                # Every entry point, without importing JAX; train / eval re-point it from their config.
                enable_compile_cache_early()
                code = int(main(args) or 0)
                check_interrupt()  # swallowed by a callback after the command's last check: still 130
                return code
            except Exception as exc:  # noqa: BLE001 - classified below; anything else propagates unchanged
                if was_interrupted():  # e.g. the ImportError of an extension whose initialisation Ctrl-C stopped
                    raise KeyboardInterrupt from None
                code = _exit_code(exc)
                if code is None:
                    raise
                print(f"error: {exc}", file=sys.stderr)
                return code
    except KeyboardInterrupt:
        return _interrupted(kept, hard_exit_on_interrupt)


def console_entry(kept: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate an entry point ``main(argv)`` so that Ctrl-C also while it parses arguments or
    imports (before :func:`_run`) is one ``interrupted; <kept>`` line and 130, never a traceback;
    console scripts (``argv`` None) leave with ``os._exit``."""
    import functools

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def entry(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                return _interrupted(kept, argv is None)
        return entry
    return wrap


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. --override training.margin_lambda=1.0 (repeatable)")


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """The process-group flags of every command that runs on a mesh (read by
    ``distributed.init_from_args``). Defined here, not in distributed.py, so building the parser
    does not import JAX: a bad path must fail in a fraction of a second."""
    g = parser.add_argument_group("many hosts (jax.distributed; docs/DISTRIBUTED.md)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 (default: JAX_COORDINATOR_ADDRESS, or auto-detected under SLURM)")
    g.add_argument("--num-processes", dest="num_processes", type=int, metavar="N", help="number of processes")
    g.add_argument("--process-id", dest="process_id", type=int, metavar="I", help="this process, 0 .. N-1")
    g.add_argument("--coordinator-timeout", dest="coordinator_timeout", type=int, default=None, metavar="S",
                   help="seconds to wait for every process to join (default 120)")


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from robust_vision.config import load_config
    from robust_vision.data.sources import check_image_sizes
    from robust_vision.preflight import check_data_source, check_memory, check_process_flags

    overrides = list(args.override)
    if args.run_dir:
        overrides.append(f"training.checkpoint_dir={args.run_dir}")
    if args.no_progress or args.quiet:
        overrides.append("training.progress_bar=false")
    check_process_flags(args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout)
    cfg = load_config(args.config, overrides)
    check_data_source(cfg.data)  # a bad path or size costs a fraction of a second: JAX is not imported yet
    check_image_sizes(cfg.data)
    check_memory(cfg)
    from robust_vision import distributed
    from robust_vision.compile_cache import enable_compile_cache
    from robust_vision.training.trainer import train

    distributed.init_from_args(args)  # before anything touches a JAX device
    enable_compile_cache("off" if args.no_compile_cache else cfg.training.compile_cache_dir)
    result = train(cfg, resume=args.resume, **({"log": lambda s: None} if args.quiet else {}))
    if distributed.is_main_process():
        print(f"Run directory: {result.run_dir}")
    return 0


@console_entry("the last completed checkpoint is kept")
def train_main(argv: list[str] | None = None) -> int:
    """robust-vision-train --config FILE [--override K=V ...] [--resume] [--run-dir DIR]"""
    _quiet_tensorflow_logs()
    parser = argparse.ArgumentParser(prog="robust-vision-train", description="Train a classifier from a YAML config.")
    _add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    parser.add_argument("--run-dir", help="run directory (same as --override training.checkpoint_dir=DIR)")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    parser.add_argument("--no-compile-cache", dest="no_compile_cache", action="store_true",
                        help="do not use the persistent compilation cache (ROBUST_VISION_CACHE_DIR=off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch log (errors only)")
    _add_distributed_args(parser)
    return _run(_train, parser.parse_args(argv), hard_exit_on_interrupt=argv is None)


# --------------------------------------------------------------------------- import


def _import(args: argparse.Namespace) -> int:
    from robust_vision.runs.import_weights import import_weights

    run_dir = import_weights(args.source, args.model, args.output, config_path=args.config, overrides=args.override,
                             image_size=args.image_size, channels=args.channels, num_classes=args.num_classes)
    print(f"Imported {args.source} as {args.model} into {run_dir}; evaluate with "
          f"robust-vision-eval --checkpoint {run_dir} --output DIR")
    return 0


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), read before the parser exists."""
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith(flag + "="):
            return item[len(flag) + 1:]
    return None


@console_entry("nothing was written")
def import_main(argv: list[str] | None = None) -> int:
    """robust-vision-import --from model.safetensors --model wrn-28-10 --output RUN [--config FILE] ..."""
    _quiet_tensorflow_logs()
    source = _flag_value(argv if argv is not None else sys.argv[1:], "--from")
    if source is not None and not os.path.isfile(source):  # before the parser: a missing file is named first
        print(f"error: --from: '{source}' not found; pass a PyTorch state_dict file (.safetensors, or .pt with "
              "torch installed)", file=sys.stderr)
        return 2
    from robust_vision.preflight import IMPORTABLE_MODELS  # JAX-free: a bad --model costs no import

    parser = argparse.ArgumentParser(prog="robust-vision-import",
                                     description="Convert a PyTorch state_dict of a RobustBench architecture into a "
                                                 "run directory robust-vision-eval reads (docs/MODELS.md).")
    parser.add_argument("--from", dest="source", required=True, help="weights: .safetensors (or .pt with torch installed)")
    parser.add_argument("--model", required=True, help=f"architecture of the weights: {', '.join(IMPORTABLE_MODELS)}")
    parser.add_argument("--output", required=True, help="new run directory")
    _add_config_args(parser, required=False)
    parser.add_argument("--image-size", dest="image_size", type=int, default=32, help="input height = width (default 32)")
    parser.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    parser.add_argument("--num-classes", dest="num_classes", type=int,
                        help="classes (default: rows of the file's classifier weight)")
    args = parser.parse_args(argv)
    if args.model not in IMPORTABLE_MODELS:  # one line, not argparse's usage block
        print(f"error: --model {args.model!r}: weights can be imported for {', '.join(IMPORTABLE_MODELS)} only",
              file=sys.stderr)
        return 2
    return _run(_import, args, hard_exit_on_interrupt=argv is None, kept="nothing was written")


# --------------------------------------------------------------------------- eval

EVAL_KEPT = "the evaluation did not finish and wrote no tables or results.json"

# Flags whose own presence asks for a suite part (the plan runs only those, plus --parts).
_PART_FLAGS = {"evaluation.suite": "corruptions", "evaluation.attacks": "attacks", "evaluation.certify": "certify",
               "evaluation.verify": "verify", "evaluation.calibration": "calibration"}


class _NameList(argparse.Action):
    """``--attacks fgsm,pgd apgd`` -> ["fgsm", "pgd", "apgd"]; "none" or "" -> []."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        names = [n.strip() for v in values for n in v.split(",") if n.strip()]
        setattr(namespace, self.dest, [] if names in ([], ["none"]) else names)


def _yaml_text(value) -> str:
    """A flag's value as the YAML text of a config override (strings quoted as JSON)."""
    import json

    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, (str, bool)) else str(value)


def _eval_request(args: argparse.Namespace):
    """The parsed eval flags as an EvalRequest: every flag whose dest is a config key
    (``evaluation.*``) and was given becomes an override, after the user's ``--override``s."""
    from robust_vision.evaluation.command import EvalRequest

    flags = vars(args)
    suite = flags["evaluation.suite"]
    if suite is not None:  # --suite NAME [DIR]: DIR holds published corrupted files
        if len(suite) > 2:
            raise ValueError(f"--suite: got {' '.join(suite)}; expected NAME or NAME DIR "
                             "(e.g. --suite imagenet-c, or --suite cifar10-c ./CIFAR-10-C)")
        flags["evaluation.suite"], flags["evaluation.suite_data"] = suite[0], (suite[1:] or [None])[0]
    overrides = list(args.override) + [f"{key}={_yaml_text(value)}" for key, value in flags.items()
                                       if key.startswith("evaluation.") and value is not None]
    asked = [part for key, part in _PART_FLAGS.items() if flags[key] not in (None, [], "none", False)]
    return EvalRequest(checkpoint=args.checkpoint, config=args.config, overrides=overrides, baseline=args.baseline,
                       data=args.data, dataset=args.dataset, split=args.split, parts=args.parts, asked=asked,
                       card=args.card, quiet=args.quiet)


def _eval(args: argparse.Namespace) -> int:
    import builtins

    from robust_vision.evaluation.command import check_request, run_request
    from robust_vision.preflight import check_process_flags

    check_process_flags(args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout)
    request = _eval_request(args)
    # Before JAX: a bad command line costs a fraction of a second.
    job = check_request(request, log=print if not args.process_id else lambda s: None)
    from robust_vision import distributed
    from robust_vision.compile_cache import enable_compile_cache

    distributed.init_from_args(args)  # first: before anything touches a JAX device
    if args.allow_unverified:
        from robust_vision.runs.checkpoint import allow_unverified

        allow_unverified()
    enable_compile_cache("off" if args.no_compile_cache else job.cfg.training.compile_cache_dir)
    run_request(request, job, log=distributed.main_only(builtins.print))  # only process 0 prints
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    """The eval flags. A flag whose dest is a config key (``evaluation.*``) sets that key when
    given (:func:`_eval_request`); values are validated by the config schema."""
    parser = argparse.ArgumentParser(prog="robust-vision-eval",
                                     description="Evaluate a checkpoint under noise, corruptions and attacks; "
                                                 "certify and calibrate it (docs/EVALUATION.md).")
    add = parser.add_argument
    add("--checkpoint", required=True, help="run directory (uses its best checkpoint) or checkpoint")
    _add_config_args(parser, required=False)
    add("--output", dest="evaluation.output_dir", metavar="OUTPUT", help="output directory (default: "
        "evaluation.output_dir)")
    add("--baseline", help="a second run directory to compare against")
    add("--split", choices=["train", "val", "test", "all"],
        help="split to evaluate (default: test; all = every image of --data)")
    add("--data", metavar="SOURCE", help="evaluate this dataset (dir, .zip, .npz) instead of the config's, converted "
        "to the checkpoint's input shape (docs/DATA.md)")
    add("--dataset", metavar="NAME", help="layout of --data (default: detected)")
    add("--noise-types", dest="evaluation.noise_types", metavar="NOISE_TYPES", nargs="+",
        help="e.g. gaussian salt_pepper fog occlusion")
    add("--levels", dest="evaluation.noise_levels", metavar="LEVELS", nargs="+", type=float,
        help="severities in [0, 1], e.g. 0 0.1 0.3 0.5")
    add("--n-draws", dest="evaluation.n_draws", metavar="N_DRAWS", type=int, help="noise draws per image")
    add("--seed", dest="evaluation.seed", metavar="SEED", type=int,
        help="seed of the noise draws (and of every suite part)")
    add("--batch-size", dest="evaluation.batch_size", metavar="BATCH_SIZE", type=int, help="images per compiled batch")
    add("--dpi", dest="evaluation.dpi", metavar="DPI", type=int, help="figure resolution")
    add("--style", dest="evaluation.plot_style", choices=["publication", "default"], help="figure style")
    add("--format", dest="evaluation.format", metavar="FORMAT", help="figure formats, e.g. png,pdf")
    add("--no-plots", dest="evaluation.generate_plots", action="store_false", default=None, help="write tables only")
    add("--parts", metavar="LIST", help="comma list of grid, corruptions, attacks, certify, verify, calibration to run "
        "(default: the parts asked for by --suite / --attacks / --certify / --verify / --calibration; with none of "
        "them, the grid, calibration and the parts the config enables)")
    add("--quiet", action="store_true", help="no progress bars")
    add("--no-compile-cache", dest="no_compile_cache", action="store_true",
        help="do not use the persistent compilation cache (ROBUST_VISION_CACHE_DIR=off)")
    add("--allow-unverified", dest="allow_unverified", action="store_true",
        help="load checkpoints that have no checksums.json manifest (written by an older version)")
    _add_suite_flags(parser)
    _add_distributed_args(parser)
    return parser


def _add_suite_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the robustness-suite parts (docs/EVALUATION.md)."""
    add = parser.add_argument_group("corruption benchmark").add_argument
    add("--suite", dest="evaluation.suite", nargs="+", metavar="NAME [DIR]",
        help="imagenet-c (15 corruptions, mCE), imagenet-c-all (+4 held-out) or none; with DIR, the published files "
             "there: cifar10-c DIR, cifar100-c DIR, imagenet-c DIR, tiny-imagenet-c DIR")
    add("--severities", dest="evaluation.severities", nargs="+", type=int, metavar="S",
        help="ImageNet-C severities, e.g. 1 2 3 4 5")
    add("--corruption-scale", dest="evaluation.corruption_scale", metavar="SCALE",
        help="parameter table: auto, imagenet or cifar")
    add("--reference", dest="evaluation.reference_checkpoint", metavar="RUN",
        help="run directory of the reference model for CE / mCE")
    add = parser.add_argument_group("adversarial attacks").add_argument
    add("--attacks", dest="evaluation.attacks", nargs="+", action=_NameList, metavar="LIST",
        help="comma list of fgsm, pgd, apgd, sparse, noise, apgd-t, apgd-dlr, fab-t, square, autoattack, "
             "autoattack-rand (none = off)")
    add("--eps", dest="evaluation.attack_eps", nargs="+", metavar="EPS",
        help="fgsm / pgd / apgd budgets in [0, 1] pixel units (8/255 allowed)")
    add("--card", action="append", metavar="KEY=VALUE",
        help="autoattack.json model-card field: link, name, authors, additional_data, venue, reported, ...")
    add("--attack-steps", dest="evaluation.attack_steps", type=int, metavar="N",
        help="iterations of pgd / apgd / sparse / noise")
    add("--attack-norm", dest="evaluation.attack_norm", metavar="NORM", help="linf (default) or l2 (pgd / apgd)")
    add("--attack-max-examples", dest="evaluation.attack_max_examples", type=int, metavar="N",
        help="attack the first N examples only")
    add("--sparse-fractions", dest="evaluation.attack_sparse_fractions", nargs="+", type=float, metavar="F",
        help="sparse attack budgets (fraction of pixels)")
    add("--noise-radii", dest="evaluation.attack_noise_radii", nargs="+", type=float, metavar="R",
        help="noise attack budgets (L2 radius)")
    add = parser.add_argument_group("certification (randomized smoothing)").add_argument
    add("--certify", dest="evaluation.certify", action="store_true", default=None,
        help="certify L2 robustness by randomized smoothing")
    add("--sigma", dest="evaluation.certify_sigma", nargs="+", type=float, metavar="SIGMA",
        help="smoothing noise std, e.g. 0.12 0.25 0.5")
    add("--n0", dest="evaluation.certify_n0", type=int, metavar="N", help="selection draws (default 100)")
    add("--n", dest="evaluation.certify_n", type=int, metavar="N", help="estimation draws (default 10000)")
    add("--alpha", dest="evaluation.certify_alpha", type=float, metavar="A",
        help="failure probability of a certificate (default 0.001)")
    add("--max-examples", dest="evaluation.certify_max_examples", type=int, metavar="N",
        help="certify the first N examples of the split (default 100)")
    add = parser.add_argument_group("verification (bound propagation, docs/VERIFY.md)").add_argument
    add("--verify", dest="evaluation.verify", nargs="+", action=_NameList, metavar="LIST",
        help="comma list of ibp, crown-ibp, crown, alpha-crown: verified accuracy at every --eps under --attack-norm, "
             "beside PGD on the same examples (none = off)")
    add("--verify-max-examples", dest="evaluation.verify_max_examples", type=int, metavar="N",
        help="verify the first N examples of the split (default 200)")
    add = parser.add_argument_group("calibration").add_argument
    add("--calibration", dest="evaluation.calibration", action=argparse.BooleanOptionalAction, default=None,
        help="reliability, temperature, conformal and selective tables (default: on)")
    add("--conformal-alpha", dest="evaluation.conformal_alpha", nargs="+", type=float, metavar="A",
        help="conformal miscoverage levels (default 0.1)")


def eval_main(argv: list[str] | None = None) -> int:
    """robust-vision-eval --checkpoint RUN [--config FILE] --output DIR [--baseline RUN] [suite flags] ..."""
    _quiet_tensorflow_logs()
    return _run(_eval, _eval_parser().parse_args(argv), hard_exit_on_interrupt=argv is None, kept=EVAL_KEPT)


# --------------------------------------------------------------------------- plot


def plot_main(argv: list[str] | None = None) -> int:
    """robust-vision-plot RESULTS_DIR... : redraw every figure from saved tables."""
    items = list(sys.argv[1:] if argv is None else argv)
    valued = {"--output", "--dpi", "--style", "--format"}
    for i, item in enumerate(items):  # a missing directory fails before matplotlib and JAX are imported
        if not item.startswith("-") and (i == 0 or items[i - 1] not in valued) and not os.path.exists(item):
            print(f"robust-vision-plot: error: '{item}' does not exist; pass run or results directories "
                  "(or their CSV tables)", file=sys.stderr)
            return 2
    from robust_vision.viz import main

    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
