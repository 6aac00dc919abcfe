"""Input pipeline: host memory vs dataset size, and images/s against the train step's rate.

    python benchmarks/data_pipeline.py                           # 10k vs 200k RSS, 4k-image throughput
    python benchmarks/data_pipeline.py --small 2000 --large 40000 --images 1000 --steps 10

1. Peak RSS of one epoch of ``pipeline.train_batches`` over prepared uint8 shards (memory
   mapped) of ``--small`` and ``--large`` synthetic 32x32x3 images, each measured in a fresh
   subprocess (VmHWM, the peak resident set), and the ratio large / small. Flat memory means
   a ratio near 1 although the data grows ``large / small`` times.
2. Peak RSS of the trainer (``robust_vision.training.trainer.train``, ``data.dataset_name:
   prepared``) on the same two datasets: a short run of ``--train-steps`` train steps (the
   epoch is cut there) and a validation pass over a fixed 512-image val split, each in a fresh
   subprocess, and the ratio large / small.
3. Prepared shards as ``.npy`` (the format ``robust-vision-data prepare`` writes, read with
   ``os.pread``) vs ArrayRecord (one record per image, ``group_size:1``, read with Grain's
   ``ArrayRecordDataSource``): images/s of batches of ``--batch-size`` random indices (an
   epoch's order), the two formats interleaved over ``--repeats`` rounds, and the ratio.
4. Images/s of: the pipeline over a JPEG zip (decode in ``--workers`` processes), the pipeline
   over prepared shards, and a reference loop decoding the same JPEG files with PIL in a
   ``multiprocessing.Pool`` of ``--workers`` (what a PyTorch DataLoader does).
5. Images/s the train step consumes: CNN ``--features`` (default 64 128 256), batch 128, 32x32,
   and the ratio pipeline / step (the goal is >= 1.2: the input is not the bottleneck).
All data is generated here in a temporary directory; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SHAPE = (32, 32, 3)


def write_prepared(root: Path, n: int, chunk: int = 10000, n_val: int = 0) -> Path:
    """A prepared dataset (the `robust-vision-data prepare` format) of ``n`` random train images
    (and ``n_val`` val images), written in chunks."""
    rng = np.random.default_rng(0)
    splits = {"train": n, **({"val": n_val} if n_val else {})}
    for split, count in splits.items():
        (root / split).mkdir(parents=True)
        images = np.lib.format.open_memmap(root / split / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(count, *SHAPE))
        for s in range(0, count, chunk):
            images[s:s + chunk] = rng.integers(0, 256, (min(chunk, count - s), *SHAPE), dtype=np.uint8)
        images.flush()
        del images
        np.save(root / split / "labels.npy", (np.arange(count) % 10).astype(np.int32))
    (root / "meta.json").write_text(json.dumps({"class_names": [str(i) for i in range(10)], "image_shape": list(SHAPE),
                                                "splits": {k: {"count": c, "from": "synthetic"}
                                                           for k, c in splits.items()}}))
    return root


def _train_child(root: str, steps: int, batch_size: int) -> None:
    """(subprocess) a short training run on the prepared dataset; prints peak RSS in MiB."""
    import itertools

    import robust_vision.training.trainer as trainer
    from robust_vision.config import load_config

    full_epoch = trainer.train_batches
    # The epoch is cut after ``steps`` batches: what is measured is the memory of a run over the
    # whole source (its labels, the epoch's order, the batches in flight), not its length.
    trainer.train_batches = lambda *a, **k: itertools.islice(full_epoch(*a, **k), steps)
    cfg = load_config(None, ["data.dataset_name=prepared", f"data.data_dir={root}", "data.image_size=null",
                             "model.features=[8, 16]", "training.epochs=1", f"training.batch_size={batch_size}",
                             "training.progress_bar=false", "training.write_figures=false",
                             f"training.checkpoint_dir={root}-run"])
    trainer.train(cfg, log=lambda _m: None)
    print(json.dumps({"rss_mib": _peak_rss_mib()}))


def trainer_peak_rss(root: Path, steps: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--train-child", str(root), "--train-steps", str(steps),
                          "--batch-size", str(batch_size)], check=True, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_arrayrecord(npy_root: Path, path: Path) -> Path:
    """The train images of a prepared dataset as one ArrayRecord file: one record per image (its
    raw uint8 bytes), ``group_size:1`` so that every record is read on its own (random access)."""
    from array_record.python import array_record_module

    images = np.load(npy_root / "train" / "images.npy", mmap_mode="r")
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for i in range(len(images)):
        writer.write(np.ascontiguousarray(images[i]).tobytes())
    writer.close()
    return path


def format_rates(npy_root: Path, ar_path: Path, batch_size: int, repeats: int) -> tuple[float, float]:
    """Images/s of reading batches of random indices from the .npy shard (NpyRowSource.read_batch)
    and from the ArrayRecord file (ArrayRecordDataSource.__getitems__), interleaved."""
    from grain.sources import ArrayRecordDataSource

    from robust_vision.config import DataConfig
    from robust_vision.data.pipeline import epoch_permutation
    from robust_vision.data.sources import open_splits

    npy = open_splits(DataConfig(dataset_name="prepared", data_dir=str(npy_root), val_fraction=0.0), ("train",))["train"]
    ar = ArrayRecordDataSource(str(ar_path))
    order = epoch_permutation(0, 1, len(npy))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def npy_epoch() -> int:
        return sum(int(npy.read_batch(b)[0, 0, 0, 0]) for b in batches)

    def ar_epoch() -> int:
        return sum(int(np.frombuffer(b"".join(ar.__getitems__(b.tolist())), np.uint8).reshape(len(b), *SHAPE)[0, 0, 0, 0])
                   for b in batches)

    times = {"npy": 0.0, "ar": 0.0}
    ar_epoch(), npy_epoch()  # opening the files and first reads excluded
    for _ in range(repeats):
        for name, fn in (("npy", npy_epoch), ("ar", ar_epoch)):
            t0 = time.perf_counter()
            fn()
            times[name] += time.perf_counter() - t0
    n = repeats * len(order)
    return n / times["npy"], n / times["ar"]


def _rss_child(root: str, batch_size: int) -> None:
    """(subprocess) one epoch over the prepared shards; prints peak RSS in MiB and images seen."""
    from robust_vision.config import DataConfig
    from robust_vision.data.pipeline import train_batches
    from robust_vision.data.sources import open_splits

    src = open_splits(DataConfig(dataset_name="prepared", data_dir=root), ("train",))["train"]
    seen, checksum = 0, 0
    for batch in train_batches(src, batch_size, seed=0, epoch=1, shard_index=0, shard_count=1, threads=2):
        seen += int(batch.mask.sum())
        checksum += int(batch.images[0, 0, 0, 0])
    print(json.dumps({"rss_mib": _peak_rss_mib(), "seen": seen}))


def _peak_rss_mib() -> float:
    """Peak resident memory of this process image: VmHWM, which execve resets (ru_maxrss does
    not: a child would report its parent's peak at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(root: Path, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(root), "--batch-size", str(batch_size)],
                         check=True, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_jpeg_zip(path: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(n):
            # smooth random images compress like photos (pure noise would be unrealistically large)
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((32, 32), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            z.writestr(f"train/{i % 10}/{i:06d}.jpg", buf.getvalue())
    return path


def _pil_chunk(args: tuple[str, list[str]]) -> int:
    from PIL import Image

    path, names = args
    with zipfile.ZipFile(path) as z:
        total = 0
        for name in names:
            with Image.open(io.BytesIO(z.read(name))) as im:
                total += int(np.asarray(im.convert("RGB"))[0, 0, 0])
    return total


def reference_pool_rate(path: Path, workers: int, batch_size: int) -> float:
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".jpg")]
    chunks = [(str(path), names[i:i + batch_size]) for i in range(0, len(names), batch_size)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_pil_chunk, chunks[:workers])  # start-up excluded, as for the pipeline's warm-up batch
        t0 = time.perf_counter()
        pool.map(_pil_chunk, chunks)
        return len(names) / (time.perf_counter() - t0)


def pipeline_rate(src, batch_size: int, workers: int, threads: int) -> float:
    from robust_vision.data.pipeline import train_batches

    it = train_batches(src, batch_size, seed=0, epoch=1, shard_index=0, shard_count=1, workers=workers, threads=threads)
    first = next(it)  # start-up (worker processes, first read) excluded
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch.images.shape[0]
    del first
    return n / (time.perf_counter() - t0)


def step_rate(features: list[int], batch_size: int, steps: int) -> float:
    import jax

    from robust_vision.config import load_config
    from robust_vision.data.batch import to_unit_float
    from robust_vision.losses import make_loss
    from robust_vision.models import create_model
    from robust_vision.models.state import split_model
    from robust_vision.optim import init_train_state, make_run_optimizer
    from robust_vision.training.steps import make_train_step

    cfg = load_config(None, [f"model.features=[{', '.join(map(str, features))}]", f"training.batch_size={batch_size}"])
    model = create_model(cfg.model, input_shape=SHAPE, num_classes=10, seed=0)
    parts = split_model(model)
    tx, _ = make_run_optimizer(cfg.training, cfg.model, parts.params, 100)
    state = init_train_state(parts, tx, cfg.training.ema_enabled)
    step = make_train_step(parts, tx, make_loss(cfg.training), cfg.training)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, *SHAPE), dtype=np.uint8)
    y = (np.arange(batch_size) % 10).astype(np.int32)
    m = np.ones(batch_size, np.float32)
    key = jax.random.key(0)
    state, out = step(state, to_unit_float(jax.numpy.asarray(x)), y, m, key)  # compile
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for i in range(steps):
        state, out = step(state, to_unit_float(jax.numpy.asarray(x)), y, m, jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10000, help="images of the small dataset (RSS)")
    parser.add_argument("--large", type=int, default=200000, help="images of the large dataset (RSS)")
    parser.add_argument("--images", type=int, default=4000, help="images of the throughput datasets")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (JPEG paths and PIL pool)")
    parser.add_argument("--features", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=20, help="timed train steps")
    parser.add_argument("--train-steps", type=int, default=5, help="train steps of each trainer RSS run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the .npy vs ArrayRecord reads")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child, args.batch_size)
        return
    if args.train_child:
        _train_child(args.train_child, args.train_steps, args.batch_size)
        return

    from robust_vision.config import DataConfig
    from robust_vision.data.sources import open_split, open_splits

    with tempfile.TemporaryDirectory(prefix="rv-data-bench-") as tmp:
        tmp = Path(tmp)
        rss = {}
        for n in (args.small, args.large):
            root = write_prepared(tmp / f"prep{n}", n)
            rss[n] = peak_rss(root, args.batch_size)
            size_mib = n * int(np.prod(SHAPE)) / 2**20
            print(f"peak RSS, one epoch over {n:>7d} images ({size_mib:7.1f} MiB of uint8): "
                  f"{rss[n]['rss_mib']:7.1f} MiB (saw {rss[n]['seen']} images)")
            if n == args.large:
                continue
        ratio = rss[args.large]["rss_mib"] / rss[args.small]["rss_mib"]
        print(f"RSS ratio {args.large} / {args.small} images: {ratio:.2f} (data grew {args.large / args.small:.0f}x)")

        train_rss = {}
        for n in (args.small, args.large):
            train_rss[n] = trainer_peak_rss(write_prepared(tmp / f"train{n}", n, n_val=512), args.train_steps,
                                            args.batch_size)
            print(f"trainer peak RSS, {args.train_steps} steps + val on {n:>7d} prepared images: "
                  f"{train_rss[n]['rss_mib']:7.1f} MiB")
        ratio = train_rss[args.large]["rss_mib"] / train_rss[args.small]["rss_mib"]
        print(f"trainer RSS ratio {args.large} / {args.small} images: {ratio:.2f} "
              f"(data grew {args.large / args.small:.0f}x)")

        fmt_root = write_prepared(tmp / "fmt", args.images)
        npy_rate, ar_rate = format_rates(fmt_root, write_arrayrecord(fmt_root, tmp / "fmt.array_record"),
                                         args.batch_size, args.repeats)
        print(f"prepared shards, random batches of {args.batch_size}: .npy {npy_rate:10.0f} images/s, "
              f"ArrayRecord {ar_rate:10.0f} images/s; .npy / ArrayRecord = {npy_rate / ar_rate:.2f}x")

        zpath = write_jpeg_zip(tmp / "jpeg.zip", args.images)
        jpeg_src = open_split(str(zpath), "image_folder", "train", val_fraction=0.0)
        prepared = open_splits(DataConfig(dataset_name="prepared", data_dir=str(write_prepared(tmp / "tp", args.images))),
                               ("train",))["train"]
        rates = {
            f"pipeline, JPEG zip ({args.workers} workers)": pipeline_rate(jpeg_src, args.batch_size, args.workers, 1),
            "pipeline, JPEG zip (threads, no workers)": pipeline_rate(jpeg_src, args.batch_size, 0, 2),
            "pipeline, prepared shards": pipeline_rate(prepared, args.batch_size, 0, 2),
            f"reference PIL loop, multiprocessing.Pool({args.workers})": reference_pool_rate(zpath, args.workers,
                                                                                          args.batch_size),
        }
        step = step_rate(args.features, args.batch_size, args.steps)
        for name, rate in rates.items():
            print(f"{name:48s} {rate:10.0f} images/s")
        print(f"{'train step CNN ' + str(args.features) + f', batch {args.batch_size}, 32x32':48s} {step:10.0f} images/s")
        print(f"pipeline (prepared) / step: {rates['pipeline, prepared shards'] / step:.1f}x; "
              f"pipeline (JPEG zip, workers) / step: {rates[f'pipeline, JPEG zip ({args.workers} workers)'] / step:.2f}x "
              f"(goal >= 1.2x); {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
