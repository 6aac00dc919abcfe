"""File formats below the record sources: the error type, the restricted unpickler, CIFAR
python batches, IDX files, size-checked zip members and image decoding.

Every function here turns bytes on disk into NumPy arrays and nothing more: no splits, no
configs, no JAX. ``data/sources.py`` builds its layouts from them. Every input problem raises
:class:`DatasetError` with a one-line message saying what was expected and where.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from robust_vision.data.batch import to_unit_float


class DatasetError(ValueError):
    """A dataset problem, with a one-line message: what was expected, where, and the fix."""


SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# --------------------------------------------------------------------------- restricted unpickling

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")

def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in pickle protocols <= 2 as _codecs.encode(str, 'latin1'); this
    # stand-in does exactly that and nothing else (no other codec is looked up).
    if not isinstance(obj, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode called with ({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin1", errors)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
    found = {
        "_reconstruct": core.multiarray._reconstruct,
        "scalar": core.multiarray.scalar,
        "_frombuffer": core.numeric._frombuffer,
    }
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    # Files written by numpy 1.x name numpy.core.*, by numpy 2.x numpy._core.*: accept both.
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = found["_reconstruct"]
        allowed[(f"{mod}.multiarray", "scalar")] = found["scalar"]
        allowed[(f"{mod}.numeric", "_frombuffer")] = found["_frombuffer"]
    for cls in (set, frozenset, bytearray, complex):
        allowed[("builtins", cls.__name__)] = cls
        allowed[("__builtin__", cls.__name__)] = cls  # Python 2 pickles
    return allowed


_ALLOWED_PICKLE_GLOBALS = _numpy_pickle_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, bytes, str, numbers and numpy arrays.

    A pickle may name any importable callable and have it called while loading (that is how
    ``__reduce__`` works), so an untrusted file can run code. Data files never need more than
    numpy's array reconstruction, so every other global is refused with a DatasetError.
    """

    def __init__(self, file: Any, *, where: str = "", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        # Called for every global the pickle names (GLOBAL, STACK_GLOBAL, INST, OBJ opcodes).
        try:
            return _ALLOWED_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refusing to unpickle '{self._where}': it refers to {module}.{name}, which a data file "
                "never needs (only containers, strings, numbers and numpy arrays are allowed); the file "
                "may be malicious, do not load it with plain pickle") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError(f"refusing to unpickle '{self._where}': it uses a persistent id, which a data "
                           "file never needs; the file may be malicious")


def restricted_pickle_load(path: Path) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler` (``encoding='bytes'``, as CIFAR needs)."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, where=str(path), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # truncated / not a pickle: any of several exception types
        raise DatasetError(f"cannot read '{path}' as a pickle ({type(exc).__name__}: {exc}); "
                           "the file is truncated or not a python pickle, download it again") from None


def str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """A CIFAR pickle's dict with str keys (the files store bytes keys)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"cifar: '{path}' holds a {type(obj).__name__}; expected a dict with "
                           "'data' and labels (a CIFAR python batch)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def read_cifar_batch(path: Path, label_key: str = "labels", layout: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: uint8 images (N, 32, 32, 3) and the labels under ``label_key`` (N,)
    (CIFAR-10 ``labels``; CIFAR-100 ``fine_labels`` or ``coarse_labels``)."""
    d = str_keys(restricted_pickle_load(path), path)
    if "data" not in d or label_key not in d:
        raise DatasetError(f"{layout}: '{path}' has keys {sorted(d)}; expected 'data' and '{label_key}' "
                           "(a CIFAR python batch)")
    data, labels = np.asarray(d["data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{layout}: '{path}' has data of dtype {data.dtype} and shape {data.shape}; "
                           "expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{layout}: '{path}' has {labels.size} labels for {data.shape[0]} images; "
                           "expected one label per image")
    # Rows are CHW-ordered (1024 red, 1024 green, 1024 blue values): reshape, then move C last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar_label_names(path: Path, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The class names under ``key`` of the CIFAR meta pickle ``path``; ``default`` without one."""
    if not path.is_file():
        return default
    meta = str_keys(restricted_pickle_load(path), path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]) if key in meta else default


# --------------------------------------------------------------------------- IDX files (MNIST)

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (raw or .gz) of unsigned bytes whose magic number must be ``magic``.

    Returns a uint8 array whose shape is given by the header. Wrong magic numbers, truncated
    or over-long files raise DatasetError.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"mnist: cannot read '{path}' ({exc}); the file is truncated or corrupt, "
                           "download it again") from None
    kind = "images" if magic == IDX_IMAGES else "labels"
    if len(raw) < 4:
        raise DatasetError(f"mnist: '{path}' is truncated ({len(raw)} bytes); expected an IDX {kind} file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(f"mnist: '{path}' has magic number {found}; expected {magic} (an IDX {kind} "
                           "file of unsigned bytes); is it the right file, and decompressed if not named .gz?")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"mnist: '{path}' is truncated inside its header; download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(raw) - header != size:
        what = "truncated" if len(raw) - header < size else "longer than its header says"
        raise DatasetError(f"mnist: '{path}' is {what}: header {dims} needs {size} bytes of data, "
                           f"found {len(raw) - header}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def find_idx(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists, else None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


# --------------------------------------------------------------------------- zip members and image files

# One image file inside a zip: anything larger, or expanding more than MAX_ZIP_RATIO times its
# compressed size beyond 1 MiB, is a decompression bomb rather than an image (a 37 MB member that
# expands to 8 GiB was read whole into memory). PNG / JPEG barely compress; a flat BMP compresses
# ~100x, hence the floor.
MAX_ZIP_MEMBER_BYTES = 256 << 20
MAX_ZIP_RATIO = 200
_ZIP_CHUNK = 1 << 20


def read_zip_member(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
    """The bytes of ``name`` in ``archive``, checked against its declared size and the ratio bound
    before reading and read in 1 MiB chunks (never more than the declared size); a DatasetError
    naming ``where``/``name`` otherwise."""
    info = archive.getinfo(name)
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > MAX_ZIP_MEMBER_BYTES or (size > _ZIP_CHUNK and size > MAX_ZIP_RATIO * packed):
        raise DatasetError(f"'{where}/{name}' declares {size} bytes from {packed} compressed (ratio {size / packed:.0f}, "
                           f"limits {MAX_ZIP_MEMBER_BYTES >> 20} MiB and {MAX_ZIP_RATIO}x): not an image file but a "
                           "decompression bomb or a damaged archive; remove it from the zip")
    chunks, total = [], 0
    with archive.open(info) as member:
        while True:
            chunk = member.read(_ZIP_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > size:  # zipfile stops at the declared size; guard a foreign reader anyway
                raise DatasetError(f"'{where}/{name}' holds more than its declared {size} bytes; the archive is damaged")
            chunks.append(chunk)
    return b"".join(chunks)


_GRAY_MODES = ("1", "L", "LA", "F")
_GRAY16_MODES = ("I", "I;16", "I;16B", "I;16L")


def decode_image(data: bytes, *, unit_float: bool = False) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, C): gray stays 1 channel, everything else RGB;
    16-bit gray is scaled (not clipped) to 0..255. With ``unit_float``: float32 in [0, 1]
    instead (uint8 / 255; 16-bit gray / 65535, keeping its levels)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in _GRAY16_MODES:
            arr = np.asarray(im, dtype=np.float64) / 65535.0
            return (arr.astype(np.float32) if unit_float else np.rint(arr * 255.0).astype(np.uint8))[..., None]
        image = np.asarray(im.convert("L"))[..., None] if im.mode in _GRAY_MODES else np.asarray(im.convert("RGB"))
    return to_unit_float(image) if unit_float else image
