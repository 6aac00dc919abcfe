"""Dataset registry: every source becomes fixed train / val / test splits of float32 NHWC images.

``load_dataset(cfg.data)`` returns a :class:`Dataset` whose three :class:`Split` s hold

* ``images``: float32 array (N, H, W, C) with values in [0, 1], C in {1, 3};
* ``labels``: int32 array (N,) with values in 0 .. num_classes - 1.

Registered sources (``DATASETS``; an unknown name lists the valid ones):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, values 0..16
    scaled to [0, 1]). Needs no files, works offline; the default.
``cifar10``
    A local directory in the python-pickle batch format (``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``, optional ``batches.meta``), or the directory that contains
    ``cifar-10-batches-py/``. The pickles are read with a restricted unpickler that only builds
    plain containers, strings, numbers and numpy arrays; anything else is refused.
``mnist``
    Local IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; each raw or ``.gz``) in ``data_dir``
    or its ``raw/`` / ``MNIST/raw/`` sub-folder (torchvision's layout).
``image_folder``
    One sub-folder per class (sorted folder names = class order) of PNG / JPEG / BMP files, as a
    directory or a ``.zip`` archive (possibly under one top-level folder). ``train/`` and
    ``test/`` (and optionally ``val/``) sub-folders, when present, are fixed splits.
``npz``
    A ``.npz`` file with ``x`` (N, H, W[, C]) uint8 0..255 or float in [0, 1] and ``y`` (N,), or
    fixed splits ``x_train, y_train, x_test, y_test[, x_val, y_val]``; optional ``class_names``
    (an array of strings). Read with ``allow_pickle=False``.

Splits. A source without a fixed split (digits, an image folder without train/test, an npz with
only ``x``/``y``, MNIST with only the t10k files) is a *pool*: ``test_fraction`` of it is held
out for test, then ``val_fraction`` of the rest for validation. A source with a fixed test split
gives ``val_fraction`` of its training split to validation (unless it has a fixed validation
split too). The split is stratified by class (scikit-learn's ``train_test_split``) and seeded by
``split_seed``: the same seed gives the same split; the splits are disjoint and together cover
the pool (after class filtering). ``max_train_examples`` then keeps a stratified subset of train.

Common processing (one code path for every source, done once at load time): class filtering and
relabelling (``classes``), uint8 / 255, a channel axis for grayscale, channel conversion
(``channels``: RGB -> gray with the ITU-R 601 luma weights 0.299, 0.587, 0.114, the ones Pillow
uses; gray -> RGB by repetition), antialiased bilinear resizing to ``image_size`` (``pipeline.resize_linear``: the weights of
``jax.image.resize(..., "linear", antialias=True)``, the same function the streaming pipeline
uses for float images), and validation that values are finite and in [0, 1]. Images are converted
in chunks written into one preallocated array, so the peak memory is the float32 result plus a
chunk.

Every problem with the input (missing path, missing or malformed file, bad values) raises
:class:`DatasetError` with a one-line message saying what was expected and where.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from robust_vision.data.batch import to_unit_float

if TYPE_CHECKING:  # imported for the annotation only; config imports nothing from here
    from robust_vision.config import DataConfig


class DatasetError(ValueError):
    """A dataset problem, with a one-line message: what was expected, where, and the fix."""


SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: ``images`` float32 (N, H, W, C) in [0, 1], ``labels`` int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise DatasetError(f"Split.images: got {self.images.dtype} array of shape {self.images.shape}; "
                               "expected float32 (N, H, W, C)")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != np.int32:
            raise DatasetError(f"Split.labels: got {self.labels.dtype} array of shape {self.labels.shape}; "
                               f"expected int32 ({self.images.shape[0]},)")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Fixed train / val / test splits of one source, plus its class names.

    ``notes`` says how the splits were made (e.g. that MNIST's test files were used as the pool).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    notes: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image of every split."""
        return tuple(int(d) for d in self.train.images.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        """The split called ``name``: 'train', 'val' or 'test'."""
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


# --------------------------------------------------------------------------- raw sources

# A reader returns the arrays of its source before the common processing: images as uint8
# (0..255) or float ([0, 1]) arrays of shape (N, H, W) or (N, H, W, C), labels as integers.
_Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class _Source:
    class_names: tuple[str, ...]
    pool: Optional[_Pair] = None      # no fixed split: split with split_seed
    train: Optional[_Pair] = None     # fixed splits (train and test required together)
    val: Optional[_Pair] = None
    test: Optional[_Pair] = None
    notes: str = ""
    where: str = ""                   # path, for messages

    def parts(self) -> dict[str, _Pair]:
        return {k: v for k, v in (("pool", self.pool), ("train", self.train), ("val", self.val),
                                  ("test", self.test)) if v is not None}


def _need_path(name: str, cfg: "DataConfig", what: str) -> Path:
    """The existing path ``cfg.data_dir`` (a directory or a file), or a DatasetError saying what to set."""
    if cfg.data_dir is None:
        raise DatasetError(f"{name}: data.data_dir is not set; set data.data_dir to {what}")
    path = Path(cfg.data_dir).expanduser()
    if not path.exists():
        raise DatasetError(f"{name}: data.data_dir '{path}' does not exist; expected {what}")
    return path


# ---- digits


def _read_digits(cfg: "DataConfig") -> _Source:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap), so /16 maps them onto [0, 1].
    images = (bunch.images / 16.0).astype(np.float32)
    return _Source(class_names=tuple(str(int(t)) for t in bunch.target_names),
                   pool=(images, bunch.target), where="sklearn.datasets.load_digits")


# ---- cifar10 (restricted unpickling)

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


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetError(f"cifar10: '{path}' holds a {type(obj).__name__}; expected a dict with "
                           "'data' and 'labels' (a CIFAR-10 python batch)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> _Pair:
    d = _str_keys(restricted_pickle_load(path), path)
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"cifar10: '{path}' has keys {sorted(d)}; expected 'data' and 'labels' "
                           "(a CIFAR-10 python batch)")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"cifar10: '{path}' has data of dtype {data.dtype} and shape {data.shape}; "
                           "expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"cifar10: '{path}' has {labels.size} labels for {data.shape[0]} images; "
                           "expected one label per image")
    # Rows are CHW-ordered (1024 red, 1024 green, 1024 blue values): reshape, then move C last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar10(cfg: "DataConfig") -> _Source:
    expected = "the directory holding the CIFAR-10 python batches (data_batch_1..5, test_batch)"
    root = _need_path("cifar10", cfg, expected)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    # Accept data_batch_1 .. data_batch_k (k <= 5): small subsets in the same format load too.
    batches = []
    for i in range(1, 6):
        if not (folder / f"data_batch_{i}").is_file():
            break
        batches.append(folder / f"data_batch_{i}")
    if not batches or not (folder / "test_batch").is_file():
        raise DatasetError(f"cifar10: expected data_batch_1..5 and test_batch in '{folder}' "
                           "(the python-pickle CIFAR-10 batches); not found")
    parts = [_read_cifar_batch(p) for p in batches]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    del parts
    test = _read_cifar_batch(folder / "test_batch")
    names = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = _str_keys(restricted_pickle_load(folder / "batches.meta"), folder / "batches.meta")
        if "label_names" in meta:
            names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta["label_names"])
    return _Source(class_names=names, train=train, test=test, where=str(folder),
                   notes=f"cifar10: {len(batches)} training batch(es); test_batch is the test split")


# ---- mnist (IDX files)

_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)


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
    kind = "images" if magic == _IDX_IMAGES else "labels"
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


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_mnist(cfg: "DataConfig") -> _Source:
    """MNIST from IDX files. With all four files, the 60k training files give train + val and the
    t10k files are the test split. With only the t10k files (or only the training files) those
    10k (60k) examples are the pool, split into train / val / test with ``split_seed``."""
    expected = ("the directory holding the MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz)")
    root = _need_path("mnist", cfg, expected)
    pairs: dict[str, _Pair] = {}
    folder = root
    for candidate in (root, root / "raw", root / "MNIST" / "raw"):
        found = {p: (_find_idx(candidate, f"{p}-images-idx3-ubyte"), _find_idx(candidate, f"{p}-labels-idx1-ubyte"))
                 for p in ("train", "t10k")}
        if any(a and b for a, b in found.values()):
            folder = candidate
            break
    else:
        raise DatasetError(f"mnist: expected the IDX files t10k-images-idx3-ubyte + t10k-labels-idx1-ubyte and/or "
                           f"train-images-idx3-ubyte + train-labels-idx1-ubyte (raw or .gz) in '{root}'; not found")
    for prefix, (img_path, lbl_path) in found.items():
        if img_path is None or lbl_path is None:
            continue
        images, labels = read_idx(img_path, _IDX_IMAGES), read_idx(lbl_path, _IDX_LABELS)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(f"mnist: '{img_path}' holds {images.shape} and '{lbl_path}' {labels.shape}; "
                               "expected (N, H, W) images and (N,) labels with the same N")
        pairs[prefix] = (images, labels)
    names = tuple(str(i) for i in range(10))
    if len(pairs) == 2:
        return _Source(class_names=names, train=pairs["train"], test=pairs["t10k"], where=str(folder),
                       notes="mnist: train files -> train + val; t10k files -> test")
    (prefix, pool), = pairs.items()
    return _Source(class_names=names, pool=pool, where=str(folder),
                   notes=f"mnist: only the {prefix} files are present; train/val/test are split from them "
                         "with data.split_seed")


# ---- image_folder

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = ("1", "L", "LA", "F")
_GRAY16_MODES = ("I", "I;16", "I;16B", "I;16L")


def _zip_member(archive: zipfile.ZipFile, name: str, where: str) -> io.BytesIO:
    """One member of an image zip, size-checked and read in chunks (``sources.read_zip_member``)."""
    from robust_vision.data.sources import read_zip_member  # sources imports this module

    return io.BytesIO(read_zip_member(archive, name, where))


def _list_image_files(path: Path) -> tuple[list[tuple[tuple[str, ...], Callable[[], Any]]], Optional[zipfile.ZipFile]]:
    """(relative path parts, opener) of every image file in a directory or a .zip archive."""
    entries: list[tuple[tuple[str, ...], Callable[[], Any]]] = []
    archive = None
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"image_folder: '{path}' is a file but not a .zip archive; expected a directory "
                               "with one sub-folder per class, or a .zip of one")
        archive = zipfile.ZipFile(path)
        folders = set()
        for info in archive.infolist():
            # An absolute member name ("/cat/1.png") is read as relative: "/" is not a class.
            parts = PurePosixPath(info.filename.lstrip("/")).parts
            if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                continue
            if info.is_dir():
                folders.add(parts)
            elif parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                entries.append((parts, functools.partial(_zip_member, archive, info.filename, str(path))))
    else:
        folders = set()
        for file in sorted(path.rglob("*")):
            parts = file.relative_to(path).parts
            if any(p.startswith(".") for p in parts):
                continue
            if file.is_dir():
                folders.add(parts)
            elif file.is_file() and file.suffix.lower() in _IMAGE_SUFFIXES:
                entries.append((parts, functools.partial(open, file, "rb")))
    # A leaf folder without images would silently drop a class (and shift every later label).
    holding = ({e[0][:k] for e in entries for k in range(1, len(e[0]))}
               | {f[:k] for f in folders for k in range(1, len(f))})
    empty = sorted(folders - holding)
    if empty:
        raise DatasetError(f"image_folder: class folder '{'/'.join(empty[0])}' in '{path}' holds no images; "
                           "add its images or remove the folder")
    # Strip folders that wrap everything (an archive usually holds one top-level folder), as
    # long as what remains still has a class folder above each file.
    while entries and len({e[0][0] for e in entries}) == 1 and min(len(e[0]) for e in entries) >= 3:
        entries = [(e[0][1:], e[1]) for e in entries]
    entries.sort(key=lambda e: e[0])
    return entries, archive


def _decode_images(files: list[tuple[tuple[str, ...], Callable[[], Any]]], size: Optional[list[int]],
                   where: str) -> np.ndarray:
    """Decode image files into one (N, H, W, C) array; mixed sizes are resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    decoded: list[np.ndarray] = []
    for parts, opener in files:
        try:
            with opener() as fh, Image.open(fh) as im:
                if im.mode in _GRAY16_MODES:
                    # 16-bit gray (PNG): Pillow's convert("L") would clip at 255, so scale the range.
                    decoded.append(np.asarray(im, dtype=np.float32) / np.float32(65535.0))
                else:
                    # Native channels: gray stays 1 channel, everything else (RGB, RGBA, palette) -> RGB.
                    decoded.append(np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB")))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"image_folder: cannot decode '{where}/{'/'.join(parts)}' ({exc}); "
                               "expected a PNG or JPEG image, remove or replace the file") from None
    if any(a.dtype != np.uint8 for a in decoded):  # some 16-bit images: everything as float in [0, 1]
        decoded = [a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a for a in decoded]
    color = any(a.ndim == 3 for a in decoded)
    decoded = [np.repeat(a[..., None], 3, -1) if color and a.ndim == 2 else
               (a[..., None] if a.ndim == 2 else a) for a in decoded]
    shapes = sorted({a.shape for a in decoded})
    if len(shapes) == 1:
        return np.stack(decoded)
    if size is None:
        first = {a.shape: i for i, a in reversed(list(enumerate(decoded)))}
        (s0, s1) = shapes[:2]
        raise DatasetError(
            f"image_folder: images in '{where}' have different sizes ({s0[0]}x{s0[1]} in "
            f"'{'/'.join(files[first[s0]][0])}', {s1[0]}x{s1[1]} in '{'/'.join(files[first[s1]][0])}'); "
            "set data.image_size to resize them all to one size")
    # Resize each group of equal-size images as one array with the common resize function.
    out = np.empty((len(decoded), size[0], size[1], decoded[0].shape[-1]), np.float32)
    for shape in shapes:
        idx = np.array([i for i, a in enumerate(decoded) if a.shape == shape])
        out[idx] = _convert_images(np.stack([decoded[i] for i in idx]), None, size, where)
    return out


def _read_image_folder(cfg: "DataConfig") -> _Source:
    expected = "a directory (or .zip) with one sub-folder of PNG/JPEG images per class"
    root = _need_path("image_folder", cfg, expected)
    files, archive = _list_image_files(root)
    try:
        tops = {e[0][0] for e in files}
        fixed = {"train", "test"} <= tops and tops <= {"train", "val", "validation", "test"}
        if fixed:
            groups = {("val" if k == "validation" else k): [(e[0][1:], e[1]) for e in files if e[0][0] == k]
                      for k in tops}
        else:
            groups = {"pool": files}
        for g in groups.values():
            if any(len(p) < 2 for p, _ in g):
                bad = next("/".join(p) for p, _ in g if len(p) < 2)
                raise DatasetError(f"image_folder: '{bad}' in '{root}' is not inside a class folder; expected "
                                   "one sub-folder per class")
        names = sorted({p[0] for g in groups.values() for p, _ in g})
        if not names:
            raise DatasetError(f"image_folder: expected {expected} in '{root}'; found no images")
        index = {n: i for i, n in enumerate(names)}
        # Decode every split together so that all of them get the same size and channels.
        order = [(k, e) for k, g in groups.items() for e in g]
        images = _decode_images([e for _, e in order], cfg.image_size, str(root))
        which = np.array([k for k, _ in order])
        labels = np.array([index[e[0][0]] for _, e in order], dtype=np.int32)
        arrays = {k: (images[which == k], labels[which == k]) for k in groups}
        del images
    finally:
        if archive is not None:
            archive.close()
    if fixed:
        return _Source(class_names=tuple(names), train=arrays["train"], val=arrays.get("val"),
                       test=arrays["test"], where=str(root), notes="image_folder: fixed train/test folders")
    return _Source(class_names=tuple(names), pool=arrays["pool"], where=str(root))


# ---- npz


def _read_npz(cfg: "DataConfig") -> _Source:
    expected = "a .npz file with arrays x (N, H, W[, C]) and y (N,), or x_train, y_train, x_test, y_test"
    path = _need_path("npz", cfg, expected)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DatasetError(f"npz: cannot read '{path}' without pickle ({exc}); store plain numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"npz: cannot read '{path}' ({exc}); expected {expected}") from None
    if not isinstance(arrays, dict) or not arrays:
        raise DatasetError(f"npz: '{path}' holds no arrays; expected {expected}")
    keys = sorted(arrays)

    def pair(xk: str, yk: str) -> Optional[_Pair]:
        if xk not in arrays and yk not in arrays:
            return None
        if xk not in arrays or yk not in arrays:
            missing = yk if xk in arrays else xk
            raise DatasetError(f"npz: '{path}' has arrays {keys} but no '{missing}'; expected "
                               f"'{xk}' (images) together with '{yk}' (labels, shape (N,))")
        return arrays[xk], arrays[yk]

    train, val, test = pair("x_train", "y_train"), pair("x_val", "y_val"), pair("x_test", "y_test")
    pool = pair("x", "y") if train is None and test is None else None
    if (train is None) != (test is None) or (pool is None and train is None):
        raise DatasetError(f"npz: '{path}' has arrays {keys}; expected {expected}")
    labels = np.concatenate([np.ravel(p[1]) for p in (pool, train, val, test) if p is not None])
    if "class_names" in arrays:
        names = tuple(str(n) for n in np.ravel(arrays["class_names"]))
    else:
        # Class count from the largest label; bad labels are reported by the common checks.
        top = int(labels.max()) + 1 if labels.size and np.issubdtype(labels.dtype, np.number) and np.isfinite(labels).all() else 1
        names = tuple(str(i) for i in range(max(top, 1)))
    return _Source(class_names=names, pool=pool, train=train, val=val, test=test, where=str(path))


# --------------------------------------------------------------------------- common processing

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's convert("L")
_CHUNK_VALUES = 1 << 22  # values converted per chunk (16 MiB of float32): bounds the peak memory


def _convert_images(x: np.ndarray, channels: Optional[int], size: Optional[list[int]], where: str) -> np.ndarray:
    """uint8 (0..255) or float ([0, 1]) images (N, H, W[, C]) -> float32 (N, H', W', C') in [0, 1].

    C' = ``channels`` or C; (H', W') = ``size`` or (H, W). Values must be finite and in [0, 1].
    """
    if x.ndim == 3:
        x = x[..., None]  # grayscale without a channel axis
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DatasetError(f"{where}: images have shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C = 1 "
                           "(gray) or 3 (RGB)")
    is_uint8 = x.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{where}: images have dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]")
    n, h, w, c = x.shape
    out_c = channels or c
    out_h, out_w = (size[0], size[1]) if size is not None else (h, w)
    out = np.empty((n, out_h, out_w, out_c), np.float32)
    step = max(1, _CHUNK_VALUES // max(1, h * w * max(c, out_c)))
    for start in range(0, n, step):
        chunk = x[start:start + step]
        if is_uint8:
            chunk = to_unit_float(chunk)  # the trainer's on-device conversion, to the bit; exact at 0 and 255
        else:
            chunk = chunk.astype(np.float32)
            if not np.isfinite(chunk).all():
                raise DatasetError(f"{where}: images contain NaN or infinite values; expected finite values in [0, 1]")
            lo, hi = float(chunk.min()), float(chunk.max())
            if lo < 0.0 or hi > 1.0:
                raise DatasetError(f"{where}: image values span [{lo:g}, {hi:g}]; expected [0, 1] for floats "
                                   "(store uint8 0..255 or divide by the maximum)")
        if out_c != c:
            chunk = (chunk @ _LUMA)[..., None] if out_c == 1 else np.repeat(chunk, 3, axis=-1)
        if (out_h, out_w) != (h, w):
            from robust_vision.data.pipeline import resize_linear  # the pipeline's resize of float images

            chunk = resize_linear(chunk, (out_h, out_w))
        out[start:start + len(chunk)] = chunk
    return out


def _check_labels(y: np.ndarray, n_images: int, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # a column of labels
    if y.ndim != 1 or y.shape[0] != n_images:
        raise DatasetError(f"{where}: labels have shape {y.shape}; expected ({n_images},), one per image")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise DatasetError(f"{where}: labels have dtype {y.dtype}; expected integer class indices")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{where}: labels span {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1} "
                           f"({num_classes} classes)")
    return y.astype(np.int32)


def _partition(labels: np.ndarray, n_held: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with ``n_held`` examples held out, stratified by label when possible."""
    from sklearn.model_selection import train_test_split

    n = labels.shape[0]
    if n_held <= 0:
        return np.arange(n), np.arange(0)
    if n_held >= n:
        raise DatasetError(f"cannot hold out {n_held} of {n} examples and keep any; lower data.val_fraction / "
                           "data.test_fraction or use more data")
    counts = np.bincount(labels)
    k = int(np.count_nonzero(counts))
    # Stratification needs >= 2 examples per class and room for every class on both sides;
    # tiny or very unbalanced pools fall back to a plain seeded shuffle split.
    stratify = labels if counts[counts > 0].min() >= 2 and n_held >= k and n - n_held >= k else None
    rest, held = train_test_split(np.arange(n), test_size=n_held, random_state=seed, shuffle=True,
                                  stratify=stratify)
    return np.asarray(rest), np.asarray(held)


def _take(pair: _Pair, idx: np.ndarray) -> _Pair:
    return pair[0][idx], pair[1][idx]


def _validate_cfg(cfg: "DataConfig") -> None:
    size = cfg.image_size
    if size is not None and (len(size) != 2 or any(int(s) != s or s < 1 for s in size)):
        raise DatasetError(f"data.image_size: got {size!r}; expected [H, W] with positive integers (or null)")
    if cfg.channels not in (None, 1, 3):
        raise DatasetError(f"data.channels: got {cfg.channels!r}; expected 1, 3 or null")
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise DatasetError(f"data.{key}: got {getattr(cfg, key)!r}; expected a value in [0, 1)")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise DatasetError("data.val_fraction + data.test_fraction: must be < 1 so that a training split remains")
    if cfg.max_train_examples is not None and cfg.max_train_examples < 1:
        raise DatasetError(f"data.max_train_examples: got {cfg.max_train_examples!r}; expected >= 1 or null")


def _finish(name: str, src: _Source, cfg: "DataConfig") -> Dataset:
    """The common path: labels, class filtering, splits, image conversion, checks."""
    num_classes = len(src.class_names)
    parts = {k: (x, _check_labels(y, len(x), num_classes, f"{name}: {k} split of '{src.where}'"))
             for k, (x, y) in src.parts().items()}
    class_names = src.class_names
    if cfg.classes is not None:
        keep = [int(c) for c in cfg.classes]
        bad = [c for c in keep if not 0 <= c < num_classes]
        if not keep or bad or len(set(keep)) != len(keep):
            raise DatasetError(f"data.classes: got {list(cfg.classes)!r}; expected distinct labels of {name} in "
                               f"0..{num_classes - 1} ({', '.join(class_names)})")
        relabel = np.full(num_classes, -1, np.int32)
        relabel[keep] = np.arange(len(keep), dtype=np.int32)
        for k, (x, y) in parts.items():
            mask = relabel[y] >= 0
            parts[k] = (x[mask], relabel[y[mask]])
        class_names = tuple(class_names[c] for c in keep)
        num_classes = len(keep)

    seed = cfg.split_seed
    made = []  # every hold-out is reported in Dataset.notes (printed by the trainer), never silent
    if "pool" in parts:
        pool = parts.pop("pool")
        rest, test = _partition(pool[1], math.ceil(cfg.test_fraction * len(pool[1])), seed)
        parts["test"], parts["train"] = _take(pool, test), _take(pool, rest)
        made.append(f"test = {len(test)} of {len(pool[1])} pooled images held out (data.test_fraction="
                    f"{cfg.test_fraction:g}, split_seed={seed})")
        del pool
    if "val" not in parts:
        train = parts["train"]
        rest, val = _partition(train[1], math.ceil(cfg.val_fraction * len(train[1])), seed)
        parts["val"], parts["train"] = _take(train, val), _take(train, rest)
        made.append(f"val = {len(val)} of {len(train[1])} training images held out (data.val_fraction="
                    f"{cfg.val_fraction:g}, split_seed={seed})")
    cap = cfg.max_train_examples
    if cap is not None and cap < len(parts["train"][1]):
        train = parts["train"]
        _, kept = _partition(train[1], cap, seed)
        parts["train"] = _take(train, kept)

    splits = {}
    for k in SPLIT_NAMES:
        x, y = parts[k]
        splits[k] = Split(_convert_images(x, cfg.channels, cfg.image_size, f"{name}: {k} split of '{src.where}'"), y)
    shapes = {k: s.images.shape[1:] for k, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DatasetError(f"{name}: splits of '{src.where}' have different image shapes {shapes}; set "
                           "data.image_size (and data.channels) to bring them to one shape")
    if len(splits["train"]) == 0:
        raise DatasetError(f"{name}: no training examples left in '{src.where}' (after data.classes / splitting); "
                           "check data.classes and the fractions")
    return Dataset(name=name, train=splits["train"], val=splits["val"], test=splits["test"],
                   num_classes=num_classes, class_names=tuple(class_names),
                   notes="; ".join(n for n in [src.notes or f"{name}: {src.where}", *made] if n))


def _registered(name: str, reader: Callable[["DataConfig"], _Source]) -> Callable[["DataConfig"], Dataset]:
    def load(cfg: "DataConfig") -> Dataset:
        _validate_cfg(cfg)
        return _finish(name, reader(cfg), cfg)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"Load the {name!r} dataset as configured by ``cfg`` (a DataConfig). " + (reader.__doc__ or "")
    return load


def _from_sources(layout: str) -> Callable[["DataConfig"], _Source]:
    """A reader that decodes the record sources of ``layout`` (data/sources.py) into arrays, so
    the eager loader covers every layout; streaming callers use the sources directly."""
    def read(cfg: "DataConfig") -> _Source:
        from robust_vision.data.pipeline import preprocess
        from robust_vision.data.sources import LAYOUTS

        parts = LAYOUTS[layout](cfg.data_dir, set(SPLIT_NAMES), False)
        size = None if cfg.image_size is None else tuple(cfg.image_size)
        arrays = {k: (np.stack([preprocess(src._read(i), size, None) for i in range(len(src))]), src.labels)
                  for k, src in parts.items()}
        info = next(iter(parts.values())).info
        notes = "; ".join(f"{k}: {src.info.description}" for k, src in parts.items())
        return _Source(class_names=info.class_names, where=str(cfg.data_dir), notes=notes, **arrays)

    read.__doc__ = f"The {layout!r} layout, decoded from its record sources."
    return read


# Registry: dataset name -> function(DataConfig) -> Dataset.
DATASETS: dict[str, Callable[["DataConfig"], Dataset]] = {
    "digits": _registered("digits", _read_digits),
    "cifar10": _registered("cifar10", _read_cifar10),
    "mnist": _registered("mnist", _read_mnist),
    "image_folder": _registered("image_folder", _read_image_folder),
    "npz": _registered("npz", _read_npz),
    "cifar100": _registered("cifar100", _from_sources("cifar100")),
    "tiny_imagenet": _registered("tiny_imagenet", _from_sources("tiny_imagenet")),
    "prepared": _registered("prepared", _from_sources("prepared")),
}


def load_dataset(cfg: "DataConfig") -> Dataset:
    """Load ``cfg.dataset_name`` with fixed train / val / test splits (see the module docstring).

    Args:
      cfg: the ``data`` section of the config (:class:`robust_vision.config.DataConfig`).
    Returns:
      A :class:`Dataset`: float32 NHWC images in [0, 1], int32 labels in 0..num_classes-1.
    Raises:
      DatasetError: unknown name (the message lists the valid ones), missing / malformed files,
      bad values or settings; the message says what was expected and where.
    """
    try:
        loader = DATASETS[cfg.dataset_name]
    except KeyError:
        raise DatasetError(f"data.dataset_name: unknown dataset {cfg.dataset_name!r}; valid names: "
                           f"{', '.join(sorted(DATASETS))}") from None
    return loader(cfg)
