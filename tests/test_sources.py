"""Record sources: every layout built as a tiny copy here; counts, labels, shapes, pixel values,
hold-outs, bad input; the streaming pipeline's order, sharding and padding; prepared shards."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_vision.config import DataConfig
from robust_vision.data.readers import DatasetError
from robust_vision.data.pipeline import batch_indices, epoch_permutation, eval_batches, train_batches
from robust_vision.data.sources import (corruption_sources, describe_splits, detect_layout, open_split,
                                        open_splits)

from test_datasets import idx_bytes, load, make_cifar_dir, write_idx

CLASSES = {"ant": (250, 0, 0), "bee": (0, 250, 0), "cow": (0, 0, 250)}


def solid_png(path: Path, rgb, size=(5, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[0], size[1], 3), rgb, np.uint8)).save(path)


def make_split_tree(root: Path, splits=("train", "val", "test"), per_class=2) -> None:
    for split in splits:
        for cls, rgb in CLASSES.items():
            for i in range(per_class):
                solid_png(root / split / cls / f"{i}.png", rgb)


def zip_dir(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())
    return archive


def check_solid(src) -> None:
    """Every record is the solid colour of its class (PNG is lossless: exact)."""
    names = src.info.class_names
    for i in range(len(src)):
        image, label = src[i]
        assert image.dtype == np.uint8 and image.shape == (5, 4, 3)
        assert (image == np.array(CLASSES[names[label]], np.uint8)).all()


# --------------------------------------------------------------------------- image folder


def test_image_folder_fixed_splits_directory_and_zip(tmp_path):
    make_split_tree(tmp_path / "tree")
    zip_dir(tmp_path / "tree", tmp_path / "tree.zip", prefix="wrapper/")
    for path in (tmp_path / "tree", tmp_path / "tree.zip"):
        splits = open_splits(DataConfig(dataset_name="image_folder", data_dir=str(path)))
        assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 6, "test": 6}
        assert splits["test"].info.class_names == ("ant", "bee", "cow")
        np.testing.assert_array_equal(splits["train"].labels, [0, 0, 1, 1, 2, 2])
        for src in splits.values():
            check_solid(src)
        assert not any("HELD OUT" in line for line in describe_splits(splits))


def test_zip_with_only_test_is_the_whole_test_split(tmp_path):
    make_split_tree(tmp_path / "t", splits=("test",), per_class=3)
    archive = zip_dir(tmp_path / "t", tmp_path / "only_test.zip")
    assert detect_layout(str(archive)) == "image_folder"
    src = open_split(str(archive), None, "test")
    assert len(src) == 9 and src.info.class_names == ("ant", "bee", "cow")
    np.testing.assert_array_equal(np.bincount(src.labels), [3, 3, 3])
    check_solid(src)
    with pytest.raises(DatasetError, match="has no train split"):
        open_split(str(archive), None, "train")


def test_flat_image_folder_holds_out_and_says_so(tmp_path):
    for cls, rgb in CLASSES.items():
        for i in range(4):
            solid_png(tmp_path / "flat" / cls / f"{i}.png", rgb)
    cfg = DataConfig(dataset_name="image_folder", data_dir=str(tmp_path / "flat"), test_fraction=0.25, val_fraction=0.0)
    splits = open_splits(cfg)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (9, 0, 3)
    np.testing.assert_array_equal(np.bincount(splits["test"].labels), [1, 1, 1])  # stratified
    lines = describe_splits(splits)
    assert "HELD OUT" in lines[2] and "test_fraction=0.25" in lines[2]
    # the same partition when the splits are read into memory
    eager = load(cfg)
    np.testing.assert_array_equal(np.sort(eager.test.labels), np.sort(splits["test"].labels))
    assert "3 images HELD OUT for test" in eager.notes and "of 12" in eager.notes  # printed by the trainer, never silent


def test_corrupt_image_and_unmatched_layout(tmp_path):
    make_split_tree(tmp_path / "t", splits=("test",))
    (tmp_path / "t" / "test" / "ant" / "0.png").write_bytes(b"not a png at all")
    src = open_split(str(zip_dir(tmp_path / "t", tmp_path / "bad.zip")), None, "test")
    with pytest.raises(DatasetError, match=r"cannot decode '.*bad\.zip/test/ant/0\.png'"):
        src[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="matches no known layout"):
        detect_layout(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- cifar


def test_cifar10_reads_only_the_needed_split(tmp_path):
    batches = make_cifar_dir(tmp_path / "c10")
    test = open_split(str(tmp_path / "c10"), None, "test")
    data, labels = batches["test_batch"]
    assert len(test) == 6 and test.info.class_names[1] == "car"
    np.testing.assert_array_equal(test.labels, labels)
    np.testing.assert_array_equal(test[2][0], data[2].reshape(3, 32, 32).transpose(1, 2, 0))
    # a broken training batch is never opened when only test is asked for
    (tmp_path / "c10" / "data_batch_1").write_bytes(b"garbage")
    assert len(open_split(str(tmp_path / "c10"), "cifar10", "test")) == 6
    with pytest.raises(DatasetError, match="data_batch_1"):
        open_split(str(tmp_path / "c10"), "cifar10", "train")


def test_cifar100_fine_and_coarse(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 8), ("test", 4)):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n)),
             b"coarse_labels": [i % 3 for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    assert detect_layout(str(tmp_path)) == "cifar100"
    fine = open_split(str(tmp_path), "cifar100", "test")
    np.testing.assert_array_equal(fine.labels, [0, 1, 2, 3])
    assert fine.info.num_classes == 100 and fine.info.class_names[3] == "f3"
    from robust_vision.data.sources import LAYOUTS

    coarse = LAYOUTS["cifar100"](str(tmp_path), {"test"}, True)["test"]
    np.testing.assert_array_equal(coarse.labels, [0, 1, 2, 0])
    assert coarse.info.num_classes == 20
    assert len(load(DataConfig(dataset_name="cifar100", data_dir=str(tmp_path), val_fraction=0.25)).train) == 6


def test_cifar10_c_folder(tmp_path):
    n = 4
    labels = np.arange(n) % 10
    stacked = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(5) for i in range(n)])
    np.save(tmp_path / "fog.npy", stacked)
    np.save(tmp_path / "blur.npy", stacked[::-1].copy())
    np.save(tmp_path / "labels.npy", np.tile(labels, 5))
    got = list(corruption_sources(str(tmp_path), "cifar10-c"))
    assert [(c, s) for c, s, _ in got] == [(c, s) for c in ("blur", "fog") for s in range(1, 6)]
    fog3 = got[5 + 2][2]
    assert len(fog3) == n and fog3[1][0][0, 0, 0] == 21 and fog3[1][1] == 1
    np.save(tmp_path / "labels.npy", labels[:3])
    with pytest.raises(DatasetError, match="mismatched label file"):
        list(corruption_sources(str(tmp_path), "cifar10-c"))


# --------------------------------------------------------------------------- imagenet style


def test_imagenet_c_tree(tmp_path):
    for c in ("fog", "snow"):
        for sev in (1, 2):
            for w, rgb in (("n01", (200, 0, 0)), ("n02", (0, 200, 0))):
                solid_png(tmp_path / c / str(sev) / w / "a.JPEG", rgb)  # PNG bytes under .JPEG: PIL sniffs
    got = list(corruption_sources(str(tmp_path), "imagenet-c"))
    assert [(c, s, len(src)) for c, s, src in got] == [("fog", 1, 2), ("fog", 2, 2), ("snow", 1, 2), ("snow", 2, 2)]
    image, label = got[3][2][1]
    assert label == 1 and tuple(image[0, 0]) == (0, 200, 0)


def test_tiny_imagenet_200(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w, rgb in (("n01", (9, 9, 9)), ("n02", (90, 90, 90))):
        for i in range(3):
            solid_png(root / "train" / w / "images" / f"{w}_{i}.JPEG", rgb, size=(64, 64))
    solid_png(root / "val" / "images" / "val_0.JPEG", (90, 90, 90), size=(64, 64))
    solid_png(root / "val" / "images" / "val_1.JPEG", (9, 9, 9), size=(64, 64))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t1\t1\nval_1.JPEG\tn01\t0\t0\t1\t1\n")
    assert detect_layout(str(tmp_path)) == "tiny_imagenet"
    splits = open_splits(DataConfig(dataset_name="tiny_imagenet", data_dir=str(tmp_path), val_fraction=1 / 3))
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (4, 2, 2)
    assert splits["test"].info.class_names == ("n01", "n02")
    np.testing.assert_array_equal(splits["test"].labels, [1, 0])
    assert splits["test"][0][0].shape == (64, 64, 3) and splits["test"][0][0][0, 0, 0] == 90
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="mismatched label file"):
        open_split(str(tmp_path), "tiny_imagenet", "test")


# --------------------------------------------------------------------------- mnist, npz, digits


def test_mnist_npz_digits(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 10
    write_idx(tmp_path / "m", "train", x, y, gz=True)
    write_idx(tmp_path / "m", "t10k", x[:3], y[:3], gz=False)
    test = open_split(str(tmp_path / "m"), None, "test")
    assert len(test) == 3 and test[1][0].shape == (8, 8, 1)
    np.testing.assert_array_equal(test[2][0][..., 0], x[2])
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y[:2], 2049))
    with pytest.raises(DatasetError, match="mismatched label file"):
        open_split(str(tmp_path / "m"), None, "test")

    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    train = open_split(str(tmp_path / "d.npz"), None, "train", val_fraction=0.0)
    np.testing.assert_array_equal(train.labels, y) and np.testing.assert_array_equal(train[4][0][..., 0], x[4])

    digits = open_splits(DataConfig())
    eager = load(DataConfig())
    assert {k: len(v) for k, v in digits.items()} == {"train": len(eager.train), "val": len(eager.val),
                                                     "test": len(eager.test)}


# --------------------------------------------------------------------------- pipeline


def test_train_batches_order_shards_and_padding():
    src = open_splits(DataConfig(), ("train",))["train"]
    batches = list(train_batches(src, 128, seed=3, epoch=2, shard_index=0, shard_count=1))
    reference = list(batch_indices(len(src), 128, epoch_permutation(3, 2, len(src))))
    assert len(batches) == len(reference)
    for got, ref in zip(batches, reference):
        np.testing.assert_array_equal(got.labels, src.labels[ref.indices])
        np.testing.assert_array_equal(got.mask, ref.mask)
        np.testing.assert_array_equal(got.images, np.stack([src[i][0] for i in ref.indices]))
    # two shards: each reads half of every global batch; together they are the 1-process batch
    halves = [list(train_batches(src, 128, seed=3, epoch=2, shard_index=i, shard_count=2)) for i in range(2)]
    for a, b, whole in zip(*halves, batches):
        assert a.images.shape[0] == 64
        np.testing.assert_array_equal(np.concatenate([a.images, b.images]), whole.images)
    # a new epoch is a new order
    assert not np.array_equal(next(iter(train_batches(src, 128, 3, 3, shard_index=0, shard_count=1))).labels,
                              batches[0].labels)


def test_eval_batches_resize_gray_and_each_example_once(tmp_path):
    make_split_tree(tmp_path / "t", splits=("test",), per_class=3)
    src = open_split(str(tmp_path / "t"), None, "test")
    batches = list(eval_batches(src, 4, shard_index=0, shard_count=1, image_size=(8, 6), channels=1))
    assert len(batches) == 3 and all(b.images.shape == (4, 8, 6, 1) and b.images.dtype == np.uint8 for b in batches)
    mask = np.concatenate([b.mask for b in batches])
    labels = np.concatenate([b.labels for b in batches])[mask > 0]
    np.testing.assert_array_equal(labels, src.labels)
    # solid colour -> the luma of that colour everywhere (resize keeps constants)
    luma = {k: round(0.299 * r + 0.587 * g + 0.114 * b) for k, (r, g, b) in CLASSES.items()}
    first = batches[0].images[0]
    assert (first == luma["ant"]).all()


def test_worker_processes_give_the_same_batches(tmp_path):
    make_split_tree(tmp_path / "t", splits=("test",), per_class=3)
    src = open_split(str(zip_dir(tmp_path / "t", tmp_path / "t.zip")), None, "test")
    inline = list(eval_batches(src, 4, shard_index=0, shard_count=1))
    workers = list(eval_batches(src, 4, shard_index=0, shard_count=1, workers=1))
    assert len(inline) == len(workers)
    for a, b in zip(inline, workers):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.mask, b.mask)


# --------------------------------------------------------------------------- prepared shards


def test_prepare_roundtrip_and_bad_input_writes_nothing(tmp_path, capsys):
    from robust_vision.data.cli import main

    make_split_tree(tmp_path / "tree")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  dataset_name: image_folder\n  data_dir: {tmp_path / 'tree'}\n")
    out = tmp_path / "prep"
    assert main(["prepare", "--config", str(config), "--output", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_shape"] == [5, 4, 3] and meta["splits"]["test"]["count"] == 6
    assert detect_layout(str(out)) == "prepared"
    prepared = open_splits(DataConfig(dataset_name="prepared", data_dir=str(out)))
    original = open_splits(DataConfig(dataset_name="image_folder", data_dir=str(tmp_path / "tree")))
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(prepared[k].labels, original[k].labels)
        for i in range(len(original[k])):
            np.testing.assert_array_equal(prepared[k][i][0], original[k][i][0])
    eager = load(DataConfig(dataset_name="prepared", data_dir=str(out)))
    assert eager.image_shape == (5, 4, 3) and len(eager.test) == 6
    # existing output: refused; corrupt image: one-line error, exit 2, nothing written
    assert main(["prepare", "--config", str(config), "--output", str(out)]) == 2
    (tmp_path / "tree" / "val" / "bee" / "1.png").write_bytes(b"\x89PNG broken")
    capsys.readouterr()
    assert main(["prepare", "--config", str(config), "--output", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot decode") and "\n" not in err
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p2.partial").exists()
