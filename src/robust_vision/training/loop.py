"""What every trainer does around its epochs, written once: the training data, the checkpoint
store's lifetime, resume, history, best-epoch tracking and checkpoint metadata.

The backprop trainer (``trainer.py``) and the local-rule trainer (``crossbar_trainer.py``)
differ only in how one epoch updates the weights; both keep their run through a ``RunBook``::

    with checkpoint_store(run_dir, cfg.training) as store:
        book = RunBook(cfg, run_dir, store, describe)
        state = book.resume(state, resume, log)       # latest checkpoint that verifies
        for epoch in range(book.start_epoch, last + 1):
            ...                                       # train, then one metrics.csv row
            improved = book.record(row)               # history + best epoch
            book.save(state, improved)                # checkpoint with its metadata
        return book.result()
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import jax

from robust_vision.config import Config, TrainingConfig, config_to_dict, save_config
from robust_vision.data.sources import RecordSource, converted, describe_splits, open_splits, stream_shape
from robust_vision.runs.checkpoint import CheckpointStore, is_better
from robust_vision.runs.history import read_history, write_history
from robust_vision.runs.paths import config_file


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int | None
    best_value: float | None


@dataclass(frozen=True)
class TrainData:
    """What a trainer reads: the train and val record sources, every record brought to
    ``image_shape`` (H, W, C) when read; images uint8 or float32 [0, 1] (see ``data.batch``)."""

    name: str
    train: RecordSource
    val: RecordSource
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    where: tuple[str, ...] = ()  # describe_splits lines: each split's origin, size and hold-outs


def training_sources(cfg: Config) -> TrainData:
    """The train and val sources of ``cfg.data`` (``open_splits``; test is not opened), capped by
    ``data.max_train_examples`` (a SubsetSource), resized / channel-converted to one shape."""
    splits = open_splits(cfg.data, ("train", "val"))
    info = splits["train"].info
    if cfg.model.n_classes is not None and cfg.model.n_classes != info.num_classes:
        raise ValueError(f"model.n_classes: got {cfg.model.n_classes}; the dataset {cfg.data.dataset_name!r} has "
                         f"{info.num_classes} classes (set model.n_classes: null to take it from the data)")
    shape = stream_shape(splits["train"], cfg.data.image_size, cfg.data.channels, also=(splits["val"],))
    return TrainData(cfg.data.dataset_name, converted(splits["train"], shape), converted(splits["val"], shape), shape,
                     info.num_classes, info.class_names, tuple(describe_splits(splits)))


@contextmanager
def checkpoint_store(run_dir: Path, tcfg: TrainingConfig) -> Iterator[CheckpointStore]:
    """The run's CheckpointStore, closed on every exit (also Ctrl-C / errors: no Orbax thread
    outlives the run); on Ctrl-C, dispatched steps finish before the runtime is torn down."""
    store = CheckpointStore(run_dir, save_every=tcfg.save_every, best_mode=tcfg.best_mode)
    try:
        yield store
    except KeyboardInterrupt:
        jax.effects_barrier()
        raise
    finally:
        store.close()


def _json_safe(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (Orbax's JSON metadata rejects NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe_data(data: TrainData, **extra: Any) -> dict:
    """The checkpoint metadata that names a run's inputs and outputs (what the loader needs)."""
    return {"input_shape": list(data.image_shape), "num_classes": data.num_classes,
            "class_names": list(data.class_names), **extra}


@dataclass
class RunBook:
    """The bookkeeping of one run: history (metrics.csv), best epoch, checkpoints and their metadata.

    ``describe``: the fixed part of every checkpoint's metadata (``describe_data`` plus the
    trainer's own keys); ``write``: whether this process writes config.yaml and metrics.csv
    (process 0; checkpoints are collective)."""

    cfg: Config
    run_dir: Path
    store: CheckpointStore
    describe: dict
    write: bool = True
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    best_value: float | None = None
    best_epoch: int | None = None

    def resume(self, state: Any, resume: bool, log: Callable[[str], None]) -> tuple[Any, dict]:
        """With ``resume``, the newest checkpoint that verifies (``restore_latest_valid``) restored into
        ``state``'s structure, and the history and best epoch up to it; then the config is saved.
        Returns (state, the restored checkpoint's metadata, {} when starting from scratch)."""
        meta: dict = {}
        if resume and self.store.latest_epoch() is not None:
            state, meta = self.store.restore_latest_valid(state, log)
            self.start_epoch = int(meta["epoch"]) + 1
            self.best_value, self.best_epoch = meta.get("best_value"), meta.get("best_epoch")
            self.history = read_history(self.run_dir, int(meta["epoch"]))
            log(f"Resuming {self.run_dir} from epoch {meta['epoch']}")
        elif resume:
            log(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")
        if self.write:
            save_config(self.cfg, config_file(self.run_dir))
        return state, meta

    def record(self, row: dict) -> bool:
        """Add one epoch's metrics.csv row (rewriting the file) and track the best epoch by
        ``training.best_metric``; returns whether this epoch is the new best."""
        self.history.append(row)
        if self.write:
            write_history(self.run_dir, self.history)
        tcfg = self.cfg.training
        improved = is_better(row.get(tcfg.best_metric), self.best_value, tcfg.best_mode)
        if improved:
            self.best_value, self.best_epoch = row[tcfg.best_metric], int(row["epoch"])
        return improved

    def save(self, state: Any, improved: bool, **extra: Any) -> None:
        """Checkpoint ``state`` for the last recorded epoch (also as the best one when ``improved``)."""
        row = self.history[-1]
        tcfg = self.cfg.training
        meta = {"epoch": row["epoch"], "metrics": row, "best_metric": tcfg.best_metric, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "model": config_to_dict(self.cfg)["model"], **self.describe, **extra}
        self.store.save(int(row["epoch"]), state, _json_safe(meta), is_best=improved)

    def result(self) -> TrainResult:
        return TrainResult(run_dir=self.run_dir, history=self.history, best_epoch=self.best_epoch,
                           best_value=self.best_value)
