"""What the program cache (robust_vision/program_cache.py) costs a first run and saves a second.

For the train step of a CNN (default [64, 128, 256], batch 128, 32x32x3) and the noise grid's
program of the same model, in fresh subprocesses sharing one cache directory per variant:

* first run, plain ``jax.jit``: tracing + lowering, XLA compile (the program cache off);
* first run, program cache (a miss): ``jax.export`` (tracing + lowering + serialising), the
  wrapper's lowering, XLA compile;
* second run of each (the XLA cache warm): what is left before the program runs.

Compile seconds are JAX's own compile-phase events (robust_vision.compile_cache). Then, in one
process, the run time of the cached train step over the plain one (interleaved repeats, min)
and whether their parameters stay bit-identical over the steps.

    python benchmarks/program_cache.py [--features 64 128 256] [--batch 128] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup(features: list[int], batch: int):
    import jax
    import jax.numpy as jnp

    from robust_vision.config import load_config
    from robust_vision.losses import make_loss
    from robust_vision.models import create_model
    from robust_vision.models.state import model_program_key, split_model
    from robust_vision.optim import init_train_state, make_optimizer
    from robust_vision.training.steps import make_train_step

    cfg = load_config(None, [f"model.features={list(features)}"])
    parts = split_model(create_model(cfg.model, input_shape=(32, 32, 3), num_classes=10, seed=0))
    tx, _ = make_optimizer(cfg.training, 10)
    key = model_program_key(parts, cfg.model, cfg.training, steps_per_epoch=10)
    steps = {"plain": make_train_step(parts, tx, make_loss(cfg.training), cfg.training),
             "cached": make_train_step(parts, tx, make_loss(cfg.training), cfg.training, program_key=key)}
    x = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
    y, mask = jnp.arange(batch, dtype=jnp.int32) % 10, jnp.ones((batch,), jnp.float32)
    fresh_state = lambda: jax.tree.map(jnp.array, init_train_state(parts, tx, False))  # noqa: E731
    return cfg, parts, steps, fresh_state, (x, y, mask)


def _child(variant: str, features: list[int], batch: int) -> dict:
    """Compile seconds of one train step and one grid batch in this process."""
    from robust_vision.compile_cache import compile_seconds, enable_compile_cache

    enable_compile_cache()
    compile_seconds()
    import jax
    import jax.numpy as jnp

    from robust_vision.evaluation.robustness import _grid_program
    from robust_vision.runs.loading import Forward
    from robust_vision.models.state import make_logits_fn, model_program_key

    cfg, parts, steps, fresh_state, (x, y, mask) = _setup(features, batch)
    out = {}
    c0 = compile_seconds()
    jax.block_until_ready(steps["cached"](fresh_state(), x, y, mask, jax.random.key(0)))
    out["train_step"] = compile_seconds() - c0
    forward = Forward(make_logits_fn(parts), model_program_key(parts, cfg.model))
    grid = _grid_program(forward, (None, "gaussian"))
    args = ((parts.params, parts.model_state), (x * 255).astype(jnp.uint8), y, jnp.zeros((2,), jnp.int32),
            jnp.zeros((2, 2), jnp.uint32), jnp.asarray([0.0, 0.1], jnp.float32), jnp.int32(0))
    c0 = compile_seconds()
    jax.block_until_ready(grid(*args))
    out["grid"] = compile_seconds() - c0
    return out


def _spawn(variant: str, cache: Path, args) -> dict:
    env = {**os.environ, "ROBUST_VISION_CACHE_DIR": str(cache),
           "ROBUST_VISION_PROGRAM_CACHE": "on" if variant == "cached" else "off",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--features",
           *map(str, args.features)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_time(args) -> tuple[float, bool]:
    """Cached / plain train-step seconds (interleaved, min) and bit-identity of the parameters."""
    os.environ["ROBUST_VISION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rv_pc_rt_")
    from robust_vision.compile_cache import enable_compile_cache

    enable_compile_cache()
    import jax

    _, _, steps, fresh_state, (x, y, mask) = _setup(args.features, args.batch)
    states = {name: fresh_state() for name in steps}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats + 1):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                states[name], metrics = step(states[name], x, y, mask, jax.random.fold_in(jax.random.key(0), i))
            jax.block_until_ready(metrics)
            if repeat:  # the first round compiles
                times[name].append((time.perf_counter() - t0) / args.steps)
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(states["plain"]["params"]),
                                                     jax.tree.leaves(states["cached"]["params"])))
    return min(times["cached"]) / min(times["plain"]), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--features", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.features, args.batch)))
        return
    work = Path(tempfile.mkdtemp(prefix="rv_program_cache_"))
    print(f"CNN {args.features}, batch {args.batch}, 32x32x3; compile seconds (JAX's compile-phase events)")
    print(f"{'program':<12}{'variant':<16}{'first run':>10}{'second run':>12}{'ratio':>8}")
    for variant in ("plain", "cached"):  # one cache directory per variant, two runs each
        first, second = _spawn(variant, work / variant, args), _spawn(variant, work / variant, args)
        for program in ("train_step", "grid"):
            ratio = first[program] / max(second[program], 1e-9)
            label = "jax.jit" if variant == "plain" else "program cache"
            print(f"{program:<12}{label:<16}{first[program]:>10.2f}{second[program]:>12.2f}{ratio:>7.1f}x", flush=True)
    ratio, same = _run_time(args)
    print(f"\ntrain step run time, program cache / jax.jit: {ratio:.3f} "
          f"({args.repeats} interleaved rounds of {args.steps} steps, min); parameters bit-identical: {same}")


if __name__ == "__main__":
    main()
