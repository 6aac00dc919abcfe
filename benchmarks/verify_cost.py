"""Throughput of the bound computations (robust_vision.verify) as a multiple of a forward pass.

For one model and batch, every method's jitted margin-bound program (IBP, CROWN-IBP, CROWN,
alpha-CROWN with ``--alpha-steps`` Adam steps) and the jitted forward pass are compiled, then
timed round-robin ``--repeats`` times (min over repeats). Printed per method: images/s and the
cost in forward passes, t(method) / t(forward) on the same batch. CROWN's cost grows with the
number of neurons (one backward pass per neuron of every layer, ``--chunk`` at a time); IBP is
about two forward passes.

    python benchmarks/verify_cost.py [--model cnn_small] [--shape 28 28 1] [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from robust_vision.config import ModelConfig
from robust_vision.models import create_model
from robust_vision.verify import METHODS, margin_bounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn_small", help="registry name (default cnn_small)")
    p.add_argument("--shape", type=int, nargs=3, default=[28, 28, 1], metavar=("H", "W", "C"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--alpha-steps", dest="alpha_steps", type=int, default=20)
    p.add_argument("--chunk", type=int, default=256, help="CROWN neurons per backward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args()

    model = create_model(ModelConfig(name=args.model), input_shape=tuple(args.shape), num_classes=10, seed=0)
    x = jax.random.uniform(jax.random.key(0), (args.batch, *args.shape))
    y = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
    programs = {"forward": jax.jit(lambda x, y, e: model(x))}
    for m in args.methods.split(","):
        programs[m] = jax.jit(lambda x, y, e, m=m: margin_bounds(model, x, y, e, method=m, chunk=args.chunk,
                                                                alpha_steps=args.alpha_steps))
    for fn in programs.values():
        jax.block_until_ready(fn(x, y, args.eps))  # compile and warm up
    best = {name: float("inf") for name in programs}
    for _ in range(args.repeats):
        for name, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, y, jnp.float32(args.eps)))
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{args.model} on {'x'.join(map(str, args.shape))}, batch {args.batch}, eps {args.eps}, "
          f"{jax.devices()[0].platform}, min of {args.repeats} interleaved repeats")
    print(f"{'method':<14}{'images/s':>12}{'x forward':>12}")
    for name, t in best.items():
        print(f"{name:<14}{args.batch / t:>12.1f}{t / best['forward']:>12.1f}")


if __name__ == "__main__":
    main()
