"""One accelerator check: Fast-AT training, AutoAttack, a PyTorch reference and the input pipeline.

    python benchmarks/device_check.py --data ../shared/data/cifar10_jpeg      # on the GPU machine, <= 9 min
    python benchmarks/device_check.py --smoke                                  # same code path, toy size, CPU

Prints one table and writes one JSON (``--out``, default ``device_check.json``):

(a) train: configs/cifar10/fast_at_preact_resnet18.yaml (PreActResNet-18, FGSM + random start)
    through the project's trainer (``training.trainer.train``) on prepared uint8 shards made from
    ``DATA/train.zip``. A probe run (1 epoch of ``--probe-batches`` batches) measures the cold
    compile time and the step rate; then as many of the recipe's 15 epochs as fit in
    ``--train-budget-s`` run with the cyclic schedule compressed to that many epochs (peak half-way),
    validating at the end only, so that every epoch's wall time is training. Reported: epochs run,
    images/s (median over the epochs after the first), wall time, compile time (cold, probe),
    final val accuracy and val PGD-10 accuracy.
(b) AutoAttack standard, Linf 8/255, on the first ``--aa-examples`` images of ``DATA/test.zip``
    taken evenly from the classes (the zip is ordered by class; within a class by the original
    test-batch order), ``attacks.autoattack.run_autoattack`` on the trained model: per stage the
    robust accuracy and wall time (compilation included), and the total.
(c) PyTorch (optional; skipped with a note when not installed): the same Fast-AT train step (FGSM
    with random start, then SGD on the adversarial batch) on RobustBench's PreActResNet-18, same
    batch size, eager and ``torch.compile``, images/s; ratio ours / PyTorch.
(d) the input pipeline over the prepared shards: images/s of ``pipeline.train_batches`` with
    ``os.cpu_count()`` reader threads (``benchmarks/data_pipeline.py``'s ``pipeline_rate``).

``--smoke`` writes a toy CIFAR-like zip pair (10 classes, 32x32 JPEGs) when ``--data`` is not
given, trains the recipe with the small CNN instead of PreActResNet-18 for 1 epoch (no probe), attacks 16 images with tiny budgets, times PyTorch eager only
(``torch.compile`` on CPU compiles for minutes) and forces the CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "cifar10" / "fast_at_preact_resnet18.yaml"
RECIPE_EPOCHS = 15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="folder holding train.zip and test.zip (default ../shared/data/cifar10_jpeg; "
                                  "--smoke: a generated toy pair)")
    p.add_argument("--out", default="device_check.json", help="JSON written here")
    p.add_argument("--work", help="scratch folder (prepared shards, run directory); default a temporary one")
    p.add_argument("--train-budget-s", type=float, default=200.0, help="(a) wall time for the training epochs "
                   "(with the probe, prepare and compilation, (a) takes about 5 minutes)")
    p.add_argument("--probe-batches", type=int, default=40, help="(a) batches of the probe epoch")
    p.add_argument("--aa-examples", type=int, default=1000, help="(b) test images attacked")
    p.add_argument("--torch-steps", type=int, default=30, help="(c) timed PyTorch steps per mode")
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU (the test suite runs this)")
    args = p.parse_args(argv)
    if args.data is None and not args.smoke:
        args.data = str(REPO.parent / "shared" / "data" / "cifar10_jpeg")
    return args


def toy_zips(folder: Path, per_class: int = 8) -> Path:
    """train.zip / test.zip in the shared data's layout (split/class/NNNN.jpg), smooth random
    32x32 images whose mean colour depends on the class (so a model can learn something)."""
    from PIL import Image

    from robust_vision.data.readers import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        with zipfile.ZipFile(folder / f"{split}.zip", "w") as z:
            for k, name in enumerate(CIFAR10_CLASSES):
                for i in range(per_class):
                    small = rng.integers(0, 128, (4, 4, 3)) + 12 * k
                    buf = io.BytesIO()
                    Image.fromarray(small.astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(buf, "JPEG", quality=75)
                    z.writestr(f"{split}/{name}/{i:04d}.jpg", buf.getvalue())
    return folder


def fast_at_config(prepared: Path, run_dir: Path, epochs: int, smoke: bool, extra: list[str] = ()):
    """The Fast-AT recipe on the prepared shards, its cyclic schedule over ``epochs`` epochs
    (peak half-way), validated after the last epoch only."""
    from robust_vision.config import load_config

    overrides = ["data.dataset_name=prepared", f"data.data_dir={prepared}", f"training.epochs={epochs}",
                 f"training.warmup_epochs={epochs / 2}", f"training.eval_every={epochs}",
                 "training.progress_bar=false", "training.write_figures=false", f"training.save_every={epochs}",
                 f"training.checkpoint_dir={run_dir}"]
    if smoke:
        # The small CNN: compiling PreActResNet-18's steps alone costs ~40 s of CPU.
        overrides += ["model.name=cnn", "model.features=[8, 16]", "training.batch_size=16", "training.eval_batch_size=32",
                      "training.val_attack.steps=2", "training.val_attack.max_examples=16"]
    return load_config(RECIPE, overrides + list(extra))


def prepare_shards(data: Path, work: Path, smoke: bool) -> tuple[Path, dict]:
    """``robust-vision-data prepare`` of DATA/train.zip: the recipe's train and held-out val splits."""
    import dataclasses

    from robust_vision.config import load_config
    from robust_vision.data.cli import prepare

    cfg = dataclasses.replace(load_config(RECIPE).data, data_dir=str(data / "train.zip"))
    out = work / "prepared"
    t0 = time.perf_counter()
    meta = prepare(cfg, out, workers=0 if smoke else min(os.cpu_count() or 1, 16), log=lambda _m: None,
                   splits=("train", "val"))
    return out, {"prepare_s": time.perf_counter() - t0,
                 "splits": {k: v.get("count") for k, v in meta.get("splits", {}).items()}}


def probe(prepared: Path, work: Path, args: argparse.Namespace) -> dict:
    """One short epoch of the recipe (``--probe-batches`` batches, validation without the attack):
    the cold compile time and the step rate, from which the number of epochs is chosen."""
    from robust_vision.compile_cache import compile_seconds
    from robust_vision.training.trainer import train

    batch = fast_at_config(prepared, work / "probe", 1, args.smoke).training.batch_size
    cfg = fast_at_config(prepared, work / "probe", 1, args.smoke, [
        f"data.max_train_examples={args.probe_batches * batch}", "training.val_attack.steps=0",
        "training.best_metric=val_accuracy"])
    c0, t0 = compile_seconds(), time.perf_counter()
    result = train(cfg, log=lambda _m: None)
    compile_s = compile_seconds() - c0
    return {"probe_wall_s": time.perf_counter() - t0, "compile_s_cold": compile_s,
            "probe_images_per_s": cfg.data.max_train_examples / max(result.history[0]["epoch_time_s"] - compile_s, 1e-9)}


def train_part(prepared: Path, work: Path, args: argparse.Namespace) -> dict:
    """(a): the probe (not with --smoke: 1 epoch), then the epochs that fit, through ``train``."""
    from robust_vision.compile_cache import compile_seconds
    from robust_vision.training.trainer import train

    compile_seconds()  # start the meter
    n_train = int(np.load(prepared / "train" / "labels.npy", mmap_mode="r").shape[0])
    measured = {} if args.smoke else probe(prepared, work, args)
    epochs = 1 if args.smoke else int(min(RECIPE_EPOCHS, max(1, args.train_budget_s
                                                               // (n_train / measured["probe_images_per_s"]))))
    cfg = fast_at_config(prepared, work / "run", epochs, args.smoke)
    c0, t0 = compile_seconds(), time.perf_counter()
    result = train(cfg, log=lambda _m: None)
    wall, run_compile = time.perf_counter() - t0, compile_seconds() - c0
    times = [row["epoch_time_s"] for row in result.history]
    steady = times[1:-1] or times  # the first epoch compiles, the last one validates
    last = result.history[-1]
    return {"epochs": epochs, "of_epochs": RECIPE_EPOCHS, "n_train": n_train, "batch_size": cfg.training.batch_size,
            "images_per_s": n_train / statistics.median(steady), "wall_s": wall, "epoch_times_s": times,
            "compile_s_cold": measured.get("compile_s_cold", run_compile), "compile_s_run": run_compile, **measured,
            "val_accuracy": last.get("val_accuracy"), "val_pgd10_accuracy": last.get("val_pgd_accuracy"),
            "run_dir": str(result.run_dir)}


def balanced_test_slice(test_zip: Path, n: int, image_shape: tuple[int, int, int]):
    """The first ceil(n / K) images of every class of the test zip, n in all, brought to
    ``image_shape``: (images (n, H, W, C) float32 [0, 1], labels (n,) int32)."""
    from robust_vision.data.sources import SubsetSource, converted, open_split, read_images

    src = open_split(str(test_zip), "image_folder", "test")
    per_class = -(-n // src.info.num_classes)
    idx = np.sort(np.concatenate([np.nonzero(src.labels == k)[0][:per_class] for k in range(src.info.num_classes)]))[:n]
    subset = SubsetSource(src, idx, src.info)
    return read_images(converted(subset, image_shape)), subset.labels


def autoattack_part(run_dir: Path, test_zip: Path, args: argparse.Namespace) -> dict:
    """(b): AutoAttack standard, Linf 8/255, on the trained model; per stage robust accuracy and wall time."""
    import jax

    from robust_vision.attacks.autoattack import run_autoattack
    from robust_vision.runs.loading import load_trained_model

    n = 16 if args.smoke else args.aa_examples
    model = load_trained_model(run_dir)
    images, labels = balanced_test_slice(test_zip, n, model.input_shape)
    budgets = dict(steps=2, n_targets=2, fab_steps=2, n_queries=10) if args.smoke else {}
    t0 = time.perf_counter()
    r = run_autoattack(model.logits_fn(), images, labels, 8 / 255, "linf", jax.random.key(0),
                       batch_size=min(500, n), **budgets)
    return {"n_examples": n, "eps": "8/255", "clean_accuracy": r["clean_accuracy"],
            "robust_accuracy": r["robust_accuracy"], "wall_s": time.perf_counter() - t0, "budgets": budgets or "reference",
            "stages": [{k: s[k] for k in ("attack", "robust_accuracy", "new_adversarial", "wall_s")} for s in r["stages"]]}


def _torch_preact(width: int):
    """RobustBench's PreActResNet-18 in PyTorch (the shared twin, ``models.torch_reference``)
    behind the recipe's input normalisation, as our model normalises inside its forward."""
    from robust_vision.models.torch_reference import torch_architectures

    torch, preact_resnet18, _ = torch_architectures()

    class Normalized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = preact_resnet18(num_classes=10, width=width)
            self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    return Normalized()


def torch_part(batch_size: int, args: argparse.Namespace) -> dict:
    """(c): the Fast-AT step in PyTorch, eager and torch.compile, images/s."""
    try:
        import torch
    except ImportError:
        return {"note": "PyTorch not installed: not run"}
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    model = _torch_preact(4 if args.smoke else 64).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    eps, alpha = 8 / 255, 10 / 255
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step(xb, yb):
        delta = (torch.rand_like(xb) * 2 - 1) * eps
        delta = (xb + delta).clamp(0, 1) - xb
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xb + delta), yb), delta)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        x_adv = (xb + delta).clamp(0, 1).detach()
        loss = torch.nn.functional.cross_entropy(model(x_adv), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    modes = {"eager": step}
    if not args.smoke:
        modes["compile"] = torch.compile(step)
    steps = 2 if args.smoke else args.torch_steps
    out = {"device": device, "batch_size": batch_size, "torch": torch.__version__}
    for name, fn in modes.items():
        t0 = time.perf_counter()
        try:
            fn(x, y)  # first call: compilation for torch.compile
        except Exception as exc:  # noqa: BLE001 - a missing compiler toolchain must not lose the other parts
            out[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        _sync(torch, device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(x, y)
        _sync(torch, device)
        out[f"{name}_images_per_s"] = steps * batch_size / (time.perf_counter() - t0)
        out[f"{name}_first_call_s"] = first
    if args.smoke:
        out["compile_note"] = "--smoke: torch.compile not run on CPU (minutes of compilation)"
    return out


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pipeline_part(prepared: Path, batch_size: int) -> dict:
    """(d): images/s of the input pipeline over the prepared train shards."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_pipeline import pipeline_rate

    from robust_vision.config import DataConfig
    from robust_vision.data.sources import open_splits

    src = open_splits(DataConfig(dataset_name="prepared", data_dir=str(prepared)), ("train",))["train"]
    threads = os.cpu_count() or 1
    return {"threads": threads, "batch_size": batch_size, "images_per_s": pipeline_rate(src, batch_size, 0, threads)}


def table(result: dict) -> str:
    a, b, c, d = (result.get(k, {}) for k in ("train", "autoattack", "torch", "pipeline"))
    rows = [("device", result["device"]),
            ("(a) Fast-AT epochs run", f"{a.get('epochs')} of {a.get('of_epochs')} ({a.get('n_train')} images, batch {a.get('batch_size')})"),
            ("(a) train images/s", f"{a.get('images_per_s', float('nan')):.0f}"),
            ("(a) train wall / cold compile", f"{a.get('wall_s', float('nan')):.1f} s / {a.get('compile_s_cold', float('nan')):.1f} s"),
            ("(a) val acc / val PGD-10 acc", f"{a.get('val_accuracy')} / {a.get('val_pgd10_accuracy')}"),
            ("(b) AutoAttack n, clean, robust", f"{b.get('n_examples')}, {b.get('clean_accuracy')}, {b.get('robust_accuracy')}"),
            *[(f"(b)   after {s['attack']}", f"{s['robust_accuracy']:.4f}  ({s['wall_s']:.1f} s)") for s in b.get("stages", [])],
            ("(b) AutoAttack wall", f"{b.get('wall_s', float('nan')):.1f} s")]
    for mode in ("eager", "compile"):
        key = f"{mode}_images_per_s"
        if key in c:
            ratio = ("ratio not meaningful (--smoke trains the small CNN)" if result["smoke"] else
                     f"ours / PyTorch = {a.get('images_per_s', float('nan')) / c[key]:.2f}x")
            rows.append((f"(c) PyTorch {mode} images/s", f"{c[key]:.0f}; {ratio}"))
    for mode in ("eager", "compile"):
        if f"{mode}_error" in c:
            rows.append((f"(c) PyTorch {mode}", f"failed: {c[f'{mode}_error']}"))
    if "note" in c or "compile_note" in c:
        rows.append(("(c) note", c.get("note") or c.get("compile_note")))
    rows.append(("(d) pipeline images/s", f"{d.get('images_per_s', float('nan')):.0f} ({d.get('threads')} threads)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    with tempfile.TemporaryDirectory(prefix="rv-device-check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = Path(args.data) if args.data else toy_zips(work, per_class=8)
        if not (data / "train.zip").is_file() or not (data / "test.zip").is_file():
            print(f"error: --data {data}: expected train.zip and test.zip (the shared CIFAR-10 zips)", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        dev = jax.devices()[0]
        result: dict = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')} x{jax.device_count()}",
                        "jax": jax.__version__, "smoke": args.smoke}
        prepared, result["prepare"] = prepare_shards(data, work, args.smoke)
        result["train"] = train_part(prepared, work, args)
        result["autoattack"] = autoattack_part(Path(result["train"]["run_dir"]), data / "test.zip", args)
        result["torch"] = torch_part(result["train"]["batch_size"], args)
        result["pipeline"] = pipeline_part(prepared, result["train"]["batch_size"])
        result["total_wall_s"] = time.perf_counter() - t0
    print(table(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} (total {result['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
