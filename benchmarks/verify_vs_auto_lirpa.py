"""Cross-check of robust_vision.verify against auto_LiRPA (the reference implementation of
CROWN / alpha-CROWN, PyTorch) on the same weights. Not part of CI: auto_LiRPA is not a
dependency. Point ``--auto-lirpa`` at a checkout of its public source (and its small
dependencies appdirs, sortedcontainers, graphviz on PYTHONPATH); nothing of it is copied here.

The small MNIST CNN (``cnn_small``: conv 4x4/2, conv 4x4/2, dense, dense) gets random or trained
weights (``--checkpoint``); the same weights go into a torch ``nn.Sequential`` (NHWC -> NCHW
kernels, the first dense layer's rows reordered for torch's channel-first flatten). Both
verifiers bound the margins z_y - z_j over the Linf ball & [0, 1]. Printed per method: the
largest absolute difference of the lower bounds and the mean bound of each side. Our methods
are compared before taking the element-wise best with IBP (``verify.bounds``), so each side's
own relaxation is what is compared.

    PYTHONPATH=/path/to/auto_LiRPA:/path/to/deps python benchmarks/verify_vs_auto_lirpa.py [--eps 0.05] [--batch 8]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.verify.alpha import alpha_crown_lower
from robust_vision.verify.backward import backward_lower, crown_relaxations
from robust_vision.verify.convert import to_graph
from robust_vision.verify.interval import interval_bounds, interval_spec_lower
from robust_vision.verify.spec import InputSet, margin_matrix


def ours(model, x, y, eps: float, alpha_steps: int) -> dict[str, np.ndarray]:
    graph = to_graph(model, x)
    s = InputSet(x, eps, "linf")
    spec = margin_matrix(y, 10)
    boxes = interval_bounds(graph, s)
    out = {"IBP": interval_spec_lower(graph, boxes, spec)}
    relax_ibp = crown_relaxations(graph, s, boxes, intermediate="ibp")
    out["CROWN-IBP"] = backward_lower(graph, graph.output, spec, relax_ibp, s)
    relax = crown_relaxations(graph, s, boxes, intermediate="crown")
    out["CROWN"] = backward_lower(graph, graph.output, spec, relax, s)
    out["alpha-CROWN"] = alpha_crown_lower(graph, s, spec, relax, steps=alpha_steps)
    return {k: np.asarray(v) for k, v in out.items()}


def torch_copy(model, shape):
    import torch
    import torch.nn as nn

    h, w, _ = shape
    layers = []
    for conv in model.convs:
        k = np.asarray(conv.kernel[...])  # HWIO
        layer = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], stride=conv.strides, padding=conv.padding[0][0])
        layer.weight.data = torch.tensor(k.transpose(3, 2, 0, 1).copy())
        layer.bias.data = torch.tensor(np.asarray(conv.bias[...]))
        layers += [layer, nn.ReLU()]
        kh, st, pd = k.shape[0], conv.strides, conv.padding[0][0]
        h, w = (h + 2 * pd - kh) // st + 1, (w + 2 * pd - kh) // st + 1
    layers.append(nn.Flatten())
    c = model.convs[-1].kernel.shape[-1]
    for i, dense in enumerate([*model.dense, model.head]):
        k = np.asarray(dense.kernel[...])
        if i == 0:  # our rows are (h, w, c) flattened; torch's flatten is (c, h, w)
            k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        layer = nn.Linear(k.shape[0], k.shape[1])
        layer.weight.data = torch.tensor(k.T.copy())
        layer.bias.data = torch.tensor(np.asarray(dense.bias[...]))
        layers += [layer] + ([nn.ReLU()] if i < len(model.dense) else [])
    return nn.Sequential(*layers)


def reference(net, x: np.ndarray, y: np.ndarray, eps: float, alpha_steps: int) -> dict[str, np.ndarray]:
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    c = torch.tensor(np.asarray(margin_matrix(jnp.asarray(y), 10)))
    bounded = BoundedModule(net, torch.zeros_like(xt[:1]), bound_opts={"optimize_bound_args": {"iteration": alpha_steps}})
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(xt - eps).clamp(0, 1), x_U=(xt + eps).clamp(0, 1))
    bx = BoundedTensor(xt, ptb)
    out = {}
    for name in ("IBP", "CROWN-IBP", "CROWN", "alpha-CROWN"):
        lower, _ = bounded.compute_bounds(x=(bx,), C=c, method=name, bound_upper=False)
        out[name] = lower.detach().numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a run of cnn_small on 28x28x1 (default: random weights)")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--alpha-steps", dest="alpha_steps", type=int, default=20)
    args = p.parse_args()
    shape = (28, 28, 1)
    if args.checkpoint:
        from robust_vision.runs.loading import load_trained_model

        m = load_trained_model(args.checkpoint, None)
        model = m.parts.merge(m.params, m.model_state, train=False)
    else:
        model = create_model(ModelConfig(name="cnn_small"), input_shape=shape, num_classes=10, seed=0)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (args.batch, *shape)))
    y = np.asarray(jax.random.randint(jax.random.key(1), (args.batch,), 0, 10))
    mine = ours(model, jnp.asarray(x), jnp.asarray(y), args.eps, args.alpha_steps)
    theirs = reference(torch_copy(model, shape), x, y, args.eps, args.alpha_steps)
    own = np.eye(10, dtype=bool)[y]
    print(f"cnn_small ({'trained: ' + args.checkpoint if args.checkpoint else 'random weights'}), batch {args.batch}, "
          f"Linf eps {args.eps}, margins z_y - z_j (j != y)")
    print(f"{'method':<13}{'max |ours - auto_LiRPA|':>26}{'mean ours':>12}{'mean auto_LiRPA':>17}")
    for name in mine:
        a, b = mine[name][~own], theirs[name][~own]
        print(f"{name:<13}{np.max(np.abs(a - b)):>26.3g}{a.mean():>12.4f}{b.mean():>17.4f}")


if __name__ == "__main__":
    main()
