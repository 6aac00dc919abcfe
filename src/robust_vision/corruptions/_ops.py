"""Building blocks of the ImageNet-C style corruptions, in JAX.

Linear resampling operators (Gaussian filters, zooms, box resizes) are built once per
size as small dense matrices in NumPy / SciPy at trace time and applied on device as two
matmuls, ``out = M_h @ x @ M_w^T`` per channel. This reproduces the reference's boundary
handling exactly (SciPy's own filter is used to build the matrix), handles kernels larger
than the image (elastic transform: sigma up to ~170 px) and compiles in milliseconds.

Nothing here is provided by a maintained JAX library with the reference's semantics
(dm-pix has a Gaussian blur but not skimage's ``mode='nearest'``/``truncate`` or
Pillow's BOX resize), so these are written by hand.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

# ------------------------------------------------------------------- random numbers


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.normal(key, shape)`` bit for bit (float32), drawn as a flat vector.

    Threefry's counter for an element is its row-major index; for a 4-D shape JAX builds
    it from four iotas in emulated 64-bit arithmetic inside the sampling loop, which made
    the draw ~2x slower on CPU than the same counters as one iota (measured on
    16x224x224x3). Reshaping a flat draw gives the same numbers
    (``test_flat_draws_equal_jax_random``), so outputs do not change.
    """
    return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


def uniform(key: jax.Array, shape: tuple[int, ...], minval: float | jax.Array = 0.0,
            maxval: float | jax.Array = 1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, minval=, maxval=)`` bit for bit, drawn flat (see :func:`normal`)."""
    return jax.random.uniform(key, (math.prod(shape),), minval=minval, maxval=maxval).reshape(shape)


# ---------------------------------------------------------------- separable operators


def separable(x: jax.Array, m_rows: np.ndarray | jax.Array, m_cols: np.ndarray | jax.Array) -> jax.Array:
    """Apply (H_out, H) and (W_out, W) matrices to (B, H, W, C) images -> (B, H_out, W_out, C)."""
    return jnp.einsum("hi,bijc,wj->bhwc", jnp.asarray(m_rows), x, jnp.asarray(m_cols))


@functools.lru_cache(maxsize=512)
def gaussian_matrix(n: int, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """(n, n) matrix of ``scipy.ndimage.gaussian_filter1d`` (what ``skimage.filters.gaussian`` calls)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    eye = np.eye(n, dtype=np.float64)
    # Column j is the filter's response to a unit impulse at j, so out = M @ x.
    return scipy.ndimage.gaussian_filter1d(eye, sigma, axis=0, mode=mode, truncate=truncate).astype(np.float32)


def gaussian_blur2d(x: jax.Array, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> jax.Array:
    """skimage ``gaussian(x, sigma, mode, truncate, channel_axis=-1)`` on (B, H, W, C)."""
    _, h, w, _ = x.shape
    return separable(x, gaussian_matrix(h, float(sigma), mode, truncate), gaussian_matrix(w, float(sigma), mode, truncate))


@functools.lru_cache(maxsize=512)
def clipped_zoom_matrix(n: int, zoom: float) -> np.ndarray:
    """(n, n) matrix of the reference's ``clipped_zoom`` along one axis.

    Centre crop of ceil(n / zoom) pixels, ``scipy.ndimage.zoom(order=1)`` by ``zoom`` and a
    centred trim back to n pixels (make_imagenet_c.py; bilinear zoom is separable).
    """
    crop = int(math.ceil(n / zoom))
    top = (n - crop) // 2
    eye = np.eye(n, dtype=np.float64)[top : top + crop, :]
    zoomed = scipy.ndimage.zoom(eye, (zoom, 1.0), order=1)
    trim = (zoomed.shape[0] - n) // 2
    out = zoomed[trim : trim + n, :]
    if out.shape[0] < n:  # cannot happen for zoom >= 1, kept as a guard
        out = np.concatenate([out, np.repeat(out[-1:], n - out.shape[0], axis=0)])
    return out.astype(np.float32)


@functools.lru_cache(maxsize=512)
def pil_box_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of Pillow's ``Image.resize(..., Image.BOX)`` along one axis.

    Transcribes the coefficient rule of Pillow's ``precompute_coeffs`` (box filter, support
    0.5 scaled by the downsampling factor); Pillow then rounds to uint8, we stay in float.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = np.zeros((n_out, n_in), np.float64)
    for xx in range(n_out):  # static size loop, runs once per size pair
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        taps = np.arange(xmin, xmax)
        arg = (taps - center + 0.5) / filterscale
        weight = ((arg > -0.5) & (arg <= 0.5)).astype(np.float64)
        if weight.sum() > 0:
            matrix[xx, taps] = weight / weight.sum()
    return matrix.astype(np.float32)


def conv2d_same(x: jax.Array, kernel: np.ndarray, pad_mode: str = "reflect") -> jax.Array:
    """Correlate every channel of (B, H, W, C) with a 2-D kernel (kh, kw), same size output.

    ``pad_mode='reflect'`` is NumPy's reflect = OpenCV's default BORDER_REFLECT_101.
    Kernels up to 5x5 run as shifted multiply-adds, larger ones by FFT (as cv2.filter2D
    itself switches to a DFT for large kernels); XLA's CPU depthwise convolution, used
    before, was 10x slower than OpenCV for the 17x17 defocus disks.
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.size <= 25:
        return shift_correlate_same(x, kernel, pad_mode)
    return fft_correlate_same(x, kernel, pad_mode)


# ------------------------------------------------------------------------- sampling


def _reflect101(i: jax.Array, n: int) -> jax.Array:
    """OpenCV BORDER_REFLECT_101 index map (edge pixel not repeated)."""
    if n == 1:
        return jnp.zeros_like(i)
    period = 2 * (n - 1)
    i = jnp.mod(i, period)
    return jnp.where(i >= n, period - i, i)


def _symmetric(i: jax.Array, n: int) -> jax.Array:
    """SciPy ``mode='reflect'`` index map (half-sample symmetric: edge pixel repeated)."""
    period = 2 * n
    i = jnp.mod(i, period)
    return jnp.where(i >= n, period - 1 - i, i)


def bilinear_sample(image: jax.Array, rows: jax.Array, cols: jax.Array, border: str) -> jax.Array:
    """Bilinear lookup of one (H, W, C) image at float coordinates (H', W') -> (H', W', C).

    ``border``: 'reflect101' (OpenCV default) or 'symmetric' (SciPy 'reflect').
    """
    h, w, _ = image.shape
    fix = _reflect101 if border == "reflect101" else _symmetric
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    r0 = r0.astype(jnp.int32)
    c0 = c0.astype(jnp.int32)
    r1, c1 = fix(r0 + 1, h), fix(c0 + 1, w)
    r0, c0 = fix(r0, h), fix(c0, w)
    top = image[r0, c0] * (1 - fc) + image[r0, c1] * fc
    bottom = image[r1, c0] * (1 - fc) + image[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


# ------------------------------------------------------------------------ motion blur


def motion_blur(key: jax.Array, x: jax.Array, radius: int | jax.Array, sigma: float | jax.Array,
                angle_range: tuple[float, float], max_radius: int | None = None) -> jax.Array:
    """Directional blur of (B, H, W, C), one random angle per image.

    The Wand-free motion blur of the ``imagecorruptions`` package (its ``_motion_blur``),
    which stands in for ImageMagick's ``MagickMotionBlurImage`` used by make_imagenet_c.py:
    the sum over taps i < 2 * radius + 1 of a one-sided Gaussian weight exp(-i^2 / 2 sigma^2)
    (normalised) times the image shifted by i pixels along the angle, edges replicated.
    Taps from the first one that would leave the image onward are dropped, as there.
    """
    b, h, w, _ = x.shape
    # ``radius`` and ``sigma`` may be traced (one compilation for every severity): the scan
    # runs over 2 * max_radius + 1 taps and the taps beyond 2 * radius + 1 get weight 0.
    max_width = 2 * int(radius if max_radius is None else max_radius) + 1
    width = 2 * radius + 1
    taps = jnp.arange(max_width, dtype=jnp.float32)
    kernel = jnp.exp(-(taps**2) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2)) * (taps < width)
    kernel = kernel / jnp.sum(kernel)
    angle = jax.random.uniform(key, (b,), minval=angle_range[0], maxval=angle_range[1])
    rad = jnp.deg2rad(angle)
    i = taps[None, :]  # (1, T)
    # Reference: point = (width sin a, width cos a), hypot = width -> i * sin a per tap.
    dy = -jnp.ceil(i * jnp.sin(rad)[:, None] - 0.5).astype(jnp.int32)  # (B, T)
    dx = -jnp.ceil(i * jnp.cos(rad)[:, None] - 0.5).astype(jnp.int32)
    outside = (jnp.abs(dy) >= h) | (jnp.abs(dx) >= w)
    keep = jnp.cumsum(outside, axis=1) == 0  # the reference breaks at the first such tap
    weights = kernel[None, :] * keep  # (B, T)
    rows = jnp.arange(h)[None, None, :] - dy[:, :, None]  # (B, T, H)
    cols = jnp.arange(w)[None, None, :] - dx[:, :, None]  # (B, T, W)
    rows = jnp.clip(rows, 0, h - 1)
    cols = jnp.clip(cols, 0, w - 1)

    def add_tap(acc, tap):
        r, c, wt = tap  # (B, H), (B, W), (B,)
        # One shifted copy per image at a time (a scan, not a (T, H, W, C) stack: memory).
        shifted = jax.vmap(lambda img, rr, cc: img[rr[:, None], cc[None, :]])(x, r, c)
        return acc + wt[:, None, None, None] * shifted, None

    taps_first = (jnp.moveaxis(rows, 1, 0), jnp.moveaxis(cols, 1, 0), jnp.moveaxis(weights, 1, 0))
    out, _ = jax.lax.scan(add_tap, jnp.zeros_like(x), taps_first)
    return out


# --------------------------------------------------------------------------- plasma


def plasma_fractal(key: jax.Array, batch: int, mapsize: int, wibbledecay: float | jax.Array) -> jax.Array:
    """(batch, mapsize, mapsize) diamond-square fractals in [0, 1], as in make_imagenet_c.py.

    ``mapsize`` must be a power of two. The random perturbation at each level is
    ``wibble * U(-wibble, wibble)`` with wibble = 100 / wibbledecay^level, as there. All
    random numbers come from one draw (one threefry kernel, cheap to compile).
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    sizes = []
    step = mapsize
    while step >= 2:
        m = mapsize // step
        sizes.append((m * m, m * m, m * m))
        step //= 2
    total = sum(sum(s) for s in sizes)
    flat = uniform(key, (batch, max(total, 1)), minval=-1.0, maxval=1.0)
    # ``grid`` holds the map's values at the current step (every step-th row and column);
    # each level computes the square centres and edge midpoints as make_imagenet_c.py
    # does and places them into the grid of half the step by interior padding (fused
    # pads and adds; the strided scatters used before compiled into ~4x more kernels).
    grid = jnp.zeros((batch, 1, 1), jnp.float32)
    step, wibble, offset = mapsize, 100.0, 0

    def draw(count, shape):
        nonlocal offset
        out = flat[:, offset : offset + count].reshape((batch,) + shape)
        offset += count
        return wibble * wibble * out

    def place(values, row, col):
        # values (batch, m, m) at rows 2 i + row, columns 2 j + col of a (batch, 2m, 2m) grid.
        zero = jnp.zeros((), values.dtype)
        return jax.lax.pad(values, zero, ((0, 0, 0), (row, 1 - row, 1), (col, 1 - col, 1)))

    while step >= 2:
        m = mapsize // step
        corner = grid  # values at (i step, j step), shape (batch, m, m)
        square = corner + jnp.roll(corner, -1, axis=1)
        square = square + jnp.roll(square, -1, axis=2)
        centre = square / 4 + draw(m * m, (m, m))  # at (i step + half, j step + half)
        left = centre + jnp.roll(centre, 1, axis=1) + corner + jnp.roll(corner, -1, axis=2)
        across = left / 4 + draw(m * m, (m, m))  # at (i step, j step + half)
        top = centre + jnp.roll(centre, 1, axis=2) + corner + jnp.roll(corner, -1, axis=1)
        down = top / 4 + draw(m * m, (m, m))  # at (i step + half, j step)
        grid = place(corner, 0, 0) + place(across, 0, 1) + place(down, 1, 0) + place(centre, 1, 1)
        step //= 2
        wibble /= wibbledecay
    arr = grid
    arr = arr - jnp.min(arr, axis=(1, 2), keepdims=True)
    return arr / jnp.maximum(jnp.max(arr, axis=(1, 2), keepdims=True), 1e-12)


# ------------------------------------------------------------------------ colour space


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB in [0, 1] (..., 3) -> HSV in [0, 1] (..., 3), the formulas of ``skimage.color.rgb2hsv``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    delta = v - jnp.min(rgb, axis=-1)
    safe_delta = jnp.where(delta == 0, 1.0, delta)
    s = jnp.where(delta == 0, 0.0, delta / jnp.where(v == 0, 1.0, v))
    # skimage assigns red, then green, then blue: the last channel equal to the max wins.
    h = jnp.where(r == v, (g - b) / safe_delta, 0.0)
    h = jnp.where(g == v, 2.0 + (b - r) / safe_delta, h)
    h = jnp.where(b == v, 4.0 + (r - g) / safe_delta, h)
    h = jnp.mod(h / 6.0, 1.0)
    h = jnp.where(delta == 0, 0.0, h)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV in [0, 1] (..., 3) -> RGB (..., 3), the formulas of ``skimage.color.hsv2rgb``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = jnp.floor(h * 6.0)
    f = h * 6.0 - hi
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    hi = jnp.mod(hi, 6).astype(jnp.int32)
    choices = jnp.stack(
        [jnp.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))],
        axis=0,
    )  # (6, ..., 3)
    return jnp.take_along_axis(choices, hi[None, ..., None], axis=0)[0]


def rgb_to_gray(rgb: jax.Array, weights: tuple[float, float, float] = (0.299, 0.587, 0.114)) -> jax.Array:
    """Luma (..., 3) -> (..., 1). Default weights: OpenCV's COLOR_RGB2GRAY."""
    return jnp.sum(rgb * jnp.asarray(weights, rgb.dtype), axis=-1, keepdims=True)


# ------------------------------------------------------------------ Poisson sampling

# log(n!) - (n log n - n + log(2 pi n) / 2) for n = 1..15 (Stirling's remainder), from
# math.lgamma in float64; for n >= 16 the asymptotic series below is exact to float32.
_STIRLING_REMAINDER = np.array(
    [0.0] + [math.lgamma(n + 1) - (n * math.log(n) - n + 0.5 * math.log(2 * math.pi * n)) for n in range(1, 16)],
    np.float32,
)


def _log_poisson_pmf_at_floor(lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, log P(X = m)) for m = floor(lam), X ~ Poisson(lam), accurate in float32.

    Written as m log(lam / m) + (m - lam) - log(2 pi m) / 2 - remainder(m): the direct
    -lam + m log lam - lgamma(m + 1) loses ~1e-4 (relative) to cancellation at lam ~ 500.
    """
    m = jnp.floor(lam)
    safe_m = jnp.maximum(m, 1.0)
    inv = 1.0 / safe_m
    series = inv * (1.0 / 12.0 - inv * inv * (1.0 / 360.0 - inv * inv / 1260.0))
    remainder = jnp.where(m < 16, jnp.asarray(_STIRLING_REMAINDER)[jnp.clip(m, 0, 15).astype(jnp.int32)], series)
    log_pmf = safe_m * jnp.log1p((lam - m) * inv) + (m - lam) - 0.5 * jnp.log(2.0 * math.pi * safe_m) - remainder
    return m, jnp.where(m == 0, -lam, log_pmf)


def _poisson_chunk(key: jax.Array, lam: jax.Array) -> jax.Array:
    """Poisson(lam) counts (float32, shape of ``lam``), lam >= 0, by inverse transform.

    One uniform u per element; the support is visited outward from the mode
    m = floor(lam) in the fixed order m, m+1, m-1, m+2, m-2, ... and the first k at which
    the running sum of P(k) exceeds u is returned. Any fixed order of the support gives an
    exact inverse-transform sampler; this one needs ~|X - m| steps, so the loop (a
    ``while_loop`` of elementwise arithmetic, no random numbers inside) runs about
    5 sqrt(max lam) steps for a few million samples, whatever the rate. The probabilities
    come from the recurrences P(k+1) = P(k) lam / (k+1) and P(k-1) = P(k) k / lam from an
    accurate P(m), so the sampled distribution equals Poisson(lam) up to float32 rounding
    of the cumulative sum (~1e-6 in total variation). ``jax.random.poisson`` (Knuth's
    product of uniforms below lam = 10, one full-size uniform draw per step, plus
    transformed rejection above, both evaluated everywhere) is slower on CPU by an order
    of magnitude and takes minutes to compile with a traced rate.
    """
    u = uniform(key, lam.shape)
    m, log_pm = _log_poisson_pmf_at_floor(lam)
    p_mode = jnp.exp(log_pm)
    remaining = u - p_mode
    done = remaining < 0
    safe_lam = jnp.maximum(lam, 1e-30)
    # 12 standard deviations (+ 30 steps for small rates) hold all but ~1e-30 of the mass;
    # the cap only matters for the ~1e-6 of draws whose u the float32 sum never reaches.
    max_steps = jnp.ceil(12.0 * jnp.sqrt(jnp.max(lam)) + 30.0)

    def cond(carry):
        step, _, done, *_ = carry
        return (step < max_steps) & ~jnp.all(done)

    def body(carry):
        step, remaining, done, result, p_up, p_down = carry
        step = step + 1.0
        p_up = p_up * lam / (m + step)
        remaining = remaining - p_up
        hit = ~done & (remaining < 0)
        result = jnp.where(hit, m + step, result)
        done = done | hit
        below = m - step
        p_down = jnp.where(below >= 0, p_down * (below + 1.0) / safe_lam, 0.0)
        remaining = remaining - p_down
        hit = ~done & (remaining < 0)
        result = jnp.where(hit, below, result)
        return step, remaining, done | hit, result, p_up, p_down

    init = (jnp.float32(0.0), remaining, done, m, p_mode, p_mode)
    return jax.lax.while_loop(cond, body, init)[3]


# Elements per chunk of the Poisson sampler: the loop state of one chunk (~6 arrays)
# stays in the CPU cache; over the whole array at once the loop is memory bound (5x slower).
_POISSON_CHUNK = 16384


def poisson(key: jax.Array, lam: jax.Array) -> jax.Array:
    """Poisson(lam) counts as float32, same shape as ``lam`` (any shape, lam >= 0).

    The flattened rates are sampled in chunks of ``_POISSON_CHUNK`` elements (one key per
    chunk, split from ``key``; ``lax.map``), each by :func:`_poisson_chunk`.
    """
    lam = jnp.maximum(jnp.asarray(lam, jnp.float32), 0.0)
    flat = lam.reshape(-1)
    n = flat.shape[0]
    chunks = max(1, -(-n // _POISSON_CHUNK))
    size = min(n, _POISSON_CHUNK) if chunks == 1 else _POISSON_CHUNK
    flat = jnp.pad(flat, (0, chunks * size - n))
    keys = jax.random.split(key, chunks)
    out = jax.lax.map(lambda args: _poisson_chunk(*args), (keys, flat.reshape(chunks, size)))
    return out.reshape(-1)[:n].reshape(lam.shape)


# ------------------------------------------------------------ large-kernel correlation


def fft_correlate_same(x: jax.Array, kernel: np.ndarray, pad_mode: str = "reflect") -> jax.Array:
    """``conv2d_same`` by FFT: the same result (to float32 rounding) for large kernels.

    The image is padded as there, then correlated with the kernel by a real 2-D FFT of the
    padded size; the circular wrap-around only touches outputs outside the kept window
    (valid correlation), so the result is the direct correlation's, not an approximation.
    """
    kh, kw = kernel.shape
    _, h, w, _ = x.shape
    pad = ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0))
    padded = jnp.pad(x, pad, mode=pad_mode)
    ph, pw = padded.shape[1], padded.shape[2]
    # Correlation = convolution with the flipped kernel; zero-padded to the image's size.
    flipped = np.zeros((ph, pw), np.float32)
    flipped[:kh, :kw] = np.asarray(kernel, np.float32)[::-1, ::-1]
    spectrum = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.asarray(np.fft.rfft2(flipped))[None, :, :, None]
    full = jnp.fft.irfft2(spectrum, s=(ph, pw), axes=(1, 2))
    return full[:, kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w, :]


def shift_correlate_same(x: jax.Array, kernel: np.ndarray, pad_mode: str = "reflect") -> jax.Array:
    """``conv2d_same`` for small kernels as a sum of shifted copies (one fused elementwise pass).

    XLA's CPU depthwise convolution is slow; for a 3x3 kernel nine multiply-adds of
    slices are several times faster. Taps with weight 0 are skipped.
    """
    kh, kw = kernel.shape
    _, h, w, _ = x.shape
    pad = ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0))
    # The barrier makes XLA write the padded image once: otherwise it fused the padding,
    # and with it the producer chain (spatter: histogram lookup, the previous 3x3 filter),
    # into every tap, recomputing it per tap (spatter's water branch at 16 x 224 px:
    # 88 ms -> 39 ms).
    padded = jax.lax.optimization_barrier(jnp.pad(x, pad, mode=pad_mode))
    out = None
    for i in range(kh):  # static taps
        for j in range(kw):
            weight = float(kernel[i, j])
            if weight == 0.0:
                continue
            term = weight * padded[:, i : i + h, j : j + w, :]
            out = term if out is None else out + term
    return jnp.zeros_like(x) if out is None else out


# ----------------------------------------------------------------- sparse resampling


def banded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_out, T) column indices and weights of a matrix's nonzeros, T = most per row.

    Rows with fewer nonzeros are padded with index 0 and weight 0.
    """
    matrix = np.asarray(matrix)
    nnz = (matrix != 0).sum(axis=1)
    taps = max(int(nnz.max()), 1)
    index = np.zeros((matrix.shape[0], taps), np.int32)
    weight = np.zeros((matrix.shape[0], taps), np.float32)
    for row in range(matrix.shape[0]):  # static, once per size pair
        cols = np.flatnonzero(matrix[row])
        index[row, : len(cols)] = cols
        weight[row, : len(cols)] = matrix[row, cols]
    return index, weight


def apply_banded(x: jax.Array, matrix: np.ndarray, axis: int) -> jax.Array:
    """``matrix @ x`` along ``axis`` for a sparse (banded) NumPy matrix, as T gathers.

    For box resizes (2 - 4 nonzeros per row) this is far cheaper than a dense matmul.
    """
    index, weight = banded(matrix)
    shape = [1] * x.ndim
    shape[axis] = index.shape[0]
    out = None
    for t in range(index.shape[1]):  # static taps
        term = jnp.take(x, jnp.asarray(index[:, t]), axis=axis) * jnp.asarray(weight[:, t]).reshape(shape)
        out = term if out is None else out + term
    return out
