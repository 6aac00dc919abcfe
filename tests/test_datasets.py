"""Dataset layouts read whole through the record sources (what the trainer streams, in memory):
formats, common processing, splits and errors, on tiny files built here."""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_vision.config import DataConfig
from robust_vision.data.batch import to_unit_float
from robust_vision.data.images import resize_linear
from robust_vision.data.readers import DatasetError, decode_image, restricted_pickle_load
from robust_vision.data.sources import LAYOUTS, converted_splits, describe_splits, open_splits, read_examples

SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST_TEST_DIR = SHARED / "data" / "mnist_test"


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # float32 (N, H, W, C) in [0, 1]
    labels: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Loaded:
    """The three splits of a data config read through ``converted_splits`` + ``read_examples``."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    notes: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    def split(self, name: str) -> Split:
        return getattr(self, name)


def load(cfg: DataConfig) -> Loaded:
    sources = converted_splits(cfg)
    info = sources["train"].info
    return Loaded(cfg.dataset_name, *(Split(*read_examples(sources[k])) for k in ("train", "val", "test")),
                  info.num_classes, info.class_names, "; ".join(describe_splits(sources)))


def check_invariants(ds: Loaded) -> None:
    """dtype, shape and range of every split, labels in range."""
    shape = ds.image_shape
    for name in ("train", "val", "test"):
        s = ds.split(name)
        assert s.images.dtype == np.float32 and s.labels.dtype == np.int32
        assert s.images.shape[1:] == shape and s.labels.shape == (s.images.shape[0],)
        if len(s):
            assert 0.0 <= s.images.min() and s.images.max() <= 1.0
            assert np.isfinite(s.images).all()
            assert 0 <= s.labels.min() and s.labels.max() < ds.num_classes
    assert len(ds.class_names) == ds.num_classes


def ids_of(split: Split) -> np.ndarray:
    """Example ids written into pixel (0, 0) by make_id_npz (uint8 id -> id / 255)."""
    return np.rint(split.images[:, 0, 0, 0] * 255).astype(int)


def make_id_npz(path: Path, n: int = 200, k: int = 4) -> Path:
    x = np.zeros((n, 6, 6), np.uint8)
    x[:, 0, 0] = np.arange(n)  # each image carries its index, so splits can be traced back
    x[:, 1:, 1:] = (np.arange(n) % 7 * 30)[:, None, None]
    y = np.arange(n) % k
    np.savez(path, x=x, y=y)
    return path


# --------------------------------------------------------------------------- digits


def test_digits_default_splits_cover_all_examples():
    ds = load(cfg())
    check_invariants(ds)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert ds.class_names == tuple(str(i) for i in range(10))
    sizes = [len(ds.train), len(ds.val), len(ds.test)]
    assert sum(sizes) == 1797
    # test = ceil(0.2 * 1797) = 360; val = ceil(0.1 * 1437) = 144
    assert sizes == [1293, 144, 360]
    # stratified: every class appears in test with ~36 examples
    counts = np.bincount(ds.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # values were 0..16 / 16: both ends occur, and every value is a multiple of 1/16
    allx = ds.train.images
    assert allx.min() == 0.0 and allx.max() == 1.0
    np.testing.assert_allclose(allx * 16, np.round(allx * 16), atol=1e-5)


def test_digits_resize_and_rgb():
    ds = load(cfg(image_size=[16, 16], channels=3, val_fraction=0.0))
    check_invariants(ds)
    assert ds.image_shape == (16, 16, 3)
    assert len(ds.val) == 0 and ds.val.images.shape == (0, 16, 16, 3)
    assert len(ds.train) + len(ds.test) == 1797
    np.testing.assert_array_equal(ds.train.images[..., 0], ds.train.images[..., 2])
    gray = load(cfg(image_size=[16, 16]))
    assert gray.image_shape == (16, 16, 1)
    # same split seed -> same split and same pixels regardless of the channel conversion
    np.testing.assert_array_equal(gray.test.labels, ds.test.labels)
    np.testing.assert_allclose(gray.test.images[..., 0], ds.test.images[..., 1], atol=1e-6)


# --------------------------------------------------------------------------- splits (npz with traced ids)


def test_pool_splits_are_disjoint_cover_and_deterministic(tmp_path):
    path = make_id_npz(tmp_path / "ids.npz")
    a = load(cfg(dataset_name="npz", data_dir=str(path), split_seed=3, val_fraction=0.25, test_fraction=0.2))
    check_invariants(a)
    tr, va, te = ids_of(a.train), ids_of(a.val), ids_of(a.test)
    assert (len(tr), len(va), len(te)) == (120, 40, 40)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(200))  # disjoint and covering
    # labels travel with their images; the split is stratified (4 classes x 10 in test)
    np.testing.assert_array_equal(a.test.labels, te % 4)
    np.testing.assert_array_equal(np.bincount(a.test.labels), [10, 10, 10, 10])
    b = load(cfg(dataset_name="npz", data_dir=str(path), split_seed=3, val_fraction=0.25, test_fraction=0.2))
    np.testing.assert_array_equal(ids_of(b.train), tr)
    np.testing.assert_array_equal(b.test.images, a.test.images)
    c = load(cfg(dataset_name="npz", data_dir=str(path), split_seed=4, val_fraction=0.25, test_fraction=0.2))
    assert set(ids_of(c.test)) != set(te)


def test_max_train_examples_caps_train_only(tmp_path):
    path = make_id_npz(tmp_path / "ids.npz")
    full = load(cfg(dataset_name="npz", data_dir=str(path)))
    ds = load(cfg(dataset_name="npz", data_dir=str(path), max_train_examples=20))
    assert len(ds.train) == 20 and len(ds.val) == len(full.val) and len(ds.test) == len(full.test)
    assert set(ids_of(ds.train)) <= set(ids_of(full.train))
    np.testing.assert_array_equal(np.bincount(ds.train.labels), [5, 5, 5, 5])


def test_class_filtering_relabels_in_given_order(tmp_path):
    path = make_id_npz(tmp_path / "ids.npz")
    np.savez(tmp_path / "named.npz", x=np.load(path)["x"], y=np.load(path)["y"],
             class_names=np.array(["a", "b", "c", "d"]))
    ds = load(cfg(dataset_name="npz", data_dir=str(tmp_path / "named.npz"), classes=[3, 1]))
    check_invariants(ds)
    assert ds.num_classes == 2 and ds.class_names == ("d", "b")
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n == 100
    for s in (ds.train, ds.val, ds.test):
        original = ids_of(s) % 4
        np.testing.assert_array_equal(s.labels, np.where(original == 3, 0, 1))
    with pytest.raises(DatasetError, match=r"data.classes.*0\.\.3"):
        load(cfg(dataset_name="npz", data_dir=str(path), classes=[0, 7]))
    with pytest.raises(DatasetError, match="data.classes"):
        load(cfg(dataset_name="npz", data_dir=str(path), classes=[1, 1]))


# --------------------------------------------------------------------------- npz


def test_npz_fixed_splits_float_and_rgb_to_gray(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.random((12, 5, 5, 3)).astype(np.float32)
    xte = rng.random((4, 5, 5, 3))  # float64 is accepted too
    xte[0] = [1.0, 0.0, 0.0]  # pure red
    np.savez(tmp_path / "f.npz", x_train=xtr, y_train=np.arange(12) % 3, x_test=xte, y_test=np.arange(4) % 3)
    ds = load(cfg(dataset_name="npz", data_dir=str(tmp_path / "f.npz"), val_fraction=0.25))
    check_invariants(ds)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 4) and ds.num_classes == 3
    np.testing.assert_allclose(ds.test.images, xte.astype(np.float32))  # fixed test split, order kept
    gray = load(cfg(dataset_name="npz", data_dir=str(tmp_path / "f.npz"), channels=1, val_fraction=0.0))
    assert gray.image_shape == (5, 5, 1)
    np.testing.assert_allclose(gray.test.images[0], 0.299, atol=1e-6)  # ITU-R 601 luma of pure red
    np.testing.assert_allclose(gray.test.images[..., 0], xte @ [0.299, 0.587, 0.114], atol=1e-6)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"has arrays \['x'\]; expected"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "noy.npz")))
    np.savez(tmp_path / "range.npz", x=np.full((4, 5, 5), 2.0), y=np.zeros(4, int))
    with pytest.raises(DatasetError, match=r"float in \[0, 1\]"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "range.npz"), test_fraction=0.0, val_fraction=0.0))
    x = np.zeros((4, 5, 5), np.float32)
    x[1, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(4, int))
    with pytest.raises(DatasetError, match="non-finite"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "nan.npz"), test_fraction=0.0, val_fraction=0.0))
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 4), y=np.zeros(4, int))
    with pytest.raises(DatasetError, match="Python objects"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "obj.npz")))
    np.savez(tmp_path / "lab.npz", x=np.zeros((4, 5, 5), np.uint8), y=np.array([0.5, 1, 0, 1]))
    with pytest.raises(DatasetError, match="integer class indices"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "lab.npz")))
    np.savez(tmp_path / "int16.npz", x=np.zeros((4, 5, 5), np.int16), y=np.zeros(4, int))
    with pytest.raises(DatasetError, match="uint8"):
        load(cfg(dataset_name="npz", data_dir=str(tmp_path / "int16.npz"), test_fraction=0.0, val_fraction=0.0))


# --------------------------------------------------------------------------- resizing


def test_resize_is_antialiased_and_preserves_constants(tmp_path):
    x = np.zeros((4, 16, 16), np.uint8)
    x[0] = 255 * ((np.arange(16)[:, None] + np.arange(16)[None, :]) % 2)  # checkerboard
    x[1] = 51  # constant 0.2
    x[2, :, :8] = 255  # left half white
    np.savez(tmp_path / "r.npz", x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    images = to_unit_float(x[..., None])  # the float resize of every layout's float images
    down = resize_linear(images, (4, 4))[..., 0]
    # antialiasing averages the checkerboard to grey (to within border effects); point sampling
    # would give 0 or 1
    np.testing.assert_allclose(down[0], 0.5, atol=0.005)
    np.testing.assert_allclose(down[1], 0.2, atol=1e-6)
    # a vertical edge stays a symmetric, monotone edge: 1, a, 1 - a, 0 with a in (0.5, 1)
    np.testing.assert_allclose(down[2, :, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(down[2, :, 3], 0.0, atol=1e-6)
    np.testing.assert_allclose(down[2, :, 1] + down[2, :, 2], 1.0, atol=1e-6)
    assert np.all((down[2, :, 1] > 0.5) & (down[2, :, 1] < 1.0))
    up = resize_linear(images, (32, 24))[..., 0]
    assert up.shape == (4, 32, 24)
    np.testing.assert_allclose(up[1], 0.2, atol=1e-6)
    assert up[2, :, 0].min() == pytest.approx(1.0) and up[2, :, -1].max() == pytest.approx(0.0)


# --------------------------------------------------------------------------- cifar10


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def make_cifar_dir(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir(parents=True)
    batches = {"data_batch_1": cifar_batch(10, 1), "data_batch_2": cifar_batch(10, 2), "test_batch": cifar_batch(6, 3)}
    for i, (name, (data, labels)) in enumerate(batches.items()):
        # bytes keys as in the real files; protocol 2 (as the originals) and the newest protocol
        d = {b"batch_label": name.encode(), b"data": data, b"labels": labels,
             b"filenames": [f"img{j}.png".encode() for j in range(len(labels))]}
        (root / name).write_bytes(pickle.dumps(d, protocol=2 if i % 2 == 0 else pickle.HIGHEST_PROTOCOL))
    names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return batches


def test_cifar10_pickle_directory(tmp_path):
    batches = make_cifar_dir(tmp_path / "cifar-10-batches-py")
    # the parent directory of cifar-10-batches-py is accepted as well
    for data_dir in (tmp_path / "cifar-10-batches-py", tmp_path):
        ds = load(cfg(dataset_name="cifar10", data_dir=str(data_dir), val_fraction=0.25))
        check_invariants(ds)
        assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
        assert ds.class_names[:2] == ("plane", "car")
        assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 6)
    data, labels = batches["test_batch"]
    chw = data.reshape(-1, 3, 32, 32)
    # CHW rows -> NHWC: pixel (h, w) of channel c is row value c*1024 + h*32 + w
    np.testing.assert_array_equal(ds.test.images, chw.transpose(0, 2, 3, 1).astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.test.labels, labels)
    train_rows = np.concatenate([batches["data_batch_1"][0], batches["data_batch_2"][0]])
    got = np.rint(np.concatenate([ds.train.images, ds.val.images]) * 255).astype(np.uint8)
    got_rows = got.transpose(0, 3, 1, 2).reshape(-1, 3072)
    assert sorted(map(bytes, got_rows)) == sorted(map(bytes, train_rows))  # train + val = both batches


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED').touch()",))


@pytest.mark.parametrize("payload", ["os_system", "eval"])
def test_cifar10_malicious_pickle_is_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "cifar"
    make_cifar_dir(root)
    marker = tmp_path / "PWNED"
    evil = _Evil(marker) if payload == "os_system" else _EvilEval()
    data, labels = cifar_batch(4, 0)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"x": evil}, protocol=2))
    with pytest.raises(DatasetError, match="malicious") as info:
        load(cfg(dataset_name="cifar10", data_dir=str(root)))
    assert "data_batch_1" in str(info.value)
    assert not marker.exists()  # the payload never ran


def test_restricted_unpickler_accepts_plain_data(tmp_path):
    obj = {b"a": [1, 2.5, (3, "x")], "s": {1, 2}, "f": frozenset([3]), "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
           "scalar": np.float64(1.5), "c": complex(1, 2)}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{protocol}"
        p.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = restricted_pickle_load(p)
        assert got[b"a"] == obj[b"a"] and got["s"] == obj["s"] and got["scalar"] == 1.5 and got["c"] == obj["c"]
        np.testing.assert_array_equal(got["arr"], obj["arr"])


def test_cifar10_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.data_dir is not set"):
        load(cfg(dataset_name="cifar10"))
    with pytest.raises(DatasetError, match="does not exist"):
        load(cfg(dataset_name="cifar10", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match=r"expected data_batch_1\.\.5 and test_batch in"):
        load(cfg(dataset_name="cifar10", data_dir=str(tmp_path)))
    make_cifar_dir(tmp_path / "c")
    raw = (tmp_path / "c" / "test_batch").read_bytes()
    (tmp_path / "c" / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        load(cfg(dataset_name="cifar10", data_dir=str(tmp_path / "c")))


# --------------------------------------------------------------------------- mnist


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, blob in ((f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051)),
                       (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049))):
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)


def tiny_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def test_mnist_raw_and_gz_idx(tmp_path):
    xtr, ytr = tiny_mnist(40, 0)
    xte, yte = tiny_mnist(20, 1)
    write_idx(tmp_path, "train", xtr, ytr, gz=False)
    write_idx(tmp_path, "t10k", xte, yte, gz=True)
    ds = load(cfg(dataset_name="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    check_invariants(ds)
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 20)
    np.testing.assert_array_equal(ds.test.images[..., 0], xte / np.float32(255))
    np.testing.assert_array_equal(ds.test.labels, yte)
    rgb = load(cfg(dataset_name="mnist", data_dir=str(tmp_path), channels=3, image_size=[12, 12]))
    assert rgb.image_shape == (12, 12, 3)


def test_mnist_test_files_only_become_the_pool(tmp_path):
    xte, yte = tiny_mnist(50, 1)
    write_idx(tmp_path / "raw", "t10k", xte, yte, gz=False)  # torchvision-style raw/ sub-folder
    ds = load(cfg(dataset_name="mnist", data_dir=str(tmp_path), test_fraction=0.2, val_fraction=0.25))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 10)
    assert "t10k" in ds.notes
    allx = np.concatenate([ds.train.images, ds.val.images, ds.test.images])[..., 0]
    got = sorted(map(bytes, np.rint(allx * 255).astype(np.uint8)))
    assert got == sorted(map(bytes, xte))


def test_mnist_idx_errors(tmp_path):
    xtr, ytr = tiny_mnist(20, 0)
    write_idx(tmp_path / "trunc", "t10k", xtr, ytr, gz=False)
    img = tmp_path / "trunc" / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-7])
    with pytest.raises(DatasetError, match=r"truncated.*1280 bytes of data, found 1273"):
        load(cfg(dataset_name="mnist", data_dir=str(tmp_path / "trunc")))

    write_idx(tmp_path / "truncgz", "t10k", xtr, ytr, gz=True)
    gz = tmp_path / "truncgz" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load(cfg(dataset_name="mnist", data_dir=str(tmp_path / "truncgz")))

    write_idx(tmp_path / "magic", "t10k", xtr, ytr, gz=False)
    (tmp_path / "magic" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(xtr, 2049))  # a labels magic
    with pytest.raises(DatasetError, match="magic number 2049; expected 2051"):
        load(cfg(dataset_name="mnist", data_dir=str(tmp_path / "magic")))

    write_idx(tmp_path / "count", "t10k", xtr, ytr[:10], gz=False)
    with pytest.raises(DatasetError, match="same N"):
        load(cfg(dataset_name="mnist", data_dir=str(tmp_path / "count")))

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.*not found"):
        load(cfg(dataset_name="mnist", data_dir=str(tmp_path / "empty")))


@pytest.mark.skipif(not MNIST_TEST_DIR.is_dir(), reason="the shared MNIST test files (shared/data/mnist_test beside the checkout) are not present")
def test_mnist_shared_test_files():
    ds = load(cfg(dataset_name="mnist", data_dir=str(MNIST_TEST_DIR)))
    check_invariants(ds)
    assert ds.image_shape == (28, 28, 1)
    labels = np.concatenate([ds.train.labels, ds.val.labels, ds.test.labels])
    assert labels.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


# --------------------------------------------------------------------------- image_folder


def make_image_folder(root: Path, size_of=lambda cls, i: (6, 6)) -> dict[str, list[tuple[int, int, int]]]:
    """3 classes x 4 images: solid colours, half PNG half (high-quality) JPEG."""
    colours = {}
    for c, cls in enumerate(["dog", "cat", "bird"]):  # created unsorted on purpose
        (root / cls).mkdir(parents=True, exist_ok=True)
        colours[cls] = []
        for i in range(4):
            rgb = (40 * c + 10 * i, 200 - 30 * c, 60 + 20 * i)
            w, h = size_of(cls, i)
            im = Image.new("RGB", (w, h), rgb)
            if i % 2:
                im.save(root / cls / f"{i}.jpg", quality=100)
            else:
                im.save(root / cls / f"{i}.png")
            colours[cls].append(rgb)
    (root / "cat" / "notes.txt").write_text("not an image")
    return colours


def test_image_folder_dir_and_zip(tmp_path):
    colours = make_image_folder(tmp_path / "imgs")
    ds = load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "imgs"), val_fraction=0.0,
                          test_fraction=0.25))
    check_invariants(ds)
    assert ds.class_names == ("bird", "cat", "dog") and ds.num_classes == 3
    assert ds.image_shape == (6, 6, 3) and (len(ds.train), len(ds.test)) == (9, 3)
    np.testing.assert_array_equal(np.bincount(ds.test.labels), [1, 1, 1])
    # every image is a solid colour of its own class (JPEG within a few levels)
    for s in (ds.train, ds.test):
        for img, lab in zip(s.images, s.labels):
            rgb = np.rint(img[0, 0] * 255)
            ref = np.array(colours[ds.class_names[lab]])
            assert np.abs(ref - rgb).max(axis=1).min() <= 3
            np.testing.assert_allclose(img, np.broadcast_to(img[:1, :1], img.shape), atol=2 / 255)

    # the same folders in a zip, under one top-level folder
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((tmp_path / "imgs").rglob("*")):
            z.write(f, "top/" + f.relative_to(tmp_path / "imgs").as_posix())
    dz = load(cfg(dataset_name="image_folder", data_dir=str(archive), val_fraction=0.0, test_fraction=0.25))
    assert dz.class_names == ds.class_names
    np.testing.assert_array_equal(dz.train.images, ds.train.images)
    np.testing.assert_array_equal(dz.test.labels, ds.test.labels)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    make_image_folder(tmp_path / "m", size_of=lambda cls, i: (6, 6) if i < 2 else (10, 7))
    with pytest.raises(DatasetError, match=r"mixed sizes need data\.image_size"):
        load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "m")))
    ds = load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "m"), image_size=[8, 8]))
    check_invariants(ds)
    assert ds.image_shape == (8, 8, 3) and len(ds.train) + len(ds.val) + len(ds.test) == 12
    # solid colours stay solid through the resize
    for img in ds.train.images:
        np.testing.assert_allclose(img, np.broadcast_to(img[:1, :1], img.shape), atol=2 / 255)


def test_image_folder_fixed_splits_and_grayscale(tmp_path):
    for split, n in (("train", 5), ("test", 2), ("val", 1)):
        for cls, value in (("a", 30), ("b", 220)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (5, 7), value).save(tmp_path / split / cls / f"{i}.png")
    ds = load(cfg(dataset_name="image_folder", data_dir=str(tmp_path)))
    check_invariants(ds)
    assert ds.image_shape == (7, 5, 1) and ds.class_names == ("a", "b")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 2, 4)
    np.testing.assert_allclose(ds.test.images[ds.test.labels == 1], 220 / 255, atol=1e-7)
    rgb = load(cfg(dataset_name="image_folder", data_dir=str(tmp_path), channels=3))
    assert rgb.image_shape == (7, 5, 3)
    np.testing.assert_array_equal(rgb.train.images, np.repeat(ds.train.images, 3, axis=-1))


def test_image_folder_16bit_png_is_scaled_not_clipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((5, 5), 30000, np.uint16)).save(tmp_path / "a" / "x.png")  # 16-bit gray
    Image.new("L", (5, 5), 100).save(tmp_path / "b" / "y.png")  # 8-bit gray
    # read_examples quantises to uint8 as the pipeline does; the float decode keeps the 16-bit levels
    by_label = {0: decode_image((tmp_path / "a" / "x.png").read_bytes(), unit_float=True),
                1: decode_image((tmp_path / "b" / "y.png").read_bytes(), unit_float=True)}
    np.testing.assert_allclose(by_label[0], 30000 / 65535, atol=1e-6)
    np.testing.assert_allclose(by_label[1], 100 / 255, atol=1e-6)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder of PNG/JPEG images per class"):
        load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "empty")))
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode '.*a/x\.png'"):
        load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "bad"), test_fraction=0.0, val_fraction=0.0))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a .zip"):
        load(cfg(dataset_name="image_folder", data_dir=str(tmp_path / "file.txt")))


# --------------------------------------------------------------------------- registry and API


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as info:
        load(cfg(dataset_name="imagenet"))
    msg = str(info.value)
    assert "'imagenet'" in msg and all(name in msg for name in LAYOUTS)
    assert set(LAYOUTS) == {"digits", "cifar10", "mnist", "image_folder", "npz", "cifar100", "tiny_imagenet",
                             "prepared"}


def test_split_accessor_and_bad_settings():
    ds = load(cfg(max_train_examples=50))
    assert ds.split("train") is ds.train and len(ds.train) == 50
    with pytest.raises(DatasetError, match="expected one of train, val, test"):
        open_splits(cfg(), ("validation",))
    with pytest.raises(DatasetError, match="data.channels"):
        load(cfg(channels=2))
    with pytest.raises(DatasetError, match="data.val_fraction"):
        load(cfg(val_fraction=0.6, test_fraction=0.5))
