"""Per-layer activations of a restored model (eval mode), batched and jitted.

Every model of the registry has one forward path ``model(x, return_features=True)`` ->
``(logits, {stage name: activation})`` whose last entry is ``"embedding"`` (the
representation feeding the classifier). :class:`~robust_vision.runs.loading.LoadedModel`
only exposes the logits, so the features forward is rebuilt here from the same pieces
(the eval-mode graph merged with the restored parameters and model state).

Under ``jit`` a returned dict comes back with its keys sorted, so the model's own order of
the layers (input -> output) is recorded while tracing (:func:`layer_shapes`) and layers
are always selected by name.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.batched import collect_per_example
from robust_vision.runs.loading import LoadedModel

# (variables, images) -> (logits (B, K), {layer: (B, ...)})
FeaturesForward = Callable[[object, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def features_forward(model: LoadedModel) -> FeaturesForward:
    """Pure eval-mode forward ``(variables, images) -> (logits, features)``.

    ``variables`` is ``model.variables`` (params, model_state) or a tree of the same
    structure (e.g. pruned parameters); images (B, H, W, C) float32 in [0, 1]. Not jitted:
    callers close over it inside their own jitted computations. Build it once per model
    and reuse it, so that jitted callers keyed on it compile once.
    """
    parts = model.parts

    def forward(variables, images: jax.Array):
        params, model_state = variables
        return parts.merge(params, model_state, train=False)(images, return_features=True)

    return forward


def layer_shapes(model: LoadedModel) -> dict[str, tuple[int, ...]]:
    """``{layer name: per-example activation shape}`` in the model's own order (input to
    output; the last one is ``"embedding"``). Conv stages have shape (H', W', C'), dense
    ones (D,). Nothing is computed: the forward pass is only traced (``jax.eval_shape``)."""
    forward = features_forward(model)
    order: list[str] = []

    def traced(variables, x):
        _, feats = forward(variables, x)
        order.extend(feats)  # the Python dict, before JAX flattens it with sorted keys
        return feats

    blank = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    shapes = jax.eval_shape(traced, model.variables, blank)
    return {name: tuple(int(d) for d in shapes[name].shape[1:]) for name in order}


def describe_layers(shapes: dict[str, tuple[int, ...]]) -> str:
    """"stage1 (8x8x8), stage2 (4x4x16), embedding (16)" for error messages."""
    return ", ".join(f"{name} ({'x'.join(str(d) for d in shape)})" for name, shape in shapes.items())


def check_layer(shapes: dict[str, tuple[int, ...]], layer: str, model_name: str) -> None:
    """ValueError naming the available layers when ``layer`` is not one of them."""
    if layer not in shapes:
        raise ValueError(f"--layer {layer!r}: {model_name} has no such layer; available layers: "
                         f"{describe_layers(shapes)}")


def collect_layers(model: LoadedModel, images: np.ndarray, layers: Sequence[str], *,
                   batch_size: int = 256, flatten: bool = False) -> dict[str, np.ndarray]:
    """Activations of ``layers`` for every image, in order.

    Args:
      images: (N, H, W, C) float32 in [0, 1] (host array).
      layers: names from :func:`layer_shapes`; only these are transferred off the device.
      batch_size: images per compiled call (the last batch is padded, the padding dropped).
      flatten: return (N, prod(shape)) per layer instead of (N, *shape) (conv feature maps
        flattened per example, e.g. for a covariance spectrum).

    Returns:
      ``{layer: float32 array}`` with N rows.
    """
    forward = features_forward(model)
    wanted = tuple(layers)

    # The weights are an argument, not closed-over constants: XLA would otherwise fold a
    # copy of every weight into the compiled program.
    @jax.jit
    def select(variables, x):
        _, feats = forward(variables, x)
        out = {name: feats[name] for name in wanted}
        return {k: v.reshape(v.shape[0], -1) if flatten else v for k, v in out.items()}

    variables = model.variables
    fn = lambda x, y, i: select(variables, x)  # noqa: E731

    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to collect activations from (the split is empty)")
    labels = np.zeros(n, np.int32)  # the batching helper carries labels; the features ignore them
    out = collect_per_example(fn, images, labels, max(1, min(batch_size, n)))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}
