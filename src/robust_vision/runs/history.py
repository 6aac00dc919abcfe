"""A run's per-epoch history: ``metrics.csv``, one row per epoch under ``METRIC_COLUMNS``."""

from __future__ import annotations

from pathlib import Path

from robust_vision.io import read_csv_rows, write_csv
from robust_vision.runs.paths import metrics_file

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_margin", "train_snr",
                  "val_loss", "val_accuracy", "val_margin", "val_snr", "val_snr_median", "val_ece",
                  "learning_rate", "epoch_time_s", "val_pgd_accuracy"]


def read_history(run_dir: Path, up_to_epoch: int) -> list[dict]:
    """The rows of ``run_dir``'s metrics.csv up to ``up_to_epoch`` (numbers as float, empty cells
    as None); [] when the file does not exist."""
    path = metrics_file(run_dir)
    if not path.is_file():
        return []
    rows = [row for row in read_csv_rows(path)[0] if int(row["epoch"]) <= up_to_epoch]
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]


def write_history(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite ``run_dir``'s metrics.csv atomically (temp file + rename): a crash never leaves half a file."""
    write_csv(metrics_file(run_dir), rows, METRIC_COLUMNS,
              cell=lambda column, value: int(value) if column == "epoch" and value is not None else value)
