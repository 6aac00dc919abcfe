"""The project's XLA:CPU defaults (robust_vision/xla_defaults.py): set on import, before JAX's
backend starts, never over a user's own choice, and off with ROBUST_VISION_XLA_DEFAULTS=off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# Prints XLA_FLAGS after `import robust_vision`, and whether XLA:CPU handed a training-sized
# convolution to YNNPACK (its default in jaxlib 0.10) or kept it on Eigen.
_PROBE = r"""
import json, os, sys
import robust_vision
from robust_vision.xla_defaults import apply_cpu_defaults
import jax, jax.numpy as jnp
from jax import lax
conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.zeros((128, 32, 32, 64)), jnp.zeros((3, 3, 64, 64))).compile().as_text()
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "ynn_conv": "ynn" in hlo,
                  "again": apply_cpu_defaults(), "jaxlib": tuple(int(v) for v in jax.__version__.split(".")[:2])}))
"""


def _probe(**env_changes: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("ROBUST_VISION_XLA_DEFAULTS", None)
    env.update({k: v for k, v in env_changes.items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_sets_the_cpu_defaults_before_the_backend_starts():
    out = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert out["flags"] == "--xla_force_host_platform_device_count=2 " + FLAG  # appended, others kept
    assert out["ynn_conv"] is False  # the convolution stayed on Eigen
    assert out["again"] is True  # idempotent: nothing appended twice


def test_off_switch_and_the_users_own_choice_win():
    off = _probe(ROBUST_VISION_XLA_DEFAULTS="off")
    assert off["flags"] == "" and off["again"] is False
    # XLA's own default: YNNPACK convolutions from jaxlib 0.10 on (0.9 kept them on Eigen anyway).
    assert off["ynn_conv"] is (tuple(off["jaxlib"]) >= (0, 10))
    own = _probe(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
    assert own["flags"] == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
    assert own["ynn_conv"] is (tuple(own["jaxlib"]) >= (0, 10)) and own["again"] is False


def test_too_late_once_the_backend_runs(monkeypatch):
    import jax.numpy as jnp

    from robust_vision import xla_defaults

    jnp.zeros(1).block_until_ready()  # the backend is up in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert xla_defaults.apply_cpu_defaults() is False  # cannot take effect any more: says so
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"  # and changes nothing


def test_without_cpu_defaults_strips_only_the_projects_flags():
    from robust_vision.xla_defaults import without_cpu_defaults

    assert without_cpu_defaults(f"--xla_force_host_platform_device_count=2 {FLAG}") == \
        "--xla_force_host_platform_device_count=2"
    assert without_cpu_defaults("") == ""


def test_never_set_when_jax_will_run_on_an_accelerator(monkeypatch):
    """JAX_PLATFORMS naming a GPU / TPU first, or unset with a CUDA / TPU plugin installed: the
    defaults are not applied and XLA_FLAGS is left alone; JAX_PLATFORMS=cpu keeps them."""
    from robust_vision import xla_defaults

    assert xla_defaults.accelerator_expected({"JAX_PLATFORMS": "cuda"})
    assert xla_defaults.accelerator_expected({"JAX_PLATFORMS": "tpu,cpu"})
    assert not xla_defaults.accelerator_expected({"JAX_PLATFORMS": "cpu"})
    assert not xla_defaults.accelerator_expected({"JAX_PLATFORMS": "cpu,cuda"})
    monkeypatch.setattr(xla_defaults.importlib.util, "find_spec",
                        lambda name: object() if name == "jax_cuda13_plugin" else None)
    assert xla_defaults.accelerator_expected({})  # the CUDA 13 plugin of the GPU image: JAX prefers it
    assert not xla_defaults.accelerator_expected({"JAX_PLATFORMS": "cpu"})
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv(xla_defaults.ENV_VAR, raising=False)
    assert xla_defaults.apply_cpu_defaults() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"  # untouched
    out = _probe(JAX_PLATFORMS="cuda,cpu", XLA_FLAGS="")  # a subprocess asking for a GPU first
    assert out["flags"] == "" and out["again"] is False
