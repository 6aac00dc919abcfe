"""The ``robust-vision-eval`` command: what an evaluation of checkpoints decides around the
runner's parts (docs/EVALUATION.md). ``cli.py`` only parses flags into an :class:`EvalRequest`.

* :func:`check_request`: every check that needs neither JAX nor a model (flags, paths, the
  config and its values, the plan, the ``--data`` source opened, not decoded);
* :func:`run_request`: loads the checkpoint (and the ``--baseline``, renamed when both carry one
  name) and evaluates them on ``--data`` or the config's split;
* :func:`evaluate`: one evaluation of loaded models (the sweep's trials call it with
  ``plan=["grid"]``): the runner's plan under the output directory's lock, then results.json
  and the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# The seed's comparison block is at 50% Gaussian noise: a --baseline run always measures it.
BASELINE_CONDITION = ("gaussian", 0.5)


@dataclass
class EvalRequest:
    """One eval command line. ``overrides``: config overrides (``--override`` and the flags that
    set config keys); ``split``: ``--split``, where ``all`` (every image of ``--data``) has no
    config key; ``parts``: the ``--parts`` text; ``asked``: parts asked by their own flags."""

    checkpoint: str
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    baseline: str | None = None
    data: str | None = None
    dataset: str | None = None
    split: str | None = None
    parts: str | None = None
    asked: list[str] = field(default_factory=list)
    card: list[str] | None = None
    quiet: bool = False


@dataclass
class EvalJob:
    """One evaluation of loaded models. ``source``: the evaluated records (None: the config's
    ``evaluation.split``), ``dataset`` their layout name; ``conditions``: (noise type, level)
    pairs the grid must measure besides the config's; ``record``: extra results.json keys."""

    cfg: Any
    models: list
    plan: Sequence[str]
    source: Any = None
    dataset: str = ""
    conditions: Sequence[tuple[str, float]] = ()
    card: dict = field(default_factory=dict)
    quiet: bool = False
    log: Callable[[str], None] = print
    plots: bool = True
    record: dict = field(default_factory=dict)


def check_request(req: EvalRequest, log: Callable[[str], None] = print) -> EvalJob:
    """Every check of an eval request that needs neither JAX nor the model (one-line ValueError,
    ConfigError or CheckpointError for bad input); returns the job, without its models."""
    from robust_vision.config import load_config
    from robust_vision.data.sources import check_published_suite
    from robust_vision.evaluation import runner
    from robust_vision.io import check_output_dir
    from robust_vision.preflight import check_attack_combination, check_evaluation_work, check_suite, parse_card
    from robust_vision.runs.paths import config_file, read_meta, resolve_checkpoint

    overrides = list(req.overrides)
    if req.split == "all":  # --split all exists only for --data (no config key holds it)
        if not req.data:
            raise ValueError("--split all: needs --data SOURCE (a config's dataset has train / val / test splits)")
    elif req.split is not None:
        overrides.append(f"evaluation.split={req.split}")
    run_dir, checkpoint_dir = resolve_checkpoint(req.checkpoint)
    if req.baseline:
        resolve_checkpoint(req.baseline)
    cfg = load_config(req.config if req.config is not None else config_file(run_dir), overrides)
    ecfg = cfg.evaluation
    check_output_dir(ecfg.output_dir)  # an --output that is a file fails before the evaluation
    check_evaluation_work(ecfg)
    check_attack_combination(ecfg.attacks, ecfg.attack_norm)
    check_suite(ecfg.suite, ecfg.suite_data)
    check_published_suite(ecfg.suite, ecfg.suite_data)
    card = parse_card(req.card)  # autoattack.json's user fields: a bad --card fails here, before JAX
    plan = runner.plan_parts(ecfg, parts=runner.parse_parts(req.parts), asked=req.asked)
    source = None
    if req.data:  # --data: the whole given source as the checkpoint's input (docs/DATA.md)
        from robust_vision.data.sources import load_eval_source

        meta = read_meta(checkpoint_dir)
        # Only the asked split is opened; it is streamed (read batch by batch), never decoded whole.
        source = load_eval_source(req.data, req.dataset, req.split or ecfg.split, meta["input_shape"],
                                  int(meta["num_classes"]), log=log)
    return EvalJob(cfg, [], plan, source=source, card=card, quiet=req.quiet)


def run_request(req: EvalRequest, job: EvalJob, log: Callable[[str], None] = print):
    """Load the checkpoint (and baseline) of a checked request's job and evaluate them; returns
    the runner's EvalOutcome."""
    from robust_vision.interrupts import check_interrupt
    from robust_vision.runs.loading import load_trained_model

    check_interrupt()  # a Ctrl-C while JAX was imported waited for this point
    job.models = [load_trained_model(req.checkpoint, job.cfg if req.config is not None else None)]
    check_interrupt()
    if req.baseline:
        baseline = load_trained_model(req.baseline, None)
        if baseline.name == job.models[0].name:
            baseline.name = f"{baseline.name} (baseline)"
        job.models.append(baseline)
        job.conditions = [BASELINE_CONDITION]
    if job.source is not None:
        from robust_vision.data.sources import detect_layout

        job.dataset = req.dataset or detect_layout(req.data)
    job.log = log
    return evaluate(job)


def with_conditions(noise_types: Sequence[str], levels: Sequence[float],
                    conditions: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """The grid's noise types and levels, extended so that every (type, level) of ``conditions``
    is measured (levels then sorted); unchanged when they all are."""
    noise_types, levels = list(noise_types), list(levels)
    if all(t in noise_types and level in levels for t, level in conditions):
        return noise_types, levels
    return (list(dict.fromkeys([*noise_types, *(t for t, _ in conditions)])),
            sorted({*levels, *(level for _, level in conditions)}))


def evaluate(job: EvalJob):
    """Run ``job.plan`` on ``job.models`` and write every table, results.json and (``job.plots``
    and ``evaluation.generate_plots``) the figures into ``evaluation.output_dir``; only process 0
    writes. Returns the runner's EvalOutcome."""
    from robust_vision.distributed import is_main_process
    from robust_vision.evaluation import runner
    from robust_vision.runs.lock import RunLock

    cfg, ecfg = job.cfg, job.cfg.evaluation
    source, val_source, dataset = job.source, None, job.dataset  # --data: no calibration split
    if source is None:
        source, val_source = runner.config_split_sources(cfg.data, ecfg.split)
        dataset = cfg.data.dataset_name
        job.log(f"Evaluation data ({ecfg.split}): {len(source)} images <- {source.info.description}")
    noise_types, levels = with_conditions(ecfg.noise_types, ecfg.noise_levels, job.conditions)
    out_dir = Path(ecfg.output_dir)
    ctx = runner.EvalContext(cfg=cfg, models=job.models, source=source, val_source=val_source,
                             noise_types=noise_types, levels=levels, where=f"{dataset} ({ecfg.split} split)",
                             out_dir=out_dir, quiet=job.quiet, log=job.log, dataset=dataset, card=job.card)
    if not is_main_process():  # tables, results.json and figures come from process 0 alone
        return runner.run_plan(ctx, job.plan)
    # One evaluation per output directory at a time: two writing one --output would leave
    # results.json from one and the tables from the other.
    with RunLock(out_dir, user="evaluation", other="pass another --output"):
        outcome = runner.run_plan(ctx, job.plan)
        _write_results(job, ctx, outcome)
    return outcome


def _write_results(job: EvalJob, ctx, outcome) -> None:
    """results.json and the figures of one finished evaluation (process 0)."""
    from robust_vision.config import config_to_dict
    from robust_vision.evaluation.report import versions
    from robust_vision.io import write_json
    from robust_vision.tables import RESULTS_JSON

    ecfg, out_dir = job.cfg.evaluation, ctx.out_dir
    write_json(out_dir / RESULTS_JSON, {
        "models": [{"name": m.name, "run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint_dir),
                    "epoch": m.meta.get("epoch"), "input_shape": list(m.input_shape)} for m in job.models],
        "split": ecfg.split, "n_images": ctx.n_images, "config": config_to_dict(job.cfg),
        "versions": versions(), "parts": list(job.plan), "results": outcome.rows, "comparison": outcome.comparison,
        "suite": outcome.suite, "timings_s": {k: v["total"] for k, v in outcome.timings.items()},
        "timings": outcome.timings, **job.record})
    job.log(f"\nTables written to {out_dir}")
    if job.plots and ecfg.generate_plots:
        from robust_vision.viz import redraw

        paths = redraw([out_dir], None, style=ecfg.plot_style, dpi=ecfg.dpi, formats=ecfg.format)
        job.log(f"{len(paths)} figure files written to {out_dir / 'plots'}")
