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


def _yaml_list(values: list) -> str:
    import json

    return "[" + ", ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in values) + "]"


def _attack_list(values: list[str] | None) -> list[str] | None:
    """``--attacks fgsm,pgd apgd`` -> ["fgsm", "pgd", "apgd"]; "none" or "" -> []."""
    if values is None:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


def _eval_config(args: argparse.Namespace):
    import json

    from robust_vision.config import load_config
    from robust_vision.runs.paths import resolve_checkpoint

    overrides = list(args.override)
    flag_keys = {"noise_types": "evaluation.noise_types", "levels": "evaluation.noise_levels",
                 "split": "evaluation.split", "n_draws": "evaluation.n_draws", "seed": "evaluation.seed",
                 "batch_size": "evaluation.batch_size", "dpi": "evaluation.dpi", "style": "evaluation.plot_style",
                 "format": "evaluation.format", "output": "evaluation.output_dir"}
    # Robustness-suite flags (docs/EVALUATION.md); values are validated by the config schema,
    # so an unknown suite or attack name fails there with the list of valid names.
    suite_keys = {"suite": "evaluation.suite", "severities": "evaluation.severities",
                  "corruption_scale": "evaluation.corruption_scale", "reference": "evaluation.reference_checkpoint",
                  "eps": "evaluation.attack_eps", "attack_steps": "evaluation.attack_steps",
                  "attack_norm": "evaluation.attack_norm", "attack_max_examples": "evaluation.attack_max_examples",
                  "sparse_fractions": "evaluation.attack_sparse_fractions",
                  "noise_radii": "evaluation.attack_noise_radii", "sigma": "evaluation.certify_sigma",
                  "n0": "evaluation.certify_n0", "certify_n": "evaluation.certify_n",
                  "alpha": "evaluation.certify_alpha", "max_examples": "evaluation.certify_max_examples",
                  "verify_max_examples": "evaluation.verify_max_examples",
                  "calibration": "evaluation.calibration", "conformal_alpha": "evaluation.conformal_alpha"}
    for attr, key in flag_keys.items():
        value = getattr(args, attr)
        if value is not None:
            if isinstance(value, list):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            overrides.append(f"{key}={value}")
    if args.suite is not None:  # --suite NAME [DIR]: DIR holds published corrupted files
        if len(args.suite) > 2:
            raise ValueError(f"--suite: got {' '.join(args.suite)}; expected NAME or NAME DIR "
                             "(e.g. --suite imagenet-c, or --suite cifar10-c ./CIFAR-10-C)")
        if len(args.suite) == 2:
            overrides.append(f"evaluation.suite_data={json.dumps(args.suite[1])}")
        args.suite = args.suite[0]
    for attr, key in suite_keys.items():
        value = getattr(args, attr)
        if value is not None:
            text = _yaml_list(value) if isinstance(value, list) else (
                json.dumps(value) if isinstance(value, (str, bool)) else str(value))
            overrides.append(f"{key}={text}")
    attacks = _attack_list(args.attacks)
    if attacks is not None:
        overrides.append(f"evaluation.attacks={_yaml_list(attacks)}")
    if args.certify:
        overrides.append("evaluation.certify=true")
    verify = _attack_list(args.verify)  # the same comma-list syntax
    if verify is not None:
        overrides.append(f"evaluation.verify={_yaml_list(verify)}")
    if args.no_plots:
        overrides.append("evaluation.generate_plots=false")
    config_path = args.config
    if config_path is None:  # evaluate with the run's own config
        run_dir, _ = resolve_checkpoint(args.checkpoint)
        config_path = run_dir / "config.yaml"
    return load_config(config_path, overrides), args.config is not None


def _asked_parts(args: argparse.Namespace) -> list[str]:
    """Suite parts requested by their own flags (--suite, --attacks, --certify, --calibration)."""
    asked = []
    if args.suite is not None and args.suite != "none":
        asked.append("corruptions")
    if _attack_list(args.attacks):
        asked.append("attacks")
    if args.certify:
        asked.append("certify")
    if _attack_list(args.verify):
        asked.append("verify")
    if args.calibration:
        asked.append("calibration")
    return asked


def _check_eval_args(args: argparse.Namespace) -> dict:
    """Every check of an eval command line that needs neither JAX nor the model: flags, paths,
    the config and its values (bounded work), the checkpoint's files and the ``--data`` source
    (opened, not decoded). Returns what the run needs: cfg, explicit_config, plan, data source."""
    from robust_vision.evaluation import runner
    from robust_vision.data.sources import check_published_suite
    from robust_vision.preflight import (check_attack_combination, check_evaluation_work, check_output_dir,
                                         check_process_flags, parse_card)
    from robust_vision.runs.paths import read_meta, resolve_checkpoint

    check_process_flags(args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout)
    data_split = getattr(args, "split", None)
    if data_split == "all":  # --split all exists only for --data (no config key holds it)
        if not getattr(args, "data", None):
            raise ValueError("--split all: needs --data SOURCE (a config's dataset has train / val / test splits)")
        args.split = None
    _, checkpoint_dir = resolve_checkpoint(args.checkpoint)
    if args.baseline:
        resolve_checkpoint(args.baseline)
    cfg, explicit_config = _eval_config(args)
    ecfg = cfg.evaluation
    check_output_dir(ecfg.output_dir)  # an --output that is a file fails before the evaluation
    check_evaluation_work(ecfg)
    check_attack_combination(ecfg.attacks, ecfg.attack_norm)
    check_published_suite(ecfg.suite, ecfg.suite_data)
    card = parse_card(args.card)  # autoattack.json's user fields: a bad --card fails here, before JAX
    plan = runner.plan_parts(ecfg, parts=runner.parse_parts(args.parts), asked=_asked_parts(args))
    source = None
    if getattr(args, "data", None):  # --data: the whole given source as the checkpoint's input (docs/DATA.md)
        from robust_vision.data.sources import load_eval_source

        meta = read_meta(checkpoint_dir)
        # Only the asked split is opened; it is streamed (read batch by batch), never decoded whole.
        source = load_eval_source(args.data, args.dataset, data_split or ecfg.split, meta["input_shape"],
                                  int(meta["num_classes"]), log=print if not args.process_id else lambda s: None)
    return {"cfg": cfg, "explicit_config": explicit_config, "plan": plan, "source": source, "card": card}


def _eval(args: argparse.Namespace) -> int:
    import builtins
    from pathlib import Path

    checked = _check_eval_args(args)  # before JAX: a bad command line costs a fraction of a second
    from robust_vision import distributed
    from robust_vision.compile_cache import enable_compile_cache
    from robust_vision.evaluation import runner, suite
    from robust_vision.interrupts import check_interrupt
    from robust_vision.runs.loading import load_trained_model

    distributed.init_from_args(args)  # first: before anything touches a JAX device
    if args.allow_unverified:
        from robust_vision.runs.checkpoint import allow_unverified

        allow_unverified()
    main = distributed.is_main_process()  # only process 0 prints and writes tables and figures
    print = distributed.main_only(builtins.print)  # noqa: A001
    cfg, explicit_config, plan = checked["cfg"], checked["explicit_config"], checked["plan"]
    enable_compile_cache("off" if args.no_compile_cache else cfg.training.compile_cache_dir)
    ecfg = cfg.evaluation
    if ecfg.suite != "none" and ecfg.suite_data is None:
        suite.resolve_suite(ecfg.suite)  # a generated suite; published files are checked when opened
    suite.check_attacks(ecfg.attacks, ecfg.attack_norm)  # bad attack settings fail before any work
    check_interrupt()  # a Ctrl-C while JAX was imported waited for this point
    card = checked["card"]
    dataset = cfg.data.dataset_name
    model = load_trained_model(args.checkpoint, cfg if explicit_config else None)
    check_interrupt()
    models = [model]
    if args.baseline:
        baseline = load_trained_model(args.baseline, None)
        if baseline.name == model.name:
            baseline.name = f"{baseline.name} (baseline)"
        models.append(baseline)
    if checked["source"] is not None:
        from robust_vision.data.sources import detect_layout

        source = checked["source"]
        dataset = args.dataset or detect_layout(args.data)
        val_source = None  # no calibration split: temperature and conformal sets are skipped
    else:
        source, val_source = runner.config_split_sources(cfg.data, ecfg.split)
        print(f"Evaluation data ({ecfg.split}): {len(source)} images <- {source.info.description}")
    levels = list(ecfg.noise_levels)
    noise_types = list(ecfg.noise_types)
    if args.baseline and ("gaussian" not in noise_types or 0.5 not in levels):
        # The seed's comparison block is at 50% Gaussian noise: make sure that condition is measured.
        noise_types = noise_types if "gaussian" in noise_types else [*noise_types, "gaussian"]
        levels = sorted({*levels, 0.5})
    out_dir = Path(ecfg.output_dir)
    ctx = runner.EvalContext(cfg=cfg, models=models, source=source, val_source=val_source, noise_types=noise_types,
                             levels=levels, where=f"{dataset} ({ecfg.split} split)", out_dir=out_dir,
                             quiet=args.quiet, log=print, dataset=dataset, card=card)
    if not main:  # tables, results.json and figures come from process 0 alone
        runner.run_plan(ctx, plan)
        return 0
    from robust_vision.preflight import RunLock

    # One evaluation per output directory at a time: two writing one --output would leave
    # results.json from one and the tables from the other.
    with RunLock(out_dir, user="evaluation", other="pass another --output"):
        outcome = runner.run_plan(ctx, plan)
        _write_eval_results(out_dir, models, ecfg, cfg, ctx, plan, outcome, print)
    return 0


def _write_eval_results(out_dir, models, ecfg, cfg, ctx, plan, outcome, print) -> None:  # noqa: A002
    """results.json and the figures of one finished evaluation (process 0)."""
    from robust_vision.config import config_to_dict
    from robust_vision.evaluation.report import versions
    from robust_vision.io import write_json

    write_json(out_dir / "results.json", {
        "models": [{"name": m.name, "run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint_dir),
                    "epoch": m.meta.get("epoch"), "input_shape": list(m.input_shape)} for m in models],
        "split": ecfg.split, "n_images": ctx.n_images, "config": config_to_dict(cfg),
        "versions": versions(), "parts": list(plan), "results": outcome.rows, "comparison": outcome.comparison,
        "suite": outcome.suite, "timings_s": {k: v["total"] for k, v in outcome.timings.items()},
        "timings": outcome.timings})
    print(f"\nTables written to {out_dir}")
    if ecfg.generate_plots:
        from robust_vision.viz import redraw

        paths = redraw([out_dir], None, style=ecfg.plot_style, dpi=ecfg.dpi, formats=ecfg.format)
        print(f"{len(paths)} figure files written to {out_dir / 'plots'}")


def eval_main(argv: list[str] | None = None) -> int:
    """robust-vision-eval --checkpoint RUN [--config FILE] --output DIR [--baseline RUN] [suite flags] ..."""
    _quiet_tensorflow_logs()
    parser = argparse.ArgumentParser(prog="robust-vision-eval",
                                     description="Evaluate a checkpoint under noise, corruptions and attacks; "
                                                 "certify and calibrate it (docs/EVALUATION.md).")
    parser.add_argument("--checkpoint", required=True, help="run directory (uses its best checkpoint) or checkpoint")
    _add_config_args(parser, required=False)
    parser.add_argument("--output", help="output directory (default: evaluation.output_dir)")
    parser.add_argument("--baseline", help="a second run directory to compare against")
    parser.add_argument("--split", choices=["train", "val", "test", "all"],
                        help="split to evaluate (default: test; all = every image of --data)")
    parser.add_argument("--data", metavar="SOURCE", help="evaluate this dataset (dir, .zip, .npz) instead of the "
                        "config's, converted to the checkpoint's input shape (docs/DATA.md)")
    parser.add_argument("--dataset", metavar="NAME", help="layout of --data (default: detected)")
    parser.add_argument("--noise-types", dest="noise_types", nargs="+", help="e.g. gaussian salt_pepper fog occlusion")
    parser.add_argument("--levels", nargs="+", type=float, help="severities in [0, 1], e.g. 0 0.1 0.3 0.5")
    parser.add_argument("--n-draws", dest="n_draws", type=int, help="noise draws per image")
    parser.add_argument("--seed", type=int, help="seed of the noise draws (and of every suite part)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="images per compiled batch")
    parser.add_argument("--dpi", type=int, help="figure resolution")
    parser.add_argument("--style", choices=["publication", "default"], help="figure style")
    parser.add_argument("--format", help="figure formats, e.g. png,pdf")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")
    parser.add_argument("--parts", metavar="LIST",
                        help="comma list of grid, corruptions, attacks, certify, verify, calibration to run (default: "
                             "the parts asked for by --suite / --attacks / --certify / --verify / --calibration; with none "
                             "of them, the grid, calibration and the parts the config enables)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-compile-cache", dest="no_compile_cache", action="store_true",
                        help="do not use the persistent compilation cache (ROBUST_VISION_CACHE_DIR=off)")
    parser.add_argument("--allow-unverified", dest="allow_unverified", action="store_true",
                        help="load checkpoints that have no checksums.json manifest (written by an older version)")
    g = parser.add_argument_group("corruption benchmark")
    g.add_argument("--suite", nargs="+", metavar="NAME [DIR]",
                   help="imagenet-c (15 corruptions, mCE), imagenet-c-all (+4 held-out) or none; with DIR, the "
                        "published files there: cifar10-c DIR, cifar100-c DIR, imagenet-c DIR, tiny-imagenet-c DIR")
    g.add_argument("--severities", nargs="+", type=int, metavar="S", help="ImageNet-C severities, e.g. 1 2 3 4 5")
    g.add_argument("--corruption-scale", dest="corruption_scale", metavar="SCALE", help="parameter table: auto, imagenet or cifar")
    g.add_argument("--reference", metavar="RUN", help="run directory of the reference model for CE / mCE")
    g = parser.add_argument_group("adversarial attacks")
    g.add_argument("--attacks", nargs="+", metavar="LIST", help="comma list of fgsm, pgd, apgd, sparse, noise, apgd-t, apgd-dlr, fab-t, square, autoattack, autoattack-rand (none = off)")
    g.add_argument("--eps", nargs="+", metavar="EPS", help="fgsm / pgd / apgd budgets in [0, 1] pixel units (8/255 allowed)")
    g.add_argument("--card", action="append", metavar="KEY=VALUE",
                   help="autoattack.json model-card field: link, name, authors, additional_data, venue, reported, ...")
    g.add_argument("--attack-steps", dest="attack_steps", type=int, metavar="N", help="iterations of pgd / apgd / sparse / noise")
    g.add_argument("--attack-norm", dest="attack_norm", metavar="NORM", help="linf (default) or l2 (pgd / apgd)")
    g.add_argument("--attack-max-examples", dest="attack_max_examples", type=int, metavar="N",
                   help="attack the first N examples only")
    g.add_argument("--sparse-fractions", dest="sparse_fractions", nargs="+", type=float, metavar="F",
                   help="sparse attack budgets (fraction of pixels)")
    g.add_argument("--noise-radii", dest="noise_radii", nargs="+", type=float, metavar="R",
                   help="noise attack budgets (L2 radius)")
    g = parser.add_argument_group("certification (randomized smoothing)")
    g.add_argument("--certify", action="store_true", help="certify L2 robustness by randomized smoothing")
    g.add_argument("--sigma", nargs="+", type=float, metavar="SIGMA", help="smoothing noise std, e.g. 0.12 0.25 0.5")
    g.add_argument("--n0", type=int, metavar="N", help="selection draws (default 100)")
    g.add_argument("--n", dest="certify_n", type=int, metavar="N", help="estimation draws (default 10000)")
    g.add_argument("--alpha", type=float, metavar="A", help="failure probability of a certificate (default 0.001)")
    g.add_argument("--max-examples", dest="max_examples", type=int, metavar="N",
                   help="certify the first N examples of the split (default 100)")
    g = parser.add_argument_group("verification (bound propagation, docs/VERIFY.md)")
    g.add_argument("--verify", nargs="+", metavar="LIST",
                   help="comma list of ibp, crown-ibp, crown, alpha-crown: verified accuracy at every --eps under "
                        "--attack-norm, beside PGD on the same examples (none = off)")
    g.add_argument("--verify-max-examples", dest="verify_max_examples", type=int, metavar="N",
                   help="verify the first N examples of the split (default 200)")
    g = parser.add_argument_group("calibration")
    g.add_argument("--calibration", action=argparse.BooleanOptionalAction, default=None,
                   help="reliability, temperature, conformal and selective tables (default: on)")
    g.add_argument("--conformal-alpha", dest="conformal_alpha", nargs="+", type=float, metavar="A",
                   help="conformal miscoverage levels (default 0.1)")
    _add_distributed_args(parser)
    return _run(_eval, parser.parse_args(argv), hard_exit_on_interrupt=argv is None, kept=EVAL_KEPT)


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
