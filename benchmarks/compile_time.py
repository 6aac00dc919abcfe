"""Time to first result: compile seconds, first run vs second run with the persistent cache.

For each workload (quickstart train, the noise grid, the ImageNet-C suite, the attacks, and
``robust-vision-eval --checkpoint RUN --output X --attacks pgd --eps 0.03`` as it is) the
same command runs twice, each time in a fresh subprocess that shares one new cache directory
(``ROBUST_VISION_CACHE_DIR``: JAX's XLA cache and, under ``programs/``, the traced programs of
robust_vision.program_cache). Compile seconds are JAX's own compile-phase events (tracing,
lowering, XLA compile or cache read; robust_vision.compile_cache.COMPILE_EVENTS) summed in
the child: every second spent before a program runs. Goal: first / second >= 5x. The
evaluation workloads' first runs follow the training run in the same cache, as a user's do, so
programs they share with training's validation (the forward pass) are already cached then.

Then, in one process without the cache, each attack's compile seconds as a multiple of one
train-step compile of the same model (goal <= 3x; every attack jitted once with eps and its
step / target / query counts traced, so this one program serves every budget), and the run time
of PGD-20 in forward+backward units: t(PGD-20) / (20 x t(one jitted forward+backward call of the
same batch)), no clean pass counted (goal <= 1.1, rolled loop; the same unit as
benchmarks/attack_cost.py), rolled and with ``unroll=True``.

Settings are small (quickstart 1 epoch, 2 noise levels, ImageNet-C severity 3, 64 attacked
images) so the whole benchmark takes a few minutes on 2 cores.

    python benchmarks/compile_time.py [--keep DIR]
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


def _child(workload: str, work: Path) -> dict:
    """Run one workload in this process; return its compile and wall seconds."""
    from robust_vision.compile_cache import compile_seconds, enable_compile_cache

    enable_compile_cache()
    compile_seconds()  # start the meter before anything compiles
    t0 = time.perf_counter()
    from robust_vision.cli import eval_main, train_main

    run = work / "quickstart"
    common = ["--checkpoint", str(run), "--no-plots", "--quiet"]
    if workload.startswith("train"):
        code = train_main(["--config", str(REPO / "configs/quickstart.yaml"), "--run-dir", str(work / workload),
                           "--override", "training.epochs=1", "--no-progress"])
    elif workload == "grid":
        code = eval_main(common + ["--output", str(work / "o_grid"), "--parts", "grid", "--levels", "0", "0.3"])
    elif workload == "suite":
        code = eval_main(common + ["--output", str(work / "o_suite"), "--suite", "imagenet-c", "--severities", "3"])
    elif workload == "attacks":
        code = eval_main(common + ["--output", str(work / "o_att"), "--attacks", "fgsm,pgd,apgd", "--eps", "0.03",
                                   "--attack-steps", "20", "--attack-max-examples", "64"])
    elif workload == "pgd":  # the plain command of issue 11's check, all test images, default steps
        code = eval_main(common + ["--output", str(work / "o_pgd"), "--attacks", "pgd", "--eps", "0.03"])
    else:
        raise SystemExit(f"unknown workload {workload}")
    if code:
        raise SystemExit(code)
    return {"compile_s": compile_seconds(), "wall_s": time.perf_counter() - t0}


def _spawn(workload: str, work: Path, cache: Path) -> dict:
    env = {**os.environ, "ROBUST_VISION_CACHE_DIR": str(cache),
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--work", str(work)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{workload} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _per_attack(work: Path) -> dict:
    """Attack compile seconds / train-step compile seconds; PGD-20 in forward+backward units."""
    os.environ["ROBUST_VISION_CACHE_DIR"] = "off"
    import jax
    import jax.numpy as jnp

    from robust_vision.attacks import apgd_ce, fgsm, pgd
    from robust_vision.attacks.apgd_t import apgd_t
    from robust_vision.attacks.fab import fab_t
    from robust_vision.attacks.square import square
    from robust_vision.attacks._common import ce_loss, loss_grad_logits
    from robust_vision.compile_cache import enable_compile_cache
    from robust_vision.data.sources import converted_splits, read_examples
    from robust_vision.runs.loading import load_trained_model
    from robust_vision.losses import make_loss
    from robust_vision.optim import init_train_state, make_run_optimizer
    from robust_vision.training.steps import make_train_step

    enable_compile_cache()
    model = load_trained_model(work / "quickstart")
    cfg = model.config
    b = 64
    images, labels = read_examples(converted_splits(cfg.data, ("test",))["test"], b)
    x = jnp.asarray(images, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    key = jax.random.key(0)
    eps = jnp.float32(0.03)

    tx, _ = make_run_optimizer(cfg.training, cfg.model, model.parts.params, 10)
    state = init_train_state(model.parts, tx, cfg.training.ema_enabled)
    step = make_train_step(model.parts, tx, make_loss(cfg.training), cfg.training)
    mask = jnp.ones((b,), jnp.float32)

    def compile_s(jitted, *args) -> float:
        t0 = time.perf_counter()
        jitted.lower(*args).compile()
        return time.perf_counter() - t0

    step_fn = step if hasattr(step, "lower") else jax.jit(step)
    train_c = compile_s(step_fn, state, x, y, mask, key)
    logits_fn = model.logits_fn()
    # Counts are traced (n): one program per attack for every eps and budget.
    attacks = {"fgsm": jax.jit(lambda x, y, k, e, n: fgsm(logits_fn, x, y, k, e)),
               "pgd": jax.jit(lambda x, y, k, e, n: pgd(logits_fn, x, y, k, e, steps=n)),
               "apgd-ce": jax.jit(lambda x, y, k, e, n: apgd_ce(logits_fn, x, y, k, e, steps=n)),
               "apgd-t": jax.jit(lambda x, y, k, e, n: apgd_t(logits_fn, x, y, k, e, steps=n, n_targets=n)),
               "fab-t": jax.jit(lambda x, y, k, e, n: fab_t(logits_fn, x, y, k, e, steps=n, n_targets=n)),
               "square": jax.jit(lambda x, y, k, e, n: square(logits_fn, x, y, k, e, n_queries=n))}
    n20 = jnp.int32(20)
    rows = {name: compile_s(fn, x, y, key, eps, n20) / train_c for name, fn in attacks.items()}

    fb = jax.jit(lambda x, y: loss_grad_logits(logits_fn, ce_loss, x, y)[1])
    pgd20 = attacks["pgd"]
    pgd20_unrolled = jax.jit(lambda x, y, k, e: pgd(logits_fn, x, y, k, e, steps=20, unroll=True))
    jax.block_until_ready(fb(x, y))
    jax.block_until_ready(pgd20(x, y, key, eps, n20))
    jax.block_until_ready(pgd20(x, y, key, eps, jnp.int32(7)))  # another count: no new program
    jax.block_until_ready(pgd20_unrolled(x, y, key, eps))
    assert pgd20._cache_size() == 1

    # Interleaved repeats (min): a change of machine load hits every variant alike.
    fns = {"fb": lambda: fb(x, y), "pgd": lambda: pgd20(x, y, key, eps, n20),
           "unrolled": lambda: pgd20_unrolled(x, y, key, eps)}
    ts: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(5):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts[name].append(time.perf_counter() - t0)
    fb_min = min(ts["fb"])
    return {"train_step_compile_s": train_c, "compile_vs_train_step": rows,
            "pgd20_fb_units": min(ts["pgd"]) / (20 * fb_min),
            "pgd20_unrolled_fb_units": min(ts["unrolled"]) / (20 * fb_min)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--work")
    parser.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    parser.add_argument("--skip-train", action="store_true",
                        help="reuse WORK/quickstart from an earlier --keep run (a new cache directory)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, Path(args.work))))
        return
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rv_compile_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / ("jax_cache_eval" if args.skip_train else "jax_cache")
    t_start = time.perf_counter()
    print(f"work directory {work}; cache {cache}")
    print(f"{'workload':<26}{'first compile s':>16}{'second compile s':>18}{'ratio':>8}")
    # The first train run also produces the checkpoint the evaluation workloads read.
    pairs = [("quickstart train (1 epoch)", "train1", "train2"), ("noise grid", "grid", "grid"),
             ("ImageNet-C suite (sev 3)", "suite", "suite"), ("attacks fgsm,pgd,apgd", "attacks", "attacks"),
             ("eval --attacks pgd", "pgd", "pgd")]
    results = {}
    for label, first, second in pairs:
        if first == "train1" and args.skip_train:
            continue
        if first == "train1":
            a = _spawn("train1", work, cache)
            os.replace(work / "train1", work / "quickstart")
        else:
            a = _spawn(first, work, cache)
        b = _spawn(second, work, cache)
        ratio = a["compile_s"] / max(b["compile_s"], 1e-9)
        results[label] = {"first": a, "second": b, "ratio": ratio}
        print(f"{label:<26}{a['compile_s']:>16.2f}{b['compile_s']:>18.2f}{ratio:>7.1f}x", flush=True)
    per = _per_attack(work)
    print(f"\none train-step compile: {per['train_step_compile_s']:.2f} s")
    for name, r in per["compile_vs_train_step"].items():
        print(f"  {name:<10} compile = {r:.2f} x train step (goal <= 3)")
    print(f"PGD-20 run time = {per['pgd20_fb_units']:.2f} forward+backward units (goal <= 1.1, rolled loop); "
          f"unroll=True: {per['pgd20_unrolled_fb_units']:.2f}")
    print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
