"""Pixel conversions shared by the record sources and the input pipeline (NumPy only, no JAX).

``preprocess`` brings one image to a size and channel count; ``resize_linear`` is the one resize
of float images (the weights of ``jax.image.resize(..., "linear", antialias=True)``).
"""

from __future__ import annotations

import functools

import numpy as np

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's convert("L")


@functools.lru_cache(maxsize=64)
def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) float32 weights of ``jax.image.resize(..., "linear", antialias=True)`` along
    one axis: a triangle kernel at half-pixel centres, widened by the scale when shrinking,
    normalised per output pixel (the formula of jax's ``scale_and_translate``)."""
    f32 = np.float32
    inv_scale = f32(1.0) / (f32(n_out) / f32(n_in))
    kernel_scale = max(inv_scale, f32(1.0))
    centres = (np.arange(n_out, dtype=f32) + f32(0.5)) * inv_scale - f32(0.5)
    x = np.abs(centres[None, :] - np.arange(n_in, dtype=f32)[:, None]) / kernel_scale
    w = np.maximum(f32(0.0), f32(1.0) - x)
    total = w.sum(0, keepdims=True, dtype=f32)
    w = np.where(np.abs(total) > 1000 * np.finfo(f32).eps, w / np.where(total != 0, total, f32(1.0)), f32(0.0))
    return np.where(((centres >= -0.5) & (centres <= n_in - 0.5))[None, :], w, f32(0.0)).astype(f32)


def resize_linear(images: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of float images (..., H, W, C) in [0, 1] -> (..., H', W', C')
    float32, clipped to [0, 1]: ``jax.image.resize(..., "linear", antialias=True)`` on the host
    (same weights; sums in another order, so equal to ~1e-7). The one resize of float images."""
    h, w = images.shape[-3], images.shape[-2]
    out = np.einsum("...hwc,hH->...Hwc", images.astype(np.float32), _linear_weights(h, int(image_size[0])))
    out = np.einsum("...Hwc,wW->...HWc", out, _linear_weights(w, int(image_size[1])))
    return np.clip(out, 0.0, 1.0)


def preprocess(image: np.ndarray, image_size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """One image (H, W, C) uint8 (or float32 in [0, 1]) -> (H', W', C') of the same dtype.

    C' = ``channels`` or C (RGB -> gray with the ITU-R 601 luma weights, gray -> RGB by
    repetition); (H', W') = ``image_size`` or (H, W): uint8 images are resized with Pillow's
    antialiased bilinear filter (they stay uint8), float images with ``resize_linear``."""
    if image.ndim == 2:
        image = image[..., None]
    if channels is not None and channels != image.shape[-1]:
        if channels == 1:
            gray = image.astype(np.float32) @ _LUMA_WEIGHTS
            image = (np.rint(gray).astype(np.uint8) if image.dtype == np.uint8 else gray)[..., None]
        else:
            image = np.repeat(image, 3, axis=-1)
    if image_size is not None and tuple(image.shape[:2]) != tuple(image_size):
        from PIL import Image

        if image.dtype != np.uint8:
            return resize_linear(image, image_size)
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out = np.asarray(pil.resize((int(image_size[1]), int(image_size[0])), Image.BILINEAR))
        image = out[..., None] if out.ndim == 2 else out
    return image
