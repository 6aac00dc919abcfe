"""Input checks and small helpers shared by the corruption modules.

Every public corruption validates its input here (outside any ``jit``), so that a bad
call fails with a message that names the problem and the fix instead of an XLA error.
The checks only look at static properties (rank, dtype, Python-level severity values),
so they also work when the public function is called inside a user's ``jit``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def check_images(images: Any, name: str = "images") -> jax.Array:
    """Check a batch of images and return it as a float32 array.

    Args:
        images: array of shape (B, H, W, C), floating dtype, values in [0, 1].

    Returns:
        ``images`` as float32, shape unchanged.

    Raises:
        ValueError: wrong rank, integer dtype or an empty spatial size.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of shape (B, H, W, C) (NHWC), got shape {tuple(images.shape)}; "
            "add a batch axis with images[None] or a channel axis with images[..., None]."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating point in [0, 1], got dtype {images.dtype}; "
            "convert with images.astype(np.float32) / 255."
        )
    if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{name} has an empty spatial or channel axis: shape {tuple(images.shape)}.")
    return jnp.asarray(images, dtype=jnp.float32)


def is_traced(value: Any) -> bool:
    """True when ``value`` is a JAX tracer (its value is unknown at trace time)."""
    return isinstance(value, jax.core.Tracer)


def check_unit_severity(severity: Any) -> jax.Array:
    """Check a continuous severity and return it as a float32 scalar array.

    A concrete value must lie in [0, 1]; a traced value (inside ``jit`` / ``vmap``) cannot
    be checked and is clipped to [0, 1] by the caller's computation instead.
    """
    if is_traced(severity):
        if jnp.ndim(severity) != 0:
            raise ValueError(f"severity must be a scalar, got shape {jnp.shape(severity)}.")
        return jnp.clip(jnp.asarray(severity, jnp.float32), 0.0, 1.0)
    arr = np.asarray(severity)
    if arr.ndim != 0:
        raise ValueError(
            f"severity must be a scalar in [0, 1], got an array of shape {arr.shape}; "
            "call the corruption once per severity level."
        )
    value = float(arr)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"severity must be in [0, 1] (0 = clean), got {value}.")
    return jnp.asarray(value, jnp.float32)


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the valid names.

    Subclasses both KeyError (a failed lookup) and ValueError (a bad argument) so that
    callers can catch either; ``str()`` gives the plain message (KeyError would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def lookup(registry: Mapping[str, Callable[..., Any]], name: str, kind: str) -> Callable[..., Any]:
    """``registry[name]`` with an error that lists the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        raise UnknownNameError(f"unknown {kind} {name!r}; valid names: {valid}") from None
