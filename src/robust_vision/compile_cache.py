"""JAX's persistent compilation cache, on by default, and a meter of compile seconds.

A second identical command loads its XLA executables from disk instead of compiling them
again. Every entry point calls :func:`enable_compile_cache` before its first compilation.

Where the cache lives, first match wins:

1. ``ROBUST_VISION_CACHE_DIR`` (environment): a directory, or ``off`` / ``0`` / ``none`` /
   ``false`` to disable the cache;
2. the ``path`` argument (a command-line flag or the config key ``training.compile_cache_dir``;
   ``"off"`` disables);
3. ``$XDG_CACHE_HOME/robust-vision/jax`` (default ``~/.cache/robust-vision/jax``).

A new cache directory is created private (0700). A directory is used only if it is owned by the
current user and not writable by group or others (``untrusted_reason``); otherwise the cache is
off for the run, with one warning line saying why: its entries are programs that will run as you.

The cache is JAX's own (``jax_compilation_cache_dir``); we only choose the directory and
cache every program (no minimum compile time or entry size), because on a CPU laptop many
small programs together make up the wait. Nothing here is written by hand beyond that.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENV_VAR = "ROBUST_VISION_CACHE_DIR"
OFF_VALUES = frozenset({"off", "0", "none", "false", "no", ""})

# JAX's compile-phase events (jax._src.dispatch): tracing to a jaxpr, lowering to MLIR, and
# the backend compile (which, with the persistent cache, is the cache read on a hit).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/robust-vision/jax``, default ``~/.cache/robust-vision/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robust-vision" / "jax"


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The cache directory to use, or None when the cache is off (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in OFF_VALUES else Path(env).expanduser()
    if path is not None:
        text = str(path).strip()
        return None if text.lower() in OFF_VALUES else Path(text).expanduser()
    return default_cache_dir()


def untrusted_reason(directory: Path) -> str | None:
    """Why ``directory`` must not hold cached programs, or None when it may.

    Cache entries are programs this process will run (XLA entries are native code), so, as ssh
    does with its keys, a directory is trusted only if it is a real directory owned by the
    current user, not writable by group or others, and writable by us (a read-only cache makes
    JAX print warnings on every write)."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by {'others' if info.st_mode & stat.S_IWOTH else 'its group'} (mode {stat.S_IMODE(info.st_mode):o})"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable by you"
    return None


_warned: set[str] = set()


def _warn_once(cache_dir: Path, reason: str) -> None:
    """One line on stderr per directory and process: the cache is off, and why."""
    if str(cache_dir) not in _warned:
        _warned.add(str(cache_dir))
        print(f"warning: compilation cache {cache_dir} {reason}; caching is off for this run "
              f"(fix: chmod 700 it as its owner, or set {ENV_VAR} to a private directory)", file=sys.stderr)


def _usable_cache_dir(path: str | os.PathLike | None) -> Path | None:
    """``resolve_cache_dir(path)``, created private (0700); None when the cache is off, the
    directory cannot be created, or it is not trusted (``untrusted_reason``: one warning line).
    The cache is an optimisation, never a reason to fail a run."""
    cache_dir = resolve_cache_dir(path)
    if cache_dir is None:
        return None
    if not cache_dir.exists():
        try:
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
            cache_dir.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            _warn_once(cache_dir, f"cannot be created ({exc.strerror})")
            return None
    reason = untrusted_reason(cache_dir)
    if reason is not None:
        _warn_once(cache_dir, reason)
        return None
    return cache_dir


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``resolve_cache_dir(path)``; return it
    (None = disabled). Safe to call more than once; call before the first compilation.
    A directory that cannot be created disables the cache (with no error: it is an
    optimisation, never a reason to fail a run)."""
    import jax

    cache_dir = _usable_cache_dir(path)
    current = jax.config.jax_compilation_cache_dir
    target = None if cache_dir is None else str(cache_dir)
    if current == target and jax.config.jax_enable_compilation_cache == (target is not None):
        return cache_dir
    jax.config.update("jax_enable_compilation_cache", target is not None)
    jax.config.update("jax_compilation_cache_dir", target)
    if target is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # a cache initialised earlier in this process keeps its old directory otherwise
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        pass
    return cache_dir


def enable_compile_cache_early(path: str | os.PathLike | None = None) -> Path | None:
    """The same choice as :func:`enable_compile_cache`, made through JAX's environment variables
    when JAX is not imported yet, so a command can turn the cache on first thing without paying
    JAX's import (a bad path must still fail in a fraction of a second). JAX reads them when it is
    imported; a later ``enable_compile_cache`` call (from a config key) still re-points it."""
    import sys

    if "jax" in sys.modules:
        return enable_compile_cache(path)
    cache_dir = _usable_cache_dir(path)
    if cache_dir is None:
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        return None
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "true"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return cache_dir


# --------------------------------------------------------------------------- compile-time meter

_lock = threading.Lock()
_totals = {"compile": 0.0}
_registered = False


def _listener(event: str, duration: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        with _lock:
            _totals["compile"] += duration


def compile_seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling (or loading cached)
    XLA programs since the first call of this function (monotone)."""
    global _registered
    if not _registered:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_listener)
        _registered = True
    with _lock:
        return _totals["compile"]


@contextmanager
def timed(timings: dict, name: str) -> Iterator[None]:
    """Record ``timings[name] = {"total": s, "compile": s, "compute": s}`` of the block:
    compile = JAX compile-phase seconds inside it (``COMPILE_EVENTS``), compute = the rest
    (device work, host work, transfers). Nested blocks each get their own entry."""
    c0 = compile_seconds()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        total = time.perf_counter() - t0
        compile_s = min(compile_seconds() - c0, total)
        timings[name] = {"total": round(total, 3), "compile": round(compile_s, 3),
                         "compute": round(total - compile_s, 3)}
