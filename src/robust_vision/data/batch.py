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


_INV_255 = np.float32(1.0 / 255.0)


def to_unit_float(images):
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged.
    Works on NumPy and JAX arrays (use it inside jitted code so the conversion runs on device)."""
    if images.dtype == np.uint8:
        # A multiplication, not a division: XLA turns x / 255 into x * (1 / 255), NumPy does not, and
        # the two differ by 1 ulp on half the values; written as a product, host (load_dataset) and
        # device (the streaming trainer) give the same float32 pixels on every backend (0 -> 0, 255 -> 1).
        return images.astype(np.float32) * _INV_255
    return images.astype(np.float32)
