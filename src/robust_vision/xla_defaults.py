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

Never on an accelerator: when JAX will run on a GPU or TPU (``JAX_PLATFORMS`` names one first,
or is unset and a CUDA / ROCm / TPU plugin of JAX is installed: JAX then prefers it), nothing is
set, so an accelerator process runs exactly under XLA's own options (its CPU-side programs
included).

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so :func:`apply_cpu_defaults`
runs on ``import robust_vision`` (before any computation). It never overrides a choice: an
``xla_cpu_experimental_ynn_fusion_type`` already in ``XLA_FLAGS`` wins, and
``ROBUST_VISION_XLA_DEFAULTS=off`` leaves ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from robust_vision.compile_cache import OFF_VALUES  # does not import JAX

ENV_VAR = "ROBUST_VISION_XLA_DEFAULTS"
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


# Modules whose presence makes JAX prefer an accelerator when JAX_PLATFORMS is unset (the CUDA
# and ROCm plugins of jax 0.4.3x-0.11, and libtpu).
ACCELERATOR_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin",
                       "jax_rocm6_plugin", "libtpu")


def accelerator_expected(environ=os.environ) -> bool:
    """Whether JAX will pick a GPU / TPU backend: ``JAX_PLATFORMS``'s first entry is not ``cpu``,
    or it is unset and an accelerator plugin (``ACCELERATOR_PLUGINS``) is importable. Does not
    import JAX."""
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] != "cpu"
    return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


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
    ``ROBUST_VISION_XLA_DEFAULTS`` is off, when JAX will run on an accelerator
    (:func:`accelerator_expected`; nothing is set), or when JAX's backend was started before this
    call (``XLA_FLAGS`` is then read already), True otherwise. Idempotent.
    """
    if os.environ.get(ENV_VAR, "").strip().lower() in OFF_VALUES - {""}:  # unset or empty: on
        return False
    if accelerator_expected():
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
