"""robust-vision: train image classifiers that stay correct and confident under degraded
input, and measure that robustness honestly (JAX, Flax NNX, Optax, Orbax)."""

__version__ = "0.1.0"

# Before any JAX computation: XLA reads XLA_FLAGS when it starts its first backend.
from robust_vision.xla_defaults import apply_cpu_defaults as _apply_cpu_defaults  # noqa: E402

_apply_cpu_defaults()
