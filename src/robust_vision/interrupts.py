"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt at the next bytecode after SIGINT. When that bytecode runs inside
a callback that swallows exceptions (jaxlib's garbage-collection callback during XLA compilation
prints "Exception ignored in: _xla_gc_callback" and carries on), the interrupt is lost and the user
has to press Ctrl-C three or four times. :func:`sigint_guard` installs a handler that also records
the interrupt; long loops call :func:`check_interrupt` at every step, which raises it again if it
was swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_interrupted = threading.Event()


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _interrupted.set()
    raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since :func:`sigint_guard` was entered."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_guard() -> Iterator[None]:
    """Record Ctrl-C for :func:`check_interrupt` while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()
