"""The unit that flows from the input pipeline to every consumer (trainer, evaluators).

A ``Batch`` always has the same shape within a run so every jitted consumer compiles once:
the last partial batch is padded and ``mask`` marks the real examples, so each example counts
exactly once in every whole-dataset reduction. Images travel as uint8 (what sources store and
the pipeline decodes) or float32 in [0, 1] (arrays already in memory); ``to_unit_float`` turns
either into float32 [0, 1] on device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """images (B, H, W, C) uint8 in [0, 255] or float32 in [0, 1]; labels (B,) int32;
    mask (B,) float32, 1 for real examples and 0 for padding."""

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


_UNIT_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)  # uint8 value -> float32 in [0, 1]


def to_unit_float(images):
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged.
    Works on NumPy and JAX arrays (use it inside jitted code so the conversion runs on device)."""
    if images.dtype == np.uint8:
        # A lookup of the 256 values x / 255 (correctly rounded, computed once by NumPy), not a
        # division on device: XLA turns x / 255 into x * (1 / 255), 1 ulp off on half the values.
        # So host (read_examples) and device (the streaming trainer) give the same float32 pixels.
        if isinstance(images, np.ndarray):
            return _UNIT_VALUES[images]
        import jax.numpy as jnp

        return jnp.asarray(_UNIT_VALUES)[images]
    return images.astype(np.float32)
