"""One CIFAR-10 epoch of PreActResNet-18 on this machine: ours vs PyTorch eager, the input
pipeline's rate and peak host RAM.

    python benchmarks/cifar10_epoch.py [--data ../shared/data/cifar10_jpeg] [--prepared DIR]
                                       [--steps N] [--rounds R] [--batch 128] [--width 64]
                                       [--no-torch] [--no-memory]

1. Prepared shards: the train split of ``--data`` (``train.zip``, ImageFolder layout, 50,000
   JPEGs) is packed once with ``robust-vision-data prepare``'s function (``data/cli.py``
   ``prepare``, the train split only, no hold-out) into ``--prepared`` (default: a temporary directory, removed at the
   end; an existing prepared directory is reused, so a second run skips the decode).
2. Pipeline rate: images/s of ``data.pipeline.train_batches`` over the shards (an epoch's
   order, uint8 batches of ``--batch``, 100 batches after the first), nothing else running.
3. Train steps, both engines on the same batches of the same pipeline, SGD momentum 0.9, weight
   decay 5e-4 (L2 on the gradient), lr 0.1, random flip + pad-4 crop, cross-entropy:
   * ours: what ``robust-vision-train`` runs per step (``training/trainer.py``: batches
     prefetched to the device, uint8 -> float on device, ``steps.make_train_step`` with on-device
     augmentation, donated state, per-example outputs kept on device until the epoch ends);
   * torch: RobustBench's PreActResNet-18 (``models/torch_reference.py``), eager, the batch
     converted and augmented with torch tensor ops, ``torch.optim.SGD``.
   ``--steps`` steps each (default: the whole epoch, 391 steps of 128), run in ``--rounds``
   interleaved rounds so load on a shared machine hits both alike; compile time (ours) and the
   first step (torch) are outside the timed rounds.
4. Peak host RAM: peak resident set (VmHWM) of a fresh process running ours for 10 steps through
   the same pipeline (``--no-memory`` skips it).
Prints images/s of each, the ratio ours / torch (goal >= 1.0) and pipeline / ours step rate
(goal >= 3). Thread count: whatever both use by default on this machine (all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY, CROP_PAD = 0.1, 0.9, 5e-4, 4


def prepared_train(data: Path, prepared: Path):
    """The prepared train split (a record source), packing ``data/train.zip`` into ``prepared``
    first if it is not there yet. Returns (source, seconds spent preparing or 0.0)."""
    from robust_vision.config import DataConfig
    from robust_vision.data.sources import open_split

    seconds = 0.0
    if not (prepared / "meta.json").is_file():
        from robust_vision.data.cli import prepare

        cfg = DataConfig(dataset_name="image_folder", data_dir=str(data / "train.zip"), val_fraction=0.0,
                         test_fraction=0.0)
        t = time.perf_counter()
        prepare(cfg, prepared, workers=os.cpu_count() or 1, log=lambda line: print(f"  prepare: {line}"),
                splits=("train",))
        seconds = time.perf_counter() - t
    return open_split(str(prepared), "prepared", "train"), seconds


def pipeline_rate(source, batch: int, n_batches: int) -> float:
    """Images/s of ``train_batches`` over ``source`` (epoch 1's order), ``n_batches`` batches
    after the first (the first includes the reader's start-up)."""
    from robust_vision.data.pipeline import train_batches

    seen, t = 0, None
    for i, b in enumerate(train_batches(source, batch, 0, 1)):
        if t is None:
            t = time.perf_counter()
            continue
        seen += len(b.labels)
        if i >= n_batches:
            break
    return seen / (time.perf_counter() - t)


def ours_engine(source, batch: int, width: int):
    """(compile seconds, run(first, n) -> seconds for steps [first, first + n) of the epoch)."""
    import jax

    from robust_vision.config import ModelConfig, TrainingConfig
    from robust_vision.data.batch import to_unit_float
    from robust_vision.data.pipeline import train_batches
    from robust_vision.evaluation.batched import prefetch_to_device
    from robust_vision.losses import make_loss
    from robust_vision.models import create_model
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_optimizer
    from robust_vision.training.steps import make_train_step

    model = create_model(ModelConfig(name="preact_resnet18", width=width), input_shape=(32, 32, 3),
                         num_classes=NUM_CLASSES, seed=0)
    parts = split_model(model)
    tcfg = TrainingConfig(optimizer="sgd", learning_rate=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          lr_schedule="constant", batch_size=batch, augment_flip=True, augment_crop_padding=CROP_PAD,
                          loss_type="cross_entropy")
    tx, _ = make_optimizer(tcfg, 1)
    holder = {"state": init_train_state(parts, tx, tcfg.ema_enabled)}
    step = make_train_step(parts, tx, make_loss(tcfg), tcfg)
    key = jax.random.key(0)
    first = next(iter(prefetch_to_device(train_batches(source, batch, 0, 0))))
    t0 = time.perf_counter()
    compiled = step.lower(holder["state"], to_unit_float(first.images), first.labels, first.mask, key).compile()
    compile_s = time.perf_counter() - t0
    epoch = {"it": None}

    def run(n: int) -> float:
        if epoch["it"] is None:
            epoch["it"] = iter(prefetch_to_device(train_batches(source, batch, 0, 0)))
        t, outputs = time.perf_counter(), []
        for i in range(n):
            x, y, m = next(epoch["it"])
            holder["state"], per_ex = compiled(holder["state"], to_unit_float(x), y, m, jax.random.fold_in(key, i))
            outputs.append(per_ex)  # on device, as the trainer keeps them until the epoch ends
        jax.block_until_ready((holder["state"], outputs))
        return time.perf_counter() - t

    return compile_s, run


def _torch_augment(torch, x):
    """Random horizontal flip and pad-4 random crop of a (B, C, H, W) batch, vectorised."""
    b, _, h, w = x.shape
    flip = torch.rand(b) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4)
    dy, dx = torch.randint(0, 2 * CROP_PAD + 1, (b,)), torch.randint(0, 2 * CROP_PAD + 1, (b,))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def torch_engine(source, batch: int, width: int):
    """(first-step seconds, run(n) -> seconds for the next n steps) of PyTorch eager."""
    import numpy as np
    import torch

    from robust_vision.data.pipeline import train_batches
    from robust_vision.models.torch_reference import torch_architectures

    torch.manual_seed(0)
    model = torch_architectures()[1](NUM_CLASSES, width=width).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    epoch = {"it": iter(train_batches(source, batch, 0, 0))}

    def one():
        b = next(epoch["it"])
        x = torch.from_numpy(np.asarray(b.images)).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.from_numpy(np.asarray(b.labels, np.int64))
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(_torch_augment(torch, x)), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    one().item()
    first_s = time.perf_counter() - t0

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            loss = one()
        loss.item()
        return time.perf_counter() - t

    return first_s, run


def _peak_rss_mib(args, prepared: Path) -> float | None:
    """VmHWM of a fresh process that runs 10 of our steps through the pipeline."""
    cmd = [sys.executable, __file__, "--child-memory", "--prepared", str(prepared), "--batch", str(args.batch),
           "--width", str(args.width)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  (memory probe failed: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def _child_memory(args) -> int:
    from train_throughput import _own_peak_rss_mib  # benchmarks/ is this script's directory

    source, _ = prepared_train(Path(args.data), Path(args.prepared))
    _, run = ours_engine(source, args.batch, args.width)
    run(10)
    print(json.dumps({"peak_rss_mib": _own_peak_rss_mib()}))
    return 0


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "cifar10_jpeg"),
                   help="folder holding train.zip (default ../shared/data/cifar10_jpeg from the repo root)")
    p.add_argument("--prepared", help="prepared shards (made there when missing; default: a temporary directory)")
    p.add_argument("--steps", type=int, help="train steps per engine (default: one epoch)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds the steps are split into")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64, help="PreActResNet-18 width (RobustBench: 64)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from robust_vision.xla_defaults import apply_cpu_defaults

    apply_cpu_defaults()
    if args.child_memory:
        return _child_memory(args)
    if not (Path(args.data) / "train.zip").is_file() and not (args.prepared and Path(args.prepared).is_dir()):
        print(f"error: no train.zip in --data {args.data}; pass the CIFAR-10 JPEG folder (docs/DATA.md)", file=sys.stderr)
        return 2
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed: PyTorch comparison skipped (pip install 'robust-vision[torch]')")
            args.no_torch = True
    tmp = None if args.prepared else tempfile.mkdtemp(prefix="cifar10-prepared-")
    prepared = Path(args.prepared) if args.prepared else Path(tmp) / "shards"
    try:
        return _run(args, prepared)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args, prepared: Path) -> int:
    import jax

    source, prep_s = prepared_train(Path(args.data), prepared)
    n = len(source)
    steps = args.steps or -(-n // args.batch)
    rounds = max(1, min(args.rounds, steps))
    print(f"CIFAR-10 train (JPEG q75): {n} images{f', prepared in {prep_s:.0f} s' if prep_s else ' (prepared before)'}; "
          f"PreActResNet-18 width {args.width}, batch {args.batch}, {steps} steps per engine in {rounds} rounds; "
          f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs", flush=True)
    feed = pipeline_rate(source, args.batch, 100)
    print(f"pipeline (prepared shards): {feed:.0f} images/s", flush=True)
    engines, warm = {}, {}
    warm["ours"], engines["ours"] = ours_engine(source, args.batch, args.width)
    if not args.no_torch:
        warm["torch"], engines["torch"] = torch_engine(source, args.batch, args.width)
    print("  " + ", ".join(f"{k}: {'compile' if k == 'ours' else 'first step'} {v:.1f} s" for k, v in warm.items()),
          flush=True)
    seconds = {k: 0.0 for k in engines}
    per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
    for r, k_steps in enumerate(per_round):
        for name, run in engines.items():
            seconds[name] += run(k_steps)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {steps_done(per_round, r) * args.batch / s:.1f} images/s"
                                                       for k, s in seconds.items()), flush=True)
    rate = {k: steps * args.batch / s for k, s in seconds.items()}
    memory = None if args.no_memory else _peak_rss_mib(args, prepared)
    print(f"\n{'engine':8s} {'images/s':>10s} {'s/epoch (50k)':>14s}")
    for name, r in rate.items():
        print(f"{name:8s} {r:10.1f} {n / r:14.0f}")
    if "torch" in rate:
        ratio = rate["ours"] / rate["torch"]
        print(f"ratio ours / torch eager: {ratio:.2f}x (goal >= 1.0x: {'met' if ratio >= 1.0 else 'NOT met'})")
    ratio = feed / rate["ours"]
    print(f"pipeline / ours step rate: {ratio:.1f}x (goal >= 3x: {'met' if ratio >= 3.0 else 'NOT met'})")
    if memory is not None:
        print(f"peak host RAM (ours, 10 steps through the pipeline, fresh process): {memory:.0f} MiB")
    return 0


def steps_done(per_round: list[int], r: int) -> int:
    """Steps run by the end of round ``r`` (0-based)."""
    return sum(per_round[:r + 1])


if __name__ == "__main__":
    raise SystemExit(main())
