"""The seed's four noise types with a continuous severity in [0, 1].

Each corruption is a pure function ``f(key, images, severity) -> images``:

* ``images``: float32 array (B, H, W, C) with values in [0, 1] (any H, W, C >= 1);
* ``severity``: a scalar in [0, 1]; 0 returns the input bit for bit. It may be a traced
  value: the computation is compiled once per image shape and serves every level
  (the severity is an argument of the jitted function, never a static one);
* ``key``: a ``jax.random`` key; the same key gives the same output.

The output has the shape and dtype of the input and stays in [0, 1]. Every example of the
batch draws its own noise (its own sub-key); nothing loops over the examples in Python.

Severity meanings (DESIGN.md):

==============  ==================================================================
``gaussian``     standard deviation of additive N(0, s^2) noise, then clip to [0, 1]
``salt_pepper``  probability that a pixel (all its channels) is replaced, half by 1 (salt),
                 half by 0 (pepper)
``fog``          blend weight toward a smooth fractal haze: (1 - s) * x + s * haze
``occlusion``    fraction of the image area covered by one black rectangle
==============  ==================================================================

These are written by hand: no maintained JAX library (dm-pix, augmax, ...) provides
corruptions with these severity definitions (or at all, for fog / occlusion).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.corruptions import _ops
from robust_vision.corruptions._common import check_images, check_unit_severity, lookup

NoiseFn = Callable[[jax.Array, jax.Array, "float | jax.Array"], jax.Array]

# Occlusion rectangles have an aspect ratio (width / height) drawn log-uniformly in
# [1 / _MAX_ASPECT, _MAX_ASPECT]; the limit is only exceeded when no rectangle within it can
# reach the requested area (e.g. severity near 1 on a very elongated image).
_MAX_ASPECT = 3.0
# Area rounding slack as a fraction of the image area (see _occlusion_box).
_AREA_SLACK = 0.0025


def _identity_at_zero(severity: jax.Array, corrupted: jax.Array, images: jax.Array) -> jax.Array:
    # Guarantees bit-identical output at severity 0 whatever rounding the formula does.
    return jnp.where(severity > 0.0, corrupted, images)


# ---------------------------------------------------------------------------- gaussian


@jax.jit
def _gaussian(key: jax.Array, images: jax.Array, severity: jax.Array) -> jax.Array:
    noise = _ops.normal(key, images.shape)  # jax.random.normal's numbers, drawn faster
    corrupted = jnp.clip(images + severity * noise, 0.0, 1.0)
    return _identity_at_zero(severity, corrupted, images)


def gaussian(key: jax.Array, images: jax.Array, severity: float | jax.Array) -> jax.Array:
    """Additive Gaussian noise N(0, severity^2) per pixel and channel, clipped to [0, 1].

    Args:
        key: ``jax.random`` key.
        images: (B, H, W, C) float32 in [0, 1].
        severity: noise standard deviation in image units (fraction of the [0, 1] range),
            in [0, 1].

    Returns:
        (B, H, W, C) float32 in [0, 1].
    """
    return _gaussian(key, check_images(images), check_unit_severity(severity))


# ------------------------------------------------------------------------- salt_pepper


@jax.jit
def _salt_pepper(key: jax.Array, images: jax.Array, severity: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    # One uniform per pixel (trailing axis 1 broadcasts over channels): a replaced pixel is
    # pure white or pure black in every channel, as in a real sensor defect. u < s replaces;
    # given that, u is uniform on [0, s), so u < s / 2 (salt) has probability 1/2. A single
    # draw also halves the compile time (one threefry kernel).
    u = _ops.uniform(key, (b, h, w, 1))
    replaced = u < severity
    salt = u < 0.5 * severity
    corrupted = jnp.where(replaced, salt.astype(jnp.float32), images)
    return _identity_at_zero(severity, corrupted, images)


def salt_pepper(key: jax.Array, images: jax.Array, severity: float | jax.Array) -> jax.Array:
    """Salt-and-pepper noise: each pixel replaced with probability ``severity``.

    A replaced pixel has all its channels set to 1 (salt) or 0 (pepper) with equal odds.

    Args:
        key: ``jax.random`` key.
        images: (B, H, W, C) float32 in [0, 1].
        severity: replacement probability per pixel, in [0, 1].

    Returns:
        (B, H, W, C) float32 in [0, 1].
    """
    return _salt_pepper(key, check_images(images), check_unit_severity(severity))


# --------------------------------------------------------------------------------- fog


@functools.lru_cache(maxsize=256)
def _cubic_upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of bicubic (Keys, a = -0.5) interpolation, edge-clamped.

    Built once per size pair in NumPy: applying it is two tiny matmuls, which compile in
    milliseconds, whereas ``jax.image.resize`` per octave made the fog graph slow to compile.
    Half-pixel centres, as in ``jax.image.resize``.
    """
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(pos).astype(np.int64)
    frac = pos - base
    matrix = np.zeros((n_out, n_in), np.float64)
    for offset in (-1, 0, 1, 2):
        dist = np.abs(frac - offset)
        weight = np.where(
            dist <= 1.0,
            1.5 * dist**3 - 2.5 * dist**2 + 1.0,
            np.where(dist < 2.0, -0.5 * dist**3 + 2.5 * dist**2 - 4.0 * dist + 2.0, 0.0),
        )
        np.add.at(matrix, (np.arange(n_out), np.clip(base + offset, 0, n_in - 1)), weight)
    return (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


def _haze_batch(key: jax.Array, batch: int, height: int, width: int, decay: float = 2.0) -> jax.Array:
    """(batch, height, width) independent haze maps in [0.5, 1]; see :func:`fractal_haze`."""
    longest = max(height, width)
    n_octaves = max(1, math.ceil(math.log2(longest)))
    grids = []
    for octave in range(n_octaves):  # static loop over octaves, not over examples
        cells = 2**octave
        grids.append((max(1, math.ceil(cells * height / longest)) + 1, max(1, math.ceil(cells * width / longest)) + 1))
    # One random draw for every octave of every image: each jax.random call is a separate
    # threefry kernel that costs ~0.2-0.7 s of XLA compilation on CPU.
    sizes = [gh * gw for gh, gw in grids]
    flat = _ops.uniform(key, (batch, sum(sizes)), minval=-1.0, maxval=1.0)
    total = jnp.zeros((batch, height, width), jnp.float32)
    start = 0
    for octave, ((grid_h, grid_w), size) in enumerate(zip(grids, sizes)):
        grid = flat[:, start : start + size].reshape(batch, grid_h, grid_w)
        start += size
        up_rows = jnp.asarray(_cubic_upsample_matrix(height, grid_h))
        up_cols = jnp.asarray(_cubic_upsample_matrix(width, grid_w))
        total = total + jnp.einsum("hi,bij,wj->bhw", up_rows, grid, up_cols) / decay**octave
    lo = jnp.min(total, axis=(1, 2), keepdims=True)
    hi = jnp.max(total, axis=(1, 2), keepdims=True)
    unit = (total - lo) / jnp.maximum(hi - lo, 1e-12)
    return 0.5 + 0.5 * unit


@functools.partial(jax.jit, static_argnames=("height", "width", "decay"))
def fractal_haze(key: jax.Array, height: int, width: int, decay: float = 2.0) -> jax.Array:
    """A smooth, textured haze map of shape (height, width) with values in [0.5, 1].

    Multi-octave value noise (the spectral idea behind ImageNet-C's plasma fractal, which
    only works on power-of-two squares): octave ``o`` is a uniform random grid with about
    2^o cells along the longer side, upsampled to (height, width) with bicubic
    interpolation and weighted by ``decay**-o``; coarse octaves dominate, so neighbouring
    pixels are strongly correlated at every image size (8x8 digits to 224x224 photos).
    The sum is min-max normalised to [0, 1] and mapped to [0.5, 1] (fog is bright).

    Args:
        key: ``jax.random`` key.
        height, width: output size in pixels (static).
        decay: amplitude ratio between successive octaves (> 1; larger = smoother).
    """
    return _haze_batch(key, 1, height, width, decay)[0]


@jax.jit
def _fog(key: jax.Array, images: jax.Array, severity: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    haze = _haze_batch(key, b, h, w)[..., None]
    # Grey haze: the same map on every channel, like a scattering medium.
    corrupted = (1.0 - severity) * images + severity * haze
    return _identity_at_zero(severity, jnp.clip(corrupted, 0.0, 1.0), images)


def fog(key: jax.Array, images: jax.Array, severity: float | jax.Array) -> jax.Array:
    """Blend toward a per-image fractal haze: ``(1 - s) * x + s * haze``.

    The haze (see :func:`fractal_haze`) is spatially smooth, in [0.5, 1] (mean about 0.75),
    identical on all channels and drawn independently for each image.

    Args:
        key: ``jax.random`` key.
        images: (B, H, W, C) float32 in [0, 1], any H, W.
        severity: blend weight of the haze, in [0, 1] (1 = haze only).

    Returns:
        (B, H, W, C) float32 in [0, 1].
    """
    return _fog(key, check_images(images), check_unit_severity(severity))


# --------------------------------------------------------------------------- occlusion


def _occlusion_box(u: jax.Array, height: int, width: int, severity: jax.Array) -> jax.Array:
    """(top, left, box_h, box_w) int32 of one rectangle covering ~severity of the area.

    ``u``: three uniforms in [0, 1) (aspect ratio, top, left) drawn by the caller.
    """
    target = jnp.round(severity * height * width)  # area in whole pixels
    log_aspect = (2.0 * u[0] - 1.0) * math.log(_MAX_ASPECT)
    wanted_h = jnp.sqrt(target / jnp.exp(log_aspect))  # height for this aspect ratio (w / h)

    # Integer rounding, vectorised over every candidate height 1..H: for each height the
    # width that best matches the target area; the smallest area error any rectangle within
    # the aspect limits can reach; then, among the candidates within max(that error,
    # _AREA_SLACK of the image), the one nearest the randomly drawn aspect ratio. The slack
    # keeps the aspect ratio random on large images (an exact factorisation is often unique)
    # and is below one pixel on small ones, where the closest area always wins.
    cand_h = jnp.arange(1, height + 1, dtype=jnp.float32)
    cand_w = jnp.clip(jnp.round(target / cand_h), 0.0, float(width))
    area_error = jnp.abs(cand_h * cand_w - target)
    aspect = cand_w / cand_h
    allowed = (aspect >= 1.0 / _MAX_ASPECT - 1e-6) & (aspect <= _MAX_ASPECT + 1e-6)
    # An aspect outside the limits costs more than any area error: used only when nothing fits.
    penalised = area_error + jnp.where(allowed, 0.0, float(2 * height * width + 1))
    best_error = jnp.min(penalised)
    eligible = penalised <= jnp.maximum(best_error, _AREA_SLACK * height * width)
    wanted_h = jnp.clip(wanted_h, 1.0, float(height))
    distance = jnp.abs(jnp.log(cand_h) - jnp.log(wanted_h))
    best = jnp.argmin(jnp.where(eligible, distance, jnp.inf))
    box_h, box_w = cand_h[best], cand_w[best]

    # Uniform position with the rectangle fully inside the image.
    top = jnp.floor(u[1] * (height - box_h + 1))
    left = jnp.floor(u[2] * (width - box_w + 1))
    return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)


@jax.jit
def _occlusion(key: jax.Array, images: jax.Array, severity: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    uniforms = jax.random.uniform(key, (b, 3))  # one draw for the whole batch
    boxes = jax.vmap(lambda u: _occlusion_box(u, h, w, severity))(uniforms)
    top, left, box_h, box_w = (boxes[:, i, None] for i in range(4))  # each (B, 1)
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_rows = (rows >= top) & (rows < top + box_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + box_w)  # (B, W)
    covered = in_rows[:, :, None, None] & in_cols[:, None, :, None]  # (B, H, W, 1)
    corrupted = jnp.where(covered, 0.0, images)
    return _identity_at_zero(severity, corrupted, images)


def occlusion(key: jax.Array, images: jax.Array, severity: float | jax.Array) -> jax.Array:
    """One black rectangle per image covering a fraction ``severity`` of its area.

    The rectangle's area is within max(e, 0.25% of H * W) of ``round(severity * H * W)``
    pixels, where e is the smallest error an integer rectangle with aspect ratio
    (width / height) in [1/3, 3] can reach (on an 8x8 digit the closest area always wins;
    the limit is relaxed only when no rectangle within it fits, e.g. severity 1 on an
    elongated image). Among those rectangles the aspect ratio nearest a log-uniform random
    draw in the limits is taken; the position is uniform with the rectangle inside the image.

    Args:
        key: ``jax.random`` key.
        images: (B, H, W, C) float32 in [0, 1].
        severity: covered fraction of the image area, in [0, 1].

    Returns:
        (B, H, W, C) float32 in [0, 1]; covered pixels are 0 in every channel.
    """
    return _occlusion(key, check_images(images), check_unit_severity(severity))


# ---------------------------------------------------------------------------- registry

NOISES: dict[str, NoiseFn] = {
    "gaussian": gaussian,
    "salt_pepper": salt_pepper,
    "fog": fog,
    "occlusion": occlusion,
}


def get_noise(name: str) -> NoiseFn:
    """The continuous-severity noise called ``name``; unknown names list the valid ones."""
    return lookup(NOISES, name, "noise type")


def apply_noise(name: str, key: jax.Array, images: jax.Array, severity: float | jax.Array) -> jax.Array:
    """``get_noise(name)(key, images, severity)``: see the module docstring for shapes."""
    return get_noise(name)(key, images, severity)
