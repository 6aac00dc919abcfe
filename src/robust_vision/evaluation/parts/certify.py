"""The certification part: certified L2 accuracy of the Gaussian-smoothed classifier
(randomized smoothing, Cohen et al. 2019) on the first ``evaluation.certify_max_examples``
examples. Tables: certified_accuracy.csv, certified_examples.csv
(``tables.SUITE_TABLES["certification"]``)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import jax
import numpy as np

from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.evaluation.suite import LogitsFn, part_key



def radii_grid(sigmas: Sequence[float], n: int, alpha: float, step: float = 0.05) -> list[float]:
    """L2 radii 0, step, 2 step, ... up to the largest certifiable radius
    max(sigma) * Phi^-1(alpha^(1/n)) (a multiple of ``step``, so 0.25, 0.5, ... are in it)."""
    from scipy import stats

    r_max = max(sigmas) * float(stats.norm.ppf(alpha ** (1.0 / n)))
    count = int(math.floor(max(r_max, 0.0) / step)) + 2
    return [round(k * step, 6) for k in range(count)]


def certification_stream(logits_fn: LogitsFn, batches: Iterable[Batch], *, model_name: str,
                         sigmas: Sequence[float], key: jax.Array, n0: int = 100, n: int = 10_000,
                         alpha: float = 0.001, batch_size: int = 512, radii: Sequence[float] | None = None,
                         prefetch: int = 2) -> tuple[list[dict], list[dict]]:
    """Certified L2 accuracy of the Gaussian-smoothed ``logits_fn`` (CERTIFY of Cohen et al.),
    from one pass over ``batches``.

    Args:
      batches: fixed-size masked ``Batch``es of the examples to certify (each costs n0 + n
        forward passes: pass a stream of the first few hundred), images uint8 or float32 in
        [0, 1]; prefetched to the device ``prefetch`` deep. Batch j is one chunk of images
        certified together (padding dropped).
      sigmas: smoothing noise std (pixel units), one certification each.
      key: the part key; sigma uses fold_in(key, round(1e6 sigma)), chunk j of it fold_in(., j).
      n0, n, alpha: selection draws, estimation draws, failure probability.
      batch_size: noisy images per forward pass (``certify.sample_counts``).
      radii: radius grid of the curve (default :func:`radii_grid`).
    Returns: (rows of certified_accuracy.csv: one per sigma x radius with the certified
      accuracy (pred == label and radius >= r) and the abstain fraction; per-example rows:
      index, label, prediction (-1 = abstain), radius).
    """
    from robust_vision.distributed import gather_batches
    from robust_vision.batched import prefetch_to_device
    from robust_vision.evaluation.certify import certified_accuracy_curve, certify

    grid = list(radii) if radii is not None else radii_grid(sigmas, n, alpha)
    sigma_keys = [jax.random.fold_in(key, int(round(float(sigma) * 1_000_000))) for sigma in sigmas]
    labels, preds, rads = [], [[] for _ in sigmas], [[] for _ in sigmas]
    for j, batch in enumerate(prefetch_to_device(batches, prefetch)):
        x = to_unit_float(batch.images)
        got = gather_batches([{"y": batch.labels, "m": batch.mask}])  # every process certifies every row
        keep = got["m"] > 0
        labels.append(got["y"][keep])
        for s, (sigma, sk) in enumerate(zip(sigmas, sigma_keys)):
            p, r = certify(logits_fn, x, jax.random.fold_in(sk, j), float(sigma), n0=n0, n=n, alpha=alpha,
                           batch_size=batch_size)
            preds[s].append(p[keep])
            rads[s].append(r[keep])
    if not labels or not sum(len(y) for y in labels):
        raise ValueError("certification: no examples")
    labels = np.concatenate(labels)
    total = len(labels)
    curve_rows, example_rows = [], []
    for s, sigma in enumerate(sigmas):
        pred, rad = np.concatenate(preds[s]), np.concatenate(rads[s])
        for row in certified_accuracy_curve(pred, rad, labels, grid):
            curve_rows.append({"model": model_name, "sigma": float(sigma), **row, "n0": n0, "n_samples": n,
                               "alpha": alpha})
        example_rows += [{"model": model_name, "sigma": float(sigma), "index": i, "label": int(labels[i]),
                          "prediction": int(pred[i]), "radius": float(rad[i])} for i in range(total)]
    return curve_rows, example_rows


def format_certification_summary(rows: list[dict], radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> str:
    """Certified accuracy at a few radii per model and sigma, with the abstain fraction."""
    lines = ["CERTIFIED ROBUSTNESS (randomized smoothing, L2)", "═" * 68]
    for model in dict.fromkeys(r["model"] for r in rows):
        for sigma in dict.fromkeys(r["sigma"] for r in rows if r["model"] == model):
            sel = {round(r["radius"], 6): r for r in rows if r["model"] == model and r["sigma"] == sigma}
            any_row = next(iter(sel.values()))
            pairs = "  ".join(f"r={r:g}:{sel[round(r, 6)]['certified_accuracy']:.3f}" for r in radii
                              if round(r, 6) in sel)
            lines.append(f"  {model} sigma={sigma:g} (n={any_row['n_samples']}, alpha={any_row['alpha']:g}, "
                         f"{any_row['n']} examples, abstain {any_row['abstain_fraction']:.1%}): {pairs}")
    return "\n".join(lines)



def run(ctx) -> dict:
    """Certified accuracy curves and per-example radii of every model."""
    ecfg = ctx.cfg.evaluation
    n = min(ecfg.certify_max_examples, ctx.n_images)
    rows, examples = [], []
    for m in ctx.per_model("certification"):
        r, e = certification_stream(ctx.logits_fns[m.name], ctx.batches(n), model_name=m.name,
                                    sigmas=ecfg.certify_sigma, key=part_key(ecfg.seed, "certify"),
                                    n0=ecfg.certify_n0, n=ecfg.certify_n, alpha=ecfg.certify_alpha,
                                    batch_size=ecfg.batch_size)
        rows += r
        examples += e
    return {"sigma": list(ecfg.certify_sigma), "n0": ecfg.certify_n0, "n": ecfg.certify_n,
            "alpha": ecfg.certify_alpha, "n_examples": n, "examples": f"the first {n} of the {ecfg.split} split",
            "results": rows, "per_example": examples}


def summary(ctx, out) -> list[str]:
    section = out.suite["certification"]
    return ["", format_certification_summary(section["results"]), f"  ({section['examples']})"]
