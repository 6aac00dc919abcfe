"""``robust-vision-analyze features``: per-layer mean-activation heatmaps of one image and
its corrupted version (the training-robust-networks seed's feature-map comparison), for one
model or two (``--compare``).

A heatmap is the mean over channels of a conv stage's activation (H', W', C') -> (H', W'),
for every spatial stage the model returns. The table covers every returned layer
(including the dense ``embedding``): mean and std of the activation over all its entries,
and for the corrupted image the relative change ||a_noisy - a_clean||_2 / ||a_clean||_2.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from robust_vision.analysis.common import (Context, check_index, check_model_data, class_name, model_info,
                                           parse_noise, write_summary)
from robust_vision.analysis.features import features_forward, layer_shapes
from robust_vision.runs.loading import LoadedModel
from robust_vision.io import write_csv
from robust_vision.viz._common import save_figure, style_context

FEATURE_COLUMNS = ["model", "layer", "shape", "condition", "mean", "std", "relative_change"]


def pair_activations(model: LoadedModel, clean: jax.Array, noisy: jax.Array) -> dict[str, np.ndarray]:
    """``{layer: (2, *shape)}`` activations of [clean, noisy] images, each (H, W, C), in
    the model's layer order (one jitted forward pass of the pair)."""
    forward = jax.jit(features_forward(model))
    _, feats = forward(model.variables, jnp.stack([clean, noisy]))
    feats = jax.device_get(feats)
    return {name: np.asarray(feats[name], np.float32) for name in layer_shapes(model)}


def activation_rows(model_name: str, acts: dict[str, np.ndarray], noisy_label: str) -> list[dict[str, Any]]:
    """Two rows per layer (clean, noisy): mean, std and (noisy row) the relative L2 change."""
    rows = []
    for layer, a in acts.items():
        clean, noisy = a[0].astype(np.float64), a[1].astype(np.float64)
        norm = float(np.linalg.norm(clean))
        change = float(np.linalg.norm(noisy - clean)) / norm if norm > 0 else float("nan")
        shape = "x".join(str(d) for d in a.shape[1:])
        rows.append({"model": model_name, "layer": layer, "shape": shape, "condition": "clean",
                     "mean": float(clean.mean()), "std": float(clean.std()), "relative_change": None})
        rows.append({"model": model_name, "layer": layer, "shape": shape, "condition": noisy_label,
                     "mean": float(noisy.mean()), "std": float(noisy.std()), "relative_change": change})
    return rows


def check_compare(model: LoadedModel, other: LoadedModel) -> None:
    """Both models must take images of the same shape (they see the same image)."""
    if tuple(other.input_shape) != tuple(model.input_shape):
        raise ValueError(f"--compare: {other.name} takes images of shape {other.input_shape} but {model.name} takes "
                         f"{model.input_shape}; compare models trained on the same image size and channels")


def run_features(ctx: Context, *, index: int, noise: str = "gaussian:0.3", compare: Optional[LoadedModel] = None,
                 seed: Optional[int] = None) -> dict[str, Any]:
    """Compute, write (features.csv, features.json, feature_maps.png/pdf) and return the summary."""
    from robust_vision.corruptions import get_noise

    check_index(index, ctx, "--image")
    noise_type, severity = parse_noise(noise)
    noisy_label = f"{noise_type}:{severity:g}"
    models = [ctx.model]
    if compare is not None:
        check_compare(ctx.model, compare)
        check_model_data(compare, ctx.images, ctx.class_names, f"{ctx.cfg.data.dataset_name} ({ctx.split_name} split)")
        if compare.name == ctx.model.name:
            compare.name = f"{compare.name} (compare)"
        models.append(compare)

    seed = ctx.cfg.evaluation.seed if seed is None else seed
    image = jnp.asarray(ctx.images[index])
    noisy = get_noise(noise_type)(jax.random.key(seed), image[None], severity)[0]
    acts = {m.name: pair_activations(m, image, noisy) for m in models}
    rows = [r for m in models for r in activation_rows(m.name, acts[m.name], noisy_label)]
    write_csv(ctx.out_dir / "features.csv", rows, FEATURE_COLUMNS)

    spatial = {name: [layer for layer, a in a_m.items() if a.ndim == 4] for name, a_m in acts.items()}
    if not any(spatial.values()):
        raise ValueError(f"no convolutional feature maps: the layers of {', '.join(acts)} are all dense "
                         f"({', '.join(next(iter(acts.values())))}); features.csv was written, heatmaps need a "
                         "conv model (cnn, resnet18, perturbative nets)")
    label = int(ctx.labels[index])
    summary = {
        "image": index, "true_label": label, "true_class": class_name(ctx, label),
        "noise": {"type": noise_type, "severity": severity, "seed": seed},
        "models": [model_info(m) for m in models],
        "relative_change": {m: {r["layer"]: r["relative_change"] for r in rows if r["model"] == m
                                and r["condition"] == noisy_label} for m in acts},
        "definition": "heatmap = mean over channels of a conv stage's activation; relative_change = "
                      "||a_noisy - a_clean||_2 / ||a_clean||_2 over the whole activation",
    }
    write_summary(ctx, "features", summary)
    _plot(ctx, index, label, np.asarray(image), np.asarray(noisy), noisy_label, acts, spatial, rows)
    return summary


def _show(ax, img: np.ndarray, **kwargs) -> Any:
    im = ax.imshow(img, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return im


def _plot(ctx: Context, index: int, label: int, image: np.ndarray, noisy: np.ndarray, noisy_label: str,
          acts: dict[str, dict[str, np.ndarray]], spatial: dict[str, list[str]], rows: list[dict]) -> None:
    change = {(r["model"], r["layer"]): r["relative_change"] for r in rows if r["condition"] == noisy_label}
    ncols = 1 + max(len(v) for v in spatial.values())
    nrows = 2 * len(acts)
    gray = image.shape[-1] == 1
    as_rgb = (lambda x: x[..., 0]) if gray else (lambda x: x)  # noqa: E731
    with style_context(ctx.style):
        fig = Figure(figsize=(2.1 * ncols + 0.8, 2.0 * nrows + 0.7), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for m, (name, layers_acts) in enumerate(acts.items()):
            r0 = 2 * m
            for r, (cond, img) in enumerate((("clean", image), (noisy_label, noisy))):
                ax = axes[r0 + r, 0]
                _show(ax, np.clip(as_rgb(img), 0, 1), cmap="gray" if gray else None, vmin=0, vmax=1)
                ax.set_ylabel(f"{name}\n{cond}", fontsize=9)
                if r == 0:
                    ax.set_title("input")
            for c, layer in enumerate(spatial[name], start=1):
                maps = layers_acts[layer].mean(axis=-1)  # (2, H', W'): mean over channels
                vmin, vmax = float(maps.min()), float(maps.max())
                top = _show(axes[r0, c], maps[0], cmap="viridis", vmin=vmin, vmax=vmax)
                _show(axes[r0 + 1, c], maps[1], cmap="viridis", vmin=vmin, vmax=vmax)
                h, w, ch = layers_acts[layer].shape[1:]
                axes[r0, c].set_title(f"{layer} ({h}x{w}x{ch})", fontsize=9)
                axes[r0 + 1, c].set_title(f"rel. change {change[(name, layer)]:.2f}", fontsize=8)
                fig.colorbar(top, ax=[axes[r0, c], axes[r0 + 1, c]], shrink=0.8, aspect=25, pad=0.02)
            for c in range(1 + len(spatial[name]), ncols):
                axes[r0, c].set_visible(False)
                axes[r0 + 1, c].set_visible(False)
        fig.suptitle(f"Mean activation over channels: {ctx.split_name} image {index} "
                     f"(class {class_name(ctx, label)}), clean vs {noisy_label}")
        save_figure(fig, ctx.out_dir, "feature_maps", ctx.dpi, ctx.formats)
