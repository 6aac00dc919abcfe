"""Streaming evaluation (issue 10 items 4-5): every suite part consumes fixed-size masked batches
through ``prefetch_to_device``. On the same data the streamed parts give the whole-array results
(hand-written whole-array references, and uint8 records against their float32 twin, both read by
the input pipeline); device memory holds at most prefetch depth + 2 input batches; an eval that
does not calibrate never opens the validation split.

A fixed random linear model on 8x8 digits (no training), few examples, steps=2."""

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.attacks import get_attack
from robust_vision.attacks.autoattack import autoattack_suite_stream, run_autoattack
from robust_vision.config import DataConfig, load_config
from robust_vision.corruptions import get_corruption
from robust_vision.data.batch import Batch
from test_datasets import load
from robust_vision.data.sources import ArraySource, SourceInfo
from robust_vision import batched
from robust_vision.evaluation import runner, suite
from robust_vision.evaluation.parts.attacks import attack_suite_stream
from robust_vision.evaluation.parts.calibration import (CalibrationSettings, calibration_tables_stream,
                                                        conditions_logits_stream)
from robust_vision.evaluation.parts.certify import certification_stream
from robust_vision.evaluation.parts.corruptions import corruption_errors_stream
from robust_vision.evaluation.certify import certify
from robust_vision.metrics import per_example_metrics

N, B = 22, 8  # three batches, the last one padded
CORRUPTIONS = ["gaussian_noise", "contrast"]


@pytest.fixture(scope="module")
def data():
    d = load(DataConfig())
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32) * 0.5)

    def logits_fn(z):
        return z.reshape(z.shape[0], -1) @ w

    # uint8 images (as files / prepared shards are read), their float twin for the array API.
    q = np.rint(d.test.images[:N] * 255).astype(np.uint8)
    return logits_fn, q, q.astype(np.float32) / np.float32(255.0), d.test.labels[:N], d


def _source(images, labels):
    info = SourceInfo(num_classes=10, class_names=tuple(map(str, range(10))), image_shape=images.shape[1:],
                      description="test")
    return ArraySource(images, labels, info)


def _stream(images, labels, batch_size=B):
    """The record-source path: uint8 records read by the Grain pipeline."""
    return batched.source_batches(_source(images, labels), batch_size)


def _chunks(x, size=B):
    return [x[i:i + size] for i in range(0, len(x), size)]


def test_corruption_stream_equals_whole_array_reference(data):
    logits_fn, q, x, y, _ = data
    key = jax.random.key(1)
    got = corruption_errors_stream(logits_fn, _stream(q, y), model_name="m", corruptions=CORRUPTIONS,
                                   severities=[3], scale="cifar", key=key)
    arrays = corruption_errors_stream(logits_fn, _stream(x, y), model_name="m", corruptions=CORRUPTIONS,
                                      severities=[3], scale="cifar", key=key)
    # The reference: batch b of (c, s) corrupted with fold_in(fold_in(fold_in(key, crc c), s), b).
    for c in CORRUPTIONS:
        for s in (3,):
            sk = jax.random.fold_in(jax.random.fold_in(key, suite._crc(c)), s)
            wrong = sum(int(np.sum(np.argmax(np.asarray(logits_fn(get_corruption(c)(jax.random.fold_in(sk, b),
                                                                                 jnp.asarray(xb), s, "cifar"))),
                                                  -1) != yb))
                        for b, (xb, yb) in enumerate(zip(_chunks(x), _chunks(y))))
            assert got.errors[(c, s)] == arrays.errors[(c, s)] == wrong / N
    assert got.clean_error == arrays.clean_error == np.mean(np.argmax(np.asarray(logits_fn(jnp.asarray(x))), -1) != y)


def test_attacks_stream_equal_whole_array_reference(data):
    logits_fn, q, x, y, _ = data
    key = jax.random.key(2)
    kw = dict(model_name="m", attacks=["fgsm", "pgd"], eps=[0.0, 0.1], key=key, steps=2, batch_size=B)
    rows, _ = attack_suite_stream(logits_fn, lambda: _stream(q, y), sanity=False, **kw)
    rows_a, _ = attack_suite_stream(logits_fn, lambda: _stream(x, y), sanity=False, **kw)
    pgd = jax.jit(lambda xb, yb, k, eps: get_attack("pgd")(logits_fn, xb, yb, k, eps, steps=2, norm="linf"))
    ref = []  # PGD's batch i keyed fold_in(fold_in(key, crc "pgd"), i), for every eps
    for eps in (0.0, 0.1):
        adv = [pgd(jnp.asarray(xb), jnp.asarray(yb), jax.random.fold_in(jax.random.fold_in(key, suite._crc("pgd")), i),
                   jnp.float32(eps)) for i, (xb, yb) in enumerate(zip(_chunks(x), _chunks(y)))]
        ref.append(np.concatenate([np.asarray(per_example_metrics(logits_fn(a), jnp.asarray(yb))["correct"])
                                   for a, yb in zip(adv, _chunks(y))]).mean())
    for r, ra in zip(rows, rows_a):
        assert r["accuracy"] == ra["accuracy"] and r["n"] == ra["n"] == N  # decisions: bit for bit
        assert r["margin"] == pytest.approx(ra["margin"], rel=1e-6, abs=1e-6)
    assert [r["accuracy"] for r in rows if r["attack"] == "pgd"] == pytest.approx(ref, abs=0)


def test_autoattack_per_batch_equals_one_run_on_the_whole_set(data):
    logits_fn, q, x, y, _ = data
    key = jax.random.key(4)
    rows, results = autoattack_suite_stream(logits_fn, _stream(q, y), model_name="m", name="autoattack-rand",
                                            eps=[0.0, 0.1], norm="linf", key=key, steps=2, verbose=False, batch_size=B)
    # One run on all N examples (each example keyed by its index, every stage on the still-robust points).
    whole = run_autoattack(logits_fn, x, y, 0.1, "linf", jax.random.fold_in(key, suite._crc("autoattack-rand")),
                           "rand", B, steps=2, fab_steps=2)
    res = results[0]
    assert res["robust_accuracy"] == whole["robust_accuracy"] and res["clean_accuracy"] == whole["clean_accuracy"]
    assert [(s["attack"], s["new_adversarial"], s["robust_accuracy"]) for s in res["stages"]] == \
        [(s["attack"], s["new_adversarial"], s["robust_accuracy"]) for s in whole["stages"]]
    assert [r["accuracy"] for r in rows] == [whole["clean_accuracy"], whole["robust_accuracy"]]
    assert rows[1]["n"] == N and res["n_examples"] == N


def test_certification_stream_equals_whole_array_reference(data):
    logits_fn, q, x, y, _ = data
    key = jax.random.key(5)
    kw = dict(model_name="m", sigmas=[0.25], key=key, n0=8, n=32, alpha=0.01, batch_size=B)
    curve, examples = certification_stream(logits_fn, batched.source_batches(_source(q, y), B, n=12), **kw)
    curve_a, examples_a = certification_stream(logits_fn, _stream(x[:12], y[:12]), **kw)
    sk = jax.random.fold_in(key, 250_000)
    ref = [certify(logits_fn, jnp.asarray(np.resize(xb, (B,) + xb.shape[1:]) if len(xb) < B else xb),
                   jax.random.fold_in(sk, j), 0.25, n0=8, n=32, alpha=0.01, batch_size=B)
           for j, xb in enumerate(_chunks(x[:12]))]
    pred = np.concatenate([p[:len(xb)] for (p, _), xb in zip(ref, _chunks(x[:12]))])
    assert [e["prediction"] for e in examples] == [e["prediction"] for e in examples_a] == pred.tolist()
    assert [e["radius"] for e in examples] == pytest.approx([e["radius"] for e in examples_a], abs=1e-12)
    assert [c["certified_accuracy"] for c in curve] == [c["certified_accuracy"] for c in curve_a]


def test_calibration_stream_equals_arrays(data):
    logits_fn, q, x, y, d = data
    cv = np.rint(d.val.images[:13] * 255).astype(np.uint8)
    kw = dict(model_name="m", settings=CalibrationSettings(noise_types=["gaussian"], levels=[0.0, 0.3], seed=0,
                                                          key=jax.random.key(6)))
    got = calibration_tables_stream(logits_fn, _stream(cv, d.val.labels[:13]), _stream(q, y), **kw)
    ref = calibration_tables_stream(logits_fn, _stream(cv.astype(np.float32) / np.float32(255), d.val.labels[:13]),
                                    _stream(x, y), **kw)
    assert got["temperature"] == pytest.approx(ref["temperature"], rel=1e-6)
    for table in ("calibration", "conformal", "selective", "reliability"):
        assert len(got[table]) == len(ref[table]) > 0
        for a, b in zip(got[table], ref[table]):
            for k, v in a.items():  # counts / coverage exact; float metrics to
                # 1e-5 relative (uint8 -> float on device vs on the host: float32 rounding)
                if isinstance(v, (float, np.floating)):
                    assert v == pytest.approx(b[k], rel=1e-5, abs=1e-7, nan_ok=True), (table, k)
                else:
                    assert v == b[k], (table, k)
    # Clean logits are the model's on the images, batch by batch.
    logits, labels = conditions_logits_stream(logits_fn, _stream(q, y), [(None, 0.0)], 0)
    np.testing.assert_allclose(logits[(None, 0.0)], np.asarray(logits_fn(jnp.asarray(x))), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, y)


def test_device_memory_is_bounded_by_prefetch_depth(data):
    """While a part runs, at most depth + 2 input batches live on the device (the queue of
    ``depth``, the one just uploaded and the one being consumed), however many batches there are."""
    logits_fn, q, _, y, _ = data
    images = np.concatenate([q] * 4)  # 88 examples: 11 batches
    labels = np.concatenate([y] * 4)
    shape = (B,) + images.shape[1:]
    seen = []

    def counting(batches):
        for b in batches:
            seen.append(sum(1 for a in jax.live_arrays() if a.shape == shape and a.dtype == jnp.uint8))
            yield b

    corruption_errors_stream(logits_fn, counting(batched.array_batches(images, labels, B)), model_name="m",
                             corruptions=["contrast"], severities=[1], scale="cifar", key=jax.random.key(0),
                             prefetch=2)
    assert len(seen) == 11 and max(seen) <= 2 + 2


@dataclass
class _Model:
    name: str
    w: jax.Array
    input_shape: tuple = (8, 8, 1)
    num_classes: int = 10

    def logits_fn(self):
        return lambda z: z.reshape(z.shape[0], -1) @ self.w

    @property
    def variables(self):
        return self.w

    @staticmethod
    def forward(w, z):
        return z.reshape(z.shape[0], -1).astype(jnp.float32) @ w


def _ctx(tmp_path: Path, data, opened: list, overrides=()):
    _, q, _, y, d = data
    cfg = load_config(None, ["evaluation.batch_size=8", "evaluation.attack_steps=2", "evaluation.attacks=[noise]",
                             "evaluation.attack_noise_radii=[0.0, 0.5]", *overrides])
    w = jnp.asarray(np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32))

    def val():
        opened.append("val")
        return _source(np.rint(d.val.images[:10] * 255).astype(np.uint8), d.val.labels[:10])

    return runner.EvalContext(cfg=cfg, models=[_Model("m", w)], source=_source(q, y), val_source=val,
                              noise_types=["gaussian"], levels=[0.0, 0.2], where="digits", out_dir=tmp_path,
                              log=lambda s: None, quiet=True)


def test_attacks_only_eval_never_opens_the_val_split(tmp_path, data):
    opened = []
    out = runner.run_plan(_ctx(tmp_path, data, opened, ["evaluation.attack_max_examples=12"]), ["attacks"])
    assert opened == [] and out.suite["attacks"]["n_examples"] == 12
    assert {r["n"] for r in out.suite["attacks"]["results"]} == {12}  # the first 12 examples only
    out = runner.run_plan(_ctx(tmp_path, data, opened), ["calibration"])
    assert opened == ["val"] and out.suite["calibration"]["n_calibration"] == 10


def test_stream_of_batches_is_consumed_lazily(data):
    """A part pulls batches as it goes (prefetch ahead), not the whole stream first."""
    logits_fn, q, _, y, _ = data
    pulled, done = [], []

    def tracking(batches):
        for i, b in enumerate(batches):
            pulled.append(i)
            yield b

    def fn(x, yb, i):
        done.append(len(pulled))
        return {"c": jnp.argmax(logits_fn(x.astype(jnp.float32)), -1) == yb}

    out = batched.stream_per_example(fn, tracking(batched.array_batches(np.concatenate([q] * 3),
                                                                         np.concatenate([y] * 3), B)), prefetch=1)
    assert out["c"].shape == (3 * N,)
    assert done[0] <= 2 and all(d - i <= 2 for i, d in enumerate(done))  # at most depth + 1 pulled ahead
    assert isinstance(next(iter(batched.array_batches(q, y, B))), Batch)
