"""Every file the project writes goes through one atomic writer; user tables are read here too.

Writes go to a temporary file beside the target, then ``os.replace``: a crash, a full disk
or Ctrl-C never leaves half a table, checkpoint manifest or cache entry, and a reader never
sees one. JAX-free (the checks before JAX use it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np


def check_output_dir(path: str | Path, key: str = "--output") -> Path:
    """Fail before any work when an output directory cannot be used: it is an existing file, or
    it could not be created / written. Writes nothing: a run that fails later leaves no empty
    directory behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{key}: {path} is a file, not a directory; pass a directory for the outputs")
    existing = path.absolute()
    while not existing.exists():  # the nearest existing ancestor is where the directory would be made
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}: cannot create {path} ({existing} is a file); pass a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}: {existing if existing != path.absolute() else path} is not writable; "
                         "pass a writable directory")
    return path


_TEMPORARY_SUFFIX = ".tmp"


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is an ``atomic_write`` temporary (``.<name>.<pid>.<thread>.tmp``), e.g. one
    left behind by a killed process: never part of what was written."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX)


def atomic_write(path: str | Path, data: bytes | str, *, private: bool = False) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file and a rename.

    ``private=True`` creates the file 0600 (cache entries: programs that run as the user);
    otherwise the process umask applies, as for ``open(path, "w")``. The temporary name holds
    the process and thread ids, so concurrent writers of one path never share a temp file.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{_TEMPORARY_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _cell(value: Any) -> str:
    """A CSV cell: None is empty, floats keep every digit (repr) so tables round-trip."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def write_csv(path: str | Path, rows: Iterable[dict], columns: list[str],
              cell: Callable[[str, Any], Any] | None = None) -> Path:
    """Write ``rows`` (dicts; missing keys are empty cells) under the header ``columns``.

    ``cell(column, value)`` may reformat a value first (e.g. an epoch as an int)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(cell(c, row.get(c)) if cell else row.get(c)) for c in columns])
    return atomic_write(path, buffer.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, payload: Any, *, indent: int = 2,
               default: Callable[[Any], Any] = _json_default) -> Path:
    """Write ``payload`` as JSON (NaN and inf allowed, as Python's json writes them)."""
    return atomic_write(path, json.dumps(payload, indent=indent, default=default, allow_nan=True))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed .npz."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(path, buffer.getvalue())


def decode_text(data: bytes, binary_message: str, encoding_message: str,
                error: type[Exception] = ValueError) -> str:
    """``data`` (the bytes of a file a user passed: a config, a CSV table) as UTF-8 text.

    A NUL byte (a binary file) raises ``error(binary_message)``, undecodable bytes
    ``error(encoding_message)``: each message names the file and the fix."""
    if b"\x00" in data:
        raise error(binary_message)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(encoding_message) from None


def read_csv_rows(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows and header of a CSV table a user passed (metrics.csv, robustness_results.csv, ...).

    A binary or non-UTF-8 file, or one the csv module cannot parse, raises ValueError naming the
    file (exit code 2), instead of a UnicodeDecodeError / csv.Error traceback.
    """
    path = Path(path)
    text = decode_text(path.read_bytes(), f"{path}: a binary file, not a CSV table; pass the table written by "
                       "robust-vision (or regenerate it)",
                       f"{path}: not UTF-8 text, so not a CSV table written by robust-vision; regenerate it")
    try:
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        return rows, list(reader.fieldnames or [])
    except csv.Error as exc:
        raise ValueError(f"{path}: not a valid CSV table ({exc}); regenerate it") from None
