"""Checkpoints with Orbax.

Layout inside a run directory::

    checkpoints/epochs/<epoch>/   latest two epochs, plus every ``save_every``-th epoch
    checkpoints/best/<epoch>/     the single best epoch by ``best_metric``

Each checkpoint holds the train state (``state``) and a JSON ``meta`` item (epoch, metrics,
best value so far, model description). Orbax writes into a temporary directory and renames
it only when the write is complete, so a process killed mid-write leaves the previous
checkpoint intact; leftover temporary directories are removed on the next start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the model."""


def _manager(directory: Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True, **options),
    )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointStore:
    """The epoch and best-checkpoint managers of one run directory."""

    def __init__(self, run_dir: str | Path, *, save_every: int = 5, best_mode: str = "max"):
        self.root = Path(run_dir) / "checkpoints"
        self.best_mode = best_mode
        self.epochs = _manager(self.root / "epochs", max_to_keep=2, keep_period=save_every)
        self.best = _manager(self.root / "best", max_to_keep=1)

    def save(self, epoch: int, state: Any, meta: dict, *, is_best: bool) -> None:
        """Save ``state`` for ``epoch``; also as the best checkpoint when ``is_best``.

        The best copy is written first: if the process dies between the two writes, a
        resumed run replays this epoch and finds the best copy already there.
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if is_best and epoch not in self.best.all_steps():
            self.best.save(epoch, args=args, force=True)
            self.best.wait_until_finished()
        if epoch not in self.epochs.all_steps():
            self.epochs.save(epoch, args=args, force=True)
            self.epochs.wait_until_finished()

    def latest_epoch(self) -> int | None:
        return self.epochs.latest_step()

    def restore(self, abstract_state: Any, *, epoch: int | None = None, best: bool = False) -> tuple[Any, dict]:
        """Restore (state, meta) into the structure of ``abstract_state``."""
        manager = self.best if best else self.epochs
        step = epoch if epoch is not None else manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        return restore_checkpoint(Path(manager.directory) / str(step), abstract_state)

    def close(self) -> None:
        self.epochs.close()
        self.best.close()


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


def restore_checkpoint(checkpoint_dir: Path, abstract_state: Any) -> tuple[Any, dict]:
    """Restore one checkpoint directory into ``abstract_state``'s structure (a pytree of arrays
    or ShapeDtypeStructs). A structure or shape mismatch raises CheckpointError."""
    checkpoint_dir = Path(checkpoint_dir).absolute()
    meta = read_meta(checkpoint_dir)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(checkpoint_dir, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(abstract_state))))
    except Exception as exc:  # Orbax raises a variety of types for mismatches and corruption
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{checkpoint_dir}: cannot restore into this model ({first[:300]}); "
                              "check that the config's model and data.image_size match the run that wrote it") from None
    return restored["state"], meta


def is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best
