"""Train-step throughput: our train step vs a plain JAX step vs PyTorch eager, one process.

    python benchmarks/train_throughput.py [--features 64 128 256] [--batch 128] [--size 32]
                                          [--steps 10] [--rounds 5] [--no-torch] [--no-memory]
                                          [--compare-xla-default]

The same model (the project's CNN, ``models/cnn.py``: residual conv blocks with batch norm,
2x2 average pooling between stages, global average pooling, dropout 0.1, linear head), the
same batch (B, size, size, 3) and the same optimizer (Adam, lr 1e-3, the config's default)
in three engines:

* ``ours``   ``training/steps.py`` ``make_train_step`` over the project's train state (what
             ``robust-vision-train`` runs; augmentation and EMA off);
* ``plain``  a minimal jitted Optax step over ``nnx.split`` params and batch statistics
             (merge, forward, cross-entropy, grad, update; donated);
* ``torch``  the same network written in PyTorch, eager mode, ``torch.optim.Adam``
             (skipped when torch is not installed).

Engines run in interleaved rounds (``--rounds``, each of ``--steps`` steps) and the median
round is reported, so load on a shared machine hits all engines alike. Compile time (JAX:
``lower().compile()``; torch: the first step) is reported apart from steady-state step time.
Peak memory is the peak resident set size (``ru_maxrss``) of a fresh subprocess per engine
running a few steps (``--no-memory`` skips it). Prints images/s and ratios ours / plain and
ours / torch (goal >= 1.0 against torch eager on CPU).

Both JAX engines run under the project's XLA:CPU defaults (``robust_vision/xla_defaults.py``:
convolutions on Eigen, not YNNPACK). ``--compare-xla-default`` then runs the same comparison
again in a fresh process with XLA's own defaults (``ROBUST_VISION_XLA_DEFAULTS=off``), so the
gain of that choice is measured against torch in the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_CLASSES = 10


def _batch(batch: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return images, labels


def _cnn(features):
    from robust_vision.config import ModelConfig
    from robust_vision.models import create_model

    cfg = ModelConfig(name="cnn", features=list(features), dropout_rate=0.1)
    return cfg, create_model(cfg, input_shape=(32, 32, 3), num_classes=NUM_CLASSES, seed=0)


def ours_engine(features, batch: int, size: int):
    """(compile_seconds, run(n) -> seconds for n steps) of the project's train step."""
    import jax
    import jax.numpy as jnp

    from robust_vision.config import TrainingConfig
    from robust_vision.losses import make_loss
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_optimizer
    from robust_vision.training.steps import make_train_step

    _, model = _cnn(features)
    parts = split_model(model)
    tcfg = TrainingConfig()  # adam, lr 1e-3, no augmentation, no EMA
    tx, _ = make_optimizer(tcfg, 100)
    state = init_train_state(parts, tx, tcfg.ema_enabled)
    step = make_train_step(parts, tx, make_loss(tcfg), tcfg)
    images, labels = _batch(batch, size)
    x, y, m = jnp.asarray(images), jnp.asarray(labels), jnp.ones(batch, jnp.float32)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y, m, key).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state, "i": 0}

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            holder["i"] += 1
            holder["state"], per_ex = compiled(holder["state"], x, y, m, jax.random.fold_in(key, holder["i"]))
        jax.block_until_ready((holder["state"], per_ex))
        return time.perf_counter() - t

    return compile_s, run


def plain_engine(features, batch: int, size: int):
    """A minimal reference: jitted Optax step over nnx.split state, donated."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    _, model = _cnn(features)
    model.train()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def step(params, rest, opt_state, x, y):
        def loss_fn(p):
            # fresh Variables at this trace level, so batch norm may update them
            m = nnx.merge(graph, p, jax.tree.map(lambda a: a, rest))
            logits = m(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, nnx.state(m, nnx.Not(nnx.Param))

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    jstep = jax.jit(step, donate_argnums=(0, 1, 2))
    images, labels = _batch(batch, size)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    t0 = time.perf_counter()
    compiled = jstep.lower(params, rest, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    holder = [params, rest, opt_state]

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            *holder[:], loss = compiled(*holder, x, y)
        jax.block_until_ready((holder, loss))
        return time.perf_counter() - t

    return compile_s, run


def torch_engine(features, batch: int, size: int):
    """The same CNN in PyTorch eager mode (NCHW), Adam lr 1e-3."""
    import torch
    import torch.nn.functional as F

    from robust_vision.models.torch_reference import torch_production_cnn

    torch.manual_seed(0)
    model = torch_production_cnn()(tuple(features), NUM_CLASSES).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = _batch(batch, size)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels.astype("int64"))

    def one():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    one()
    warmup_s = time.perf_counter() - t0

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            loss = one()
        loss.detach().item()  # waits for the last step
        return time.perf_counter() - t

    return warmup_s, run


ENGINES = {"ours": ours_engine, "plain": plain_engine, "torch": torch_engine}


def _own_peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a
    child would report its (larger) parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mib(engine: str, args) -> float | None:
    """Peak RSS of a fresh process that builds ``engine`` and runs 3 steps."""
    cmd = [sys.executable, __file__, "--child", engine, "--features", *map(str, args.features),
           "--batch", str(args.batch), "--size", str(args.size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  ({engine}: memory probe failed: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--compare-xla-default", action="store_true",
                   help="also run the comparison with XLA's default CPU options (YNNPACK convolutions)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # Before JAX starts a backend (jax.devices() below): XLA reads XLA_FLAGS only then.
    from robust_vision.xla_defaults import apply_cpu_defaults

    project_defaults = apply_cpu_defaults()

    if args.child:  # memory probe: build, run 3 steps, print peak RSS
        _, run = ENGINES[args.child](args.features, args.batch, args.size)
        run(3)
        print(json.dumps({"peak_rss_mib": _own_peak_rss_mib()}))
        return 0

    names = ["ours", "plain"]
    if not args.no_torch:
        try:
            import torch  # noqa: F401

            names.append("torch")
        except ImportError:
            print("torch not installed: PyTorch comparison skipped (pip install 'robust-vision[torch]')")
    import jax

    conv_backend = ("Eigen (robust-vision default)" if project_defaults
                    else "XLA's default (YNNPACK), or as XLA_FLAGS sets them")
    print(f"CNN features={args.features}, batch {args.batch}, {args.size}x{args.size}x3, Adam; "
          f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs; {args.rounds} rounds x {args.steps} steps; "
          f"XLA:CPU convolutions: {conv_backend}")
    engines, compile_s = {}, {}
    for name in names:
        compile_s[name], engines[name] = ENGINES[name](args.features, args.batch, args.size)
        engines[name](1)  # warm caches / allocator outside the timed rounds
    times = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(engines[name](args.steps) / args.steps)
    step_s = {name: statistics.median(v) for name, v in times.items()}
    memory = {} if args.no_memory else {name: _peak_rss_mib(name, args) for name in names}

    print(f"{'engine':8s} {'images/s':>10s} {'ms/step':>9s} {'compile s':>10s} {'peak RSS MiB':>13s}")
    for name in names:
        mem = memory.get(name)
        print(f"{name:8s} {args.batch / step_s[name]:10.1f} {1e3 * step_s[name]:9.1f} {compile_s[name]:10.2f} "
              f"{'' if mem is None else f'{mem:13.0f}'}" + ("  (first step, eager)" if name == "torch" else ""))
    print(f"ratio ours / plain JAX   (throughput): {step_s['plain'] / step_s['ours']:.2f}x")
    if "torch" in step_s:
        ratio = step_s["torch"] / step_s["ours"]
        print(f"ratio ours / torch eager (throughput): {ratio:.2f}x  (goal >= 1.0x: {'met' if ratio >= 1.0 else 'NOT met'})")
    if args.compare_xla_default:
        print("\n-- the same with XLA's default CPU options (fresh process, ROBUST_VISION_XLA_DEFAULTS=off):", flush=True)
        cmd = [sys.executable, __file__, "--no-memory", "--features", *map(str, args.features), "--batch",
               str(args.batch), "--size", str(args.size), "--steps", str(args.steps), "--rounds", str(args.rounds)]
        if args.no_torch:
            cmd.append("--no-torch")
        from robust_vision.xla_defaults import without_cpu_defaults

        env = {**os.environ, "ROBUST_VISION_XLA_DEFAULTS": "off",
               "XLA_FLAGS": without_cpu_defaults(os.environ.get("XLA_FLAGS", ""))}  # not inherited
        subprocess.run(cmd, env=env, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
