"""``robust-vision-analyze boundary``: a 2-D slice of input space around one image,
coloured by the predicted class (the local-learning seed's decision-boundary figure).

The plane is spanned by

* u, the adversarial direction: the input gradient of the loss at the image (the margin
  loss max_{j != y} z_j - z_y by default: unlike cross-entropy it does not vanish when the
  softmax saturates), and
* v, a random Gaussian direction (fixed key) made orthogonal to u by Gram-Schmidt.

Both are scaled to an RMS of 1 per pixel value (L2 norm sqrt(H*W*C)), so a coordinate
(alpha, beta) is the root-mean-square change of the pixel values in [0, 1] units, whatever
the image size. Grid images are x + alpha u + beta v clipped to [0, 1]. The grid is
evaluated by one jitted call that maps over fixed-size chunks of grid points (no Python
loop per point).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from robust_vision.analysis.common import Context, check_index, class_name, parse_noise, write_summary
from robust_vision.attacks._common import get_attack_loss, loss_grad_logits
from robust_vision.io import write_csv
from robust_vision.viz._common import figure_legend, save_figure, style_context

BOUNDARY_COLUMNS = ["center", "alpha", "beta", "predicted", "predicted_class", "confidence"]
# Points per half-axis of the fine 1-D scans that locate the nearest boundary along u and v.
_AXIS_POINTS = 1000
_RAYS = ("adversarial_plus", "adversarial_minus", "random_plus", "random_minus")


@partial(jax.jit, static_argnames=("forward", "loss"))
def _directions(forward, variables, image: jax.Array, label: jax.Array, key: jax.Array, loss: str):
    logits_fn = lambda x: forward(variables, x)  # noqa: E731
    _, grad, _ = loss_grad_logits(logits_fn, get_attack_loss(loss), image[None], label[None])
    g = grad[0].astype(jnp.float32)
    g_norm = jnp.linalg.norm(g)
    u = g / jnp.maximum(g_norm, 1e-30)
    r = jax.random.normal(key, g.shape, jnp.float32)
    r = r - jnp.vdot(r, u) * u  # Gram-Schmidt: remove the component along u
    v = r / jnp.linalg.norm(r)
    scale = jnp.sqrt(jnp.float32(g.size))
    return u * scale, v * scale, g_norm


def plane_directions(forward, variables, image: jax.Array, label: int, key: jax.Array,
                     loss: str = "margin") -> tuple[jax.Array, jax.Array, float]:
    """(u, v, gradient L2 norm): orthogonal directions of shape (H, W, C), each with
    RMS 1 per pixel value (L2 norm sqrt(H*W*C)).

    u is the input gradient of ``loss`` ("margin" or "ce") of ``forward(variables, x)`` at
    ``image`` (H, W, C) for ``label``; v is N(0, 1) noise from ``key`` minus its projection
    on u. One jitted computation.
    """
    u, v, g_norm = _directions(forward, variables, image, jnp.asarray([label], jnp.int32)[0], key, loss)
    g_norm = float(g_norm)
    if not np.isfinite(g_norm) or g_norm == 0.0:
        raise ValueError(f"the {loss} loss gradient at this image is {g_norm}: no adversarial direction "
                         "(saturated softmax?); use --loss margin or pick another --index")
    return u, v, g_norm


@partial(jax.jit, static_argnames=("forward", "chunk"))
def _slice_predictions(forward, variables, image: jax.Array, u: jax.Array, v: jax.Array, coords: jax.Array,
                       chunk: int) -> tuple[jax.Array, jax.Array]:
    """Predicted class and confidence at every (alpha, beta) of ``coords`` (P, 2)."""
    p = coords.shape[0]
    n_chunks = -(-p // chunk)
    padded = jnp.concatenate([coords, jnp.zeros((n_chunks * chunk - p, 2), coords.dtype)])

    def one_chunk(ab):
        a, b = ab[:, 0, None, None, None], ab[:, 1, None, None, None]
        images = jnp.clip(image[None] + a * u[None] + b * v[None], 0.0, 1.0)
        probs = jax.nn.softmax(forward(variables, images).astype(jnp.float32), axis=-1)
        return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)

    pred, conf = jax.lax.map(one_chunk, padded.reshape(n_chunks, chunk, 2))
    return pred.reshape(-1)[:p], conf.reshape(-1)[:p]


def grid_coords(span: float, resolution: int) -> np.ndarray:
    """(R,) coordinates in [-span, span]; R odd, so the middle one is exactly 0 (the image)."""
    half = (resolution - 1) // 2
    return span * (np.arange(resolution, dtype=np.float64) - half) / half


def axis_rays(span: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, coords): the distances t (T,) in (0, span] and the (4 T, 2) points along +u, -u,
    +v and -v (in that order) of the fine 1-D scans, resolution span / 1000."""
    t = np.linspace(0.0, span, _AXIS_POINTS + 1)[1:]
    zeros = np.zeros_like(t)
    rays = [(t, zeros), (-t, zeros), (zeros, t), (zeros, -t)]
    return t, np.concatenate([np.stack(ab, axis=1) for ab in rays])


def nearest_boundaries(t: np.ndarray, ray_pred: np.ndarray, origin_class: int) -> dict[str, Optional[float]]:
    """Distance from the origin to the first change of the predicted class along +u, -u, +v
    and -v (None when the class does not change within the scanned span).

    Args:
      t: (T,) distances of the scan points; ray_pred: (4 T,) predicted classes along the
        rays of :func:`axis_rays`.
    """
    out: dict[str, Optional[float]] = {}
    for row, name in zip(ray_pred.reshape(4, t.size), _RAYS):
        changed = np.flatnonzero(row != origin_class)
        out[name] = float(t[changed[0]]) if changed.size else None
    return out


def class_colormap(num_classes: int) -> ListedColormap:
    """Discrete colours, one per class (tab10 / tab20, else evenly spaced turbo)."""
    if num_classes <= 10:
        colors = colormaps["tab10"].colors[:num_classes]
    elif num_classes <= 20:
        colors = colormaps["tab20"].colors[:num_classes]
    else:
        colors = colormaps["turbo"](np.linspace(0.05, 0.95, num_classes))
    return ListedColormap(colors, name="classes")


def _show_image(ax, image: np.ndarray, title: str) -> None:
    img = image[..., 0] if image.shape[-1] == 1 else image
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _marker_handle(marker: str, label: str) -> Line2D:
    return Line2D([], [], marker=marker, ls="none", color="white", mec="black", ms=9, label=label)


def _draw_slice(ax, pred: np.ndarray, span: float, cmap: ListedColormap, distances: dict[str, Optional[float]],
                title: str) -> None:
    k = cmap.N
    ax.imshow(pred, cmap=cmap, vmin=-0.5, vmax=k - 0.5, origin="lower", extent=(-span, span, -span, span),
              interpolation="nearest", aspect="equal")
    ax.axhline(0.0, color="white", lw=0.6, ls="--")
    ax.axvline(0.0, color="white", lw=0.6, ls="--")
    ax.plot([0.0], [0.0], marker="*", ms=12, color="white", mec="black", mew=0.8, ls="none")
    ends = {"adversarial_plus": (1, 0), "adversarial_minus": (-1, 0), "random_plus": (0, 1), "random_minus": (0, -1)}
    for name, (sa, sb) in ends.items():
        d = distances.get(name)
        if d is None:
            continue
        ax.plot([sa * d], [sb * d], marker="X", ms=7, color="black", mec="white", mew=0.6, ls="none")
        ax.annotate(f"{d:.3g}", (sa * d, sb * d), textcoords="offset points",
                    xytext=(4 if sa >= 0 else -4, 4 if sb >= 0 else -10),
                    ha="left" if sa >= 0 else "right", fontsize=8, color="black",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_xlabel("adversarial direction u (RMS pixel change)")
    ax.set_ylabel("random direction v, orthogonal to u")
    ax.set_title(title)
    ax.grid(False)


def _check_slice(span: float, resolution: int) -> None:
    if not span > 0:
        raise ValueError(f"--span {span}: must be > 0 (RMS pixel change at the edge of the slice, e.g. 0.5)")
    if resolution < 3 or resolution % 2 == 0:
        raise ValueError(f"--resolution {resolution}: use an odd number >= 3 so that the grid holds the image "
                         "itself at its centre, e.g. 101")


def run_boundary(ctx: Context, *, index: int, span: float = 0.5, resolution: int = 101, noise: Optional[str] = None,
                 loss: str = "margin", seed: Optional[int] = None, chunk: int = 256) -> dict[str, Any]:
    """Compute, write (boundary.csv, boundary.json, boundary.png/pdf) and return the summary."""
    check_index(index, ctx, "--index")
    _check_slice(span, resolution)
    noise_spec = parse_noise(noise) if noise else None
    model = ctx.model
    seed = ctx.cfg.evaluation.seed if seed is None else seed
    key_dir, key_noise = jax.random.split(jax.random.key(seed))
    image = jnp.asarray(ctx.images[index])
    label = int(ctx.labels[index])
    u, v, g_norm = plane_directions(model.forward, model.variables, image, label, key_dir, loss)

    centers = {"clean": image}
    if noise_spec is not None:
        from robust_vision.corruptions import get_noise

        name, severity = noise_spec
        centers[f"{name}:{severity:g}"] = get_noise(name)(key_noise, image[None], severity)[0]

    coords1d = grid_coords(span, resolution)
    aa, bb = np.meshgrid(coords1d, coords1d)  # rows: beta, columns: alpha
    grid = np.stack([aa.ravel(), bb.ravel()], axis=1)  # float64: exact coordinates in the table
    t, rays = axis_rays(span)
    # The grid and the axis scans in one call: one compilation serves every center.
    coords = jnp.asarray(np.concatenate([grid, rays]), jnp.float32)
    chunk = max(1, min(chunk, coords.shape[0]))
    n_grid = grid.shape[0]
    mid = (resolution // 2) * resolution + resolution // 2
    rows, results = [], {}
    for cname, center in centers.items():
        pred, conf = jax.device_get(_slice_predictions(model.forward, model.variables, center, u, v, coords, chunk))
        pred, conf, ray_pred = np.asarray(pred[:n_grid]), np.asarray(conf[:n_grid]), np.asarray(pred[n_grid:])
        origin_class = int(pred[mid])
        results[cname] = {"pred": pred.reshape(resolution, resolution), "origin_class": origin_class,
                          "origin_confidence": float(conf[mid]),
                          "distances": nearest_boundaries(t, ray_pred, origin_class),
                          "classes_in_slice": sorted(int(c) for c in np.unique(pred)),
                          "fraction_origin_class": float(np.mean(pred == origin_class))}
        rows += [{"center": cname, "alpha": float(a), "beta": float(b), "predicted": int(p),
                  "predicted_class": class_name(ctx, int(p)), "confidence": float(c)}
                 for (a, b), p, c in zip(grid, pred, conf)]
    write_csv(ctx.out_dir / "boundary.csv", rows, BOUNDARY_COLUMNS)

    summary = {
        "index": index, "true_label": label, "true_class": class_name(ctx, label), "span": span,
        "resolution": resolution, "loss": loss, "seed": seed, "gradient_norm": g_norm,
        "units": "alpha, beta and distances are RMS changes of the pixel values in [0, 1] "
                 "(directions scaled to L2 norm sqrt(H*W*C)); grid images are clipped to [0, 1]",
        "noise": None if noise_spec is None else {"type": noise_spec[0], "severity": noise_spec[1]},
        "centers": {c: {"origin_class_name": class_name(ctx, r["origin_class"]),
                        **{k: r[k] for k in ("origin_class", "origin_confidence", "distances", "classes_in_slice",
                                             "fraction_origin_class")}}
                    for c, r in results.items()},
    }
    write_summary(ctx, "boundary", summary)
    _plot(ctx, index, label, centers, results, span)
    return summary


def _plot(ctx: Context, index: int, label: int, centers: dict[str, jax.Array], results: dict[str, dict],
          span: float) -> None:
    k = ctx.model.num_classes
    cmap = class_colormap(k)
    present = sorted({c for r in results.values() for c in r["classes_in_slice"]})
    with style_context(ctx.style):
        n = len(centers)
        fig = Figure(figsize=(3.0 + 4.6 * n, 5.0), layout="constrained")
        axes = fig.subplots(1, 2 * n, width_ratios=[0.55, 1.0] * n, squeeze=False)[0]
        for i, (cname, center) in enumerate(centers.items()):
            r = results[cname]
            what = "image" if cname == "clean" else f"{cname} noisy image"
            _show_image(axes[2 * i], np.asarray(center),
                        f"{what}\npredicted {class_name(ctx, r['origin_class'])} ({r['origin_confidence']:.2f})")
            _draw_slice(axes[2 * i + 1], r["pred"], span, cmap, r["distances"],
                        f"slice around the {'image' if cname == 'clean' else cname + ' image'}")
        fig.suptitle(f"{ctx.model.name}: {ctx.split_name} image {index}, true class {class_name(ctx, label)}")
        handles = [Patch(facecolor=cmap(c), edgecolor="0.3", label=f"class {class_name(ctx, c)}") for c in present]
        handles.append(_marker_handle("*", "origin (the image)"))
        handles.append(_marker_handle("X", "nearest boundary along an axis"))
        figure_legend(fig, handles, ncols_max=6)
        save_figure(fig, ctx.out_dir, "boundary", ctx.dpi, ctx.formats)
