"""The pieces of a sweep that every search method shares: the validated ``sweep`` section
(:class:`SweepSpec`), trials (:class:`Trial`, stable ids, :class:`TrialFactory`), the trials.csv
table (:class:`TrialTable`) and :class:`TrialRunner`, which trains (or resumes) and evaluates one
trial and records its row. ``sweep.py`` (grid) and ``optuna_search.py`` drive them; the layout of
a sweep directory is described in ``sweep.py``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from robust_vision.config import (LEGACY_KEYS, Config, ConfigError, apply_overrides, config_from_dict, config_to_dict,
                                   read_config_file)
from robust_vision.io import read_csv_rows, write_csv

Log = Callable[[str], None]


class SweepError(ConfigError):
    """A problem with the sweep section, the output directory or its recorded state."""


# --------------------------------------------------------------------------- the sweep section

SWEEP_KEYS = ("method", "parameters", "metric", "direction", "noisy_condition", "n_trials", "seed")
METHODS = ("grid", "optuna")
# Final validation metrics of the training run (last validated epoch of metrics.csv).
VAL_METRICS = ("val_loss", "val_accuracy", "val_margin", "val_snr", "val_snr_median", "val_ece")
# Metrics of the trial's evaluation of its best checkpoint on evaluation.split.
EVAL_METRICS = ("clean_accuracy", "clean_snr", "clean_confidence", "clean_ece",
                "noisy_accuracy", "noisy_snr", "noisy_confidence", "noisy_ece", "noisy_degradation")
METRICS = VAL_METRICS + EVAL_METRICS
_MINIMIZED = ("loss", "ece", "degradation")
SECTIONS = ("model", "training", "data", "evaluation")
# The sweep decides where each trial writes; sweeping these would break the layout.
_RESERVED_KEYS = ("training.checkpoint_dir", "evaluation.output_dir")
DEFAULT_CONDITION = "gaussian@0.5"
DEFAULT_OPTUNA_TRIALS = 20


@dataclass(frozen=True)
class Range:
    """An Optuna float (or integer) range ``[low, high]``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass
class SweepSpec:
    """The validated ``sweep`` section."""

    method: str
    parameters: dict[str, list | Range]
    metric: str
    direction: str
    noise_type: str
    noise_level: float
    n_trials: int | None = None
    seed: int = 0

    @property
    def noisy_condition(self) -> str:
        return f"{self.noise_type}@{self.noise_level:g}"

    @property
    def keys(self) -> list[str]:
        return list(self.parameters)


def default_direction(metric: str) -> str:
    """``minimize`` for losses, calibration errors and degradation, else ``maximize``."""
    return "minimize" if metric.endswith(_MINIMIZED) else "maximize"


def parse_noisy_condition(text: Any) -> tuple[str, float]:
    """``"gaussian@0.5"`` -> ("gaussian", 0.5); the noise type must be registered."""
    from robust_vision.corruptions import NOISES

    if not isinstance(text, str) or text.count("@") != 1:
        raise SweepError(f"sweep.noisy_condition: got {text!r}; expected NOISE_TYPE@LEVEL, e.g. gaussian@0.5")
    name, level_text = (s.strip() for s in text.split("@"))
    if name not in NOISES:
        raise SweepError(f"sweep.noisy_condition: unknown noise type {name!r}; "
                         f"valid names: {', '.join(sorted(NOISES))}")
    try:
        level = float(level_text)
    except ValueError:
        raise SweepError(f"sweep.noisy_condition: level {level_text!r} is not a number; e.g. gaussian@0.5") from None
    if not 0.0 < level <= 1.0:
        raise SweepError(f"sweep.noisy_condition: level {level:g} is outside (0, 1]; a noisy condition needs a "
                         "severity above 0")
    return name, level


def _finite(where: str, text: Any) -> float:
    """A range end as a finite number (YAML 1.1 reads 1e-3 as a string)."""
    value = text
    if isinstance(text, str):
        try:
            value = float(text)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepError(f"{where}: got {text!r}; expected a finite number")
    return value


def _parse_range(key: str, spec: dict) -> Range:
    where = f"sweep.parameters.{key}"
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise SweepError(f"{where}: got {spec!r}; expected a list of values or a range {{low: A, high: B, log: false}}"
                         " (name each parameter by its dotted key, e.g. training.margin_lambda)")
    low, high, log = _finite(f"{where}.low", spec["low"]), _finite(f"{where}.high", spec["high"]), spec.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{where}.log: got {log!r}; expected true/false")
    if not low < high:
        raise SweepError(f"{where}: low ({low!r}) must be below high ({high!r})")
    if log and low <= 0:
        raise SweepError(f"{where}: a log range needs low > 0 (got {low!r})")
    return Range(low, high, log)


def parse_sweep_section(section: dict) -> SweepSpec:
    """Validate a config's ``sweep`` section; every problem raises a one-line :class:`SweepError`."""
    if not section:
        raise SweepError("the config has no sweep section; add e.g. `sweep: {method: grid, parameters: "
                         "{training.margin_lambda: [0.1, 1.0, 10.0]}}` (see configs/research/lambda_sweep.yaml)")
    unknown = [k for k in section if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"sweep.{unknown[0]}: unknown key; valid keys in 'sweep': {', '.join(SWEEP_KEYS)}")
    method = section.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"sweep.method: got {method!r}; expected one of {', '.join(METHODS)}")
    raw_params = section.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SweepError("sweep.parameters: expected a non-empty mapping of dotted config keys to value lists, "
                         "e.g. {training.margin_lambda: [0.1, 1.0, 10.0]}")
    parameters: dict[str, list | Range] = {}
    for key, values in raw_params.items():
        key = LEGACY_KEYS.get(str(key), str(key))  # the seed's old names (training.margin) work here too
        if key.split(".")[0] not in SECTIONS or "." not in key:
            raise SweepError(f"sweep.parameters: {key!r} is not a config key; name a key of the sections "
                             f"{', '.join(SECTIONS)} by its dotted path, e.g. training.margin_lambda")
        if key in _RESERVED_KEYS:
            raise SweepError(f"sweep.parameters: {key} cannot be swept; the sweep gives every trial its own "
                             "directory under --output")
        if isinstance(values, dict):
            parameters[key] = _parse_range(key, values)
            if method == "grid":
                raise SweepError(f"sweep.parameters.{key}: a range needs method: optuna; for a grid list the values")
        elif isinstance(values, (list, tuple)) and values:
            parameters[key] = list(values)
        else:
            raise SweepError(f"sweep.parameters.{key}: got {values!r}; expected a non-empty list of values"
                             + (" or a range {low: A, high: B, log: false}" if method == "optuna" else ""))
    metric = section.get("metric", "noisy_accuracy")
    if metric not in METRICS:
        raise SweepError(f"sweep.metric: got {metric!r}; expected one of {', '.join(METRICS)}")
    direction = section.get("direction", default_direction(metric))
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"sweep.direction: got {direction!r}; expected maximize or minimize")
    noise_type, level = parse_noisy_condition(section.get("noisy_condition", DEFAULT_CONDITION))
    n_trials = section.get("n_trials", DEFAULT_OPTUNA_TRIALS if method == "optuna" else None)
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise SweepError(f"sweep.n_trials: got {n_trials!r}; expected a positive integer")
    seed = section.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepError(f"sweep.seed: got {seed!r}; expected an integer")
    return SweepSpec(method, parameters, metric, direction, noise_type, level, n_trials, seed)


# --------------------------------------------------------------------------- trials

_ID_SAFE = re.compile(r"[^A-Za-z0-9._=+,\[\]-]")
_MAX_ID_LEN = 120


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted key, or the full key where two would collide."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}


def make_trial_id(params: dict[str, Any]) -> str:
    """A directory-safe id that depends only on the trial's parameter values.

    ``{"training.margin_lambda": 10.0}`` -> ``margin_lambda=10.0``. Where characters had to be
    replaced, or the id would be very long, a hash of the exact values is appended so that two
    different trials never share an id.
    """
    names = _short_names(list(params))
    text = "__".join(f"{names[k]}={_format_value(v)}" for k, v in params.items())
    safe = _ID_SAFE.sub("_", text)
    if safe != text or len(safe) > _MAX_ID_LEN:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        safe = f"{safe[:_MAX_ID_LEN - 9]}-{digest}"
    return safe


def _yaml_value(value: Any) -> str:
    # JSON is valid YAML: strings stay strings, lists stay lists, whatever they contain.
    return json.dumps(value)


def _get_dotted(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


@dataclass
class Trial:
    """One point of the sweep: its parameter values, validated config and directories."""

    trial_id: str
    params: dict[str, Any]
    cfg: Config
    run_dir: Path
    results_dir: Path


class TrialFactory:
    """Builds (and thereby validates) the config of each trial from the base config."""

    def __init__(self, config_path: str | Path, overrides: Sequence[str], out_dir: Path, *, progress_bar: bool):
        self.config_path = config_path
        # The base config is read once, here: every trial of this invocation is built from the same
        # settings even if the file is edited while the sweep runs.
        self._frozen_raw = read_config_file(config_path)
        self.overrides = list(overrides)
        self.out_dir = out_dir
        self.progress_bar = progress_bar

    def config(self, params: dict[str, Any], extra: Sequence[str] = ()) -> Config:
        trial_overrides = [f"{k}={_yaml_value(v)}" for k, v in params.items()]
        try:
            return config_from_dict(apply_overrides(copy.deepcopy(self._frozen_raw),
                                                    [*self.overrides, *trial_overrides, *extra]))
        except ConfigError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise SweepError(f"sweep.parameters ({where}): {exc}") from None

    def build(self, params: dict[str, Any]) -> Trial:
        # The id comes from the values as the config holds them (10 and 10.0 are one trial).
        canonical = config_to_dict(self.config(params))
        values = {k: _get_dotted(canonical, k) for k in params}
        trial_id = make_trial_id(values)
        trial_dir = self.out_dir / "trials" / trial_id
        run_dir, results_dir = trial_dir / "run", trial_dir / "results"
        cfg = self.config(values, [f"training.checkpoint_dir={_yaml_value(str(run_dir))}",
                                   f"evaluation.output_dir={_yaml_value(str(results_dir))}",
                                   f"training.progress_bar={'true' if self.progress_bar else 'false'}"])
        return Trial(trial_id, values, cfg, run_dir, results_dir)


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The Cartesian product of the parameter lists, first parameter varying slowest."""
    keys = spec.keys
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec.parameters[k] for k in keys))]


# --------------------------------------------------------------------------- trials.csv

TRIAL_COLUMNS_HEAD = ["trial_id", "status"]
TRIAL_COLUMNS_TAIL = ["epochs", "best_epoch", *VAL_METRICS, *EVAL_METRICS, "objective", "wall_time_s",
                      "run_dir", "results_dir", "error"]
COMPLETE, RUNNING, FAILED, INTERRUPTED = "complete", "running", "failed", "interrupted"


def read_trials(path: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Rows of an existing trials.csv keyed by trial id, and its header."""
    if not path.is_file():
        return {}, []
    rows, header = read_csv_rows(path)
    return {row["trial_id"]: row for row in rows if row.get("trial_id")}, header


def trial_columns(param_keys: Sequence[str], old_header: Sequence[str] = ()) -> list[str]:
    """trials.csv header: fixed columns around one column per swept key (old ones kept)."""
    fixed = set(TRIAL_COLUMNS_HEAD) | set(TRIAL_COLUMNS_TAIL)
    params = list(dict.fromkeys([*param_keys, *(c for c in old_header if c not in fixed)]))
    return [*TRIAL_COLUMNS_HEAD, *params, *TRIAL_COLUMNS_TAIL]


def to_float(value: Any) -> float:
    """A table cell as a float (nan when empty or not a number)."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def best_row(rows: Sequence[dict], direction: str) -> dict | None:
    """The complete row with the best finite ``objective``."""
    done = [r for r in rows if r.get("status") == COMPLETE and math.isfinite(to_float(r.get("objective")))]
    if not done:
        return None
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda r: to_float(r["objective"]))


def _fmt(value: Any, column: str) -> str:
    x = to_float(value)
    if isinstance(value, str) and math.isnan(x):
        return value
    if math.isnan(x):
        return ""
    if column in ("epochs", "best_epoch"):
        return f"{x:.0f}"
    if "snr" in column:
        return f"{x:.3g}" if x < 1e4 else f"{x:.3e}"
    if column == "wall_time_s":
        return f"{x:.1f}"
    return f"{x:.4f}"


def format_trials_table(rows: Sequence[dict], param_keys: Sequence[str], spec: SweepSpec) -> str:
    """A markdown table of the trials (the printed summary and trials.md)."""
    cond = spec.noisy_condition
    cols = [*param_keys, "val_accuracy", "val_snr", "clean_accuracy", "clean_snr", "noisy_accuracy", "noisy_snr",
            "wall_time_s", "status"]
    heads = [*_short_names(list(param_keys)).values(), "val acc", "val SNR", "clean acc", "clean SNR",
             f"acc @ {cond}", f"SNR @ {cond}", "time (s)", "status"]
    lines = ["| trial | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
    for r in rows:
        cells = [str(r.get(c, "")) if c in param_keys or c == "status" else _fmt(r.get(c), c) for c in cols]
        lines.append(f"| {r['trial_id']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)




# --------------------------------------------------------------------------- one trial


def _final_val(history: list[dict]) -> dict[str, Any]:
    validated = [r for r in history if r.get("val_accuracy") is not None]
    last = validated[-1] if validated else {}
    return {k: last.get(k) for k in VAL_METRICS}


def evaluate_trial(trial: Trial, spec: SweepSpec) -> dict[str, Any]:
    """Evaluate the trial's best checkpoint: the eval command's noise grid (``parts=["grid"]``)
    on ``evaluation.split`` under ``evaluation.noise_types`` x ``evaluation.noise_levels`` plus
    the clean images and the sweep's noisy condition, written to the trial's results directory;
    returns the clean_* / noisy_* metrics."""
    from robust_vision.evaluation.command import EvalJob, evaluate
    from robust_vision.runs.loading import load_trained_model

    model = load_trained_model(trial.run_dir, name=trial.trial_id)
    conditions = [(spec.noise_type, 0.0), (spec.noise_type, spec.noise_level)]
    rows = evaluate(EvalJob(trial.cfg, [model], ["grid"], conditions=conditions, quiet=True, log=lambda s: None,
                            plots=False, record={"sweep": {"trial_id": trial.trial_id, "params": trial.params}})).rows
    clean = next(r for r in rows if r["level"] == 0.0)
    noisy = next(r for r in rows if r["noise_type"] == spec.noise_type and math.isclose(r["level"], spec.noise_level))
    return {"clean_accuracy": clean["accuracy"], "clean_snr": clean["snr"], "clean_confidence": clean["confidence"],
            "clean_ece": clean["ece"], "noisy_accuracy": noisy["accuracy"], "noisy_snr": noisy["snr"],
            "noisy_confidence": noisy["confidence"], "noisy_ece": noisy["ece"],
            "noisy_degradation": noisy["degradation"]}


def train(cfg: Config, *, resume: bool = False, log: Log = print):
    """The trainer (a module attribute so that tests can count the calls)."""
    from robust_vision.training.trainer import train as _train

    return _train(cfg, resume=resume, log=log)


def _resumable(trial: Trial, log: Log) -> bool:
    """Whether the trial's run directory holds checkpoints of a run with this trial's config (the
    trainer's resume check); leftovers of another config are removed so the trial restarts cleanly."""
    from robust_vision.runs.resume import TrainingError, check_resume_config, has_checkpoints

    if not trial.run_dir.exists():
        return False
    try:
        check_resume_config(trial.run_dir, trial.cfg)
    except TrainingError:
        log(f"  {trial.trial_id}: its run directory holds a run with another config; restarting it cleanly")
        shutil.rmtree(trial.run_dir)
        return False
    resume = has_checkpoints(trial.run_dir)
    if resume:
        log(f"  {trial.trial_id}: resuming the interrupted run in {trial.run_dir}")
    return resume


def run_trial(trial: Trial, spec: SweepSpec, *, log: Log, train_log: Log) -> dict[str, Any]:
    """Train (or resume) and evaluate one trial; returns its trials.csv row.

    A diverged run (TrainingError) gives a ``failed`` row with the error; other errors
    propagate and leave the trial to be resumed by the next run of the sweep.
    """
    from robust_vision.runs.resume import TrainingError

    t0 = time.perf_counter()
    resume = _resumable(trial, log)
    row: dict[str, Any] = {"trial_id": trial.trial_id, **trial.params, "run_dir": str(trial.run_dir),
                           "results_dir": str(trial.results_dir)}
    try:
        result = train(trial.cfg, resume=resume, log=train_log)
    except TrainingError as exc:
        return {**row, "status": FAILED, "error": str(exc).splitlines()[0],
                "wall_time_s": time.perf_counter() - t0}
    metrics = evaluate_trial(trial, spec)
    row.update(status=COMPLETE, epochs=len(result.history), best_epoch=result.best_epoch,
               **_final_val(result.history), **metrics, error="")
    row["objective"] = row.get(spec.metric)
    row["wall_time_s"] = time.perf_counter() - t0
    return row


def progress_line(index: int, total: int | None, row: dict, spec: SweepSpec, note: str = "") -> str:
    """One line per trial: its metrics, or why it did not run."""
    head = f"[{index}/{total if total is not None else '?'}] {row['trial_id']}"
    if note:
        return f"{head}: {note}"
    if row.get("status") == FAILED:
        return f"{head}: FAILED ({row.get('error', '')})"
    cond = spec.noisy_condition
    return (f"{head}: val acc {_fmt(row.get('val_accuracy'), 'x')}, clean acc {_fmt(row.get('clean_accuracy'), 'x')} "
            f"(SNR {_fmt(row.get('clean_snr'), 'snr')}), {cond} acc {_fmt(row.get('noisy_accuracy'), 'x')} "
            f"(SNR {_fmt(row.get('noisy_snr'), 'snr')}); {spec.metric}={_fmt(row.get(spec.metric), spec.metric)} "
            f"[{_fmt(row.get('wall_time_s'), 'wall_time_s')} s]")


class TrialTable:
    """trials.csv, rewritten atomically after every change."""

    def __init__(self, out_dir: Path, param_keys: Sequence[str]):

        self._write_csv = write_csv
        self.path = out_dir / "trials.csv"
        self.rows, header = read_trials(self.path)
        self.columns = trial_columns(param_keys, header)

    def put(self, row: dict) -> None:
        from robust_vision.distributed import file_lock

        # Other sweep workers may share this file: merge their rows under the sweep lock.
        with file_lock(self.path.parent / "sweep.lock"):
            self.refresh()
            self.rows[row["trial_id"]] = row
            self._write_csv(self.path, self.rows.values(), self.columns)

    def refresh(self) -> None:
        """Take in rows that other workers wrote to trials.csv since it was read."""
        self.rows.update(read_trials(self.path)[0])  # the file is rewritten only under the lock: it is the latest

    def finished(self, trial_id: str, retry_failed: bool) -> bool:
        status = self.rows.get(trial_id, {}).get("status")
        return status == COMPLETE or (status == FAILED and not retry_failed)


class TrialRunner:
    """Runs or reuses trials and keeps trials.csv current."""

    def __init__(self, table: TrialTable, spec: SweepSpec, *, retry_failed: bool, log: Log, train_log: Log,
                 progress: bool = False):
        self.table, self.spec, self.retry_failed = table, spec, retry_failed
        self.log, self.train_log = log, train_log
        self.trained = 0
        self.progress = progress
        self._bar = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, trial: Trial, index: int, total: int | None) -> dict:
        if self.progress and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=index - 1, desc="Sweep", unit="trial")
        try:
            return self._trial(trial, index, total)
        finally:
            if self._bar is not None:
                self._bar.update(1)

    def _trial(self, trial: Trial, index: int, total: int | None) -> dict:
        existing = self.table.rows.get(trial.trial_id)
        if self.table.finished(trial.trial_id, self.retry_failed):
            note = "finished earlier, not rerun" if existing["status"] == COMPLETE else \
                f"failed earlier ({existing.get('error', '')}); not rerun (pass --retry-failed)"
            self.log(progress_line(index, total, existing, self.spec, note))
            return existing
        self.table.put({"trial_id": trial.trial_id, "status": RUNNING, **trial.params,
                        "run_dir": str(trial.run_dir), "results_dir": str(trial.results_dir)})
        try:
            row = run_trial(trial, self.spec, log=self.log, train_log=self.train_log)
        except KeyboardInterrupt:
            # Ctrl-C: the row says so (the next invocation resumes it from its last checkpoint).
            self.table.put({**self.table.rows[trial.trial_id], "status": INTERRUPTED})
            raise
        self.trained += 1
        self.table.put(row)
        self.log(progress_line(index, total, row, self.spec))
        return row
