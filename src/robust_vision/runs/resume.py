"""Whether a run directory may be written, resumed, or is already done.

Every trainer checks its request here before it touches the run directory
(``check_run_request``); callers that train many runs (the sweep, the research recipes) ask
``run_finished`` before they train one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from robust_vision.config import Config, ConfigError, config_to_dict
from robust_vision.runs.history import METRIC_COLUMNS
from robust_vision.runs.paths import checkpoints_dir, config_file

# Config keys that may differ between a run and its resumption (they do not change the numbers).
# training.checkpoint_dir: the run being resumed is read from it, so a different spelling of the same
# directory (relative vs absolute) names the same run.
_RESUMABLE_CHANGES = {("training", "epochs"), ("training", "progress_bar"), ("training", "log_dir"),
                      ("training", "checkpoint_dir"), ("training", "write_figures")}


class TrainingError(RuntimeError):
    """Training cannot continue (diverged, or the run directory does not match the request)."""


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """Raise TrainingError when ``run_dir``'s saved config differs from ``cfg`` in a key that
    changes the numbers (``_RESUMABLE_CHANGES`` aside); nothing when no config is saved."""
    saved_path = config_file(run_dir)
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config_to_dict(cfg)
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            old = (saved.get(section) or {}).get(key, value)
            if old != value and (section, key) not in _RESUMABLE_CHANGES:
                raise TrainingError(f"--resume: {section}.{key} is {value!r} but the run in {run_dir} used {old!r}; "
                                    "resume with the same config (only training.epochs may change) or use another "
                                    "training.checkpoint_dir")


def has_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds at least one written checkpoint (one with its metadata)."""
    store_dir = checkpoints_dir(run_dir)
    return store_dir.exists() and any(store_dir.rglob("meta"))


def check_run_request(cfg: Config, resume: bool) -> tuple[Path, bool]:
    """The checks every trainer makes before it touches the run directory: a known
    ``best_metric``, no overwrite of an existing run without ``resume``, and with ``resume`` the
    same config as the saved run. Returns (run directory, whether it holds checkpoints)."""
    tcfg = cfg.training
    if tcfg.best_metric not in METRIC_COLUMNS[1:]:
        raise ConfigError(f"training.best_metric: got {tcfg.best_metric!r}; expected a metrics.csv column: "
                          f"{', '.join(METRIC_COLUMNS[1:])}")
    if tcfg.best_metric == "val_pgd_accuracy" and tcfg.val_attack.steps == 0:
        raise ConfigError("training.best_metric: val_pgd_accuracy needs the held-out attack; set "
                          "training.val_attack.steps (e.g. 10) or pick another best_metric")
    run_dir = Path(tcfg.checkpoint_dir)
    written = has_checkpoints(run_dir)
    if written and not resume:
        raise TrainingError(f"{run_dir} already holds checkpoints; pass --resume to continue that run, or set "
                            "training.checkpoint_dir to a new directory (nothing was overwritten)")
    if resume:
        check_resume_config(run_dir, cfg)
    return run_dir, written


def last_epoch(cfg: Config) -> int:
    """The epoch a run of ``cfg`` ends at: ``training.hebbian.iterations`` for a local-rule run,
    ``training.epochs`` otherwise."""
    local = cfg.training.learning_rule != "backprop"
    return int(cfg.training.hebbian.iterations if local else cfg.training.epochs)


def run_finished(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a finished run of ``cfg``: the same config (resumable changes
    aside, ``check_resume_config``) and the checkpoint of its last epoch (``last_epoch``)."""
    try:
        check_resume_config(Path(run_dir), cfg)
    except (TrainingError, yaml.YAMLError):
        return False
    return (checkpoints_dir(run_dir) / "epochs" / str(last_epoch(cfg)) / "meta").exists()
