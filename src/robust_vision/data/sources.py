"""Random-access record sources: one per dataset layout, read lazily by index.

A *record source* is a sequence of examples: ``len(source)`` and ``source[i] -> (image, label)``
with ``image`` a uint8 (H, W, C) array (C = 1 or 3; float32 (H, W, C) in [0, 1] only for
in-memory float arrays such as digits) and ``label`` an int. ``source.labels`` (N,) int32 holds
every label without decoding any image (needed for stratified hold-outs and class counts), and
``source.info`` (:class:`SourceInfo`) says what the source is and where it came from.

Images are decoded only when indexed, so opening a source costs a directory listing (or an
archive's table of contents, or a memory map), never a decode of the whole dataset, and only
the splits asked for are opened. The layouts (see docs/DATA.md for trees):

=================  ==============================================================================
``digits``         scikit-learn's bundled 8x8 digits (a pool, no files)
``image_folder``   ``<class>/*.png|jpg`` (a pool) or ``train/ val/ test/`` of class folders; a
                   directory or a .zip; an archive holding only one split (e.g. only ``test/``)
                   *is* that split
``cifar10``        CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``)
``cifar100``       CIFAR-100 python batches (``train``, ``test``, ``meta``); fine labels, or coarse
                   with ``coarse=True``
``cifar10_c``      CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy`` (5 severities x N stacked) and
                   ``labels.npy``; one source per (corruption, severity), see :func:`corruption_sources`
``imagenet_c``     ImageNet-C / Tiny-ImageNet-C: ``<corruption>/<severity>/<wnid>/*.JPEG``
``tiny_imagenet``  Tiny-ImageNet-200: ``wnids.txt``, ``train/<wnid>/images/``, ``val/images/`` +
                   ``val_annotations.txt`` (the labelled val images are the test split)
``mnist``          IDX files (raw or .gz)
``npz``            ``x``/``y`` (a pool) or ``x_train``/``y_train``/``x_test``/``y_test``[/``x_val``...]
``prepared``       the output of ``robust-vision-data prepare``: ``<split>/images.npy`` (uint8
                   N,H,W,C memmap), ``<split>/labels.npy``, ``meta.json``
=================  ==============================================================================

:func:`open_splits` turns a ``DataConfig`` into train / val / test sources, holding part of a
split out where the layout has no fixed one; every hold-out is written into the description
(printed by :func:`describe_splits`), never silent. Every input problem raises
:class:`~robust_vision.data.readers.DatasetError` with a one-line message.
"""

from __future__ import annotations

import io
import json
import functools
import math
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from robust_vision.data.batch import to_unit_float
from robust_vision.data.images import preprocess
from robust_vision.data.readers import (CIFAR10_CLASSES, IDX_IMAGES, IDX_LABELS, IMAGE_SUFFIXES, SPLIT_NAMES,
                                        DatasetError, cifar_label_names, decode_image, find_idx, read_cifar_batch,
                                        read_idx, read_zip_member)

if TYPE_CHECKING:
    from robust_vision.config import DataConfig

@dataclass(frozen=True)
class SourceInfo:
    """What a source is. ``image_shape`` (H, W, C) when every image has it, else None (mixed
    sizes: set ``image_size``); ``description`` says where it came from and its size."""

    num_classes: int
    class_names: tuple[str, ...]
    image_shape: Optional[tuple[int, int, int]]
    description: str
    # Where the images of a held-out split or its remainder come from (the whole source's
    # description) and what was held out of it, so descriptions never nest ("of [.. of [..]]").
    origin: Optional[str] = None
    held_out: tuple[str, ...] = ()


class RecordSource:
    """Base of all sources: ``labels`` (N,) int32 and ``info``; subclasses implement ``_read(i)``.

    Sources are picklable (archives are reopened lazily in each worker process)."""

    labels: np.ndarray
    info: SourceInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of a source with {len(self)} records")
        return self._read(index % len(self)), int(self.labels[index])

    def _read(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class ArraySource(RecordSource):
    """Images of an array (in memory or a ``np.load(mmap_mode='r')`` memory map): uint8
    (N, H, W[, C]) or float32 (N, H, W[, C]) in [0, 1]; only the indexed rows are read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: SourceInfo):
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise DatasetError(f"{info.description}: {len(labels)} labels for images of shape {images.shape}; "
                               "expected (N, H, W[, C]) images and N labels (mismatched label file?)")
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self.info = info

    def _read(self, index: int) -> np.ndarray:
        image = np.asarray(self.images[index])
        return image[..., None] if image.ndim == 2 else image

    def read_batch(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as one (B, H, W, C) array (one fancy-indexed read of the array / memmap)."""
        images = np.asarray(self.images[np.asarray(indices)])
        return images[..., None] if images.ndim == 3 else images


class NpyRowSource(RecordSource):
    """Rows of a uint8 ``.npy`` file (N, H, W, C) read with ``os.pread`` when indexed.

    Unlike a memory map, the rows read do not stay mapped into the process, so the resident
    memory stays flat however large the file (the OS page cache still speeds up re-reads)."""

    def __init__(self, path: Path, labels: np.ndarray, info: SourceInfo):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[0] != len(labels):
            raise DatasetError(f"prepared: '{path}' holds {dtype} {shape} for {len(labels)} labels; expected uint8 "
                               "(N, H, W, C) with one label per image (mismatched label file?)")
        self.path = str(path)
        self.shape = tuple(int(d) for d in shape)
        self.row_bytes = int(np.prod(self.shape[1:]))
        expected, actual = self.offset + self.shape[0] * self.row_bytes, os.path.getsize(path)
        if actual < expected:  # a copy cut short: rows past the end would read as empty arrays
            raise DatasetError(f"prepared: '{path}' is truncated ({actual} bytes, {expected} expected for "
                               f"{self.shape[0]} images of {'x'.join(map(str, self.shape[1:]))}); prepare it again "
                               "(robust-vision-data prepare) or copy it completely")
        self.labels = np.asarray(labels, np.int32)
        self.info = info
        self._fd: Optional[int] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None  # reopened in each worker process
        return state

    def _row(self, index: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, self.row_bytes, self.offset + index * self.row_bytes)

    def _read(self, index: int) -> np.ndarray:
        return np.frombuffer(self._row(index), np.uint8).reshape(self.shape[1:])

    def read_batch(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(indices), -1)
        for k, i in enumerate(indices):
            flat[k] = np.frombuffer(self._row(int(i)), np.uint8)
        return out


class FileSource(RecordSource):
    """Image files (PNG / JPEG / BMP) in a directory or a .zip, decoded when indexed.

    ``names`` are paths relative to ``root`` (a directory) or member names of ``root`` (a zip)."""

    def __init__(self, root: Path, names: Sequence[str], labels: np.ndarray, info: SourceInfo):
        self.root = Path(root)
        self.names = list(names)
        self.labels = np.asarray(labels, np.int32)
        self.info = info
        self._zip: Optional[zipfile.ZipFile] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None  # a ZipFile handle does not cross processes; reopen there
        return state

    def _bytes(self, name: str) -> bytes:
        if self.root.is_dir():
            return (self.root / name).read_bytes()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.root)
        return read_zip_member(self._zip, name, str(self.root))

    def header_size(self, index: int) -> tuple[int, int]:
        """(H, W) of record ``index`` from its file header (Pillow does not decode the pixels)."""
        from PIL import Image

        name = self.names[index]
        try:
            with Image.open(io.BytesIO(self._bytes(name))) as im:
                return int(im.size[1]), int(im.size[0])
        except DatasetError:
            raise
        except Exception as exc:  # PIL raises several types for truncated / foreign files
            raise DatasetError(f"cannot read the header of '{self.root}/{name}' ({type(exc).__name__}: {exc}); "
                               "expected a PNG or JPEG image, remove or replace the file") from None

    def _read(self, index: int) -> np.ndarray:
        name = self.names[index]
        try:
            return decode_image(self._bytes(name))
        except DatasetError:
            raise
        except Exception as exc:  # PIL raises several types for truncated / foreign files
            raise DatasetError(f"cannot decode '{self.root}/{name}' ({type(exc).__name__}: {exc}); expected a PNG "
                               "or JPEG image, remove or replace the file") from None


class SubsetSource(RecordSource):
    """The records ``indices`` of another source (a hold-out, a class filter, a severity)."""

    def __init__(self, base: RecordSource, indices: np.ndarray, info: SourceInfo,
                 relabel: Optional[np.ndarray] = None):
        self.base = base
        self.indices = np.asarray(indices, np.int64)
        labels = base.labels[self.indices]
        self.labels = (relabel[labels] if relabel is not None else labels).astype(np.int32)
        self.info = info

    def _read(self, index: int) -> np.ndarray:
        return self.base._read(int(self.indices[index]))

    def read_batch(self, indices: np.ndarray) -> np.ndarray:
        return read_batch(self.base, self.indices[np.asarray(indices)])


def array_backed(source: RecordSource) -> bool:
    """Whether the records live in one array (rows of equal shape that can be read in one go)."""
    while isinstance(source, SubsetSource):
        source = source.base
    return isinstance(source, (ArraySource, NpyRowSource))


def read_batch(source: RecordSource, indices: np.ndarray) -> np.ndarray:
    """The images of records ``indices`` stacked (B, H, W, C); array sources read them in one go.
    Images of different sizes cannot be stacked: resize them first (see ``images.preprocess``)."""
    if array_backed(source):
        return source.read_batch(indices)  # type: ignore[attr-defined]
    return np.stack([source._read(int(i)) for i in indices])


# --------------------------------------------------------------------------- helpers


def _info(names: Sequence[str], shape: Optional[tuple[int, ...]], description: str) -> SourceInfo:
    return SourceInfo(num_classes=len(names), class_names=tuple(names),
                      image_shape=None if shape is None else tuple(int(s) for s in shape), description=description)


def _shape_of(images: np.ndarray) -> tuple[int, int, int]:
    return tuple(images.shape[1:3]) + ((images.shape[3],) if images.ndim == 4 else (1,))  # type: ignore[return-value]


def _need(path: Optional[str], layout: str, what: str) -> Path:
    if path is None:
        raise DatasetError(f"{layout}: data.data_dir is not set; set data.data_dir (or --data) to {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{layout}: '{p}' does not exist; expected {what}")
    return p


def _missing_split(layout: str, split: str, where: Path, have: Sequence[str]) -> DatasetError:
    return DatasetError(f"{layout}: '{where}' has no {split} split (it has: {', '.join(have) or 'nothing'}); "
                        f"choose one of those splits or point to a source that has {split}")


# A layout reader returns the fixed parts of a source: {"train"|"val"|"test"|"pool": source}.
# ``wanted`` names the splits the caller needs, so readers skip files of the others.
_Parts = dict[str, RecordSource]


def _digits(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # counts 0..16 (4x4 blocks of a 32x32 bitmap) -> [0, 1]
    names = tuple(str(int(t)) for t in bunch.target_names)
    return {"pool": ArraySource(images, bunch.target, _info(names, _shape_of(images),
                                                            f"sklearn digits: {len(images)} images"))}


def _visible(parts: tuple[str, ...]) -> bool:
    return bool(parts) and parts[0] != "__MACOSX" and not any(p.startswith(".") for p in parts)


def list_image_files(root: Path) -> list[str]:
    """Relative paths (posix, sorted) of every image file under a directory or inside a zip,
    hidden files and ``__MACOSX`` left out. A folder holding neither images nor folders is a
    DatasetError: it would silently drop a class (and shift every later label)."""
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DatasetError(f"image_folder: '{root}' is a file but not a .zip archive; expected a directory with "
                               "one sub-folder per class, or a .zip of one")
        with zipfile.ZipFile(root) as z:
            entries = [(i.filename, i.is_dir()) for i in z.infolist()]
    else:
        entries = [(p.relative_to(root).as_posix(), p.is_dir()) for p in root.rglob("*")]
    # An absolute member name ("/cat/1.png") is read as relative: "/" is not a folder.
    paths = [(name, PurePosixPath(name.lstrip("/")).parts, is_dir) for name, is_dir in entries]
    keep = [name for name, parts, is_dir in paths
            if not is_dir and _visible(parts) and parts[-1].lower().endswith(IMAGE_SUFFIXES)]
    folders = {parts for _, parts, is_dir in paths if is_dir and _visible(parts)}
    holding = {parts[:k] for parts in [*folders, *(PurePosixPath(n.lstrip("/")).parts for n in keep)]
               for k in range(1, len(parts))}
    empty = sorted(folders - holding)
    if empty:
        raise DatasetError(f"image_folder: class folder '{'/'.join(empty[0])}' in '{root}' holds no images; "
                           "add its images or remove the folder")
    return sorted(keep)


def _split_folder_name(name: str) -> Optional[str]:
    return {"train": "train", "val": "val", "validation": "val", "test": "test"}.get(name.lower())


def _image_folder(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "a directory (or .zip) with one sub-folder of PNG/JPEG images per class, or train/ val/ test/ of those"
    root = _need(path, "image_folder", expected)
    files = list_image_files(root)
    if not files:
        raise DatasetError(f"image_folder: found no PNG/JPEG/BMP images in '{root}'; expected {expected}")
    parts = [PurePosixPath(f).parts for f in files]
    # Strip wrapper folders (an archive usually holds one top-level folder) unless that folder is a split name.
    depth = 0
    while len({p[depth] for p in parts}) == 1 and min(len(p) for p in parts) >= depth + 3 \
            and _split_folder_name(parts[0][depth]) is None:
        depth += 1
    tops = {p[depth] for p in parts}
    splits = {t: _split_folder_name(t) for t in tops}
    fixed = all(s is not None for s in splits.values()) and min(len(p) for p in parts) >= depth + 3
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(parts):
        key = splits[p[depth]] if fixed else "pool"
        groups.setdefault(key, []).append(i)
    cls_at = depth + 1 if fixed else depth
    for i, p in enumerate(parts):
        if len(p) < cls_at + 2:
            raise DatasetError(f"image_folder: '{files[i]}' in '{root}' is not inside a class folder; expected {expected}")
    names = sorted({p[cls_at] for p in parts})
    index = {n: k for k, n in enumerate(names)}
    out: _Parts = {}
    kind = "zip" if root.is_file() else "directory"
    for key, idx in groups.items():
        labels = np.array([index[parts[i][cls_at]] for i in idx], np.int32)
        where = f"{'/'.join(parts[idx[0]][:cls_at]) + '/' if cls_at else ''}"
        desc = f"image_folder {kind} '{root}'{' ' + where if where else ''}: {len(idx)} images, {len(names)} classes"
        out[key] = FileSource(root, [files[i] for i in idx], labels, _info(names, None, desc))
    return out


def _cifar_folder(root: Path, sub: str) -> Path:
    return root / sub if (root / sub).is_dir() else root


def _cifar10(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "the directory holding the CIFAR-10 python batches (data_batch_1..5, test_batch)"
    folder = _cifar_folder(_need(path, "cifar10", expected), "cifar-10-batches-py")
    batches = [folder / f"data_batch_{i}" for i in range(1, 6)]
    batches = batches[:next((i for i, b in enumerate(batches) if not b.is_file()), 5)]
    if not batches or not (folder / "test_batch").is_file():
        raise DatasetError(f"cifar10: expected data_batch_1..5 and test_batch in '{folder}' "
                           "(the python-pickle CIFAR-10 batches); not found")
    names = cifar_label_names(folder / "batches.meta", "label_names", CIFAR10_CLASSES)
    out: _Parts = {}
    if wanted & {"train", "val"}:
        pairs = [read_cifar_batch(b) for b in batches]
        x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        out["train"] = ArraySource(x, y, _info(names, x.shape[1:], f"cifar10 '{folder}' data_batch_1..{len(batches)}: "
                                                                   f"{len(y)} images"))
    if "test" in wanted:
        x, y = read_cifar_batch(folder / "test_batch")
        out["test"] = ArraySource(x, y, _info(names, x.shape[1:], f"cifar10 '{folder}/test_batch': {len(y)} images"))
    return out


def _cifar100(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "the directory holding the CIFAR-100 python files (train, test, meta)"
    folder = _cifar_folder(_need(path, "cifar100", expected), "cifar-100-python")
    if not (folder / "train").is_file() or not (folder / "test").is_file():
        raise DatasetError(f"cifar100: expected the files train and test (and meta) in '{folder}' "
                           "(the python-pickle CIFAR-100 release); not found")
    key = "coarse_labels" if coarse else "fine_labels"
    names_key = "coarse_label_names" if coarse else "fine_label_names"
    names = cifar_label_names(folder / "meta", names_key, tuple(str(i) for i in range(20 if coarse else 100)))
    out: _Parts = {}
    for split, file in (("train", "train"), ("test", "test")):
        if split not in wanted and not (split == "train" and "val" in wanted):
            continue
        x, labels = read_cifar_batch(folder / file, key, "cifar100")
        out[split] = ArraySource(x, labels, _info(names, (32, 32, 3), f"cifar100 '{folder / file}' ({key}): "
                                                                       f"{len(labels)} images"))
    return out


def _mnist(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "the directory holding the MNIST IDX files (train-/t10k- images-idx3-ubyte, labels-idx1-ubyte)"
    root = _need(path, "mnist", expected)
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        found = {p: (find_idx(folder, f"{p}-images-idx3-ubyte"), find_idx(folder, f"{p}-labels-idx1-ubyte"))
                 for p in ("train", "t10k")}
        found = {p: v for p, v in found.items() if v[0] and v[1]}
        if found:
            break
    else:
        raise DatasetError(f"mnist: expected the IDX files t10k-images-idx3-ubyte + t10k-labels-idx1-ubyte and/or "
                           f"train-images-idx3-ubyte + train-labels-idx1-ubyte (raw or .gz) in '{root}'; not found")
    roles = {"train": "train", "t10k": "test"} if len(found) == 2 else {next(iter(found)): "pool"}
    names = tuple(str(i) for i in range(10))
    out: _Parts = {}
    for prefix, role in roles.items():
        if role == "train" and not wanted & {"train", "val"} or role == "test" and "test" not in wanted:
            continue
        img_path, lbl_path = found[prefix]
        x, y = read_idx(img_path, IDX_IMAGES), read_idx(lbl_path, IDX_LABELS)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"mnist: '{img_path}' holds {x.shape} and '{lbl_path}' {y.shape}; expected (N, H, W) "
                               "images and (N,) labels with the same N (mismatched label file?)")
        out[role] = ArraySource(x, y, _info(names, _shape_of(x), f"mnist '{img_path}': {len(y)} images"))
    return out


def npz_images(x: np.ndarray, where: str, pixel_max: Optional[float] = None) -> np.ndarray:
    """The images of an npz array as the pipeline reads them: uint8 as they are (0..255), float
    in [0, 1] as they are, or, with ``pixel_max`` (``data.pixel_max``), any integer or float array
    in [0, pixel_max] scaled to float32 [0, 1]. Anything else (int64 0..255 without pixel_max,
    uint16, strings, NaN) is a DatasetError naming ``where``, the dtype and the range found: a
    model trained on unscaled pixels reports wrong numbers without a word."""
    if x.dtype.kind not in "biuf" or x.dtype.kind == "b":
        raise DatasetError(f"{where} holds {x.dtype} values; expected images as numbers: uint8 0..255, float in "
                           "[0, 1], or any numeric array with data.pixel_max set")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise DatasetError(f"{where} holds non-finite pixels (the first {x[first]} at index {first}); remove or "
                               "repair those images")
    if x.dtype == np.uint8 and pixel_max in (None, 255):
        return x
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if pixel_max is None:
        if x.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
            return x
        raise DatasetError(f"{where} holds {x.dtype} values in [{low:g}, {high:g}]; expected uint8 0..255 or float "
                           "in [0, 1]; set data.pixel_max to the value of a white pixel (e.g. "
                           f"--override data.pixel_max={255 if high <= 255 else 65535}) to scale them")
    if low < 0.0 or high > pixel_max:
        raise DatasetError(f"{where} holds {x.dtype} values in [{low:g}, {high:g}], outside [0, data.pixel_max="
                           f"{pixel_max:g}]; set data.pixel_max to the value of a white pixel")
    return (x.astype(np.float32) / np.float32(pixel_max)).astype(np.float32)


def npz_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels of an npz array as int64 (N,): integers (or floats holding whole numbers) >= 0,
    anything else a DatasetError naming ``where`` (0.5 would otherwise be truncated to 0)."""
    y = np.ravel(y)
    if y.dtype.kind not in "iuf":
        raise DatasetError(f"{where} holds {y.dtype} labels; expected integer class indices 0..K-1")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(f"{where} label {i} is {y[i]}; expected integer class indices 0..K-1")
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise DatasetError(f"{where} label {i} is {y[i]:g}; expected integer class indices 0..K-1")
    return y.astype(np.int64)


def _npz(path: Optional[str], wanted: set[str], coarse: bool, pixel_max: Optional[float] = None) -> _Parts:
    expected = "a .npz with x (N, H, W[, C]) and y (N,), or x_train, y_train, x_test, y_test[, x_val, y_val]"
    p = _need(path, "npz", expected)
    try:
        z = np.load(p, allow_pickle=False)
        files = set(z.files)
    except Exception as exc:
        raise DatasetError(f"npz: cannot read '{p}' ({type(exc).__name__}: {exc}); expected {expected}") from None

    def array(key: str) -> np.ndarray:
        try:
            return z[key]
        except ValueError:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise DatasetError(f"npz: '{p}' {key} is an array of Python objects, which is not read (it could run "
                               "code); store plain numeric arrays (np.savez with uint8 / float32 images)") from None
        except Exception as exc:  # noqa: BLE001 - a damaged member: numpy's and zipfile's errors vary
            raise DatasetError(f"npz: cannot read '{p}' {key} ({type(exc).__name__}: {exc}); the file is damaged "
                               "or truncated") from None

    names_arr = array("class_names") if "class_names" in files else None
    roles = {"pool": ("x", "y")} if {"x", "y"} <= files and "x_train" not in files else \
        {k: (f"x_{k}", f"y_{k}") for k in SPLIT_NAMES if f"x_{k}" in files}
    if not roles:
        raise DatasetError(f"npz: '{p}' has arrays {sorted(files)}; expected {expected}")
    out: _Parts = {}
    labels_all = {}
    for role, (xk, yk) in roles.items():
        if yk not in files:
            raise DatasetError(f"npz: '{p}' has '{xk}' but no '{yk}'; expected labels (N,) next to every image array")
        labels_all[role] = npz_labels(array(yk), f"npz: '{p}' {yk}")
    top = max(int(v.max()) + 1 if v.size else 1 for v in labels_all.values())
    names = tuple(str(n) for n in np.ravel(names_arr)) if names_arr is not None else tuple(str(i) for i in range(top))
    for role, (xk, yk) in roles.items():
        if role != "pool" and role not in wanted and not (role == "train" and "val" in wanted):
            continue
        x = npz_images(array(xk), f"npz: '{p}' {xk}", pixel_max)
        y = labels_all[role]
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            raise DatasetError(f"npz: '{p}' {yk} spans {int(y.min())}..{int(y.max())}; expected 0..{len(names) - 1}")
        out[role] = ArraySource(x, y, _info(names, _shape_of(x), f"npz '{p}' {xk}: {len(y)} images"))
    return out


def _read_wnids(path: Path) -> list[str]:
    return [w.strip() for w in path.read_text().split() if w.strip()]


def _tiny_imagenet(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "the tiny-imagenet-200 directory (wnids.txt, train/<wnid>/images/, val/images/ + val_annotations.txt)"
    root = _need(path, "tiny_imagenet", expected)
    root = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    if not (root / "wnids.txt").is_file():
        raise DatasetError(f"tiny_imagenet: no wnids.txt in '{root}'; expected {expected}")
    wnids = sorted(_read_wnids(root / "wnids.txt"))  # sorted, as ImageFolder and Tiny-ImageNet-C order them
    index = {w: i for i, w in enumerate(wnids)}
    out: _Parts = {}
    if wanted & {"train", "val"}:
        names, labels = [], []
        for w in wnids:
            files = sorted(p.name for p in (root / "train" / w / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            names += [f"train/{w}/images/{f}" for f in files]
            labels += [index[w]] * len(files)
        if not names:
            raise DatasetError(f"tiny_imagenet: no images in '{root}/train/<wnid>/images/'; expected {expected}")
        out["train"] = FileSource(root, names, np.array(labels), _info(
            wnids, (64, 64, 3), f"tiny_imagenet '{root}/train': {len(names)} images, {len(wnids)} classes"))
    if "test" in wanted:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetError(f"tiny_imagenet: no '{ann}'; expected {expected}")
        names, labels = [], []
        for line_no, line in enumerate(ann.read_text().splitlines(), 1):
            cols = line.split("\t")
            if not line.strip():
                continue
            if len(cols) < 2 or cols[1] not in index:
                raise DatasetError(f"tiny_imagenet: '{ann}' line {line_no} names class {cols[1] if len(cols) > 1 else '?'!r} "
                                   "that is not in wnids.txt (mismatched label file)")
            if not (root / "val" / "images" / cols[0]).is_file():
                raise DatasetError(f"tiny_imagenet: '{ann}' line {line_no} names '{cols[0]}', which is not in "
                                   f"'{root}/val/images' (mismatched label file)")
            names.append(f"val/images/{cols[0]}")
            labels.append(index[cols[1]])
        out["test"] = FileSource(root, names, np.array(labels, np.int32), _info(
            wnids, (64, 64, 3), f"tiny_imagenet '{ann.parent}' (the labelled val images, used as test): "
                                f"{len(names)} images"))
    return out


def _prepared(path: Optional[str], wanted: set[str], coarse: bool) -> _Parts:
    expected = "a directory written by `robust-vision-data prepare` (meta.json, <split>/images.npy, <split>/labels.npy)"
    root = _need(path, "prepared", expected)
    if not (root / "meta.json").is_file():
        raise DatasetError(f"prepared: no meta.json in '{root}'; expected {expected}")
    meta = json.loads((root / "meta.json").read_text())
    names = tuple(meta["class_names"])
    out: _Parts = {}
    for split, entry in meta["splits"].items():
        if split not in wanted:
            continue
        y = np.load(root / split / "labels.npy")
        src = NpyRowSource(root / split / "images.npy", y, _info(names, None, ""))
        src.info = _info(names, src.shape[1:], f"prepared '{root}/{split}' ({entry.get('from', '?')}): {len(y)} images")
        out[split] = src
    return out


LAYOUTS = {"digits": _digits, "image_folder": _image_folder, "cifar10": _cifar10, "cifar100": _cifar100,
           "mnist": _mnist, "npz": _npz, "tiny_imagenet": _tiny_imagenet, "prepared": _prepared}


def detect_layout(path: str) -> str:
    """The layout of a file or directory, from the files it holds (for ``--data`` without ``--dataset``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"--data: '{p}' does not exist; pass a dataset directory, .zip or .npz")
    if p.is_file():
        if p.suffix == ".npz":
            return "npz"
        if zipfile.is_zipfile(p):
            return "image_folder"
    else:
        cifar10 = _cifar_folder(p, "cifar-10-batches-py")
        cifar100 = _cifar_folder(p, "cifar-100-python")
        tiny = p / "tiny-imagenet-200" if (p / "tiny-imagenet-200").is_dir() else p
        checks = [("prepared", (p / "meta.json").is_file() and any((p / s / "images.npy").is_file() for s in SPLIT_NAMES)),
                  ("cifar10", (cifar10 / "test_batch").is_file()),
                  ("cifar100", (cifar100 / "test").is_file() and (cifar100 / "meta").is_file()),
                  ("tiny_imagenet", (tiny / "wnids.txt").is_file()),
                  ("mnist", any(find_idx(d, "t10k-images-idx3-ubyte") or find_idx(d, "train-images-idx3-ubyte")
                                for d in (p, p / "raw", p / "MNIST" / "raw"))),
                  ("image_folder", any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*")))]
        for name, ok in checks:
            if ok:
                return name
    raise DatasetError(f"'{p}' matches no known layout (image_folder dir/zip, cifar10, cifar100, mnist, npz, "
                       "tiny_imagenet, prepared); see docs/DATA.md, or pass --dataset NAME")


# --------------------------------------------------------------------------- splits


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


def _read_parts(cfg: "DataConfig", wanted: set[str], coarse: bool = False) -> _Parts:
    """The layout's fixed parts ({"train"|"val"|"test"|"pool": source}) of ``cfg``, settings checked."""
    try:
        reader = LAYOUTS[cfg.dataset_name]
    except KeyError:
        raise DatasetError(f"data.dataset_name: unknown layout {cfg.dataset_name!r} for streaming; valid names: "
                           f"{', '.join(sorted(LAYOUTS))}") from None
    _validate_cfg(cfg)
    if cfg.dataset_name == "npz":
        reader = functools.partial(reader, pixel_max=cfg.pixel_max)
    return reader(cfg.data_dir, wanted, coarse)


def _hold_out(src: RecordSource, fraction: float, seed: int, held_name: str, from_name: str) -> tuple[RecordSource, RecordSource]:
    n_held = math.ceil(fraction * len(src))
    # Indices in the partition's (train_test_split's) order, not sorted: the order every run
    # since the first has had, so the (seed, epoch) shuffle keeps picking the same batches.
    rest, held = _partition(src.labels, n_held, seed)
    origin = src.info.origin or src.info.description
    held_out = (*src.info.held_out, f"{len(held)} for {held_name} (data.{held_name}_fraction={fraction:g})")
    held_src = SubsetSource(src, held, replace(src.info, origin=origin, held_out=(), description=(
        f"{len(held)} images HELD OUT for {held_name} of {origin} (data.{held_name}_fraction={fraction:g} of "
        f"{'the ' + str(len(src)) + ' left' if src.info.held_out else len(src)}, stratified, split_seed={seed})")))
    rest_src = SubsetSource(src, rest, replace(src.info, origin=origin, held_out=held_out, description=(
        f"{len(rest)} images of {origin}, the rest after holding out {' and '.join(held_out)}")))
    return rest_src, held_src


def _filter_classes(src: RecordSource, classes: Sequence[int]) -> RecordSource:
    keep = [int(c) for c in classes]
    n = src.info.num_classes
    if not keep or any(not 0 <= c < n for c in keep) or len(set(keep)) != len(keep):
        raise DatasetError(f"data.classes: got {list(classes)!r}; expected distinct labels in 0..{n - 1}")
    relabel = np.full(n, -1, np.int32)
    relabel[keep] = np.arange(len(keep), dtype=np.int32)
    idx = np.flatnonzero(relabel[src.labels] >= 0)
    names = tuple(src.info.class_names[c] for c in keep)
    return SubsetSource(src, idx, replace(src.info, num_classes=len(keep), class_names=names,
                                          description=f"{src.info.description}; classes {keep} -> {len(idx)} images"),
                        relabel=relabel)


def open_splits(cfg: "DataConfig", splits: Sequence[str] = SPLIT_NAMES, *, coarse: bool = False) -> dict[str, RecordSource]:
    """The sources of the requested splits of ``cfg.dataset_name`` at ``cfg.data_dir``.

    Fixed splits of the layout are used as they are; a missing test split is held out of the
    pool (``test_fraction``), a missing val split out of train (``val_fraction``), stratified and
    seeded by ``split_seed`` (:func:`_partition`). A requested split
    that the layout cannot provide (e.g. ``train`` of a test-only archive) is a DatasetError.
    """
    wanted = set(splits)
    for s in wanted:
        if s not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {s!r}; expected one of {', '.join(SPLIT_NAMES)}")
    parts = _read_parts(cfg, wanted, coarse)
    if cfg.classes is not None:
        parts = {k: _filter_classes(v, cfg.classes) for k, v in parts.items()}
    seed = cfg.split_seed
    if "pool" in parts:
        pool = parts.pop("pool")
        parts["train"], parts["test"] = _hold_out(pool, cfg.test_fraction, seed, "test", "train")
    if "val" not in parts and "val" in wanted and "train" in parts:
        parts["train"], parts["val"] = _hold_out(parts["train"], cfg.val_fraction, seed, "val", "train")
    if "train" in parts and cfg.max_train_examples is not None and cfg.max_train_examples < len(parts["train"]):
        train = parts["train"]
        _, kept = _partition(train.labels, cfg.max_train_examples, seed)
        parts["train"] = SubsetSource(train, kept, replace(train.info, description=(
            f"{train.info.description}; capped to {cfg.max_train_examples} (data.max_train_examples)")))
    missing = [s for s in splits if s not in parts]
    if missing:
        raise _missing_split(cfg.dataset_name, missing[0], Path(str(cfg.data_dir)), sorted(parts))
    return {s: parts[s] for s in splits}


def describe_splits(sources: dict[str, RecordSource]) -> list[str]:
    """One line per split: its name, size and where it came from (print these on every run)."""
    return [f"  {name:5s} {len(src):>8d} images  {src.info.description}" for name, src in sources.items()]


def open_split(path: str, dataset_name: Optional[str], split: str, **cfg_overrides) -> RecordSource:
    """One split of the source at ``path`` (layout detected when ``dataset_name`` is None)."""
    from robust_vision.config import DataConfig

    name = dataset_name or detect_layout(path)
    cfg = DataConfig(dataset_name=name, data_dir=path, **cfg_overrides)
    return open_splits(cfg, (split,))[split]


# --------------------------------------------------------------------------- published corruptions


def corruption_sources(path: str, suite: str) -> Iterator[tuple[str, int, RecordSource]]:
    """Yield (corruption, severity 1..5, source) of a published corruption set, sorted by corruption.

    ``suite`` ``cifar10-c`` / ``cifar100-c``: a folder of ``<corruption>.npy`` (5 x N images
    stacked by severity, uint8 N,32,32,3, memory-mapped) and ``labels.npy`` (N or 5 x N labels).
    ``suite`` ``imagenet-c`` / ``tiny-imagenet-c``: a tree ``<corruption>/<severity>/<wnid>/*.JPEG``
    (class index = position of the wnid among the sorted wnids of the tree).
    """
    root = _need(path, suite, "a CIFAR-10-C folder or an ImageNet-C tree")
    if suite in ("cifar10-c", "cifar100-c"):
        if not (root / "labels.npy").is_file():
            raise DatasetError(f"{suite}: no labels.npy in '{root}'; expected <corruption>.npy files and labels.npy")
        labels = np.load(root / "labels.npy")
        files = sorted(f for f in root.glob("*.npy") if f.name != "labels.npy")
        if not files:
            raise DatasetError(f"{suite}: no <corruption>.npy files in '{root}'")
        k = 10 if suite == "cifar10-c" else 100
        names = CIFAR10_CLASSES if k == 10 else tuple(str(i) for i in range(k))
        for f in files:
            images = np.load(f, mmap_mode="r")
            if images.ndim != 4 or images.shape[-1] not in (1, 3):
                raise DatasetError(f"{suite}: '{f}' holds an array of shape {images.shape}; expected (5 x N, H, W, C) "
                                   "uint8 images with a channel axis C of 1 or 3 (add it with x[..., None])")
            if len(images) % 5 or len(labels) not in (len(images), len(images) // 5):
                raise DatasetError(f"{suite}: '{f}' holds {images.shape[0]} images and labels.npy {len(labels)} labels; "
                                   "expected 5 x N images (severities 1..5 stacked) and N or 5 x N labels "
                                   "(mismatched label file)")
            n = len(images) // 5
            for sev in range(1, 6):
                lab = labels[(sev - 1) * n: sev * n] if len(labels) == len(images) else labels
                sl = images[(sev - 1) * n: sev * n]
                yield f.stem, sev, ArraySource(sl, lab, _info(names, sl.shape[1:],
                                                              f"{suite} '{f}' severity {sev}: {n} images"))
        return
    if suite in ("imagenet-c", "tiny-imagenet-c"):
        corruptions = sorted(d for d in root.iterdir() if d.is_dir() and any(s.name in "12345" for s in d.iterdir()))
        if not corruptions:
            raise DatasetError(f"{suite}: '{root}' has no <corruption>/<severity>/<wnid>/ folders")
        wnids = sorted({w.name for c in corruptions for s in c.iterdir() if s.is_dir() for w in s.iterdir() if w.is_dir()})
        index = {w: i for i, w in enumerate(wnids)}
        for c in corruptions:
            for sev in range(1, 6):
                d = c / str(sev)
                if not d.is_dir():
                    continue
                files = sorted(f.relative_to(root).as_posix() for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                labels = np.array([index[PurePosixPath(f).parts[2]] for f in files], np.int32)
                yield c.name, sev, FileSource(root, files, labels, _info(wnids, None, f"{suite} '{d}': {len(files)} images"))
        return
    raise DatasetError(f"--suite: unknown published suite {suite!r}; expected cifar10-c, cifar100-c, imagenet-c or "
                       "tiny-imagenet-c")


# --------------------------------------------------------------------------- evaluation sources


class ConcatSource(RecordSource):
    """Several sources with the same classes, one after the other (``--split all``, a training
    split plus its adversarial examples). ``as_float``: every record float32 in [0, 1] (uint8 /
    255), for parts of different dtypes (uint8 images next to float32 adversarial examples)."""

    def __init__(self, parts: Sequence[RecordSource], info: SourceInfo, *, as_float: bool = False):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.concatenate([p.labels for p in self.parts]).astype(np.int32) if self.parts else \
            np.zeros(0, np.int32)
        self.info = info
        self.as_float = as_float

    def _read(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        image = self.parts[k]._read(index - int(self.offsets[k]))
        return to_unit_float(image) if self.as_float else image


class ConvertedSource(RecordSource):
    """Another source's records resized / channel-converted to ``image_shape`` (H, W, C) when read."""

    def __init__(self, base: RecordSource, image_shape: tuple[int, int, int]):
        self.base = base
        self.labels = base.labels
        self.image_shape = tuple(int(s) for s in image_shape)
        self.info = replace(base.info, image_shape=self.image_shape)

    def _read(self, index: int) -> np.ndarray:
        h, w, c = self.image_shape
        return preprocess(self.base._read(index), (h, w), c)


def _file_records(source: RecordSource) -> Optional[tuple[FileSource, np.ndarray]]:
    """The image-file source under ``source`` (through subsets) and the file indices of its
    records, or None when the records do not come from image files."""
    indices = np.arange(len(source))
    while isinstance(source, SubsetSource):
        indices = source.indices[indices]
        source = source.base
    return (source, indices) if isinstance(source, FileSource) else None


def check_one_size(sources: Sequence[RecordSource], size: tuple[int, int]) -> None:
    """A DatasetError naming the first image file of ``sources`` whose (H, W), read from its header
    (no decoding), is not ``size``: mixed sizes need ``data.image_size`` (docs/DATA.md)."""
    for source in sources:
        files = _file_records(source)
        if files is None:
            continue
        base, indices = files
        for index in indices:
            found = base.header_size(int(index))
            if found != size:
                raise DatasetError(
                    f"'{base.root}/{base.names[int(index)]}' is {found[0]}x{found[1]} but the first image is "
                    f"{size[0]}x{size[1]}: images of mixed sizes need data.image_size: [H, W] in the config "
                    "to resize them all to one size")


def stream_shape(source: RecordSource, image_size: Optional[Sequence[int]], channels: Optional[int],
                 also: Sequence[RecordSource] = ()) -> tuple[int, int, int]:
    """The (H, W, C) every record of ``source`` (and of the sources ``also``, e.g. val) is brought
    to: ``image_size`` / ``channels`` where set, else the source's common shape. A source of image
    files (``info.image_shape`` None) takes the missing parts from its first record; without
    ``image_size`` every file must have that size (headers checked, a DatasetError otherwise), so
    only channels are converted when read (``converted``)."""
    shape = source.info.image_shape
    if shape is None:
        if len(source) == 0:
            raise DatasetError(f"{source.info.description}: no images; point data.data_dir to a non-empty source")
        first = source._read(0)
        shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]) if first.ndim == 3 else 1)
        if image_size is None:
            check_one_size([source, *also], (shape[0], shape[1]))
    h, w = (int(image_size[0]), int(image_size[1])) if image_size is not None else shape[:2]
    return h, w, int(channels or shape[2])


def check_image_sizes(data: "DataConfig") -> None:
    """An image folder / zip without ``data.image_size`` holds images of one size (train and val
    file headers read, nothing decoded but the first; a DatasetError names the odd file). JAX-free:
    the train command runs it before JAX is imported."""
    if data.dataset_name == "image_folder" and data.image_size is None:
        splits = open_splits(data, ("train", "val"))
        stream_shape(splits["train"], None, data.channels, also=(splits["val"],))


# Native (images over all splits, H, W, C) of the layouts whose release fixes their size: the
# memory estimate needs no file for them (nor the files downloaded yet).
NATIVE_SHAPES = {"digits": (1797, 8, 8, 1), "mnist": (70_000, 28, 28, 1), "cifar10": (60_000, 32, 32, 3)}


def source_shape(data: "DataConfig") -> tuple[Optional[int], Optional[tuple[int, int, int]]]:
    """(number of images over all splits, (H, W, C) after ``image_size`` / ``channels``) of the
    config's data, None where unknown (an unreadable source; H, W of image files of their own
    sizes). Opening a layout reads headers, memory maps or file lists, never a decode of the
    images; JAX-free: the memory preflight asks it before JAX is imported."""
    n, hwc = None, None
    if data.dataset_name in NATIVE_SHAPES:
        n, h, w, c = NATIVE_SHAPES[data.dataset_name]
        hwc = (h, w, c)
    elif data.data_dir:
        try:
            parts = _read_parts(data, set(SPLIT_NAMES))
        except (DatasetError, OSError, ValueError, KeyError):  # unreadable: the readers report it later
            parts = {}
        if parts:
            n = sum(len(p) for p in parts.values())
            hwc = next(iter(parts.values())).info.image_shape
    if data.image_size is not None:
        hwc = (data.image_size[0], data.image_size[1], hwc[2] if hwc else 3)
    if hwc is not None and data.channels is not None:
        hwc = (hwc[0], hwc[1], data.channels)
    return n, hwc


def converted(source: RecordSource, image_shape: Sequence[int]) -> RecordSource:
    """``source`` itself when its records already have ``image_shape`` (H, W, C) (array sources
    then keep their one-read batches), else a :class:`ConvertedSource` resizing / converting each
    record in the pipeline's workers."""
    shape = tuple(int(s) for s in image_shape)
    if source.info.image_shape is not None and tuple(source.info.image_shape) == shape:
        return source
    return ConvertedSource(source, shape)


def converted_splits(cfg: "DataConfig", splits: Sequence[str] = SPLIT_NAMES) -> dict[str, RecordSource]:
    """The ``splits`` of ``cfg`` (``open_splits`` of every split, so that each hold-out is the
    training run's), each record brought to the one (H, W, C) of all three (``stream_shape``)."""
    sources = open_splits(cfg)
    shape = stream_shape(sources["train"], cfg.image_size, cfg.channels, also=(sources["val"], sources["test"]))
    return {name: converted(sources[name], shape) for name in splits}


def load_eval_source(path: str, dataset_name: Optional[str], split: str, image_shape: Sequence[int],
                     num_classes: Optional[int] = None, *, log=print) -> RecordSource:
    """The whole ``split`` ('train' | 'val' | 'test' | 'all') of the source at ``path``, independent
    of any training config, converted to a checkpoint's input ``image_shape`` (H, W, C).

    The layout is detected when ``dataset_name`` is None. Only the files of ``split`` are read;
    no hold-out is made (a layout without that fixed split is an error naming the splits it has;
    ``all`` takes every image of the source). Images are resized and gray <-> RGB converted as
    the training data of the checkpoint was; a class count different from ``num_classes`` or a
    channel count other than 1 / 3 cannot be converted and is a DatasetError. Prints one line
    saying where the split came from and its size."""
    name = dataset_name or detect_layout(path)
    if name not in LAYOUTS:
        raise DatasetError(f"--dataset: unknown layout {name!r}; valid names: {', '.join(sorted(LAYOUTS))}")
    if split not in (*SPLIT_NAMES, "all"):
        raise DatasetError(f"--split: got {split!r}; expected train, val, test or all")
    parts = LAYOUTS[name](path, set(SPLIT_NAMES) if split == "all" else {split}, False)
    if split == "all":
        ordered = [parts[k] for k in ("pool", "train", "val", "test") if k in parts]
        src: RecordSource = ConcatSource(ordered, replace(ordered[0].info, description=" + ".join(
            p.info.description for p in ordered)))
    elif split in parts:
        src = parts[split]
    elif set(parts) == {"pool"}:
        raise DatasetError(f"--split {split}: the {name} source '{path}' has no fixed splits (one pool of "
                           f"{len(parts['pool'])} images); use --split all to evaluate every image, or train/test folders")
    else:
        raise _missing_split(name, split, Path(path), sorted(parts))
    h, w, c = (int(s) for s in image_shape)
    if c not in (1, 3):
        raise DatasetError(f"the checkpoint expects {c} channels; only 1 (gray) or 3 (RGB) can be converted to")
    if num_classes is not None and src.info.num_classes != num_classes:
        raise DatasetError(f"'{path}' has {src.info.num_classes} classes but the checkpoint predicts {num_classes}; "
                           "evaluate on data with the classes the model was trained on (same class folders)")
    if len(src) == 0:
        raise DatasetError(f"'{path}' {split} split has no images")
    log(f"Evaluation data ({split}): {len(src)} images <- {src.info.description}; converted to {h}x{w}x{c}")
    return ConvertedSource(src, (h, w, c))


def read_images(source: RecordSource, batch_size: int = 256) -> np.ndarray:
    """Every record of ``source`` (of one shape ``info.image_shape`` (H, W, C)) decoded into one
    float32 (N, H, W, C) array in [0, 1], in order. Memory is the whole source: only for a
    bounded sample (e.g. a ``SubsetSource``) or a split known to be small."""
    h, w, c = source.info.image_shape  # type: ignore[misc]
    images = np.empty((len(source), h, w, c), np.float32)
    for start in range(0, len(source), batch_size):
        rows = np.arange(start, min(start + batch_size, len(source)))
        images[rows] = to_unit_float(read_batch(source, rows))
    return images


def read_examples(source: RecordSource, max_examples: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_examples`` records of ``source`` (all when None) as in-memory arrays:
    images float32 (N, H, W, C) in [0, 1] and labels int32 (N,). The one way a small workload
    (local-rule trainers, analysis on a few hundred images) materialises a bounded sample;
    everything else streams through ``pipeline.eval_batches`` / ``train_batches``."""
    if max_examples is not None and max_examples < len(source):
        source = SubsetSource(source, np.arange(max_examples), source.info)
    return read_images(source), np.asarray(source.labels, np.int32)


def check_published_suite(suite: str, suite_data: Optional[str]) -> None:
    """The published corruption files ``suite_data`` of ``suite`` (``--suite NAME DIR``) exist in
    the suite's layout: its first corruption is opened (memory-mapped, nothing decoded)."""
    if suite == "none" or suite_data is None:
        return
    first = corruption_sources(suite_data, suite)
    try:
        next(first, None)
    finally:
        first.close()
