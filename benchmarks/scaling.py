"""Train-step time on one process vs two processes (jax.distributed, CPU collectives) on this machine.

Runs the real train step (``training.steps.make_train_step``) of a CNN on a fixed global batch
of synthetic 32x32x3 images, placed with ``data.pipeline.shard_batch`` exactly as the trainer
does, in three layouts:

    1 process  x 1 device      the plain single-process baseline
    1 process  x 2 devices     data-parallel inside one process
    2 processes x 1 device     the same 2-way data parallelism over jax.distributed (gloo)

and prints the median step time of each and the ratio 2 processes / 1 process (2 devices each
way), i.e. the cost of crossing a process boundary for the gradient all-reduce. On one machine
with few cores the processes share the cores, so this measures overhead, not speed-up.

    python benchmarks/scaling.py [--batch 128] [--steps 20] [--features 32 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _worker(args: argparse.Namespace) -> None:
    from robust_vision import distributed

    if args.num_processes > 1:
        distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id, timeout_s=120)
    import jax
    import numpy as np

    from robust_vision.config import load_config
    from robust_vision.data.pipeline import data_mesh, local_rows, replicate, shard_batch
    from robust_vision.losses import make_loss
    from robust_vision.models import create_model
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_optimizer
    from robust_vision.training.steps import make_train_step

    cfg = load_config(None, [f"model.features=[{', '.join(map(str, args.features))}]", "training.ema_enabled=true",
                             f"training.batch_size={args.batch}"])
    model = create_model(cfg.model, input_shape=(32, 32, 3), num_classes=10, seed=0)
    parts = split_model(model)
    tx, _ = make_optimizer(cfg.training, 100)
    mesh = data_mesh()
    state = replicate(mesh, init_train_state(parts, tx, True))
    step = make_train_step(parts, tx, make_loss(cfg.training), cfg.training)
    rng = np.random.default_rng(0)
    images = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch).astype(np.int32)
    mask = np.ones(args.batch, np.float32)
    rows = local_rows(mesh, args.batch)
    times = []
    for i in range(args.steps + 3):  # 3 warm-up steps (compilation)
        t0 = time.perf_counter()
        x, y, m = shard_batch(mesh, images[rows], labels[rows], mask[rows])
        state, out = step(state, x, y, m, jax.random.key(i))
        jax.block_until_ready(out["loss"])
        times.append(time.perf_counter() - t0)
    if distributed.is_main_process():
        print(json.dumps({"median_step_s": float(np.median(times[3:])), "devices": int(mesh.devices.size),
                          "processes": jax.process_count()}))


def _run(processes: int, devices_per_process: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [sys.executable, __file__, "--worker", "--num-processes", str(processes), "--port", str(port),
              "--batch", str(args.batch), "--steps", str(args.steps), "--features", *map(str, args.features)]
    procs = [subprocess.Popen([*common, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(processes)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"worker failed ({processes} process(es)): {[p.returncode for p in procs]}")
    return json.loads([line for line in outs[0].splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    print(f"CNN {args.features}, global batch {args.batch} of 32x32x3, {args.steps} timed steps, "
          f"{os.cpu_count()} CPU core(s)")
    results = {}
    for label, (procs, devs) in {"1 process  x 1 device ": (1, 1), "1 process  x 2 devices": (1, 2),
                                 "2 processes x 1 device ": (2, 1)}.items():
        results[label] = _run(procs, devs, args)
        print(f"  {label}: {results[label]['median_step_s'] * 1e3:8.1f} ms/step "
              f"({results[label]['devices']} device(s), {results[label]['processes']} process(es))")
    one, two = results["1 process  x 2 devices"], results["2 processes x 1 device "]
    print(f"ratio 2 processes / 1 process (2 devices each): {two['median_step_s'] / one['median_step_s']:.2f}x "
          f"step time")
    base = results["1 process  x 1 device "]
    print(f"ratio 2 processes / 1 process x 1 device: {two['median_step_s'] / base['median_step_s']:.2f}x step time")


if __name__ == "__main__":
    main()
