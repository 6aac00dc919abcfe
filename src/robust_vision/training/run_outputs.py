"""What a training run writes at its end besides checkpoints: the training-curve figures and
TensorBoard event files of the per-epoch metrics (the same numbers as ``metrics.csv``).

* ``<run>/plots/training_curves.<fmt>``: loss, accuracy and SNR per epoch (``viz.plots``), when
  ``evaluation.generate_plots`` is true; style, dpi and formats from the ``evaluation`` section.
* ``<run>/tensorboard/``: one scalar per ``metrics.csv`` column per epoch, written with
  tensorboardX (the optional extra ``pip install -e ".[tensorboard]"``); skipped with a note when
  it is not installed. The directory is rewritten from the whole history, so a resumed run has
  one point per epoch, not duplicates.

Both are written from ``metrics.csv`` after the last epoch: they never slow the epochs down, and a
failure here (e.g. a full disk) is reported in one line without losing the checkpoints.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Callable

TENSORBOARD_DIR = "tensorboard"


def write_training_figures(run_dir: Path, *, style: str, dpi: int, formats: list[str]) -> list[Path]:
    """The training-curve figures of one run directory, into ``<run>/plots``."""
    from robust_vision.viz.plots import plot_training_curves

    return plot_training_curves([run_dir], run_dir / "plots", style=style, dpi=dpi, formats=formats)


def write_tensorboard(run_dir: Path, history: list[dict]) -> Path | None:
    """Event files of every finite per-epoch metric under ``<run>/tensorboard``; None without tensorboardX."""
    if importlib.util.find_spec("tensorboardX") is None:
        return None
    from tensorboardX import SummaryWriter

    out = run_dir / TENSORBOARD_DIR
    shutil.rmtree(out, ignore_errors=True)
    writer = SummaryWriter(logdir=str(out))
    try:
        for row in history:
            epoch = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    split, _, name = key.partition("_")
                    tag = f"{split}/{name}" if split in ("train", "val") else key
                    writer.add_scalar(tag, float(value), epoch)
    finally:
        writer.close()
    return out


def write_run_outputs(run_dir: Path, history: list[dict], *, plots: bool, style: str, dpi: int,
                      formats: list[str], log: Callable[[str], None]) -> None:
    """Figures and TensorBoard files at the end of a training; one-line notes on failure."""
    if not history:
        return
    if plots:
        try:
            paths = write_training_figures(run_dir, style=style, dpi=dpi, formats=formats)
            log(f"Training curves: {', '.join(str(p) for p in paths)}")
        except (OSError, ValueError) as exc:
            log(f"note: training curves not written ({exc})")
    try:
        tb = write_tensorboard(run_dir, history)
    except OSError as exc:
        log(f"note: TensorBoard files not written ({exc})")
        return
    if tb is None:
        log('note: no TensorBoard files (pip install -e ".[tensorboard]" adds them)')
    else:
        log(f"TensorBoard: tensorboard --logdir {tb}")
