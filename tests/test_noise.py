"""The seed's four continuous-severity noises: invariants and measured statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.corruptions import NOISES, apply_noise, fog, fractal_haze, gaussian, get_noise, occlusion, salt_pepper

NAMES = ["gaussian", "salt_pepper", "fog", "occlusion"]


def _images(b: int = 4, h: int = 16, w: int = 16, c: int = 3, seed: int = 0) -> jax.Array:
    # NumPy, not jax.random: a jax.random call would compile once per test shape.
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, h, w, c)).astype(np.float32))


def test_registry_names_and_lookup():
    assert sorted(NOISES) == sorted(NAMES)
    for name in NAMES:
        assert get_noise(name) is NOISES[name]
    with pytest.raises(KeyError) as err:
        get_noise("gausian")
    message = str(err.value)
    assert "gausian" in message
    for name in NAMES:
        assert name in message


def test_apply_noise_matches_direct_call():
    x = _images(2, 16, 16, 3)
    key = jax.random.key(3)
    np.testing.assert_array_equal(apply_noise("fog", key, x, 0.4), fog(key, x, 0.4))


# Most tests share one image shape so that each noise compiles only a few times.
SHAPE = (2, 16, 16, 3)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range_kept(name):
    x = _images(3, 12, 10, 3)  # odd, non-square size
    for severity in (0.3, 1.0):
        y = apply_noise(name, jax.random.key(1), x, severity)
        assert y.shape == x.shape
        assert y.dtype == jnp.float32
        assert float(jnp.min(y)) >= 0.0 and float(jnp.max(y)) <= 1.0
        assert not np.array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_bit_identical(name):
    x = _images(*SHAPE)
    key = jax.random.key(5)
    np.testing.assert_array_equal(np.asarray(apply_noise(name, key, x, 0.0)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(apply_noise(name, key, x, 0)), np.asarray(x))


@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_output_different_key_different(name):
    x = _images(*SHAPE)
    a = apply_noise(name, jax.random.key(7), x, 0.4)
    b = apply_noise(name, jax.random.key(7), x, 0.4)
    c = apply_noise(name, jax.random.key(8), x, 0.4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # Each image of the batch gets its own draw.
    delta = np.asarray(a) - np.asarray(x)
    assert not np.array_equal(delta[0], delta[1])


@pytest.mark.parametrize("name", NAMES)
def test_traced_severity_one_compilation_matches_eager(name):
    x = _images(*SHAPE)
    key = jax.random.key(11)
    traces = []

    def run(k, imgs, s):
        traces.append(1)  # executed once per compilation only
        return apply_noise(name, k, imgs, s)

    jitted = jax.jit(run)
    # Severity 0 is bit-identical also when traced inside the caller's jit.
    np.testing.assert_array_equal(np.asarray(jitted(key, x, jnp.float32(0.0))), np.asarray(x))
    for s in (0.1, 0.35, 0.8):
        out = jitted(key, x, jnp.float32(s))
        np.testing.assert_allclose(np.asarray(out), np.asarray(apply_noise(name, key, x, s)), atol=1e-6)
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_errors(name):
    x = _images(1, 8, 8, 1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_noise(name, key, x, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_noise(name, key, x, -0.1)
    with pytest.raises(ValueError, match="dtype"):
        apply_noise(name, key, (np.asarray(x) * 255).astype(np.uint8), 0.2)
    with pytest.raises(ValueError, match="NHWC"):
        apply_noise(name, key, x[0], 0.2)


# ----------------------------------------------------------------- measured statistics


@pytest.mark.parametrize("severity", [0.03, 0.08])
def test_gaussian_std_matches_severity(severity):
    # Images of 0.5 and a small std: clipping never happens (|noise| < 0.5 at > 6 sigma).
    x = jnp.full((4, 32, 32, 3), 0.5, jnp.float32)
    delta = np.asarray(gaussian(jax.random.key(0), x, severity)) - 0.5
    n = delta.size  # 12288; the relative standard error of a std estimate is 1/sqrt(2n) = 0.6%
    assert abs(delta.std() / severity - 1.0) < 0.03
    assert abs(delta.mean()) < 4 * severity / np.sqrt(n)
    # Independent across pixels: neighbouring noise values are uncorrelated.
    assert abs(np.corrcoef(delta[:, :, :-1].ravel(), delta[:, :, 1:].ravel())[0, 1]) < 0.05


@pytest.mark.parametrize("severity", [0.05, 0.3, 0.7])
def test_salt_pepper_fraction_matches_probability(severity):
    x = jnp.full((4, 32, 32, 3), 0.5, jnp.float32)
    y = np.asarray(salt_pepper(jax.random.key(1), x, severity))
    replaced = np.any(y != 0.5, axis=-1)  # (B, H, W)
    # All channels of a replaced pixel are replaced together, by 0 or by 1.
    assert np.all(np.all(y != 0.5, axis=-1) == replaced)
    assert np.all(np.isin(y[replaced], [0.0, 1.0]))
    assert np.all(y[replaced].min(axis=-1) == y[replaced].max(axis=-1))
    n = replaced.size
    sigma = np.sqrt(severity * (1 - severity) / n)
    assert abs(replaced.mean() - severity) < 4 * sigma
    salt = (y[..., 0] == 1.0)[replaced].mean()
    assert abs(salt - 0.5) < 4 * np.sqrt(0.25 / replaced.sum())


def test_salt_pepper_severity_one_replaces_everything():
    y = np.asarray(salt_pepper(jax.random.key(2), _images(2, 16, 16, 3), 1.0))
    assert np.all(np.isin(y, [0.0, 1.0]))


def _neighbour_correlation(maps: np.ndarray) -> float:
    """Mean horizontal and vertical lag-1 correlation of (N, H, W) maps."""
    horiz = np.corrcoef(maps[:, :, :-1].ravel(), maps[:, :, 1:].ravel())[0, 1]
    vert = np.corrcoef(maps[:, :-1, :].ravel(), maps[:, 1:, :].ravel())[0, 1]
    return float((horiz + vert) / 2)


@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (17, 40), (224, 224)])
def test_fog_haze_is_smooth_bright_and_any_size(hw):
    h, w = hw
    b = 2 if h < 200 else 1
    haze = np.asarray(fog(jax.random.key(4), jnp.zeros((b, h, w, 1), jnp.float32), 1.0))[..., 0]
    assert haze.shape == (b, h, w)
    assert haze.min() >= 0.5 - 1e-6 and haze.max() <= 1.0 + 1e-6
    assert haze.mean() > 0.6  # bright
    assert haze.std() > 0.05  # textured, not a constant veil
    assert _neighbour_correlation(haze) > 0.5
    if b > 1:
        assert not np.allclose(haze[0], haze[1])  # each image its own haze


def test_fog_is_a_blend_and_change_grows_with_severity():
    x = _images(4, 32, 32, 3)
    key = jax.random.key(9)
    haze = np.asarray(fog(key, x, 1.0))
    assert np.allclose(haze[..., 0], haze[..., 2])  # grey haze, same on every channel
    changes = []
    for s in (0.1, 0.3, 0.6, 0.9):
        y = np.asarray(fog(key, x, s))
        np.testing.assert_allclose(y, (1 - s) * np.asarray(x) + s * haze, atol=1e-5)
        changes.append(np.abs(y - np.asarray(x)).mean())
    assert all(a < b for a, b in zip(changes, changes[1:]))
    # Fog brightens a typical image (haze mean ~0.75 > image mean ~0.5).
    assert np.asarray(fog(key, x, 0.5)).mean() > float(jnp.mean(x)) + 0.05


def test_fractal_haze_deterministic_and_in_range():
    a = np.asarray(fractal_haze(jax.random.key(0), 13, 21))
    b = np.asarray(fractal_haze(jax.random.key(0), 13, 21))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (13, 21)
    assert abs(a.min() - 0.5) < 1e-6 and abs(a.max() - 1.0) < 1e-6


def _boxes(y: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of the zero region of each image; asserts it is a rectangle."""
    out = []
    for img in y:
        zero = np.all(img == 0.0, axis=-1)
        rows, cols = np.nonzero(zero)
        if rows.size == 0:
            out.append((0, 0, 0, 0))
            continue
        t, l, bh, bw = rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert zero[t : t + bh, l : l + bw].all() and zero.sum() == bh * bw, "occluded region is not one rectangle"
        out.append((int(t), int(l), int(bh), int(bw)))
    return out


def _best_achievable_error(h: int, w: int, severity: float) -> float:
    """Brute force: smallest |area - round(s*H*W)| of an integer rectangle with aspect in [1/3, 3]."""
    target = round(severity * h * w)
    hh, ww = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
    ok = (ww / hh >= 1 / 3 - 1e-9) & (ww / hh <= 3 + 1e-9)
    return float(np.abs(hh * ww - target)[ok].min()) if target else 0.0


@pytest.mark.parametrize("severity", [0.02, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_occlusion_area_matches_severity(severity):
    h = w = 32
    x = 0.2 + 0.8 * _images(4, h, w, 3)  # no natural zeros
    y = np.asarray(occlusion(jax.random.key(6), x, severity))
    boxes = _boxes(y)
    # The documented rounding: within max(best achievable, 0.25% of the area) of the target.
    tolerance = max(_best_achievable_error(h, w, severity), 0.0025 * h * w)
    for top, left, bh, bw in boxes:
        assert abs(bh * bw - round(severity * h * w)) <= tolerance + 1e-9
        assert abs(bh * bw / (h * w) - severity) <= 0.01  # covered fraction within 1 point
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        if bh:
            assert 1 / 3 - 1e-6 <= bw / bh <= 3 + 1e-6
    # Uncovered pixels are untouched.
    covered = np.all(y == 0.0, axis=-1, keepdims=True)
    np.testing.assert_array_equal(np.where(covered, 0.0, np.asarray(x)), y)
    if 0 < severity < 0.9:
        assert len({b[:2] for b in boxes}) > 1  # random positions


def test_occlusion_aspect_ratio_is_random():
    x = 0.5 + 0.5 * _images(16, 64, 64, 1)
    boxes = _boxes(np.asarray(occlusion(jax.random.key(3), x, 0.25)))
    aspects = np.array([bw / bh for _, _, bh, bw in boxes])
    assert len(set(np.round(aspects, 3))) >= 5
    assert aspects.min() < 0.8 and aspects.max() > 1.25
    for _, _, bh, bw in boxes:
        assert abs(bh * bw - 1024) <= 0.0025 * 64 * 64


def test_occlusion_small_and_elongated_images():
    # 8x8 digits: the slack is below one pixel, so the closest achievable area always wins.
    x = 0.5 + 0.5 * _images(16, 8, 8, 1)
    for s in (0.1, 0.3, 0.45, 0.77):
        best = _best_achievable_error(8, 8, s)
        for _, _, bh, bw in _boxes(np.asarray(occlusion(jax.random.key(1), x, s))):
            assert abs(bh * bw - round(s * 64)) == best
    # An 8x64 strip at severity 1: the aspect limit is relaxed so the whole image is covered.
    y = np.asarray(occlusion(jax.random.key(2), 0.5 + 0.5 * _images(2, 8, 64, 3), 1.0))
    assert np.all(y == 0.0)
