"""Where a run's checkpoints are, read without JAX: a command resolves and checks its
``--checkpoint`` in a fraction of a second, before JAX, the model or the data are loaded.

``resolve_checkpoint`` understands a run directory (its best checkpoint), a ``checkpoints/best``
or ``checkpoints/epochs`` directory (its latest), one checkpoint directory ``.../<epoch>``, and
the seed document's ``RUN/best`` and ``RUN/best_checkpoint_N``; ``read_meta`` reads a
checkpoint's JSON metadata (input shape, class count, epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

# The names inside a run directory. Only runs/ spells them; everything else asks these.
CONFIG_FILE = "config.yaml"        # the config exactly as trained
METRICS_FILE = "metrics.csv"       # one row per epoch
CHECKPOINTS_DIR = "checkpoints"    # best/<epoch>/ and epochs/<epoch>/ (runs/checkpoint.CheckpointStore)


def config_file(run_dir: str | Path) -> Path:
    """RUN/config.yaml."""
    return Path(run_dir) / CONFIG_FILE


def metrics_file(run_dir: str | Path) -> Path:
    """RUN/metrics.csv."""
    return Path(run_dir) / METRICS_FILE


def checkpoints_dir(run_dir: str | Path) -> Path:
    """RUN/checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the model."""


def _latest_step_dir(manager_dir: Path) -> Path | None:
    steps = sorted((int(p.name), p) for p in manager_dir.iterdir() if p.is_dir() and p.name.isdigit()
                   and (p / "meta" / "metadata").is_file()) if manager_dir.is_dir() else []
    return steps[-1][1] if steps else None


def _seed_checkpoint_path(path: Path) -> Path:
    """The seed document's spellings in this layout: ``RUN/best`` is ``RUN/checkpoints/best`` (its
    latest), ``RUN/best_checkpoint_N`` is ``RUN/checkpoints/best/N`` (or ``checkpoints/epochs/N``).
    A path that is neither raises CheckpointError showing the path to use."""
    import re

    run = path.parent
    match = re.fullmatch(r"best_checkpoint_(\d+)", path.name)
    if path.name == "best" and (checkpoints_dir(run) / "best").is_dir():
        return checkpoints_dir(run) / "best"
    if match:
        for sub in ("best", "epochs"):
            candidate = checkpoints_dir(run) / sub / match.group(1)
            if (candidate / "meta" / "metadata").is_file():
                return candidate
        best = _latest_step_dir(checkpoints_dir(run) / "best")
        if best is not None:
            raise CheckpointError(f"checkpoint {str(path)!r} not found: this run's best checkpoint is epoch "
                                  f"{best.name}; pass {run} (its best) or {best}")
    if (path.name == "best" or match) and not run.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} not found: {run} does not exist; train first "
                              "(robust-vision-train writes RUN/checkpoints/best/<epoch>) and pass the run directory")
    raise CheckpointError(f"checkpoint {str(path)!r} not found; pass a run directory (training.checkpoint_dir) "
                          "or one of its checkpoints/best/<epoch> directories")


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint_dir) for a run directory (its best checkpoint), a
    ``checkpoints/best`` or ``checkpoints/epochs`` directory (its latest), or one
    checkpoint directory ``.../<epoch>``; the seed's ``RUN/best`` and ``RUN/best_checkpoint_N``
    are understood too (see ``_seed_checkpoint_path``)."""
    path = Path(path)
    if not path.exists():
        path = _seed_checkpoint_path(path)
    if (path / "meta" / "metadata").is_file():
        return path.parent.parent.parent, path
    for manager in (checkpoints_dir(path) / "best", checkpoints_dir(path) / "epochs", path):
        step_dir = _latest_step_dir(manager)
        if step_dir is not None:
            return step_dir.parent.parent.parent, step_dir
    raise CheckpointError(f"{path}: no checkpoint found (expected checkpoints/best/<epoch>/ written by "
                          "robust-vision-train)")


def read_meta(checkpoint_dir: Path) -> dict:
    """The JSON metadata of one checkpoint directory (``.../<epoch>``)."""
    path = Path(checkpoint_dir) / "meta" / "metadata"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: not a robust-vision checkpoint (no meta/metadata); "
                              "pass a run directory or a checkpoints/best/<epoch> directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc.msg}); use another checkpoint") from None
