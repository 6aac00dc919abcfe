"""Train-step time with the models' convolution (models/conv.py) vs plain ``lax`` convolutions,
and the adversarial train step with a rolled vs an unrolled attack loop.

    python benchmarks/train_step_conv.py [--model cnn] [--features 32 64] [--width 16] [--size 16]
                                         [--channels 1] [--batch 64] [--rounds 9] [--steps 5]
    python benchmarks/train_step_conv.py --adv-steps 7 --unroll-compare [--reverse]

Default: the same model (registry ``--model``) twice, once with every ``nnx.Conv`` switched back
to ``lax.conv_general_dilated`` (JAX's own backward), the same ``training.steps.make_train_step``
(Adam, no augmentation, no EMA), the same batch of random images. ``--adv-steps k`` makes it a
Madry PGD-k step (``training.adversarial``). ``--unroll-compare`` instead times the adversarial
step with the attack loop rolled (``training.adversarial.UNROLL = False``) and unrolled (``True``),
both with the models' convolution; ``--reverse`` compiles the unrolled one first (the first
compile of a process also pays for warming up). Engines run in interleaved rounds of ``--steps``
steps; min and median seconds per step over the rounds, compile seconds (``lower().compile()``).
``--compile-repeats n`` adds n alternating compiles of each step (``jax.clear_caches()`` before
each: a fresh trace, lowering and XLA compile) and prints the min.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from robust_vision.config import AdversarialConfig, ModelConfig, TrainingConfig
from robust_vision.losses import make_loss
from robust_vision.models import create_model
from robust_vision.training import adversarial
from robust_vision.models.state import split_model
from robust_vision.optim import init_train_state, make_optimizer
from robust_vision.training.steps import make_train_step


def _engine(args, lax_conv: bool, unroll: bool):
    """(compile seconds, run() -> seconds per step, recompile() -> seconds) of one train step."""
    model = create_model(ModelConfig(name=args.model, features=args.features, width=args.width),
                         input_shape=(args.size, args.size, args.channels), num_classes=10, seed=0)
    if lax_conv:
        for _path, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Conv):
                module.conv_general_dilated = lax.conv_general_dilated
    parts = split_model(model)
    tcfg = TrainingConfig()
    if args.adv_steps:
        tcfg.adversarial = AdversarialConfig(method="pgd", eps=0.1, steps=args.adv_steps)
    tx, _ = make_optimizer(tcfg, 100)
    state = init_train_state(parts, tx, tcfg.ema_enabled)

    def make_step():
        adversarial.UNROLL = unroll  # read when the hooks trace the attack
        return make_train_step(parts, tx, make_loss(tcfg), tcfg, **adversarial.adversarial_hooks(tcfg.adversarial))
    step = make_step()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (args.batch, args.size, args.size, args.channels)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    mask = jnp.ones(args.batch, jnp.float32)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y, mask, key).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state, "i": 0}

    def run() -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            holder["i"] += 1
            holder["state"], per_example = compiled(holder["state"], x, y, mask, jax.random.fold_in(key, holder["i"]))
        jax.block_until_ready((holder["state"], per_example))
        return (time.perf_counter() - t) / args.steps

    def recompile() -> float:
        jax.clear_caches()
        t = time.perf_counter()
        make_step().lower(state, x, y, mask, key).compile()
        return time.perf_counter() - t

    run()  # warm up
    return compile_s, run, recompile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--features", type=int, nargs="+", default=[32, 64], help="cnn stage widths")
    p.add_argument("--width", type=int, default=16, help="resnet18 width")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--adv-steps", type=int, default=0, help="k > 0: Madry PGD-k adversarial train step")
    p.add_argument("--unroll-compare", action="store_true", help="rolled vs unrolled attack loop instead")
    p.add_argument("--reverse", action="store_true", help="with --unroll-compare: compile the unrolled step first")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--compile-repeats", type=int, default=0, help="n > 0: also n alternating fresh compiles")
    args = p.parse_args()
    if args.unroll_compare:
        if not args.adv_steps:
            p.error("--unroll-compare needs --adv-steps k")
        order = [("unrolled", True), ("rolled", False)] if args.reverse else [("rolled", False), ("unrolled", True)]
        built = {name: _engine(args, False, unroll) for name, unroll in order}
        engines = {name: built[name] for name in ("rolled", "unrolled")}
    else:
        engines = {"models.conv": _engine(args, False, adversarial.UNROLL),
                   "plain lax": _engine(args, True, adversarial.UNROLL)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, (_c, run, _r) in engines.items():
            times[name].append(run())
    arch = args.features if args.model == "cnn" else f"width {args.width}"
    print(f"{args.model} {arch}, {args.size}x{args.size}x{args.channels}, batch {args.batch}, "
          f"adversarial PGD steps {args.adv_steps}, {args.rounds} rounds x {args.steps} steps")
    for name, (compile_s, _run, _r) in engines.items():
        print(f"  {name:12s} compile {compile_s:6.2f} s   step min {1e3 * min(times[name]):8.2f} ms   "
              f"median {1e3 * statistics.median(times[name]):8.2f} ms")
    a, b = engines
    print(f"  {a} / {b}: min {min(times[a]) / min(times[b]):.3f}   "
          f"median {statistics.median(times[a]) / statistics.median(times[b]):.3f}")
    if args.compile_repeats:
        compiles: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.compile_repeats):
            for name, (_c, _run, recompile) in engines.items():
                compiles[name].append(recompile())
        print(f"  compile s, {args.compile_repeats} alternating repeats: " + "; ".join(
            f"{name} {[round(c, 2) for c in cs]}" for name, cs in compiles.items())
              + f"; min {a} / {b}: {min(compiles[a]) / min(compiles[b]):.3f}")


if __name__ == "__main__":
    main()
