"""Hyper-parameter sweeps: one training run and one noisy evaluation per trial.

A config's ``sweep`` section names the parameters (dotted config keys) and how to search
them::

    sweep:
      method: grid                 # grid (Cartesian product) or optuna (needs `pip install -e ".[sweep]"`)
      parameters:
        training.margin_lambda: [0.1, 1.0, 10.0]     # a list: grid values / optuna categorical
        training.learning_rate: {low: 1e-4, high: 1e-2, log: true}   # optuna only: a range
      metric: noisy_accuracy       # trials.csv column that picks the best trial
      direction: maximize          # optional; the default follows the metric
      noisy_condition: gaussian@0.5
      n_trials: 20                 # optuna only
      seed: 0                      # optuna only (sampler seed)

Layout of the output directory ``DIR``::

    DIR/trials/<trial_id>/run/       the trial's run directory (config.yaml, metrics.csv, checkpoints/)
    DIR/trials/<trial_id>/results/   its evaluation: robust-vision-eval's noise grid (robustness_results.csv,
                                     confidences.npz, results.json)
    DIR/trials.csv, DIR/trials.md    one row per trial
    DIR/sweep.json                   spec, rows, best trial, versions
    DIR/sweep_state.json             the base config the trials were trained with (resume check)
    DIR/optuna.db                    the Optuna study (method: optuna)
    DIR/plots/sweep_<param>.png/pdf  the ablation figure (one numeric parameter)

Trial ids are derived from the trial's parameter values alone (``margin_lambda=10.0``), so a
trial keeps its id and directory when grid values are added. A trial is finished when its
row in trials.csv says ``complete``; a rerun never retrains it. A trial whose row is missing
or says ``interrupted`` (Ctrl-C) or ``running`` (a killed run) is resumed from its last checkpoint
(when the trainer's resume check accepts its run directory; else it restarts cleanly).
The base config file is read once at the start: editing it while the sweep runs does not
change the trials of that run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from robust_vision.config import LEGACY_KEYS, Config, config_to_dict, load_config, parse_override
from robust_vision.experiments.trials import (COMPLETE, FAILED, SECTIONS, Log, Range, SweepError, SweepSpec, Trial,
                                              TrialFactory, TrialRunner, TrialTable, _fmt, best_row,
                                              format_trials_table, grid_points, parse_sweep_section, to_float)
from robust_vision.experiments.optuna_search import import_optuna, run_optuna
from robust_vision.experiments.sweep_plot import numeric_column, plot_sweep
from robust_vision.io import write_json


# --------------------------------------------------------------------------- the sweep directory's state

# Keys that do not change a trial's numbers: a rerun may change them freely.
_FREE_KEYS = ("training.checkpoint_dir", "training.progress_bar", "training.log_dir", "evaluation.output_dir",
              "evaluation.generate_plots", "evaluation.plot_style", "evaluation.dpi", "evaluation.format")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint(base: Config, spec: SweepSpec) -> dict[str, Any]:
    """Everything that makes trials comparable: the base config (without the swept keys and
    the sweep's own directories) plus the noisy condition (and for Optuna the objective)."""
    flat = _flatten({k: v for k, v in config_to_dict(base).items() if k in SECTIONS})
    out = {k: v for k, v in flat.items() if k not in _FREE_KEYS}
    out["sweep.noisy_condition"] = spec.noisy_condition
    if spec.method == "optuna":
        out["sweep.metric"], out["sweep.direction"] = spec.metric, spec.direction
    return out


def _is_swept(key: str, swept: set[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in swept)


def check_sweep_state(out_dir: Path, base: Config, spec: SweepSpec) -> None:
    """Refuse to mix trials of different base configs in one output directory; record the
    base config on the first run."""
    path = out_dir / "sweep_state.json"
    current = fingerprint(base, spec)
    swept = set(spec.keys)
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("method", spec.method) != spec.method:
            raise SweepError(f"{out_dir} holds a sweep with method {state['method']!r}, not {spec.method!r}; "
                             "use a new --output directory")
        old = state.get("fingerprint", {})
        swept |= set(state.get("swept_keys", []))
        for key in sorted(set(old) | set(current)):
            if _is_swept(key, swept) or old.get(key) == current.get(key):
                continue
            raise SweepError(f"{out_dir} holds trials made with {key}={old.get(key)!r} but the config now gives "
                             f"{current.get(key)!r}; their results would not be comparable: restore {key} or "
                             "use a new --output directory")
    payload = {"method": spec.method, "swept_keys": sorted(swept), "fingerprint": current}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, payload, default=str)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    out_dir: Path
    spec: SweepSpec
    rows: list[dict]               # the rows of this sweep's trials, in plan order
    best: dict | None
    trained: int                   # trials trained (or resumed) by this invocation
    figures: list[Path] = field(default_factory=list)


def _run_grid(plan: list[Trial], runner: TrialRunner, max_trials: int | None, log: Log) -> list[dict]:
    for i, trial in enumerate(plan, 1):
        if (max_trials is not None and runner.trained >= max_trials
                and not runner.table.finished(trial.trial_id, runner.retry_failed)):
            log(f"stopping after {runner.trained} trained trial(s) (--max-trials {max_trials}); "
                "run the same command again to continue")
            break
        runner(trial, i, len(plan))
    # Report every planned trial that has a row (also those left for a later run).
    return [runner.table.rows[t.trial_id] for t in plan if t.trial_id in runner.table.rows]


def validate_plan(factory: TrialFactory, spec: SweepSpec) -> list[Trial]:
    """Build every grid trial (grid) or the range ends / choices (optuna) before running anything,
    so a typo in a key or an invalid value fails at once."""
    if spec.method == "grid":
        plan = [factory.build(p) for p in grid_points(spec)]
        seen: dict[str, dict] = {}
        for t in plan:
            if t.trial_id in seen:
                raise SweepError(f"sweep.parameters: {t.params} is listed twice (as {seen[t.trial_id]}); "
                                 "remove the duplicate value")
            seen[t.trial_id] = t.params
        return plan
    for key, values in spec.parameters.items():
        for v in ([values.low, values.high] if isinstance(values, Range) else values):
            factory.build({key: v})
    return []


def _check_request(overrides: Sequence[str], spec: SweepSpec, max_trials: int | None) -> None:
    """No ``--override`` of a swept key, and a ``--max-trials`` of 0 or more."""
    for text in overrides:
        key = parse_override(text)[0]
        key = LEGACY_KEYS.get(key, key)
        if _is_swept(key, set(spec.keys)):
            raise SweepError(f"--override {text}: {key} is swept by sweep.parameters; remove the override or the "
                             "parameter")
    if max_trials is not None and max_trials < 0:
        raise SweepError(f"--max-trials: got {max_trials}; expected 0 or more")


def _dry_run(plan: list[Trial], spec: SweepSpec, log: Log) -> None:
    for i, t in enumerate(plan, 1):
        log(f"[{i}/{len(plan)}] {t.trial_id}: {t.run_dir}")
    if spec.method == "optuna":
        log(f"optuna: {spec.n_trials} trials over {', '.join(spec.keys)} ({spec.direction} {spec.metric})")


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the flags of robust-vision-sweep): train at most ``max_trials`` trials,
    rerun failed ones, show each trial's training log (``verbose``), draw the figure, only list
    the trials (``dry_run``), show progress bars, and the Optuna ``storage`` (optuna_search)."""

    max_trials: int | None = None
    retry_failed: bool = False
    verbose: bool = False
    plots: bool = True
    dry_run: bool = False
    progress: bool = True
    storage: str | None = None


def run_sweep(config_path: str | Path, out_dir: str | Path, overrides: Sequence[str] = (),
              options: SweepOptions = SweepOptions(), log: Log = print) -> SweepResult:
    """Run (or continue) the sweep of ``config_path`` into ``out_dir``; see the module docstring."""
    out_dir, opt = Path(out_dir), options
    base = load_config(config_path, list(overrides))
    spec = parse_sweep_section(base.sweep)
    _check_request(overrides, spec, opt.max_trials)
    # progress: a bar over the trials and each trial's epoch bars (--quiet turns both off).
    factory = TrialFactory(config_path, overrides, out_dir, progress_bar=opt.progress and base.training.progress_bar)
    plan = validate_plan(factory, spec)
    optuna = import_optuna() if spec.method == "optuna" else None
    if opt.dry_run:
        _dry_run(plan, spec, log)
        return SweepResult(out_dir, spec, [], None, 0)

    check_sweep_state(out_dir, base, spec)
    table = TrialTable(out_dir, spec.keys)
    train_log: Log = (lambda s: log(f"    {s}")) if opt.verbose else (lambda s: None)
    runner = TrialRunner(table, spec, retry_failed=opt.retry_failed, log=log, train_log=train_log,
                         progress=opt.progress)
    t0 = time.perf_counter()
    what = f"{len(plan)} grid trial(s)" if spec.method == "grid" else f"{spec.n_trials} optuna trial(s)"
    log(f"Sweep over {', '.join(spec.keys)}: {what}; metric {spec.metric} ({spec.direction}) with noisy condition "
        f"{spec.noisy_condition}; output {out_dir}")
    try:
        if spec.method == "grid":
            rows = _run_grid(plan, runner, opt.max_trials, log)
        else:
            rows = run_optuna(optuna, factory, spec, runner, out_dir, opt.max_trials, log, storage=opt.storage)
    finally:
        runner.close()
    elapsed = time.perf_counter() - t0
    best = best_row(rows, spec.direction)
    markdown = format_trials_table(rows, spec.keys, spec)
    (out_dir / "trials.md").write_text(markdown + "\n")
    figures: list[Path] = []
    if opt.plots and len(spec.keys) == 1 and numeric_column(rows, spec.keys[0]):
        figures = plot_sweep(table.path, spec.keys[0], out_dir / "plots", style=base.evaluation.plot_style,
                             dpi=base.evaluation.dpi, formats=base.evaluation.format,
                             noisy_condition=spec.noisy_condition, trial_ids=[r["trial_id"] for r in rows])
    _write_summary(out_dir, config_path, overrides, spec, rows, best, runner.trained, elapsed)
    result = SweepResult(out_dir, spec, rows, best, runner.trained, figures)
    _log_result(result, table.path, elapsed, markdown, log)
    return result


def _log_result(result: SweepResult, trials_csv: Path, elapsed: float, markdown: str, log: Log) -> None:
    """The closing lines: the trials table, counts, the best trial and where the outputs are."""
    spec, rows, best = result.spec, result.rows, result.best
    log("")
    log(markdown)
    n_failed = sum(r.get("status") == FAILED for r in rows)
    n_done = sum(r.get("status") == COMPLETE for r in rows)
    log(f"\n{n_done} complete, {n_failed} failed; {result.trained} trained by this run in {elapsed:.1f} s")
    if best is not None:
        log(f"Best trial: {best['trial_id']} ({spec.metric} = {_fmt(best['objective'], spec.metric)}); "
            f"run {best.get('run_dir')}")
    log(f"Tables: {trials_csv}, {result.out_dir / 'sweep.json'}"
        + (f"; figure: {result.figures[0]}" if result.figures else ""))


def _write_summary(out_dir: Path, config_path: str | Path, overrides: Sequence[str], spec: SweepSpec,
                   rows: list[dict], best: dict | None, trained: int, elapsed: float) -> None:
    from robust_vision.evaluation.report import versions

    params = {k: (v if isinstance(v, list) else {"low": v.low, "high": v.high, "log": v.log})
              for k, v in spec.parameters.items()}
    write_json(out_dir / "sweep.json", {
        "config": str(config_path), "overrides": list(overrides), "method": spec.method, "parameters": params,
        "metric": spec.metric, "direction": spec.direction, "noisy_condition": spec.noisy_condition,
        "n_trials": spec.n_trials, "seed": spec.seed,
        "trials": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
        "best": None if best is None else {"trial_id": best["trial_id"], "value": to_float(best["objective"]),
                                           "params": {k: _jsonable(best.get(k)) for k in spec.keys},
                                           "run_dir": best.get("run_dir"), "results_dir": best.get("results_dir")},
        "trained_this_run": trained, "wall_time_s_this_run": elapsed, "versions": versions()})


def _jsonable(value: Any) -> Any:
    """Cells read back from trials.csv are strings; give numbers back as numbers."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
