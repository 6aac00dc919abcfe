"""AutoAttack's attacks against the PyTorch reference: same weights, images, budget and threads.

    python benchmarks/attack_speed.py [--models preact_resnet18 wrn] [--preact-width 8]
        [--wrn-depth 28 --wrn-widen 1] [--images 32] [--steps 10] [--targets 3] [--queries 100]
        [--eps 8/255] [--repeats 3] [--threads 2] [--attacks apgd-ce apgd-t fab-t square]

For each model, a RobustBench architecture or the project's CNN (``models/torch_reference.py``,
PyTorch's random initialisation, batch-norm statistics of the benchmark images) is built in
PyTorch and its weights imported into ours
(``runs/import_weights.convert_state_dict``; the logits agree to float round-off, printed).
Labels are the model's own clean predictions, so every image starts correctly classified and
both implementations attack all of them. Each attack runs on all images:

* ours: a stage as ``run_autoattack`` runs it (``attacks/autoattack.py`` ``_run_attack``: one
  jitted program per stage and batch size, budgets traced, examples vmapped with their own keys,
  APGD-T / FAB-T one target per call on the still-robust points), compiled before the timed runs
  (cached programs);
* reference: ``torchattacks`` (3.5, the PyTorch ports of AutoAttack's APGD, APGD-T, FAB and Square),
  eager, ``torch.set_num_threads(--threads)``.

Threads: ``--threads 1`` (the default) runs both on one thread (XLA:CPU without its thread pool).
On a machine shared with other jobs this is the only fair setting: PyTorch's OpenMP threads wait
for each other at every operator, and when another process holds a core a 2-thread torch
forward-backward pass took 60x its idle time (1.8 s instead of 29 ms, PreActResNet-18 width 8,
32 images, load average 13 on 2 cores) while XLA's took 2x. ``--threads N`` (N = the machine's
cores) compares both multi-threaded, meaningful on an idle machine only. torchattacks is an optional benchmark dependency
  (``pip install --no-deps torchattacks``; it imports without torchvision).

Budgets (both sides): APGD-CE ``--steps`` iterations; APGD-T ``--targets`` targets x ``--steps``;
FAB-T ``--targets`` targets x ``--steps``; Square ``--queries`` queries (reference budgets: 100,
9, 100, 5000; smaller here so the benchmark runs in minutes on 2 cores: time is linear in each).
Timing: ours and the reference alternate, ``--repeats`` times each; the minimum is reported
(timings on a shared machine are noisy; the minimum is the least disturbed run). The speed ratio
is t(reference) / t(ours): >= 1.0 means ours is at least as fast. ``fooled`` is the fraction of
images each made adversarial. Both stop attacking an image once it is fooled, at different
grains: the reference removes it from the batch (APGD-T, FAB-T between targets, Square between
queries); ours drops it between targets (smaller batches) and stops a loop when its whole batch
is fooled, but a Square batch with one robust image keeps querying at full size. ``--eps`` small
(e.g. 0.1/255: few images fooled) compares the full-budget cost, the one robust images pay; the
default 8/255 is AutoAttack's budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
# XLA:CPU on one thread: no Eigen thread pool, one intra-op thread.
SINGLE_THREAD_XLA = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
NUM_CLASSES = 10


def _models(args) -> dict[str, tuple]:
    """name -> (torch module in eval mode, registry name, model-config overrides)."""
    from robust_vision.models.torch_reference import torch_architectures, torch_production_cnn

    torch, PreActResNet18, WideResNet = torch_architectures()
    out = {}
    for name in args.models:
        torch.manual_seed(0)
        if name == "cnn":
            features = tuple(args.cnn_features)
            ref, registry, options = torch_production_cnn()(features, NUM_CLASSES), name, {"features": features}
            label = f"CNN {list(features)}"
        elif name == "preact_resnet18":
            ref, registry, options = PreActResNet18(NUM_CLASSES, width=args.preact_width), name, {"width": args.preact_width}
            label = f"PreActResNet-18 (width {args.preact_width})"
        else:
            ref = WideResNet(depth=args.wrn_depth, widen=args.wrn_widen, num_classes=NUM_CLASSES)
            registry, options = "wrn-28-10", {"depth": args.wrn_depth, "widen": args.wrn_widen}
            label = f"WRN-{args.wrn_depth}-{args.wrn_widen}"
        out[label] = (ref, registry, options)
    return out


def _calibrate_batch_norm(ref, images) -> None:
    """Set every batch norm's running statistics to those of ``images`` (N, 3, H, W) and put
    ``ref`` in eval mode: with its random initial weights the network's logits then depend on
    the image (with fresh statistics they are nearly constant and no attack moves them)."""
    import torch

    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: one pass gives the batch's statistics
            m.reset_running_stats()
    ref.train()
    with torch.no_grad():
        ref(images)
    ref.eval()


def _ours_logits(ref, registry: str, options: dict):
    """Our model with ``ref``'s weights: a pure ``images (B, 32, 32, 3) -> logits`` function."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from robust_vision.models import MODELS
    from robust_vision.models.cnn import ProductionCNN
    from robust_vision.runs.import_weights import _to_ours, convert_state_dict, torch_key
    from robust_vision.models.stages import path_names
    from robust_vision.models.robustbench import PreActResNet18, WideResNet
    from robust_vision.models.torch_reference import state_dict_arrays
    from robust_vision.models.state import make_logits_fn, split_model

    cls = {"cnn": ProductionCNN, "preact_resnet18": PreActResNet18}.get(registry, WideResNet)
    assert registry in MODELS
    parts = split_model(cls(input_shape=(32, 32, 3), num_classes=NUM_CLASSES, rngs=nnx.Rngs(0), **options))
    state_dict = state_dict_arrays(ref)
    if registry == "cnn":  # not an importable family: the same key rule, leaf by leaf
        params, model_state = (jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.asarray(_to_ours(state_dict[torch_key(path_names(path), "cnn")], leaf.shape)),
            tree) for tree in (parts.params, parts.model_state))
    else:
        params, model_state = convert_state_dict(state_dict, registry, parts.params, parts.model_state)
    forward = make_logits_fn(parts)
    return jax.tree_util.Partial(forward, params, model_state)


def _ours_stage(name: str, logits_fn, args):
    """``run(x, y) -> fooled (N,) bool`` of our stage ``name``, compiled by a first call."""
    import jax
    import numpy as np

    from robust_vision.attacks import autoattack

    plan = {n: (attack, hyper) for n, attack, hyper in autoattack.stages(
        "standard", "linf", steps=args.steps, n_targets=args.targets, fab_steps=args.steps, n_queries=args.queries)}
    attack, hyper = plan[name]
    key = jax.random.fold_in(jax.random.key(0), autoattack._crc(name))

    def run(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x_adv, robust = images.copy(), np.ones(len(labels), bool)
        autoattack._run_attack(attack, hyper, logits_fn, "linf", NUM_CLASSES, images, labels, np.arange(len(labels)),
                               key, args.eps, len(labels), x_adv, robust)
        return ~robust

    return run


def _reference_stage(name: str, ref, args):
    """``run(x, y) -> fooled (N,) bool`` of torchattacks' port of stage ``name``."""
    import numpy as np
    import torch
    import torchattacks

    if name == "apgd-ce":
        attack = torchattacks.APGD(ref, norm="Linf", eps=args.eps, steps=args.steps, n_restarts=1, loss="ce", seed=0)
    elif name == "apgd-t":
        attack = torchattacks.APGDT(ref, norm="Linf", eps=args.eps, steps=args.steps, n_restarts=1, seed=0,
                                    n_classes=NUM_CLASSES)
    elif name == "fab-t":
        attack = torchattacks.FAB(ref, norm="Linf", eps=args.eps, steps=args.steps, n_restarts=1, seed=0,
                                  multi_targeted=True, n_classes=NUM_CLASSES)
    else:
        attack = torchattacks.Square(ref, norm="Linf", eps=args.eps, n_queries=args.queries, n_restarts=1, seed=0)
    if name in ("apgd-t", "fab-t"):
        attack.n_target_classes = args.targets  # targets 2nd .. (targets + 1)th most likely class

    def run(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(labels.astype(np.int64))
        x_adv = attack(x, y)
        with torch.no_grad():
            pred = ref(x_adv).argmax(1)
        inside = (x_adv - x).abs().flatten(1).amax(1) <= args.eps * (1 + 1e-5) + 1e-7
        return ((pred != y) & inside).numpy()

    return run


def _fb_units(logits_fn, ref, images, labels, repeats: int) -> tuple[float, float]:
    """Seconds of one forward-backward pass (input gradient of the summed cross-entropy) of ours
    (jitted) and of the reference (eager) on the same batch: min of interleaved runs."""
    import jax
    import torch

    from robust_vision.attacks._common import ce_loss

    grad = jax.jit(jax.grad(lambda x, y: ce_loss(logits_fn(x), y).sum()))
    x, y = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels.astype("int64"))

    def ours():
        grad(images, labels).block_until_ready()

    def theirs():
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(ref(xx), y, reduction="sum"), xx)

    ours(), theirs()
    times = [(_timed(ours)[0], _timed(theirs)[0]) for _ in range(max(repeats, 5))]
    return min(t[0] for t in times), min(t[1] for t in times)


def _timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def bench_model(label: str, ref, registry: str, options: dict, args) -> list[tuple]:
    """Rows (model, attack, t_ours, t_ref, ratio, fooled_ours, fooled_ref) of one model."""
    import jax
    import numpy as np
    import torch

    images = np.random.default_rng(0).uniform(0, 1, (args.images, 32, 32, 3)).astype(np.float32)
    _calibrate_batch_norm(ref, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    logits_fn = _ours_logits(ref, registry, options)
    with torch.no_grad():
        ref_logits = ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    labels = ref_logits.argmax(1).astype(np.int32)
    diff = float(np.abs(np.asarray(jax.jit(logits_fn)(images)) - ref_logits).max())
    print(f"{label}: {args.images} images, labels = clean predictions; max |logits ours - torch| = {diff:.2e}",
          flush=True)
    fb_ours, fb_ref = _fb_units(logits_fn, ref, images, labels, args.repeats)
    print(f"  one forward-backward pass: ours {1e3 * fb_ours:.1f} ms, torch {1e3 * fb_ref:.1f} ms "
          f"(ratio {fb_ref / fb_ours:.2f}x)", flush=True)
    rows = []
    for name in args.attacks:
        ours, theirs = _ours_stage(name, logits_fn, args), _reference_stage(name, ref, args)
        compile_s, _ = _timed(ours, images, labels)  # compiles the stage program (then cached)
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t, fooled_ours = _timed(ours, images, labels)
            t_ours.append(t)
            t, fooled_ref = _timed(theirs, images, labels)
            t_ref.append(t)
        row = (label, name, min(t_ours), min(t_ref), min(t_ref) / min(t_ours), fooled_ours.mean(), fooled_ref.mean(),
               min(t_ours) / fb_ours, min(t_ref) / fb_ref)
        print(f"  {name:8s} ours {row[2]:8.2f} s  torchattacks {row[3]:8.2f} s  ratio {row[4]:5.2f}x  "
              f"fooled {row[5]:.2f} / {row[6]:.2f}  fb units {row[7]:.0f} / {row[8]:.0f}  "
              f"(first call, with compile: {compile_s:.1f} s)", flush=True)
        rows.append(row)
    return rows


def _eps(text: str) -> float:
    """``8/255``, ``0.5/255`` or ``0.03``: a budget in [0, 1] pixel units."""
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["preact_resnet18", "wrn", "cnn"],
                   choices=["preact_resnet18", "wrn", "cnn"])
    p.add_argument("--cnn-features", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--preact-width", type=int, default=8)
    p.add_argument("--wrn-depth", type=int, default=28)
    p.add_argument("--wrn-widen", type=int, default=1)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="APGD and FAB iterations")
    p.add_argument("--targets", type=int, default=3, help="APGD-T / FAB-T target classes")
    p.add_argument("--queries", type=int, default=100, help="Square queries")
    p.add_argument("--eps", type=_eps, default=_eps("8/255"), help="Linf budget, e.g. 8/255 or 0.01")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="threads of both: torch.set_num_threads and, for 1, XLA:CPU single-threaded")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    args = p.parse_args(argv)
    try:
        import torch
        import torchattacks  # noqa: F401
    except ImportError as e:
        print(f"error: {e.name} is not installed; this benchmark needs torch and torchattacks "
              "(pip install 'robust-vision[torch]' && pip install --no-deps torchattacks)", file=sys.stderr)
        return 2
    from robust_vision.xla_defaults import apply_cpu_defaults

    apply_cpu_defaults()
    if args.threads == 1:  # before JAX starts its backend: XLA reads XLA_FLAGS once
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {' '.join(SINGLE_THREAD_XLA)}".strip()
    elif args.threads != os.cpu_count():
        print(f"error: --threads must be 1 or {os.cpu_count()} (XLA:CPU runs on one thread or on every core)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import jax

    print(f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; eps "
          f"{args.eps:.5f}; APGD {args.steps} steps, {args.targets} targets, FAB {args.steps} steps, Square "
          f"{args.queries} queries; min of {args.repeats} interleaved runs", flush=True)
    rows = []
    for label, (ref, registry, options) in _models(args).items():
        rows += bench_model(label, ref, registry, options, args)
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'model':28s} {'attack':8s} {'ours s':>8s} {'torch s':>8s} {'ratio':>6s} {'fooled ours/torch':>18s} "
          f"{'fb units ours/torch':>20s}")
    for r in rows:
        print(f"{r[0]:28s} {r[1]:8s} {r[2]:8.2f} {r[3]:8.2f} {r[4]:5.2f}x {r[5]:8.2f} / {r[6]:.2f}  "
              f"{r[7]:11.0f} / {r[8]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
