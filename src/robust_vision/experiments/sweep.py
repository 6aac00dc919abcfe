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
    DIR/trials/<trial_id>/results/   its robustness evaluation (robustness_results.csv, confidences.npz, results.json)
    DIR/trials.csv, DIR/trials.md    one row per trial
    DIR/sweep.json                   spec, rows, best trial, versions
    DIR/sweep_state.json             the base config the trials were trained with (resume check)
    DIR/optuna.db                    the Optuna study (method: optuna)
    DIR/plots/sweep_<param>.png/pdf  the ablation figure (one numeric parameter)

Trial ids are derived from the trial's parameter values alone (``margin_lambda=10.0``), so a
trial keeps its id and directory when grid values are added. A trial is finished when its
row in trials.csv says ``complete``; a rerun never retrains it. A trial whose row is missing
or says ``interrupted`` (Ctrl-C) or ``running`` (a killed run) is resumed from its last checkpoint.
The base config file is read once at the start: editing it while the sweep runs does not
change the trials of that run.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from robust_vision.io import write_csv, write_json
from robust_vision.config import (LEGACY_KEYS, Config, ConfigError, apply_overrides, config_from_dict, config_to_dict,
                                   load_config, parse_override, read_config_file)

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


def _parse_range(key: str, spec: dict) -> Range:
    where = f"sweep.parameters.{key}"
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise SweepError(f"{where}: got {spec!r}; expected a list of values or a range {{low: A, high: B, log: false}}"
                         " (name each parameter by its dotted key, e.g. training.margin_lambda)")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SweepError(f"{where}.{name}: got {spec[name]!r}; expected a finite number")
        if name == "low":
            low = v
        else:
            high = v
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
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["trial_id"]: dict(row) for row in reader if row.get("trial_id")}
        return rows, list(reader.fieldnames or [])


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


# --------------------------------------------------------------------------- resume check

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


# --------------------------------------------------------------------------- one trial


def _final_val(history: list[dict]) -> dict[str, Any]:
    validated = [r for r in history if r.get("val_accuracy") is not None]
    last = validated[-1] if validated else {}
    return {k: last.get(k) for k in VAL_METRICS}


def evaluate_trial(trial: Trial, spec: SweepSpec) -> dict[str, Any]:
    """Evaluate the trial's best checkpoint on ``evaluation.split`` under
    ``evaluation.noise_types`` x ``evaluation.noise_levels`` plus the sweep's noisy condition;
    write its results directory and return the clean_* / noisy_* metrics."""
    from robust_vision.data.datasets import load_dataset
    from robust_vision.runs.loading import check_input_shape, load_trained_model
    from robust_vision.evaluation.report import versions, write_robustness_tables
    from robust_vision.evaluation.robustness import evaluate_robustness

    ecfg = trial.cfg.evaluation
    noise_types = list(dict.fromkeys([*ecfg.noise_types, spec.noise_type]))
    levels = sorted({0.0, *ecfg.noise_levels, spec.noise_level})
    model = load_trained_model(trial.run_dir, name=trial.trial_id)
    dataset = load_dataset(trial.cfg.data)
    split = dataset.split(ecfg.split)
    check_input_shape(model, dataset.image_shape, f"{trial.cfg.data.dataset_name} ({ecfg.split} split)")
    res = evaluate_robustness(model.forward, model.variables, split.images, split.labels, model_name=trial.trial_id,
                              noise_types=noise_types, levels=levels, n_draws=ecfg.n_draws,
                              batch_size=ecfg.batch_size, seed=ecfg.seed, ece_bins=ecfg.ece_bins)
    write_robustness_tables(trial.results_dir, res.rows, res.confidences)
    write_json(trial.results_dir / "results.json", {
        "models": [{"name": model.name, "run_dir": str(model.run_dir), "checkpoint": str(model.checkpoint_dir),
                    "epoch": model.meta.get("epoch"), "input_shape": list(model.input_shape)}],
        "split": ecfg.split, "n_images": len(split.labels), "config": config_to_dict(trial.cfg),
        "versions": versions(), "results": res.rows, "sweep": {"trial_id": trial.trial_id, "params": trial.params}})
    clean = next(r for r in res.rows if r["level"] == 0.0)
    noisy = next(r for r in res.rows
                 if r["noise_type"] == spec.noise_type and math.isclose(r["level"], spec.noise_level))
    return {"clean_accuracy": clean["accuracy"], "clean_snr": clean["snr"], "clean_confidence": clean["confidence"],
            "clean_ece": clean["ece"], "noisy_accuracy": noisy["accuracy"], "noisy_snr": noisy["snr"],
            "noisy_confidence": noisy["confidence"], "noisy_ece": noisy["ece"],
            "noisy_degradation": noisy["degradation"]}


_RESUMABLE = {"training.epochs", "training.progress_bar", "training.log_dir"}


def _leftovers_match(run_dir: Path, cfg: Config) -> bool:
    """Whether a half-finished run directory was made with this trial's config."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return True
    try:
        saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    except yaml.YAMLError:
        return False
    current = _flatten(config_to_dict(cfg))
    return all(saved.get(k, v) == v for k, v in current.items()
               if k not in _RESUMABLE and k not in _FREE_KEYS and k.split(".")[0] in SECTIONS)


def train(cfg: Config, *, resume: bool = False, log: Log = print):
    """The trainer (a module attribute so that tests can count the calls)."""
    from robust_vision.training.trainer import train as _train

    return _train(cfg, resume=resume, log=log)


def run_trial(trial: Trial, spec: SweepSpec, *, log: Log, train_log: Log) -> dict[str, Any]:
    """Train (or resume) and evaluate one trial; returns its trials.csv row.

    A diverged run (TrainingError) gives a ``failed`` row with the error; other errors
    propagate and leave the trial to be resumed by the next run of the sweep.
    """
    from robust_vision.runs.resume import TrainingError

    t0 = time.perf_counter()
    store = trial.run_dir / "checkpoints"
    resume = store.is_dir() and any(store.rglob("meta"))
    if trial.run_dir.exists() and not _leftovers_match(trial.run_dir, trial.cfg):
        log(f"  {trial.trial_id}: its run directory holds a run with another config; restarting it cleanly")
        shutil.rmtree(trial.run_dir)
        resume = False
    elif resume:
        log(f"  {trial.trial_id}: resuming the interrupted run in {trial.run_dir}")
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


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    out_dir: Path
    spec: SweepSpec
    rows: list[dict]               # the rows of this sweep's trials, in plan order
    best: dict | None
    trained: int                   # trials trained (or resumed) by this invocation
    figures: list[Path] = field(default_factory=list)


class _Table:
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


class _Runner:
    """Runs or reuses trials and keeps trials.csv current."""

    def __init__(self, table: _Table, spec: SweepSpec, *, retry_failed: bool, log: Log, train_log: Log,
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


def _run_grid(plan: list[Trial], runner: _Runner, max_trials: int | None, log: Log) -> list[dict]:
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


def run_sweep(config_path: str | Path, out_dir: str | Path, overrides: Sequence[str] = (), *,
              max_trials: int | None = None, retry_failed: bool = False, verbose: bool = False,
              plots: bool = True, dry_run: bool = False, progress: bool = True, log: Log = print,
              storage: str | None = None) -> SweepResult:
    """Run (or continue) the sweep of ``config_path`` into ``out_dir``; see the module docstring."""
    out_dir = Path(out_dir)
    base = load_config(config_path, list(overrides))
    spec = parse_sweep_section(base.sweep)
    for text in overrides:
        key = parse_override(text)[0]
        key = LEGACY_KEYS.get(key, key)
        if _is_swept(key, set(spec.keys)):
            raise SweepError(f"--override {text}: {key} is swept by sweep.parameters; remove the override or the "
                             "parameter")
    if max_trials is not None and max_trials < 0:
        raise SweepError(f"--max-trials: got {max_trials}; expected 0 or more")
    # progress: a bar over the trials and each trial's epoch bars (--quiet turns both off).
    factory = TrialFactory(config_path, overrides, out_dir, progress_bar=progress and base.training.progress_bar)
    plan = validate_plan(factory, spec)
    optuna = None
    if spec.method == "optuna":
        from robust_vision.experiments.optuna_search import import_optuna

        optuna = import_optuna()
    if dry_run:
        for i, t in enumerate(plan, 1):
            log(f"[{i}/{len(plan)}] {t.trial_id}: {t.run_dir}")
        if spec.method == "optuna":
            log(f"optuna: {spec.n_trials} trials over {', '.join(spec.keys)} ({spec.direction} {spec.metric})")
        return SweepResult(out_dir, spec, [], None, 0)

    check_sweep_state(out_dir, base, spec)
    table = _Table(out_dir, spec.keys)
    train_log: Log = (lambda s: log(f"    {s}")) if verbose else (lambda s: None)
    runner = _Runner(table, spec, retry_failed=retry_failed, log=log, train_log=train_log, progress=progress)
    t0 = time.perf_counter()
    what = f"{len(plan)} grid trial(s)" if spec.method == "grid" else f"{spec.n_trials} optuna trial(s)"
    log(f"Sweep over {', '.join(spec.keys)}: {what}; metric {spec.metric} ({spec.direction}) with noisy condition "
        f"{spec.noisy_condition}; output {out_dir}")
    try:
        if spec.method == "grid":
            rows = _run_grid(plan, runner, max_trials, log)
        else:
            from robust_vision.experiments.optuna_search import run_optuna

            rows = run_optuna(optuna, factory, spec, runner, out_dir, max_trials, log, storage=storage)
    finally:
        runner.close()
    elapsed = time.perf_counter() - t0

    best = best_row(rows, spec.direction)
    markdown = format_trials_table(rows, spec.keys, spec)
    (out_dir / "trials.md").write_text(markdown + "\n")
    figures: list[Path] = []
    param = spec.keys[0]
    from robust_vision.experiments.sweep_plot import numeric_column, plot_sweep

    if plots and len(spec.keys) == 1 and numeric_column(rows, param):
        figures = plot_sweep(table.path, param, out_dir / "plots", style=base.evaluation.plot_style,
                             dpi=base.evaluation.dpi, formats=base.evaluation.format,
                             noisy_condition=spec.noisy_condition, trial_ids=[r["trial_id"] for r in rows])
    _write_summary(out_dir, config_path, overrides, spec, rows, best, runner.trained, elapsed)
    log("")
    log(markdown)
    n_failed = sum(r.get("status") == FAILED for r in rows)
    n_done = sum(r.get("status") == COMPLETE for r in rows)
    log(f"\n{n_done} complete, {n_failed} failed; {runner.trained} trained by this run in {elapsed:.1f} s")
    if best is not None:
        log(f"Best trial: {best['trial_id']} ({spec.metric} = {_fmt(best['objective'], spec.metric)}); "
            f"run {best.get('run_dir')}")
    log(f"Tables: {table.path}, {out_dir / 'sweep.json'}" + (f"; figure: {figures[0]}" if figures else ""))
    return SweepResult(out_dir, spec, rows, best, runner.trained, figures)


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


# --------------------------------------------------------------------------- optuna
