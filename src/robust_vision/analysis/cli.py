"""``robust-vision-analyze``: representation and decision-boundary analyses of a trained model.

Subcommands (each takes ``--checkpoint RUN`` and ``--output DIR`` and writes its figures as
PNG/PDF, its table as CSV and a small JSON summary there):

* ``spectrum``: eigenspectrum of a layer's representation and its power-law exponent;
* ``boundary``: a 2-D slice of input space around one image, coloured by predicted class;
* ``features``: per-layer mean-activation heatmaps of an image, clean vs corrupted;
* ``prune``: accuracy and SNR, clean and noisy, after magnitude pruning;
* ``tightness``: the tightness of interval bounds per depth (Mao et al. 2023, docs/VERIFY.md).

See docs/ANALYSIS.md. Bad input prints one line ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from robust_vision.cli import _quiet_tensorflow_logs, _run


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run directory (uses its best checkpoint) or one checkpoint directory")
    parser.add_argument("--output", required=True, help="directory for the figures, tables and JSON summary")
    parser.add_argument("--config", help="YAML config (default: the run's own config.yaml)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. --override data.dataset_name=digits (repeatable)")
    parser.add_argument("--split", choices=["train", "val", "test"], help="split to analyse (default: test)")
    parser.add_argument("--dpi", type=int, help="PNG resolution (default: evaluation.dpi)")
    parser.add_argument("--format", type=lambda s: [f for f in s.split(",") if f],
                        help="figure formats, comma separated, e.g. png,pdf (default: evaluation.format)")
    parser.add_argument("--style", choices=["publication", "default"], help="figure style")


# Each subcommand: run the analysis on the loaded context and return the lines it prints (the
# output directory is printed after them by analyze_main).


def _spectrum(args: argparse.Namespace, ctx) -> list[str]:
    from robust_vision.analysis.spectrum_cmd import run_spectrum

    s = run_spectrum(ctx, layer=args.layer, max_examples=args.max_examples,
                     fit_ranks=tuple(args.fit_range) if args.fit_range else None, batch_size=args.batch_size)
    return [f"{ctx.model.name} {s['layer']} ({s['n_examples']} {ctx.split_name} images, dim {s['dim']}): "
            f"alpha = {s['alpha']:.3f} over ranks {s['fit_rank_first']}-{s['fit_rank_last']} (R^2 = {s['r2']:.3f})"]


def _boundary(args: argparse.Namespace, ctx) -> list[str]:
    from robust_vision.analysis.boundary import run_boundary

    s = run_boundary(ctx, index=args.index, span=args.span, resolution=args.resolution, noise=args.noise,
                     loss=args.loss, seed=args.seed)
    lines = []
    for center, r in s["centers"].items():
        d = ", ".join(f"{k} {'>' + format(s['span'], 'g') if v is None else format(v, '.3g')}"
                      for k, v in r["distances"].items())
        lines.append(f"{center}: predicted {r['origin_class_name']} ({r['origin_confidence']:.3f}); "
                     f"nearest boundary along {d}")
    return lines


def _features(args: argparse.Namespace, ctx) -> list[str]:
    from robust_vision.analysis.feature_maps import run_features
    from robust_vision.runs.loading import load_trained_model

    compare = load_trained_model(args.compare) if args.compare else None
    s = run_features(ctx, index=args.image, noise=args.noise, compare=compare, seed=args.seed)
    return [f"{model}: relative change clean -> noisy " + ", ".join(f"{layer} {v:.3f}" for layer, v in changes.items())
            for model, changes in s["relative_change"].items()]


def _prune(args: argparse.Namespace, ctx) -> list[str]:
    from robust_vision.analysis.prune_eval import run_prune

    run_prune(ctx, sparsities=args.sparsities, scope=args.scope, noise_types=args.noise_types, levels=args.levels,
              n_draws=args.n_draws, batch_size=args.batch_size, seed=args.seed)
    return []


def _tightness(args: argparse.Namespace, ctx) -> list[str]:
    from robust_vision.analysis.tightness_cmd import run_tightness

    s = run_tightness(ctx, eps=args.eps, max_examples=args.max_examples)
    return [*(f"depth {row['depth']} ({row['node']}): tightness {row['tightness']:.4f} "
              f"(optimal radius {row['optimal_radius']:.4g}, IBP radius {row['ibp_radius']:.4g})"
              for row in s["depths"]),
            f"{ctx.model.name}: overall tightness {s['overall_tightness']:.4f} at eps {args.eps:g} "
            f"({s['n_examples']} {ctx.split_name} images)"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-vision-analyze",
                                     description="Spectra, decision boundaries, feature maps and pruning of a "
                                                 "trained model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{spectrum,boundary,features,prune,tightness}")

    p = sub.add_parser("spectrum", help="eigenspectrum of a layer's representation and its power-law exponent")
    _common_args(p)
    p.add_argument("--layer", default="embedding", help="layer name (default: embedding, the classifier's input)")
    p.add_argument("--max-examples", dest="max_examples", type=int,
                   help="use the first N images of the split (default: all)")
    p.add_argument("--fit-range", dest="fit_range", type=int, nargs=2, metavar=("FIRST", "LAST"),
                   help="1-based ranks of the power-law fit (default: 11..min(500, half the non-zero "
                        "eigenvalues), or from 2 for small layers)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="images per compiled batch")
    p.set_defaults(func=_spectrum)

    p = sub.add_parser("boundary", help="2-D slice of input space around one image, coloured by predicted class")
    _common_args(p)
    p.add_argument("--index", type=int, required=True, help="index of the image in the split")
    p.add_argument("--span", type=float, default=0.5,
                   help="half-width of the slice, in RMS pixel change (pixel values in [0, 1]; default 0.5)")
    p.add_argument("--resolution", type=int, default=101, help="grid points per axis, odd (default 101)")
    p.add_argument("--noise", help="also slice around a corrupted copy, TYPE:SEVERITY, e.g. gaussian:0.3")
    p.add_argument("--loss", choices=["margin", "ce"], default="margin",
                   help="loss whose input gradient is the adversarial direction (default margin)")
    p.add_argument("--seed", type=int, help="seed of the random direction and noise (default: evaluation.seed)")
    p.set_defaults(func=_boundary)

    p = sub.add_parser("features", help="per-layer mean-activation heatmaps, clean vs corrupted image")
    _common_args(p)
    p.add_argument("--image", type=int, required=True, help="index of the image in the split")
    p.add_argument("--noise", default="gaussian:0.3", help="corruption TYPE:SEVERITY (default gaussian:0.3)")
    p.add_argument("--compare", help="a second run directory / checkpoint, drawn below the first")
    p.add_argument("--seed", type=int, help="seed of the noise draw (default: evaluation.seed)")
    p.set_defaults(func=_features)

    p = sub.add_parser("prune", help="accuracy and SNR after magnitude pruning, clean and noisy")
    _common_args(p)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9],
                   help="target fractions of kernel weights set to zero (default 0 0.5 0.8 0.9)")
    p.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="one magnitude threshold over all kernels (global) or per kernel (layer)")
    p.add_argument("--noise-types", dest="noise_types", nargs="+", default=["gaussian"],
                   help="noise types (default gaussian)")
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.3],
                   help="severities in [0, 1] (default 0 0.3; 0 = clean is always included)")
    p.add_argument("--n-draws", dest="n_draws", type=int, help="noise draws per image (default: evaluation.n_draws)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="images per compiled batch")
    p.add_argument("--seed", type=int, help="seed of the noise draws (default: evaluation.seed)")
    p.set_defaults(func=_prune)

    p = sub.add_parser("tightness", help="tightness of interval bounds per depth (Mao et al. 2023)")
    _common_args(p)
    p.add_argument("--eps", type=float, default=0.1, help="Linf radius of the input box (default 0.1)")
    p.add_argument("--max-examples", dest="max_examples", type=int, default=32,
                   help="use the first N images of the split (default 32)")
    p.set_defaults(func=_tightness)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """The checks that need neither JAX nor the model: the checkpoint's files, the output
    directory and the values of the subcommand's flags (a bad one costs a fraction of a second)."""
    from robust_vision.io import check_output_dir
    from robust_vision.runs.paths import resolve_checkpoint

    resolve_checkpoint(args.checkpoint)
    check_output_dir(args.output)
    if args.command == "tightness" and (args.eps < 0 or args.max_examples < 1):
        raise ValueError(f"--eps must be >= 0 and --max-examples >= 1; got {args.eps} and {args.max_examples}")
    resolution = getattr(args, "resolution", None)
    if resolution is not None and (resolution < 3 or resolution % 2 == 0):
        raise ValueError(f"--resolution {resolution}: use an odd number >= 3 so that the grid holds the image "
                         "at its centre")
    for flag in ("max_examples", "batch_size", "n_draws"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: got {value}; expected a positive integer")


def analyze_main(argv: list[str] | None = None) -> int:
    """robust-vision-analyze {spectrum,boundary,features,prune,tightness} --checkpoint RUN --output DIR ..."""
    _quiet_tensorflow_logs()
    args = build_parser().parse_args(argv)
    command = args.func

    def checked(args: argparse.Namespace) -> int:
        _check_args(args)  # before JAX: analysis.common imports it
        from robust_vision.analysis.common import load_context

        ctx = load_context(args)
        for line in command(args, ctx):
            print(line)
        print(f"written to {ctx.out_dir}")
        return 0
    return _run(checked, args, hard_exit_on_interrupt=argv is None, kept="the analysis did not finish")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(analyze_main())
