"""The whole study: protocols -> tidy rows -> tables -> figures -> checklist and claims.

Output directory layout (every table as CSV with full precision plus a markdown rendering)::

    all_results.csv                 one row per protocol x method x seed x noise type x level
    master_results.{csv,md}         the seed's master table, per protocol
    experiment_{learning_rule,constraints,loss,architecture}.{csv,md}
    factor_importance.{csv,md}      best-to-worst SNR ratio per controlled experiment, ranked
    accuracy_at_50_gaussian.{csv,md}
    weight_stats.{csv,md}           local-rule (crossbar) methods
    lambda_linearity.{csv,md}       clean SNR vs lambda (CE, margin 1, 10): paired steps, Pearson r
    original_protocol.{csv,md}      the seed's original loss experiment (per-image MLPs), when run
    curves.csv                      accuracy / SNR per condition, with bootstrap 90% intervals
    checklist.md, claims.md         decided from the tables above, read back from disk
    results.json                    settings, seeds, versions, timings, runs, verdicts
    figures/                        snr_by_method, constraint_degradation, robustness_curves_*  (PNG + PDF)
    runs/classification/seed<S>/<method>/   backprop run directories (robust-vision-eval can read them)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from robust_vision.evaluation.report import versions

from robust_vision.io import write_csv, write_json
from robust_vision.research import figures as figs
from robust_vision.research import render, tables, verdicts
from robust_vision.research.methods import EXPERIMENTS, methods_for
from robust_vision.research.protocols import (ROW_COLUMNS, RunRecord, classification_data, pattern_images,
                                              run_classification_method, run_pattern_method)
from robust_vision.research.settings import StudySettings, settings_to_dict

__all__ = ["StudyOutcome", "decide", "finish", "report", "run_study"]

FORMATS = ("png", "pdf")


@dataclass
class StudyOutcome:
    out_dir: Path
    records: list[RunRecord]
    checklist: list[verdicts.CheckItem]
    claims: list[verdicts.Claim]
    wall_time_s: float


def _context(settings: StudySettings, sizes: dict) -> dict:
    c = settings.classification
    s = settings.image_size
    parts = []
    if "classification" in settings.protocols:
        parts.append(f"classification = binary digits, class 0 = digit {c.target_digit} (target), class 1 = digit "
                     f"{c.control_digit} (control), {s}x{s} grayscale, {sizes.get('train', '?')} train / "
                     f"{sizes.get('test', '?')} test images x {c.n_draws} noise draws")
    if "pattern" in settings.protocols:
        source = (f"images of {settings.pattern.images_dir} (evenly spaced, grayscale)" if settings.pattern.images_dir
                  else "digit images")
        parts.append(f"pattern = {settings.pattern.n_images} {source} ({s}x{s}), one crossbar (or original MLP) each, "
                     f"{settings.pattern.iterations} updates with target [1, 0], {settings.pattern.n_noisy} noisy "
                     "copies per condition")
    seeds = list(range(settings.seeds))
    return {"task": "; ".join(parts), "noise_types": list(settings.noise_types), "levels": list(settings.levels),
            "n_seeds": len(seeds), "seeds_text": "seeds " + ", ".join(map(str, seeds)),
            "bound": settings.divergence_bound,
            "pattern_images": (f"{settings.pattern.n_images} images of {settings.pattern.images_dir} at evenly spaced "
                               f"positions of the sorted file list, grayscale, {s}x{s}, /255"
                               if settings.pattern.images_dir else
                               f"{settings.pattern.n_images} bundled digit images per seed, {s}x{s} grayscale")}


def _describe(rec: RunRecord) -> str:
    clean = next((r for r in rec.rows if r["level"] == 0.0), {})
    noisy = [r for r in rec.rows if r["level"] > 0]
    snr_noisy = tables.geometric_mean(r["snr"] for r in noisy)
    flag = "  DIVERGED" if rec.diverged else ""
    extra = f" [{rec.note}]" if rec.note else ""
    return (f"[{rec.protocol} seed {rec.seed}] {rec.method.name}: train {rec.train_time_s:.1f}s, eval "
            f"{rec.eval_time_s:.1f}s; clean acc {tables.fmt_num(clean.get('accuracy'))}, clean SNR "
            f"{tables.fmt_num(clean.get('snr'))}, mean noisy SNR {tables.fmt_num(snr_noisy)}{flag}{extra}")


def _run_protocols(settings: StudySettings, out_dir: Path, *, fresh: bool, log: Callable[[str], None],
                   train_log: Callable[[str], None], progress: bool = True) -> tuple[list[RunRecord], dict, dict]:
    from tqdm.auto import tqdm

    records: list[RunRecord] = []
    timings: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for protocol in settings.protocols:
        t0 = time.perf_counter()
        methods = (methods_for("pattern") if protocol == "pattern" else
                   methods_for("classification", linear_baselines=settings.classification.linear_baselines))
        bar = tqdm(total=settings.seeds * len(methods), desc=f"{protocol} runs", unit="run", leave=False,
                   disable=not progress)
        if protocol == "pattern":
            for seed in range(settings.seeds):
                images = pattern_images(settings, seed)
                for method in methods:
                    records.append(run_pattern_method(settings, method, seed, images))
                    log(_describe(records[-1]))
                    bar.update(1)
        else:
            dataset = classification_data(settings)
            sizes = {name: len(labels) for name, (_, labels) in dataset.items()}
            for seed in range(settings.seeds):
                for method in methods:
                    records.append(run_classification_method(settings, method, seed, dataset, out_dir, fresh=fresh,
                                                             log=train_log))
                    log(_describe(records[-1]))
                    bar.update(1)
        bar.close()
        timings[protocol] = time.perf_counter() - t0
    return records, timings, sizes


def write_tables(records: Sequence[RunRecord], out_dir: Path, ctx: dict) -> list[Path]:
    """Aggregate the runs and write every table (CSV + markdown); returns the written paths."""
    rows = [r for rec in records for r in rec.rows]
    written = [write_csv(out_dir / "all_results.csv", rows, ROW_COLUMNS)]
    summaries = tables.method_summaries(records)
    master = tables.master_rows(summaries)
    written += tables.write_table(out_dir, "master_results", master, tables.MASTER_COLUMNS,
                                  render.render_master(master, ctx))
    for ex in EXPERIMENTS:
        ex_rows = tables.experiment_rows(summaries, ex)
        written += tables.write_table(out_dir, f"experiment_{ex.key}", ex_rows, tables.EXPERIMENT_COLUMNS,
                                      render.render_experiment(ex_rows, ex.key, ctx))
    factors = tables.factor_rows(summaries)
    written += tables.write_table(out_dir, "factor_importance", factors, tables.FACTOR_COLUMNS,
                                  render.render_factors(factors, ctx))
    acc50 = tables.accuracy50_rows(summaries)
    written += tables.write_table(out_dir, "accuracy_at_50_gaussian", acc50, tables.ACC50_COLUMNS,
                                  render.render_accuracy50(acc50, ctx))
    weights = tables.weight_rows(records)
    written += tables.write_table(out_dir, "weight_stats", weights, tables.WEIGHT_COLUMNS,
                                  render.render_weights(weights, ctx))
    written.append(write_csv(out_dir / "curves.csv", tables.curve_rows(records), tables.CURVE_COLUMNS))
    linearity = tables.linearity_rows(summaries)
    if linearity:
        written += tables.write_table(out_dir, "lambda_linearity", linearity, tables.LINEARITY_COLUMNS,
                                      render.render_linearity(linearity, ctx))
    original = tables.original_rows(records)
    if original:
        written += tables.write_table(out_dir, "original_protocol", original, tables.ORIGINAL_COLUMNS,
                                      render.render_original(original, ctx))
    return written


def draw_figures(out_dir: Path, protocols: Sequence[str], log: Callable[[str], None]) -> list[Path]:
    """Every figure, from the tables on disk. A failing figure is reported, not raised: the
    checklist's "all plots generated" item then fails."""
    fig_dir = out_dir / "figures"
    master = tables.read_rows(out_dir / "master_results.csv")
    constraints = tables.read_rows(out_dir / "experiment_constraints.csv")
    curves = tables.read_rows(out_dir / "curves.csv")
    jobs = [("snr_by_method", lambda: figs.plot_snr_by_method(master, fig_dir, formats=FORMATS)),
            ("constraint_degradation", lambda: figs.plot_constraint_degradation(constraints, fig_dir, formats=FORMATS))]
    jobs += [(f"robustness_curves_{p}", lambda p=p: figs.plot_robustness_curves(curves, p, fig_dir, formats=FORMATS))
             for p in protocols]
    written: list[Path] = []
    for name, job in jobs:
        try:
            written += job()
        except Exception as exc:  # noqa: BLE001 - a figure must not lose the tables already written
            log(f"warning: figure {name} failed: {type(exc).__name__}: {exc}")
    return written


def decide(out_dir: Path, protocols: Sequence[str]) -> tuple[list[verdicts.CheckItem], list[verdicts.Claim]]:
    """Checklist and claims from the tables written in ``out_dir`` (read back from disk)."""
    master = tables.read_rows(out_dir / "master_results.csv")
    acc50 = tables.read_rows(out_dir / "accuracy_at_50_gaussian.csv")
    experiments = {ex.key: tables.read_rows(out_dir / f"experiment_{ex.key}.csv") for ex in EXPERIMENTS}
    factors = tables.read_rows(out_dir / "factor_importance.csv")
    expected = figs.expected_figures(out_dir / "figures", protocols, FORMATS)
    linearity = _optional_table(out_dir, "lambda_linearity")
    checklist = verdicts.validation_checklist(master, acc50, expected, linearity)
    claims = verdicts.compare_claims(master, acc50, experiments, factors, _optional_table(out_dir, "original_protocol"),
                                     linearity)
    return checklist, claims


def _optional_table(out_dir: Path, stem: str) -> list[dict]:
    """Rows of ``out_dir/stem.csv``; [] when the run did not write it (its methods did not run)."""
    path = out_dir / f"{stem}.csv"
    return tables.read_rows(path) if path.is_file() else []


def run_study(settings: StudySettings, out_dir: str | Path, *, fresh: bool = False, verbose: bool = False,
              log: Callable[[str], None] = print, command: Sequence[str] = (), progress: bool = True) -> StudyOutcome:
    """Run every protocol of ``settings`` and write the study's outputs into ``out_dir``."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"robust-vision-research: protocols {', '.join(settings.protocols)}, {settings.seeds} seed(s), "
        f"{settings.image_size}x{settings.image_size} images -> {out_dir}")
    records, timings, sizes = _run_protocols(settings, out_dir, fresh=fresh, log=log,
                                             train_log=log if verbose else (lambda s: None), progress=progress)
    ctx = _context(settings, sizes)
    files = write_tables(records, out_dir, ctx)
    figures, checklist, claims = finish(out_dir, settings.protocols, ctx, log)
    files += figures + [out_dir / "checklist.md", out_dir / "claims.md"]
    wall = time.perf_counter() - t_start
    write_json(out_dir / "results.json", {
        "command": list(command), "settings": settings_to_dict(settings), "seeds": list(range(settings.seeds)),
        "protocols": list(settings.protocols), "task": ctx["task"], "split_sizes": sizes, "versions": versions(),
        "wall_time_s": wall, "protocol_time_s": timings,
        "runs": [{"protocol": r.protocol, "method": r.method.name, "method_key": r.method.key, "seed": r.seed,
                  "diverged": r.diverged, "train_time_s": r.train_time_s, "eval_time_s": r.eval_time_s,
                  "run_dir": r.run_dir, "note": r.note, "weight_stats": r.weight_stats} for r in records],
        "checklist": verdicts.as_dicts(checklist), "claims": verdicts.as_dicts(claims),
        "files": sorted(str(p.relative_to(out_dir)) for p in files + [out_dir / "results.json"]),
    })

    print_summary(out_dir, checklist, log)
    log(f"Wrote {len(files) + 1} files to {out_dir} in {wall:.1f} s")
    return StudyOutcome(out_dir, records, checklist, claims, wall)


def finish(out_dir: Path, protocols: Sequence[str], ctx: dict, log: Callable[[str], None]
           ) -> tuple[list[Path], list[verdicts.CheckItem], list[verdicts.Claim]]:
    """Figures, checklist.md and claims.md from the tables on disk (also ``report``)."""
    figures = draw_figures(out_dir, protocols, log)
    checklist, claims = decide(out_dir, protocols)
    (out_dir / "checklist.md").write_text(verdicts.render_checklist(checklist, ctx) + "\n")
    warnings = verdicts.ill_conditioned_warnings(_optional_table(out_dir, "original_protocol"))
    (out_dir / "claims.md").write_text(verdicts.render_claims(claims, ctx, warnings) + "\n")
    return figures, checklist, claims


def print_summary(out_dir: Path, checklist: Sequence[verdicts.CheckItem], log: Callable[[str], None]) -> None:
    log("")
    log((out_dir / "master_results.md").read_text())
    log((out_dir / "factor_importance.md").read_text())
    if (out_dir / "original_protocol.md").is_file():  # the "375x" protocol, with its intervals
        log((out_dir / "original_protocol.md").read_text())
    log("VALIDATION CHECKLIST")
    for line in verdicts.checklist_lines(checklist):
        log(line)
    log("")
    log((out_dir / "claims.md").read_text())


def report(out_dir: str | Path, *, log: Callable[[str], None] = print) -> tuple[list, list]:
    """Redraw the figures and re-decide the checklist and claims of a finished run from its
    tables (nothing is retrained). Returns (checklist, claims)."""
    import json

    out_dir = Path(out_dir)
    meta_path = out_dir / "results.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; pass the --output directory of a finished "
                                "`robust-vision-research run`")
    meta = json.loads(meta_path.read_text())
    seeds = meta.get("seeds", [])
    ctx = {"task": meta.get("task", ""), "n_seeds": len(seeds), "seeds_text": "seeds " + ", ".join(map(str, seeds)),
           "noise_types": meta["settings"]["noise_types"], "levels": meta["settings"]["levels"],
           "bound": meta["settings"]["divergence_bound"]}
    _, checklist, claims = finish(out_dir, meta["protocols"], ctx, log)
    print_summary(out_dir, checklist, log)
    return checklist, claims
