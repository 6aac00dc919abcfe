"""The run (or output) directory's lock and disk-full detection, for every writer of a run.

JAX-free: a second training on a held directory fails in a fraction of a second.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional


class RunLockedError(ValueError):
    """Another process holds the run (or output) directory (exit code 2: choose another directory or wait)."""


class RunLock:
    """An exclusive ``fcntl`` lock on ``<run_dir>/.lock`` held for the life of a training (or of
    an evaluation writing an ``--output`` directory: ``user="evaluation"``, ``other`` the fix).

    The kernel drops the lock when the process exits, however it exits, so a crashed run never
    leaves a stale lock. ``acquire`` fails at once (no waiting) when another process holds it.
    """

    def __init__(self, run_dir: str | Path, user: str = "training",
                 other: str = "set training.checkpoint_dir to another directory"):
        self.path = Path(run_dir) / ".lock"
        self._fd: Optional[int] = None
        self._user, self._other = user, other

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text().strip() or "another process"
                raise RunLockedError(f"{self.path.parent} is in use by another {self._user} ({holder}); wait for "
                                     f"it to finish or {self._other}") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ENOSPC / EDQUOT."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
