"""Checkpoints with Orbax.

Layout inside a run directory::

    checkpoints/epochs/<epoch>/   latest two epochs, plus every ``save_every``-th epoch
    checkpoints/best/<epoch>/     the single best epoch by ``best_metric``

Each checkpoint holds the train state (``state``) and a JSON ``meta`` item (epoch, metrics,
best value so far, model description). Orbax writes into a temporary directory and renames
it only when the write is complete, so a process killed mid-write leaves the previous
checkpoint intact; leftover temporary directories are removed on the next start.

Orbax keeps no checksums, so flipped bytes would load silently. After every save a manifest
``<epoch>/checksums.json`` (SHA-256 and size of every file of the checkpoint) is written
atomically; every restore verifies it first, and ``--resume`` falls back to the newest epoch
checkpoint that verifies (:meth:`CheckpointStore.restore_latest_valid`) and removes the newer
damaged ones it skipped, so the resumed run writes them again. A checkpoint without a manifest
(written before manifests existed, or with the manifest deleted) is refused unless the command
was given ``--allow-unverified`` (:func:`allow_unverified`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from robust_vision.io import is_temporary, write_json
from robust_vision.runs.paths import CheckpointError, checkpoints_dir, read_meta  # noqa: F401 (re-exported)


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions): a fault, not bad input (exit code 1)."""


MANIFEST = "checksums.json"
_POLICY = {"allow_unverified": False}


def allow_unverified(allowed: bool = True) -> None:
    """Let restores load checkpoints that have no manifest (``--allow-unverified``), for this process."""
    _POLICY["allow_unverified"] = bool(allowed)


def _file_digests(checkpoint_dir: Path) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file of one checkpoint but the manifest."""
    out = {}
    for path in sorted(p for p in checkpoint_dir.rglob("*")
                       if p.is_file() and p.name != MANIFEST and not is_temporary(p)):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[path.relative_to(checkpoint_dir).as_posix()] = {"sha256": h.hexdigest(), "bytes": path.stat().st_size}
    return out


def write_manifest(checkpoint_dir: Path) -> Path:
    """Write ``checksums.json`` for a finished checkpoint (temp file + rename: never half a manifest)."""
    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir / MANIFEST
    return write_json(target, {"algorithm": "sha256", "files": _file_digests(checkpoint_dir)}, indent=1)


def _read_manifest(path: Path) -> dict[str, dict] | None:
    """{file: {"sha256", "bytes"}} of a manifest, or None when it is not one (damaged, edited)."""
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(files, dict) and files and all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
        for v in files.values())
    return files if ok else None


def verify_checkpoint(checkpoint_dir: Path) -> str | None:
    """None when ``checkpoint_dir`` matches its manifest, else a short reason: no manifest (None
    instead when :func:`allow_unverified`), a damaged manifest, or the first missing, resized or
    changed file."""
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / MANIFEST
    if not path.is_file():
        if _POLICY["allow_unverified"]:
            return None
        return (f"it has no manifest {MANIFEST}, so its files cannot be verified (written by an older version, "
                "or the manifest was deleted); pass --allow-unverified to load it anyway")
    expected = _read_manifest(path)
    if expected is None:
        return f"its manifest {MANIFEST} is damaged (not the JSON robust-vision-train writes)"
    actual = _file_digests(checkpoint_dir)
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            return f"{name} is missing"
        if got["bytes"] != want["bytes"]:
            return f"{name} has {got['bytes']} bytes, {want['bytes']} were written"
        if got["sha256"] != want["sha256"]:
            return f"{name} does not match its checksum (the file was changed or damaged)"
    return None


def _manager(directory: Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True, **options),
    )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class _DiskFullNoise(logging.Filter):
    """Drops the records that Orbax's writer threads (logger ``absl``) and its unawaited asyncio
    tasks (``asyncio``) log, each with a traceback, when a save runs out of disk space: the
    failed save is reported in one line (:meth:`CheckpointStore.save`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from robust_vision.runs.lock import is_disk_full

        exc = record.exc_info[1] if record.exc_info else None
        return not ("No space left on device" in record.getMessage() or (exc is not None and is_disk_full(exc)))


for _name in ("absl", "asyncio"):
    logging.getLogger(_name).addFilter(_DiskFullNoise())


def _closed_loop_quiet(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """``hook`` (a ``sys.unraisablehook``) without the "Event loop is closed" errors that
    TensorStore's write callbacks raise, one traceback each, once a failed save (disk full) has
    closed Orbax's event loop; everything else goes to ``hook``."""

    def quiet(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            hook(unraisable)
    return quiet


class CheckpointStore:
    """The epoch and best-checkpoint managers of one run directory."""

    def __init__(self, run_dir: str | Path, *, save_every: int = 5, best_mode: str = "max"):
        self.root = checkpoints_dir(run_dir)
        self.best_mode = best_mode
        self.epochs = _manager(self.root / "epochs", max_to_keep=2, keep_period=save_every)
        self.best = _manager(self.root / "best", max_to_keep=1)

    def save(self, epoch: int, state: Any, meta: dict, *, is_best: bool) -> None:
        """Save ``state`` for ``epoch``; also as the best checkpoint when ``is_best``.

        The best copy is written first: if the process dies between the two writes, a
        resumed run replays this epoch and finds the best copy already there.
        """
        import sys

        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        hook = sys.unraisablehook
        sys.unraisablehook = _closed_loop_quiet(hook)
        try:
            if is_best and epoch not in self.best.all_steps():
                self._save(self.best, epoch, args)
            if epoch not in self.epochs.all_steps():
                self._save(self.epochs, epoch, args)
            sys.unraisablehook = hook
        except Exception as exc:  # Orbax wraps OS errors in several types; report the cause in one line
            from robust_vision.runs.lock import is_disk_full

            # Keep the quiet hook: Orbax's callbacks may still fail after this; the run ends here.

            kept = self.epochs.latest_step()
            kept_s = f"the last complete checkpoint (epoch {kept}) is kept" if kept is not None else \
                "no earlier checkpoint exists"
            if is_disk_full(exc):
                import warnings

                # Orbax's writes that the full disk stopped are never awaited: no warning per write at exit.
                warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
                raise CheckpointWriteError(f"disk full while saving the epoch-{epoch} checkpoint in {self.root}; "
                                           f"{kept_s}; free space and rerun with --resume") from None
            if isinstance(exc, OSError):
                raise CheckpointWriteError(f"cannot write the epoch-{epoch} checkpoint in {self.root} "
                                           f"({exc.strerror or exc}); {kept_s}") from None
            raise

    @staticmethod
    def _save(manager: ocp.CheckpointManager, epoch: int, args: Any) -> None:
        """One collective Orbax save, then the manifest: written by process 0 only (every process
        writing the same file raced on its temp name), and a barrier so that no process goes on
        (to the next save, or to a resume that verifies it) before the manifest exists."""
        from robust_vision.distributed import barrier, is_main_process

        manager.save(epoch, args=args, force=True)
        manager.wait_until_finished()
        if is_main_process():
            write_manifest(Path(manager.directory) / str(epoch))
        barrier(f"checkpoint manifest {Path(manager.directory).name}/{epoch}")

    def latest_epoch(self) -> int | None:
        return self.epochs.latest_step()

    def restore_latest_valid(self, abstract_state: Any, log: Callable[[str], None] = print) -> tuple[Any, dict]:
        """Restore the newest epoch checkpoint whose files match their manifest; a newer one that
        does not verify (or cannot be read) is skipped with a message naming it and why."""
        steps = sorted(self.epochs.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.epochs.directory}")
        reasons, skipped = [], []
        for step in steps:
            directory = Path(self.epochs.directory) / str(step)
            try:
                out = restore_checkpoint(directory, abstract_state)
            except CheckpointError as exc:
                if "cannot restore into this model" in str(exc):
                    raise  # a config mismatch is not damage: older checkpoints would not fit either
                reasons.append(f"epoch {step}: {exc}")
                skipped.append(step)
                log(f"warning: checkpoint of epoch {step} is damaged ({exc}); trying an older one")
                continue
            if reasons:
                for bad in skipped:  # else saving would skip these epochs (they exist) and keep the damage
                    self.epochs.delete(bad)
                log(f"Resuming from epoch {step}, the newest checkpoint that verifies; removed the damaged "
                    f"checkpoint{'s' if len(skipped) > 1 else ''} of epoch{'s' if len(skipped) > 1 else ''} "
                    f"{', '.join(map(str, sorted(skipped)))}, written again as the run replays them")
            return out
        raise CheckpointError(f"no checkpoint in {self.epochs.directory} verifies ({'; '.join(reasons)}); "
                              "start a new run in another training.checkpoint_dir")

    def close(self) -> None:
        self.epochs.close()
        self.best.close()


def restore_checkpoint(checkpoint_dir: Path, abstract_state: Any) -> tuple[Any, dict]:
    """Restore one checkpoint directory into ``abstract_state``'s structure (a pytree of arrays
    or ShapeDtypeStructs). A structure or shape mismatch raises CheckpointError."""
    checkpoint_dir = Path(checkpoint_dir).absolute()
    damage = verify_checkpoint(checkpoint_dir)
    if damage is not None:
        raise CheckpointError(f"{checkpoint_dir}: corrupt checkpoint ({damage}); use another checkpoint "
                              "(checkpoints/epochs/<epoch> of the same run)")
    meta = read_meta(checkpoint_dir)
    if not (checkpoint_dir / "state").is_dir() or not any((checkpoint_dir / "state").iterdir()):
        raise CheckpointError(f"{checkpoint_dir}: incomplete checkpoint (the state/ directory is missing or "
                              "empty); use another checkpoint (checkpoints/epochs/<epoch> of the same run)")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(checkpoint_dir, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(abstract_state))))
    except Exception as exc:  # Orbax raises a variety of types for mismatches and corruption
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, (FileNotFoundError, OSError, ValueError)) and _looks_damaged(str(exc)):
            raise CheckpointError(f"{checkpoint_dir}: unreadable checkpoint ({first[:200]}); the files are "
                                  "damaged or incomplete: use another checkpoint") from None
        raise CheckpointError(f"{checkpoint_dir}: cannot restore into this model ({first[:300]}); "
                              "check that the config's model and data.image_size match the run that wrote it") from None
    return restored["state"], meta


def _looks_damaged(message: str) -> bool:
    """Orbax / TensorStore wording of a missing or undecodable file (as opposed to a shape mismatch)."""
    m = message.lower()
    if "shape" in m or "structure" in m or "tree" in m:
        return False
    return any(w in m for w in ("not found", "no such file", "corrupt", "decod", "checksum", "unexpected end",
                                "failed to read", "truncated", "invalid"))


def is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best
