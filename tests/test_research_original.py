"""The seed's original loss experiment (research/original.py), the bootstrap helper, and the
folder of pattern images: known values, agreement with a per-image reference loop, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.research import original as orig
from robust_vision.research.bootstrap import bootstrap_interval, paired_ratio
from robust_vision.research.methods import method_by_key
from robust_vision.research.protocols import RunRecord, evenly_spaced, folder_images
from robust_vision.research.tables import original_rows
from robust_vision.research.verdicts import ill_conditioned_warnings, original_claims


def test_original_loss_known_value():
    w1 = jnp.eye(2, dtype=jnp.float32)          # relu(x) = x for x >= 0
    w2 = jnp.array([[1.0, 0.0], [0.0, 1.0]])    # out = x
    x = jnp.array([0.8, 0.2])
    mse = ((0.8 - 1) ** 2 + 0.2 ** 2) / 2
    assert float(orig.original_loss((w1, w2), x, 0.0)) == pytest.approx(mse, rel=1e-6)
    # margin 0.6 > 0.1: -log(0.6); below the floor the log is of 0.1
    assert float(orig.original_loss((w1, w2), x, 2.0)) == pytest.approx(mse - 2 * np.log(0.6), rel=1e-6)
    x2 = jnp.array([0.3, 0.25])
    assert float(orig.original_loss((w1, w2), x2, 1.0)) == pytest.approx(
        ((0.3 - 1) ** 2 + 0.25 ** 2) / 2 - np.log(0.1), rel=1e-6)


def test_vmapped_training_matches_per_image_loop():
    key = jax.random.key(3)
    x = jax.random.uniform(jax.random.key(1), (3, 6))
    w1, w2 = orig.train_original_mlps(key, x, 1.0, 0.05, hidden=4, iterations=5)
    for n in range(3):  # reference: one image at a time, plain Python gradient descent
        p = orig._init(jax.random.fold_in(key, n), 6, 4)
        for _ in range(5):
            g = jax.grad(orig.original_loss)(p, x[n], 1.0)
            p = (p[0] - 0.05 * g[0], p[1] - 0.05 * g[1])
        np.testing.assert_allclose(w1[n], p[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w2[n], p[1], rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(orig._init(key, 6, 4)[0]).max()) <= orig.INIT_SCALE


def test_snr_definitions_and_ill_conditioning():
    outs = np.array([[1.0, 0.5], [1.0, -0.001], [0.9, 1e-8], [2.0, 1.0]])
    np.testing.assert_allclose(orig.original_snr(outs), [2.0, 1 / (-0.001 + 1e-9), 0.9 / (1e-8 + 1e-9), 2.0])
    assert orig.ill_conditioned(outs).tolist() == [False, True, True, False]
    assert orig.log_ratio_snr(outs) == pytest.approx(np.exp(np.mean(outs[:, 0] - outs[:, 1])))


def test_bootstrap_interval_deterministic_and_sensible():
    v = np.random.default_rng(0).normal(5.0, 1.0, 200)
    a = bootstrap_interval(v, seed=7)
    assert a == bootstrap_interval(v, seed=7) and a != bootstrap_interval(v, seed=8)
    point, lo, hi = a
    assert point == pytest.approx(v.mean()) and lo < point < hi
    # 90% interval of a mean of 200 N(0,1) draws: about +-1.645 / sqrt(200) = +-0.116
    assert (hi - lo) / 2 == pytest.approx(1.645 / np.sqrt(200), rel=0.2)
    assert np.isnan(bootstrap_interval(np.array([1.0]))[1])
    pairs = np.stack([2 * v, v], -1)
    assert bootstrap_interval(pairs, paired_ratio)[:] == pytest.approx((2.0, 2.0, 2.0))


def _record(key: str, seed: int, outs: np.ndarray) -> RunRecord:
    return RunRecord("pattern", method_by_key(key), seed, [], extra={"original_outputs": outs})


def test_original_rows_flags_and_claims():
    rng = np.random.default_rng(0)
    n = 20
    good = np.stack([np.full((n, 7), 1.0), rng.uniform(0.2, 0.3, (n, 7))], -1)     # control well above zero
    bad = np.stack([np.full((n, 7), 1.0), rng.uniform(-0.01, 0.01, (n, 7))], -1)   # control around zero
    rows = original_rows([_record("mlp_mse", 0, good), _record("mlp_margin_10", 0, bad)])
    by = {r["method_key"]: r for r in rows}
    assert not by["mlp_mse"]["ill_conditioned"] and by["mlp_margin_10"]["ill_conditioned"]
    assert by["mlp_mse"]["snr_original_lo"] < by["mlp_mse"]["snr_original"] < by["mlp_mse"]["snr_original_hi"]
    assert by["mlp_mse"]["ratio_original_to_mse"] == pytest.approx(1.0)
    expected_log = np.exp(np.mean((bad[..., 0] - bad[..., 1]) - (good[..., 0] - good[..., 1])))
    assert by["mlp_margin_10"]["ratio_log_to_mse"] == pytest.approx(expected_log)
    warnings = ill_conditioned_warnings(rows)
    assert len(warnings) == 1 and "Margin-10" in warnings[0]
    claims = original_claims(rows)
    assert [c.verdict for c in claims] == ["not reproduced", "not reproduced"]
    assert all(c.protocol.startswith("pattern (original code") for c in claims)
    # an interval overlapping [375 / 3, 375 * 3] counts as reproduced
    ok = dict(by["mlp_margin_10"], ratio_log_to_mse=300.0, ratio_log_to_mse_lo=100.0, ratio_log_to_mse_hi=500.0)
    assert original_claims([ok])[1].verdict == "reproduced"


def test_evenly_spaced_and_folder_images(tmp_path):
    from PIL import Image

    assert evenly_spaced(10, 5).tolist() == [0, 2, 4, 6, 8] and evenly_spaced(7, 3).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="n_images"):
        evenly_spaced(2, 3)
    (tmp_path / "sub").mkdir()
    for i in range(6):  # mixed sizes and modes; value i * 40 identifies the file
        size = (10, 12) if i % 2 else (16, 16)
        mode, val = ("RGB", (i * 40,) * 3) if i == 3 else ("L", i * 40)
        Image.new(mode, size, val).save(tmp_path / ("sub" if i > 3 else ".") / f"img{i}.png")
    got = folder_images(tmp_path, 3, 8)
    assert got.shape == (3, 8, 8, 1) and got.dtype == np.float32
    # sorted by path: img0..img3 then sub/img4, sub/img5 -> positions 0, 2, 4 = img0, img2, sub/img4
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), [0.0, 80 / 255, 160 / 255], atol=1e-5)
    from robust_vision.data.readers import DatasetError

    with pytest.raises(DatasetError, match="not a directory"):
        folder_images(tmp_path / "missing", 3, 8)
