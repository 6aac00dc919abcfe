"""``robust-vision-analyze tightness``: tightness of IBP per depth at clean inputs
(``verify.tightness``, Mao et al. 2023); tightness.csv and tightness.json."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from robust_vision.analysis.common import Context, model_info, write_summary
from robust_vision.io import write_csv
from robust_vision.verify.convert import to_graph
from robust_vision.verify.tightness import depth_nodes, mean_radii_by_depth

TIGHTNESS_COLUMNS = ["depth", "node", "optimal_radius", "ibp_radius", "tightness"]


def run_tightness(ctx: Context, *, eps: float, max_examples: int = 32, batch_size: int = 16) -> dict[str, Any]:
    """Tightness of the first ``max_examples`` images of the split, per depth (the radii averaged
    over all images, then divided), written to tightness.csv / tightness.json; returns the summary."""
    model = ctx.model
    net = model.parts.merge(model.params, model.model_state, train=False)
    images = np.asarray(ctx.images[:max_examples])
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    graph = to_graph(net, images[:1])
    names = [graph.nodes[k].name for k in depth_nodes(graph)]
    compute = jax.jit(lambda x: mean_radii_by_depth(to_graph(net, x), x, eps))
    optimal, ibp = np.zeros(len(names)), np.zeros(len(names))
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        opt_b, ibp_b = compute(chunk)
        optimal += np.asarray(opt_b, np.float64) * len(chunk) / len(images)
        ibp += np.asarray(ibp_b, np.float64) * len(chunk) / len(images)
    rows = [{"depth": d + 1, "node": name, "optimal_radius": float(o), "ibp_radius": float(b),
             "tightness": float(o / max(b, 1e-30))} for d, (name, o, b) in enumerate(zip(names, optimal, ibp))]
    write_csv(ctx.out_dir / "tightness.csv", rows, TIGHTNESS_COLUMNS)
    summary = {**model_info(model), "eps": eps, "n_examples": len(images), "split": ctx.split_name,
               "overall_tightness": rows[-1]["tightness"], "depths": rows,
               "definition": "mean optimal box radius / mean IBP box radius of the network linearised at the "
                             "clean input's activation pattern (Mao et al. 2023); overall = at the logits"}
    write_summary(ctx, "tightness", summary)
    return summary
