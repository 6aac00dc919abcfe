"""XLA:CPU options the project sets by default, before JAX starts its CPU backend.

One option today: convolutions go to XLA's Eigen kernels instead of YNNPACK
(``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``). jaxlib 0.10's XLA:CPU hands
large convolutions to YNNPACK, whose weight-gradient convolution (the batch is the contracted
"feature" dimension and the kernel is the whole image) ran on one core, 2-4x slower than Eigen
on a 2-core x86 machine, and its forward and input-gradient convolutions were slower too
(``benchmarks/train_throughput.py --compare-xla-default`` measures the whole train step both
ways; docs/MODELS.md has the figures). Only where XLA compiles for the CPU does it change
anything: GPU and TPU compilers ignore ``xla_cpu_*`` options. Numerically both are float32
convolutions; only the summation order differs.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so :func:`apply_cpu_defaults`
runs on ``import robust_vision`` (before any computation). It never overrides a choice: an
``xla_cpu_experimental_ynn_fusion_type`` already in ``XLA_FLAGS`` wins, and
``ROBUST_VISION_XLA_DEFAULTS=off`` leaves ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import os
import sys

from robust_vision.compile_cache import OFF_VALUES  # does not import JAX

ENV_VAR = "ROBUST_VISION_XLA_DEFAULTS"
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def _backend_started() -> bool:
    """Whether JAX has created a backend already (then XLA_FLAGS is read and changes are moot)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return True  # cannot tell: do not pretend the flags took effect


def apply_cpu_defaults() -> bool:
    """Append :data:`CPU_FLAGS` to ``XLA_FLAGS`` (each unless its option is set there already).

    Returns whether the defaults are in force for this process: False when
    ``ROBUST_VISION_XLA_DEFAULTS`` is off, or when JAX's backend was started before this call
    (``XLA_FLAGS`` is then read already), True otherwise. Idempotent.
    """
    if os.environ.get(ENV_VAR, "").strip().lower() in OFF_VALUES - {""}:  # unset or empty: on
        return False
    current = os.environ.get("XLA_FLAGS", "")
    missing = [flag for flag in CPU_FLAGS if flag.split("=", 1)[0] not in current]
    if missing:
        if _backend_started():
            return False
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return all(flag in os.environ["XLA_FLAGS"] for flag in CPU_FLAGS)


def without_cpu_defaults(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with :data:`CPU_FLAGS` removed: the environment for a
    child process that should run under XLA's own defaults (with ``ROBUST_VISION_XLA_DEFAULTS=off``)."""
    return " ".join(f for f in flags.split() if f not in CPU_FLAGS)
