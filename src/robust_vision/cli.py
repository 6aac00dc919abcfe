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
    from robust_vision.evaluation.loading import resolve_checkpoint

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
                  "calibration": "evaluation.calibration", "conformal_alpha": "evaluation.conformal_alpha"}
    for attr, key in flag_keys.items():
        value = getattr(args, attr)
        if value is not None:
            if isinstance(value, list):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            overrides.append(f"{key}={value}")
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
    if args.no_plots:
        overrides.append("evaluation.generate_plots=false")
    config_path = args.config
    if config_path is None:  # evaluate with the run's own config
        run_dir, _ = resolve_checkpoint(args.checkpoint)
        config_path = run_dir / "config.yaml"
    return load_config(config_path, overrides), args.config is not None


def _check_model_data(model, dataset, where: str) -> None:
    from robust_vision.evaluation.loading import check_input_shape

    check_input_shape(model, dataset.image_shape, where)
    if model.num_classes != dataset.num_classes:
        raise ValueError(f"{model.name} predicts {model.num_classes} classes but the dataset has "
                         f"{dataset.num_classes}; evaluate on the dataset the model was trained on")


def _timed(timings: dict, name: str, fn: Callable):
    import time

    start = time.perf_counter()
    out = fn()
    timings[name] = round(time.perf_counter() - start, 2)
    return out


def _corruption_part(ecfg, models, logits_fns, split, image_shape, dataset, where: str) -> dict:
    """Corruption benchmark of every model (and of the reference model, for CE / mCE)."""
    from robust_vision.evaluation import suite
    from robust_vision.evaluation.loading import load_trained_model

    corruptions = suite.resolve_suite(ecfg.suite)
    scale = suite.resolve_scale(ecfg.corruption_scale, image_shape)
    key = suite.part_key(ecfg.seed, "corruptions")
    kw = dict(corruptions=corruptions, severities=list(ecfg.severities), scale=scale, key=key,
              batch_size=ecfg.batch_size)
    reference = None
    rows, summary, aggregates = [], [], []
    if ecfg.reference_checkpoint:
        ref_model = load_trained_model(ecfg.reference_checkpoint, None)
        if ref_model.name in {m.name for m in models}:
            ref_model.name = f"{ref_model.name} (reference)"
        _check_model_data(ref_model, dataset, where)
        reference = suite.corruption_errors(ref_model.logits_fn(), split.images, split.labels,
                                            model_name=ref_model.name, **kw)
    for m in models:
        errors, m_summary, agg = suite.corruption_suite(logits_fns[m.name], split.images, split.labels,
                                                        model_name=m.name, reference=reference, **kw)
        rows += errors.rows()
        summary += m_summary
        aggregates.append(agg)
    if reference is not None:  # the reference's own rows (CE = 1 by definition) for the figures
        ref_summary, ref_agg = suite.corruption_summary(reference, reference)
        rows += reference.rows()
        summary += ref_summary
        aggregates.append(ref_agg)
    return {"suite": ecfg.suite, "scale": scale, "severities": list(ecfg.severities),
            "reference": reference.model if reference else None,
            "reference_checkpoint": ecfg.reference_checkpoint, "results": rows, "summary": summary,
            "aggregate": aggregates}


def _attack_part(ecfg, models, logits_fns, split) -> dict:
    from robust_vision.evaluation import suite

    n = len(split.labels) if ecfg.attack_max_examples is None else min(ecfg.attack_max_examples, len(split.labels))
    images, labels = split.images[:n], split.labels[:n]
    rows, sanity = [], []
    for m in models:
        r, s = suite.attack_suite(logits_fns[m.name], images, labels, model_name=m.name, attacks=ecfg.attacks,
                                  eps=ecfg.attack_eps, key=suite.part_key(ecfg.seed, "attacks"),
                                  norm=ecfg.attack_norm, steps=ecfg.attack_steps, batch_size=ecfg.batch_size,
                                  sparse_fractions=ecfg.attack_sparse_fractions, noise_radii=ecfg.attack_noise_radii)
        rows += r
        sanity += s
    autoattack = _autoattack_part(ecfg, models, logits_fns, images, labels, rows)
    return {"attacks": list(ecfg.attacks), "norm": ecfg.attack_norm, "steps": ecfg.attack_steps, "n_examples": n,
            "results": rows, "sanity_checks": sanity, **({"autoattack": autoattack} if autoattack else {})}


def _autoattack_part(ecfg, models, logits_fns, images, labels, rows: list) -> dict:
    """AutoAttack names of --attacks: per-stage results printed, rows appended to the attack table,
    autoattack.json (RobustBench format; autoattack_<i>.json for further models) written."""
    from pathlib import Path

    from robust_vision.attacks.autoattack import autoattack_suite, write_autoattack_json
    from robust_vision.evaluation import suite

    out = {}
    for name in [a for a in ecfg.attacks if a in suite.AUTOATTACK_NAMES]:
        for i, m in enumerate(models):
            r, results = autoattack_suite(logits_fns[m.name], images, labels, model_name=m.name, name=name,
                                          eps=ecfg.attack_eps, norm=ecfg.attack_norm,
                                          key=suite.part_key(ecfg.seed, "attacks"), batch_size=ecfg.batch_size,
                                          steps=ecfg.attack_steps)
            rows += r
            out[f"{m.name}/{name}"] = results
            if results:
                stem = name.replace("-", "_") + (f"_{i}" if i else "")
                write_autoattack_json(Path(ecfg.output_dir) / f"{stem}.json", results, model_name=m.name)
    return out


def _certify_part(ecfg, models, logits_fns, split) -> dict:
    from robust_vision.evaluation import suite

    n = min(ecfg.certify_max_examples, len(split.labels))
    rows, examples = [], []
    for m in models:
        r, e = suite.certification(logits_fns[m.name], split.images[:n], split.labels[:n], model_name=m.name,
                                   sigmas=ecfg.certify_sigma, key=suite.part_key(ecfg.seed, "certify"),
                                   n0=ecfg.certify_n0, n=ecfg.certify_n, alpha=ecfg.certify_alpha,
                                   batch_size=ecfg.batch_size)
        rows += r
        examples += e
    return {"sigma": list(ecfg.certify_sigma), "n0": ecfg.certify_n0, "n": ecfg.certify_n,
            "alpha": ecfg.certify_alpha, "n_examples": n, "examples": f"the first {n} of the {ecfg.split} split",
            "results": rows, "per_example": examples}


def _calibration_part(ecfg, models, logits_fns, split, dataset, noise_types, levels) -> tuple[dict, dict]:
    from robust_vision.evaluation import suite

    cal = dataset.split("val") if ecfg.split != "val" else None
    note = None
    if cal is None:
        note = "evaluation split is val: no separate calibration split, temperature and conformal sets skipped"
    elif len(cal.labels) == 0:
        cal, note = None, "empty validation split: temperature and conformal sets skipped"
    per_model = {}
    for m in models:
        per_model[m.name] = suite.calibration_tables(
            logits_fns[m.name], None if cal is None else cal.images, None if cal is None else cal.labels,
            split.images, split.labels, model_name=m.name, noise_types=noise_types, levels=levels,
            seed=ecfg.seed, key=suite.part_key(ecfg.seed, "calibration"), alphas=ecfg.conformal_alpha,
            n_bins=ecfg.ece_bins, batch_size=ecfg.batch_size)
    merged = {k: [r for res in per_model.values() for r in res[k]]
              for k in ("reliability", "calibration", "conformal", "selective")}
    merged["temperature"] = {name: res["temperature"] for name, res in per_model.items()}
    merged["calibration_split"] = None if cal is None else "val"
    merged["n_calibration"] = 0 if cal is None else len(cal.labels)
    merged["note"] = note
    return merged, per_model


def _write_suite_tables(out_dir, parts: dict) -> list:
    from robust_vision.evaluation import suite
    from robust_vision.evaluation.report import write_csv
    from robust_vision.viz.suite import (
        ATTACK_RESULTS_CSV,
        CERTIFIED_CSV,
        CONFORMAL_CSV,
        CORRUPTION_RESULTS_CSV,
        CORRUPTION_SUMMARY_CSV,
        RELIABILITY_CSV,
        SELECTIVE_CSV,
    )

    tables = {
        "corruptions": [(CORRUPTION_RESULTS_CSV, "results", suite.CORRUPTION_COLUMNS),
                        (CORRUPTION_SUMMARY_CSV, "summary", suite.CORRUPTION_SUMMARY_COLUMNS),
                        ("corruption_mce.csv", "aggregate", suite.CORRUPTION_MCE_COLUMNS)],
        "attacks": [(ATTACK_RESULTS_CSV, "results", suite.ATTACK_COLUMNS),
                    ("attack_sanity.csv", "sanity_checks", suite.SANITY_COLUMNS)],
        "certification": [(CERTIFIED_CSV, "results", suite.CERTIFIED_COLUMNS),
                          ("certified_examples.csv", "per_example", suite.CERTIFIED_EXAMPLE_COLUMNS)],
        "calibration": [(RELIABILITY_CSV, "reliability", suite.RELIABILITY_COLUMNS),
                        ("calibration_summary.csv", "calibration", suite.CALIBRATION_COLUMNS),
                        (CONFORMAL_CSV, "conformal", suite.CONFORMAL_COLUMNS),
                        (SELECTIVE_CSV, "selective", suite.SELECTIVE_COLUMNS)],
    }
    written = []
    for part, specs in tables.items():
        if part not in parts:
            continue
        for filename, key, columns in specs:
            if parts[part][key]:
                written.append(write_csv(out_dir / filename, parts[part][key], columns))
    return written


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robust_vision.config import config_to_dict
    from robust_vision.data.datasets import load_dataset
    from robust_vision.evaluation import suite
    from robust_vision.evaluation.loading import load_trained_model
    from robust_vision.evaluation.report import (
        comparison_at,
        format_comparison,
        format_summary,
        versions,
        write_json,
        write_robustness_tables,
    )
    from robust_vision.evaluation.robustness import evaluate_robustness

    cfg, explicit_config = _eval_config(args)
    ecfg = cfg.evaluation
    if ecfg.suite != "none":
        suite.resolve_suite(ecfg.suite)
    suite.check_attacks(ecfg.attacks, ecfg.attack_norm)  # bad attack settings fail before any work
    model = load_trained_model(args.checkpoint, cfg if explicit_config else None)
    models = [model]
    if args.baseline:
        baseline = load_trained_model(args.baseline, None)
        if baseline.name == model.name:
            baseline.name = f"{baseline.name} (baseline)"
        models.append(baseline)
    dataset = load_dataset(cfg.data)
    split = dataset.split(ecfg.split)
    where = f"{cfg.data.dataset_name} ({ecfg.split} split)"
    levels = list(ecfg.noise_levels)
    noise_types = list(ecfg.noise_types)
    if args.baseline and ("gaussian" not in noise_types or 0.5 not in levels):
        # The seed's comparison block is at 50% Gaussian noise: make sure that condition is measured.
        noise_types = noise_types if "gaussian" in noise_types else [*noise_types, "gaussian"]
        levels = sorted({*levels, 0.5})
    timings: dict[str, float] = {}
    rows, confidences = [], {}
    for m in models:
        _check_model_data(m, dataset, where)
        res = _timed(timings, f"noise grid: {m.name}", lambda m=m: evaluate_robustness(
            m.forward, m.variables, split.images, split.labels, model_name=m.name, noise_types=noise_types,
            levels=levels, n_draws=ecfg.n_draws, batch_size=ecfg.batch_size, seed=ecfg.seed,
            ece_bins=ecfg.ece_bins))
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

    # One logits function per model, reused by every part (the jitted functions are cached on it).
    logits_fns = {m.name: m.logits_fn() for m in models}
    parts: dict[str, dict] = {}
    if ecfg.reference_checkpoint and ecfg.suite == "none":
        print("\nnote: --reference is used by the corruption suite only (--suite imagenet-c); ignored")
    if ecfg.suite != "none":
        parts["corruptions"] = _timed(timings, "corruptions", lambda: _corruption_part(
            ecfg, models, logits_fns, split, dataset.image_shape, dataset, where))
        print()
        print(suite.format_corruption_summary(parts["corruptions"]["aggregate"], parts["corruptions"]["summary"]))
    if ecfg.attacks:
        parts["attacks"] = _timed(timings, "attacks", lambda: _attack_part(ecfg, models, logits_fns, split))
        print()
        print(suite.format_attack_summary(parts["attacks"]["results"], parts["attacks"]["sanity_checks"]))
    if ecfg.certify:
        parts["certification"] = _timed(timings, "certification",
                                        lambda: _certify_part(ecfg, models, logits_fns, split))
        print()
        print(suite.format_certification_summary(parts["certification"]["results"]))
        print(f"  ({parts['certification']['examples']})")
    if ecfg.calibration:
        merged, per_model = _timed(timings, "calibration", lambda: _calibration_part(
            ecfg, models, logits_fns, split, dataset, noise_types, levels))
        parts["calibration"] = merged
        print()
        print(suite.format_calibration_summary(per_model, ecfg.conformal_alpha))
        if merged["note"]:
            print(f"  note: {merged['note']}")
    _write_suite_tables(out_dir, parts)
    print("\nTimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    write_json(out_dir / "results.json", {
        "models": [{"name": m.name, "run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint_dir),
                    "epoch": m.meta.get("epoch"), "input_shape": list(m.input_shape)} for m in models],
        "split": ecfg.split, "n_images": len(split.labels), "config": config_to_dict(cfg),
        "versions": versions(), "results": rows, "comparison": comparison, "suite": parts,
        "timings_s": timings})
    print(f"\nTables written to {out_dir}")
    if ecfg.generate_plots:
        from robust_vision.viz import redraw

        paths = redraw([out_dir], None, style=ecfg.plot_style, dpi=ecfg.dpi, formats=ecfg.format)
        print(f"{len(paths)} figure files written to {out_dir / 'plots'}")
    return 0


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
    parser.add_argument("--split", choices=["train", "val", "test"], help="split to evaluate (default: test)")
    parser.add_argument("--noise-types", dest="noise_types", nargs="+", help="e.g. gaussian salt_pepper fog occlusion")
    parser.add_argument("--levels", nargs="+", type=float, help="severities in [0, 1], e.g. 0 0.1 0.3 0.5")
    parser.add_argument("--n-draws", dest="n_draws", type=int, help="noise draws per image")
    parser.add_argument("--seed", type=int, help="seed of the noise draws (and of every suite part)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="images per compiled batch")
    parser.add_argument("--dpi", type=int, help="figure resolution")
    parser.add_argument("--style", choices=["publication", "default"], help="figure style")
    parser.add_argument("--format", help="figure formats, e.g. png,pdf")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")
    g = parser.add_argument_group("corruption benchmark")
    g.add_argument("--suite", metavar="NAME", help="imagenet-c (15 corruptions, mCE), imagenet-c-all (+4 held-out) or none")
    g.add_argument("--severities", nargs="+", type=int, metavar="S", help="ImageNet-C severities, e.g. 1 2 3 4 5")
    g.add_argument("--corruption-scale", dest="corruption_scale", metavar="SCALE", help="parameter table: auto, imagenet or cifar")
    g.add_argument("--reference", metavar="RUN", help="run directory of the reference model for CE / mCE")
    g = parser.add_argument_group("adversarial attacks")
    g.add_argument("--attacks", nargs="+", metavar="LIST", help="comma list of fgsm, pgd, apgd, sparse, noise, apgd-t, apgd-dlr, fab-t, square, autoattack, autoattack-rand (none = off)")
    g.add_argument("--eps", nargs="+", type=float, metavar="EPS", help="fgsm / pgd / apgd budgets in [0, 1] pixel units")
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
    g = parser.add_argument_group("calibration")
    g.add_argument("--calibration", action=argparse.BooleanOptionalAction, default=None,
                   help="reliability, temperature, conformal and selective tables (default: on)")
    g.add_argument("--conformal-alpha", dest="conformal_alpha", nargs="+", type=float, metavar="A",
                   help="conformal miscoverage levels (default 0.1)")
    return _run(_eval, parser.parse_args(argv))


# --------------------------------------------------------------------------- plot


def plot_main(argv: list[str] | None = None) -> int:
    """robust-vision-plot RESULTS_DIR... : redraw every figure from saved tables."""
    from robust_vision.viz import main

    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
