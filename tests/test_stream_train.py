"""The backprop trainer streams its data from record sources (data.sources + data.pipeline): it
never decodes whole splits (read_examples / read_images), and it gives the same numbers as the
in-memory path it replaced (the splits read into arrays, wrapped in ArraySources)."""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

import robust_vision.data.sources as sources_module
import robust_vision.training.trainer as trainer_module
from robust_vision.config import AdversarialConfig, load_config
from robust_vision.data.images import resize_linear
from robust_vision.data.sources import ArraySource, SourceInfo
from robust_vision.runs.loading import load_trained_model
from robust_vision.training.adversarial import adversarial_examples, write_adversarial_examples
from robust_vision.training.loop import TrainData
from robust_vision.training.trainer import train
from test_datasets import load

QUIET = dict(log=lambda _msg: None)
RESIZED = ["data.image_size=[10, 10]", "data.channels=3"]  # float resize + gray -> RGB in the pipeline's workers


def _cfg(run_dir: Path, extra: list[str] = (), epochs: int = 2):
    return load_config("configs/quickstart.yaml", tiny_overrides(run_dir, epochs) + list(extra))


def _array_sources(cfg) -> TrainData:
    """The in-memory path the trainer had: the splits' float32 arrays as ArraySources."""
    ds = load(cfg.data)
    info = SourceInfo(ds.num_classes, ds.class_names, ds.image_shape, "arrays")
    return TrainData(ds.name, ArraySource(ds.train.images, ds.train.labels, info),
                     ArraySource(ds.val.images, ds.val.labels, info), ds.image_shape, ds.num_classes, ds.class_names)


def _no_whole_splits(*_args, **_kwargs):
    raise AssertionError("the backprop trainer decoded whole splits (read_examples / read_images)")


def _metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(f)]


def _streamed(cfg, log=QUIET["log"]):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources_module, "read_examples", _no_whole_splits)
        mp.setattr(sources_module, "read_images", _no_whole_splits)
        return train(cfg, log=log)


def _in_memory(cfg):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "training_sources", _array_sources)
        return train(cfg, **QUIET)


def _uint8_npz(path: Path) -> Path:
    """A pool of 240 uint8 8x8 gray images of 4 classes (class = brightness band + noise)."""
    rng = np.random.default_rng(0)
    y = np.arange(240) % 4
    x = np.clip(rng.normal(40 + 50 * y[:, None, None], 30, (240, 8, 8)), 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """Two streamed epochs on digits (whole-split reads forbidden), the base model of the augment tests."""
    run = tmp_path_factory.mktemp("stream") / "digits"
    lines: list[str] = []
    _streamed(_cfg(run, RESIZED), log=lines.append)
    (run / "log.txt").write_text("\n".join(lines))
    return run


def test_streamed_digits_match_the_in_memory_path_exactly(digits_run, tmp_path):
    log = (digits_run / "log.txt").read_text()
    assert "HELD OUT" in log and "val_fraction=0.1" in log and "test_fraction=0.2" in log  # hold-outs printed
    _in_memory(_cfg(tmp_path / "arrays", RESIZED))
    # Same records in the same order (open_splits keeps the partition order), the same
    # float32 pixels (one resize function for both), the same batches and masks: the same
    # numbers, bit for bit.
    assert _metrics(digits_run) == _metrics(tmp_path / "arrays")
    assert load_trained_model(digits_run).input_shape == (10, 10, 3)


def test_streamed_uint8_capped_source_matches_the_in_memory_path(tmp_path):
    # uint8 records become float32 on device (to_unit_float), the in-memory path on the host;
    # data.max_train_examples is a SubsetSource holding the capped rows in the partition's order.
    extra = ["data.dataset_name=npz", f"data.data_dir={_uint8_npz(tmp_path / 'pool.npz')}",
             "data.max_train_examples=100"]
    _streamed(_cfg(tmp_path / "stream", extra, epochs=1))
    _in_memory(_cfg(tmp_path / "arrays", extra, epochs=1))
    assert _metrics(tmp_path / "stream") == _metrics(tmp_path / "arrays")


def test_resize_linear_is_jax_image_resize():
    x = np.random.default_rng(1).random((2, 13, 7, 3)).astype(np.float32)
    for size in [(26, 14), (4, 3), (13, 11)]:
        ref = np.clip(np.asarray(jax.image.resize(x, (2, *size, 3), "linear", antialias=True)), 0, 1)
        np.testing.assert_allclose(resize_linear(x, size), ref, atol=1e-6, rtol=0)  # summation order only


def test_augment_streams_its_examples_through_a_bounded_store(digits_run, tmp_path):
    model = load_trained_model(digits_run)
    cfg = _cfg(tmp_path / "unused", RESIZED)
    ds = load(cfg.data)
    acfg = AdversarialConfig(method="augment", eps=0.3, augment_attack="fgsm", augment_max_examples=10,
                             augment_source=str(digits_run))
    key = jax.random.key(3)
    x_ref, y_ref, stats_ref = adversarial_examples(model.logits_fn(), ds.train.images, ds.train.labels, acfg, key,
                                                   batch_size=256)
    src = trainer_module.training_sources(cfg).train
    adv, stats = write_adversarial_examples(model.logits_fn(), src, acfg, key, tmp_path / "store.npy", batch_size=256)
    assert stats == stats_ref and stats["added"] == len(adv) == 10 < stats["successful"]
    assert np.load(tmp_path / "store.npy", mmap_mode="r").shape == (10, 10, 10, 3)  # bounded by the cap
    np.testing.assert_array_equal(adv.labels, y_ref)
    np.testing.assert_array_equal(np.stack([adv[i][0] for i in range(len(adv))]), x_ref)


def test_augment_training_matches_the_in_memory_path(digits_run, tmp_path):
    extra = [*RESIZED, "training.adversarial.method=augment", "training.adversarial.augment_attack=fgsm",
             "training.adversarial.eps=0.3", "training.adversarial.augment_max_examples=15",
             f"training.adversarial.augment_source={digits_run}"]
    _streamed(_cfg(tmp_path / "stream", extra, epochs=1))
    assert (tmp_path / "stream" / "augment" / "adversarial_examples.p0.npy").is_file()
    with pytest.MonkeyPatch.context() as mp:  # the path it replaced: arrays + examples, concatenated in memory
        mp.setattr(trainer_module, "_with_adversarial_examples", _augment_in_memory)
        _in_memory(_cfg(tmp_path / "arrays", extra, epochs=1))
    assert _metrics(tmp_path / "stream") == _metrics(tmp_path / "arrays")


def _augment_in_memory(cfg, data: TrainData, run_dir, log) -> TrainData:
    source = load_trained_model(cfg.training.adversarial.augment_source)
    key = jax.random.fold_in(jax.random.key(cfg.training.seed), 0xAD7)
    train = data.train
    x_adv, y_adv, _ = adversarial_examples(source.logits_fn(), train.images, train.labels, cfg.training.adversarial,
                                           key, batch_size=cfg.training.eval_batch_size)
    both = ArraySource(np.concatenate([train.images, x_adv]), np.concatenate([train.labels, y_adv]), train.info)
    return TrainData(data.name, both, data.val, data.image_shape, data.num_classes, data.class_names)
