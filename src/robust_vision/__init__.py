"""robust-vision: train image classifiers that stay correct and confident under degraded
input, and measure that robustness honestly (JAX, Flax NNX, Optax, Orbax)."""

__version__ = "0.1.0"
