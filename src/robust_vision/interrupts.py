"""Ctrl-C that is never lost, and never raised inside a library's native callback.

Python raises KeyboardInterrupt at the next bytecode after SIGINT, wherever that is. Inside a
callback that swallows exceptions (jaxlib's garbage-collection callback prints "Exception ignored
in: _xla_gc_callback" and carries on) the interrupt is lost; inside a native (C++) callback that
must not throw it aborts the process (``terminate called after throwing ... python_error``, exit
134) or, in interpreter shutdown, crashes it (SIGSEGV); inside an extension's initialisation it
becomes an ImportError.

So :func:`sigint_guard` installs a handler that records the interrupt and raises it at once only
when the interrupted Python stack is the project's own code or the standard library, never when
any frame belongs to a third-party package (JAX, NumPy, Orbax, Grain, ...: any of them may have
been called from native code) or an import. Otherwise the interrupt waits for the next
:func:`check_interrupt`, which every long loop calls at each step (training epochs and steps,
evaluation batches and parts) and the command runner calls when the command returns. A second
Ctrl-C while one is pending leaves at once: one line, exit 130, no interpreter shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

_interrupted = threading.Event()
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_message = {"kept": "nothing more was written"}


def _in_foreign_code(frame) -> bool:
    """Whether any frame of the stack runs third-party package code or an import."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or (
                ("site-packages" in name or "dist-packages" in name) and not name.startswith(_PACKAGE_DIR)):
            return True
        frame = frame.f_back
    return False


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if _interrupted.is_set():  # the second Ctrl-C: the user does not want to wait for a safe point
        print(f"interrupted; {_message['kept']}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)
    _interrupted.set()
    if not _in_foreign_code(frame):
        raise KeyboardInterrupt


def was_interrupted() -> bool:
    """Whether Ctrl-C was pressed since :func:`sigint_guard` was entered (an error raised after it,
    such as the ImportError an extension module makes of an interrupted initialisation, is its
    consequence, not a fault of its own)."""
    return _interrupted.is_set()


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since :func:`sigint_guard` was entered."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_guard(kept: str = "nothing more was written") -> Iterator[None]:
    """Record Ctrl-C for :func:`check_interrupt` while the block runs (main thread only; elsewhere a
    no-op); ``kept``: what a second Ctrl-C, which leaves at once, says is kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    _message["kept"] = kept
    previous = signal.signal(signal.SIGINT, _handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_interrupt_hook(previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _interrupted.clear()


def _quiet_interrupt_hook(previous):
    """An unraisable-exception hook that drops the KeyboardInterrupt a swallowing callback caught
    (Python would print "Exception ignored in ..." and its traceback): it is recorded, and
    :func:`check_interrupt` raises it again at the next step. Anything else goes to ``previous``."""
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _interrupted.set()
            return
        previous(unraisable)
    return hook
