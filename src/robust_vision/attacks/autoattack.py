"""AutoAttack (Croce & Hein 2020): an ensemble of parameter-free attacks run in sequence, each on
the points every earlier attack failed on, keeping per example the first adversarial point found.

Versions (as the reference's ``version=``):
  ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), Linf or L2;
  ``rand``:     APGD-CE and APGD-DLR with expectation over transformation (EOT), for randomised
                models (``random_logits_fn(x, key)``; the EOT surrogate averages the softmax of
                ``eot_samples`` draws, see ``eot_logits_fn``).

Fixed shapes: between stages (and between the targets of APGD-T and FAB-T) the still-robust
points are gathered on the host into batches of one fixed size (the last one padded and masked; a
power of two below ``batch_size`` when few points remain), so a stage compiles once per batch size
(eps and the budgets traced) and already-fooled points cost nothing. Each example is attacked with its own key,
fold_in(stage key, example index) (the attack is vmapped over examples), so its result does not
depend on which other points share its batch: the run is deterministic for a key, independent of
``batch_size``, and the ensemble is never weaker than any of its stages run alone.
"""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.attacks._common import LogitsFn
from robust_vision.attacks.apgd_t import apgd_dlr, apgd_t
from robust_vision.attacks.evaluate import _check_dataset
from robust_vision.attacks.fab import fab_t
from robust_vision.attacks.gradient import apgd_ce
from robust_vision.attacks.square import square
from robust_vision.data.readers import CIFAR10_CLASSES

VERSIONS = ("standard", "rand")
GRADIENT_FREE = ("square",)
# Stages weaker than APGD on a model with honest gradients: if they still find new points after
# APGD-CE / APGD-T, the gradient attacks were misled (the reference's warning sign).
WEAKER_STAGES = ("fab-t", "square")
# Reference budgets (AutoAttack "standard"): what benchmarks/attack_cost.py compares against.
REFERENCE_BUDGET = {"apgd_steps": 100, "fab_steps": 100, "square_queries": 5000, "n_targets": 9, "eot_samples": 20}


def eot_logits_fn(random_logits_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                  samples: int) -> LogitsFn:
    """A deterministic surrogate of a randomised model: log of the mean softmax over ``samples``
    fixed draws (keys fold_in(key, k)). Its input gradient is the gradient of the expected
    probability, i.e. EOT with the same draws at every attack iteration (the reference draws new
    ones each iteration)."""
    def logits_fn(x):
        logp = jnp.stack([jax.nn.log_softmax(random_logits_fn(x, jax.random.fold_in(key, k)).astype(jnp.float32))
                          for k in range(samples)])
        return jax.nn.logsumexp(logp, axis=0) - math.log(samples)
    return logits_fn


def stages(version: str, norm: str, *, steps: int = 100, n_targets: int = 9, fab_steps: int = 100,
           n_queries: int = 5000) -> list[tuple[str, Callable, dict]]:
    """(name, attack, static hyper-parameters) of each stage of ``version``, in order."""
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid versions: {', '.join(VERSIONS)}.")
    if norm not in ("linf", "l2"):
        raise ValueError(f"AutoAttack norm must be linf or l2, got {norm!r}.")
    if version == "rand":
        return [("apgd-ce", apgd_ce, {"norm": norm, "steps": steps}),
                ("apgd-dlr", apgd_dlr, {"norm": norm, "steps": steps})]
    return [("apgd-ce", apgd_ce, {"norm": norm, "steps": steps}),
            ("apgd-t", apgd_t, {"norm": norm, "steps": steps, "n_targets": n_targets}),
            ("fab-t", fab_t, {"norm": norm, "steps": fab_steps, "n_targets": n_targets}),
            ("square", square, {"norm": norm, "n_queries": n_queries})]


# Budgets passed to the stages as traced int32 values: one compiled program per stage serves
# every iteration / target / query count (and every eps); only the norm is static.
TRACED_BUDGET = ("steps", "n_targets", "n_queries", "first_target", "first_query", "stop_query")


def _stage_impl(xb, yb, keys, eps, budget, x_start=None, *, attack, hyper, logits_fn, norm):
    """Attack each example with its own key (vmap over batch-1 attacks); return x_adv and whether
    it is misclassified inside the ball. ``budget``: traced counts (``TRACED_BUDGET``);
    ``x_start``: the iterates a resumed search continues from (Square's query chunks)."""
    def one(xi, yi, ki, si):
        start = {} if si is None else {"x_start": si[None]}
        return attack(logits_fn, xi[None], yi[None], ki, eps, **dict(hyper), **budget, **start)[0]

    x_adv = jax.vmap(one)(xb, yb, keys, x_start)
    delta = (x_adv - xb).reshape(xb.shape[0], -1)
    size = jnp.max(jnp.abs(delta), -1) if norm == "linf" else jnp.sqrt(jnp.sum(delta * delta, -1))
    inside = size <= eps * (1.0 + 1e-5) + 1e-7  # float round-off of the projection
    fooled = (jnp.argmax(logits_fn(x_adv), axis=-1) != yb) & inside
    return x_adv, fooled


_STAGE_CACHE: dict[tuple, Callable] = {}


def _stage_fn(attack: Callable, hyper: dict, logits_fn: LogitsFn, norm: str) -> Callable:
    """``fn(x, y, keys, eps) -> (x_adv, fooled)`` of one stage; jitted once per (attack, static
    hyper-parameters, model, norm), the counts of ``hyper`` bound as traced arguments."""
    static = tuple(sorted((k, v) for k, v in hyper.items() if k not in TRACED_BUDGET))
    budget = {k: jnp.int32(v) for k, v in hyper.items() if k in TRACED_BUDGET}
    key = (attack, static, logits_fn, norm)
    if key not in _STAGE_CACHE:
        if len(_STAGE_CACHE) >= 16:  # bounded: entries hold the model's parameters
            _STAGE_CACHE.pop(next(iter(_STAGE_CACHE)))
        _STAGE_CACHE[key] = jax.jit(functools.partial(_stage_impl, attack=attack, hyper=static,
                                                      logits_fn=logits_fn, norm=norm))
    return functools.partial(_STAGE_CACHE[key], budget=budget)


def _crc(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _run_stage(fn, images, labels, idx, key, eps, batch_size, x_adv, robust, index_offset: int = 0,
               iterates: np.ndarray | None = None, resume: bool = False) -> int:
    """Attack the examples ``idx`` in fixed-size batches; update x_adv / robust in place; return
    how many were newly fooled. Example i is keyed by its index in the whole set, i + index_offset.
    ``iterates`` (N, H, W, C): receives every attacked example's result; with ``resume`` it is
    also what the attack continues from (``fn`` takes ``x_start``)."""
    new = 0
    if len(idx) == 0:
        return 0
    # Few points left (the usual case after APGD-CE): a smaller power-of-two batch, so a handful
    # of robust points does not pay for a full batch (at most log2(batch_size) extra compilations).
    batch_size = min(batch_size, 1 << (len(idx) - 1).bit_length())
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        pad = batch_size - len(sel)
        sel_p = np.concatenate([sel, np.full(pad, sel[0])]) if pad else sel
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(sel_p + index_offset, jnp.int32))
        start = {"x_start": jnp.asarray(iterates[sel_p])} if resume else {}
        xa, fooled = fn(jnp.asarray(images[sel_p]), jnp.asarray(labels[sel_p]), keys, jnp.float32(eps), **start)
        xa, fooled = np.asarray(xa)[:len(sel)], np.asarray(fooled)[:len(sel)]
        if iterates is not None:
            iterates[sel] = xa
        hit = sel[fooled]
        x_adv[hit] = xa[fooled]
        robust[hit] = False
        new += int(fooled.sum())
    return new


def query_chunks(n_queries: int) -> list[tuple[int, int]]:
    """[first, stop) query ranges of Square as ``run_autoattack`` runs it: query 0 (the start) and
    1 .. max(4, n / 64) - 1 first, then ranges doubling in length up to ``n_queries``. Fooled
    points are dropped between chunks; most are fooled early, where the chunks are short."""
    bounds, b = [1], max(4, n_queries // 64)
    while b < n_queries:
        bounds.append(b)
        b *= 2
    bounds.append(n_queries)
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo] or [(1, 1)]


def _run_query_chunks(attack, hyper, logits_fn, norm, images, labels, idx, key, eps, batch_size, x_adv, robust,
                      index_offset: int = 0) -> int:
    """Square's queries in chunks (``query_chunks``), each on the examples still robust, resumed
    from their last iterate: the points of one call, without querying fooled examples."""
    iterates, new = images.copy(), 0
    for first, stop in query_chunks(int(hyper["n_queries"])):
        fn = _stage_fn(attack, {**hyper, "first_query": first, "stop_query": stop}, logits_fn, norm)
        # The first chunk starts the search (query 0, x_start ignored); the others continue the
        # robust examples'. Always passing x_start keeps one program per batch size.
        new += _run_stage(fn, images, labels, idx[robust[idx]], key, eps, batch_size, x_adv, robust, index_offset,
                          iterates=iterates, resume=True)
    return new


def _run_attack(attack: Callable, hyper: dict, logits_fn: LogitsFn, norm: str, n_classes: int, images, labels, idx,
                key, eps, batch_size, x_adv, robust, index_offset: int = 0) -> int:
    """``_run_stage`` of one stage on the examples ``idx``; returns how many were newly fooled.

    A targeted stage (APGD-T, FAB-T: ``n_targets`` in ``hyper``) runs one target per call, each
    on the examples still robust, as the reference's loop over targets does: an example fooled by
    target r costs nothing afterwards. Each example's result is the one of a single call with all
    targets (target r is keyed fold_in(example key, r); an example stops at its first success),
    and every call is the same compiled program (``first_target`` is traced)."""
    if "n_queries" in hyper:
        return _run_query_chunks(attack, hyper, logits_fn, norm, images, labels, idx, key, eps, batch_size, x_adv,
                                 robust, index_offset)
    if "n_targets" not in hyper:
        fn = _stage_fn(attack, hyper, logits_fn, norm)
        return _run_stage(fn, images, labels, idx, key, eps, batch_size, x_adv, robust, index_offset)
    new = 0
    for r in range(min(int(hyper["n_targets"]), n_classes - 1)):
        fn = _stage_fn(attack, {**hyper, "n_targets": 1, "first_target": r}, logits_fn, norm)
        new += _run_stage(fn, images, labels, idx[robust[idx]], key, eps, batch_size, x_adv, robust, index_offset)
    return new


def run_autoattack(logits_fn: LogitsFn, images: Any, labels: Any, eps: float, norm: str, key: jax.Array,
                   version: str = "standard", batch_size: int = 256, *, steps: int = 100, n_targets: int = 9,
                   fab_steps: int = 100, n_queries: int = 5000, random_logits_fn: Callable | None = None,
                   eot_samples: int = 20, standalone: bool = False, return_adversarial: bool = False,
                   index_offset: int = 0) -> dict:
    """AutoAttack robust accuracy of ``logits_fn`` over a whole dataset at one budget.

    Args:
      logits_fn: images (B, H, W, C) in [0, 1] -> logits (B, K), deterministic, eval mode.
      images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
      eps: budget in [0, 1] pixel units (Linf or L2 radius); norm: "linf" or "l2".
      key: PRNG key; stage s uses fold_in(key, crc32(name)), example j fold_in(that, j).
      version: "standard" or "rand" (EOT over ``random_logits_fn(x, key)`` when given).
      batch_size: fixed batch size of every stage (one compilation per stage).
      steps / n_targets / fab_steps / n_queries: the stages' budgets (reference defaults).
      standalone: also run every stage alone on all clean-correct points (its own robust
        accuracy, for the "ensemble <= every stage" comparison; costs one more pass per stage).
      return_adversarial: include ``x_adv`` (N, H, W, C) and ``robust`` (N,) in the result.
      index_offset: the index of ``images[0]`` in the whole set (its examples' keys are
        fold_in(stage key, index_offset + j)), so a set attacked in parts gives the same points.
    Returns: dict with ``version, norm, eps, n_examples, clean_accuracy, robust_accuracy``,
      ``stages`` (per stage: name, robust_accuracy after it, new_adversarial, wall_s (seconds,
      compilation of a first call included), and
      standalone_robust_accuracy when asked) and ``flags`` (see ``autoattack_flags``).
    """
    images, labels = _check_dataset(images, labels, batch_size)
    if not float(eps) >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    plan = stages(version, norm, steps=steps, n_targets=n_targets, fab_steps=fab_steps, n_queries=n_queries)
    if version == "rand" and random_logits_fn is not None:
        logits_fn = eot_logits_fn(random_logits_fn, jax.random.fold_in(key, _crc("eot")), eot_samples)
    n = images.shape[0]
    batch_size = min(batch_size, n)
    fwd = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
    pred = np.concatenate([np.asarray(fwd(jnp.asarray(images[i:i + batch_size]))) for i in range(0, n, batch_size)])
    n_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)).shape[-1]
    correct = pred == labels  # robust accuracy counts only points classified correctly when clean
    robust = correct.copy()
    x_adv = images.copy()
    rows = []
    for name, attack, hyper in plan:
        stage_key = jax.random.fold_in(key, _crc(name))
        run = functools.partial(_run_attack, attack, hyper, logits_fn, norm, n_classes, images, labels)
        t0 = time.perf_counter()  # _run_stage fetches its results: the stage has finished when it returns
        new = run(np.nonzero(robust)[0], stage_key, eps, batch_size, x_adv, robust, index_offset)
        row = {"attack": name, "robust_accuracy": float(robust.mean()), "new_adversarial": new,
               "wall_s": time.perf_counter() - t0, **hyper}
        if standalone:
            alone = correct.copy()
            run(np.nonzero(correct)[0], stage_key, eps, batch_size, images.copy(), alone, index_offset)
            row["standalone_robust_accuracy"] = float(alone.mean())
        rows.append(row)
    result = {"version": version, "norm": norm, "eps": float(eps), "n_examples": int(n),
              "clean_accuracy": float(correct.mean()), "robust_accuracy": float(robust.mean()), "stages": rows}
    result["flags"] = autoattack_flags(result)
    if return_adversarial:
        result["x_adv"], result["robust"] = x_adv, robust
    return result


def autoattack_flags(result: dict, sweep: Sequence[dict] = ()) -> dict[str, Any]:
    """AutoAttack's warning signs (each True = suspicious, the robustness is likely overestimated):

    ``later_stage_found_new``: a weaker stage (FAB-T, Square) found points APGD-CE and APGD-T
      missed (gradient masking or a badly converged gradient attack);
    ``gradient_free_beat_gradient``: Square found points every gradient attack missed;
    ``not_decreasing_with_eps``: over ``sweep`` (results at several eps, plus clean accuracy at
      eps 0) robust accuracy rises with eps by more than 1/N.
    """
    st = result["stages"]
    later = [r["attack"] for r in st if r["attack"] in WEAKER_STAGES and r["new_adversarial"] > 0]
    flags: dict[str, Any] = {
        "later_stage_found_new": bool(later), "stages_finding_new": later,
        "gradient_free_beat_gradient": any(r["attack"] in GRADIENT_FREE and r["new_adversarial"] > 0 for r in st),
    }
    points = sorted([(0.0, result["clean_accuracy"])] + [(r["eps"], r["robust_accuracy"]) for r in [result, *sweep]])
    tol = 1.0 / max(result["n_examples"], 1)
    flags["not_decreasing_with_eps"] = any(b[1] > a[1] + tol for a, b in zip(points, points[1:]))
    return flags


def _pct(v: float) -> str:
    return f"{100.0 * v:.2f}"


# RobustBench's model-card fields (model_info/<dataset>/<threat model>/<name>.json), in its order;
# ``threat_model`` is added (RobustBench keeps it in the folder name). The person-filled ones are
# null until given (``--card KEY=VALUE``); the others are measured or taken from the model.
CARD_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
             "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "threat_model")
# Our registry names -> RobustBench's architecture names.
ARCHITECTURES = {"preact_resnet18": "PreActResNet-18", "resnet18": "ResNet-18", "wrn-28-10": "WideResNet-28-10",
                 "wrn-34-10": "WideResNet-34-10", "wrn-34-20": "WideResNet-34-20", "wrn-70-16": "WideResNet-70-16"}


def card_eps(eps: float) -> str:
    """A budget as RobustBench writes it: "8/255" when eps is k/255 for an integer k, else "%g" (0.031, 0.5)."""
    k = eps * 255
    return f"{round(k)}/255" if round(k) > 0 and abs(k - round(k)) < 1e-4 else f"{eps:g}"


def card_dataset(layout: str, class_names: Sequence[str], image_shape: Sequence[int]) -> str:
    """RobustBench's dataset name of the evaluated data: the layout's name (cifar10, cifar100, ...),
    and cifar10 also for any layout holding 32x32x3 images of the ten CIFAR-10 classes in their
    standard order (the ImageFolder zips of CIFAR-10)."""
    if tuple(image_shape) == (32, 32, 3) and tuple(class_names) == CIFAR10_CLASSES:
        return "cifar10"
    return layout


def robustbench_record(results: Sequence[dict], *, model_name: str = "", dataset: str | None = None,
                       architecture: str | None = None, card: dict | None = None) -> dict:
    """The RobustBench model card of one or more AutoAttack results (one per eps; the card is the
    largest eps): exactly CARD_KEYS (plus ``footnote`` when given), ``clean_acc`` / ``autoattack_acc``
    percent strings with two decimals, ``eps`` as ``card_eps``; ``name`` defaults to ``model_name``;
    ``architecture`` is RobustBench's name of a registry model; ``card`` (``preflight.parse_card``) overrides
    any of ``preflight.CARD_USER_KEYS``. The per-stage results and flags are in the evaluation's results.json."""
    if not results:
        raise ValueError("robustbench_record needs at least one AutoAttack result.")
    main = max(results, key=lambda r: r["eps"])
    measured = {"name": model_name or None, "number_forward_passes": 1, "dataset": dataset,
                "architecture": ARCHITECTURES.get(architecture, architecture) if architecture else None,
                "eps": card_eps(main["eps"]), "clean_acc": _pct(main["clean_accuracy"]),
                "autoattack_acc": _pct(main["robust_accuracy"]),
                "threat_model": {"linf": "Linf", "l2": "L2"}[main["norm"]]}
    given = dict(card or {})
    record = {key: given.get(key, measured.get(key)) for key in CARD_KEYS}
    if "footnote" in given:
        record["footnote"] = given["footnote"]
    return record


def write_autoattack_json(path: str | Path, result: dict | Sequence[dict], **card: Any) -> Path:
    """Write ``robustbench_record`` of ``result`` (one result or a list, one per eps) to ``path``;
    ``card``: its keyword arguments (model_name, dataset, architecture, card)."""
    results = [result] if isinstance(result, dict) else list(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(robustbench_record(results, **card), indent=2) + "\n")
    return path


def format_autoattack(result: dict, model_name: str = "") -> str:
    """Per-stage robust accuracy, the final one and the flags, for the terminal."""
    head = f"AutoAttack ({result['version']}, {result['norm']}, eps={result['eps']:.4g}, n={result['n_examples']})"
    lines = [f"{model_name}: {head}" if model_name else head, f"  clean accuracy          {result['clean_accuracy']:.4f}"]
    for r in result["stages"]:
        alone = f"  (alone {r['standalone_robust_accuracy']:.4f})" if "standalone_robust_accuracy" in r else ""
        lines.append(f"  after {r['attack']:<16} {r['robust_accuracy']:.4f}  (+{r['new_adversarial']} adversarial){alone}")
    lines.append(f"  robust accuracy         {result['robust_accuracy']:.4f}")
    f = result["flags"]
    warn = []
    if f["later_stage_found_new"]:
        warn.append(f"weaker later stages found new adversarial points ({', '.join(f['stages_finding_new'])}): "
                    "possible gradient masking")
    if f["gradient_free_beat_gradient"]:
        warn.append("the gradient-free Square attack beat the gradient attacks: gradients are unreliable")
    if f["not_decreasing_with_eps"]:
        warn.append("robust accuracy does not decrease with eps")
    lines += [f"  FLAG: {w}" for w in warn] or ["  flags: none"]
    return "\n".join(lines)


AUTOATTACK_NAMES = {"autoattack": "standard", "autoattack-rand": "rand"}  # CLI name -> version


def adversarial_margins(logits_fn: LogitsFn, x_adv: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
    """Logit margin z_y - max_{j != y} z_j at the adversarial points, (N,)."""
    from robust_vision.metrics import logit_margin

    fn = jax.jit(lambda x, y: logit_margin(logits_fn(x).astype(jnp.float32), y))
    return np.concatenate([np.asarray(fn(jnp.asarray(x_adv[i:i + batch_size]), jnp.asarray(labels[i:i + batch_size])))
                           for i in range(0, len(labels), batch_size)])


def _clean_predictions(logits_fn: LogitsFn, images: np.ndarray, batch_size: int) -> np.ndarray:
    fwd = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
    return np.concatenate([np.asarray(fwd(jnp.asarray(images[i:i + batch_size])))
                           for i in range(0, len(images), batch_size)])


def autoattack_suite_stream(logits_fn: LogitsFn, batches: Iterable[Any], *, model_name: str, name: str,
                            eps: Sequence[float], norm: str, key: jax.Array, batch_size: int = 256,
                            steps: int | None = None, verbose: bool = True) -> tuple[list[dict], list[dict]]:
    """AutoAttack at every budget of ``eps`` for the evaluation suite (robust-vision-eval), from
    one pass over ``batches`` (fixed-size masked ``Batch``es, images uint8 or float32 in [0, 1]).

    Each batch is attacked on its own (``run_autoattack``: every stage only on the points of the
    batch still robust) with its examples keyed by their index in the whole stream, so the points
    found, the per-stage counts and the final robust accuracy equal those of one call on the
    whole set. Every process attacks every row (the batch is gathered), as on arrays.
    Returns (rows in the attack_results.csv format: ``attack`` = name (``_l2`` appended for L2),
    ``eps``, ``steps``, ``accuracy``, ``margin``, ``snr``, ``snr_median``, ``n``, ``norm``; eps = 0 is
    the clean row, not attacked), and the ``run_autoattack`` results of the positive budgets,
    combined over the batches. ``steps`` sets APGD's and FAB's iterations (None = 100, the
    reference's); ``batch_size`` is the stages' batch (at most the stream's)."""
    from robust_vision.data.batch import to_unit_float
    from robust_vision.distributed import gather_batches
    from robust_vision.batched import prefetch_to_device
    from robust_vision.metrics import snr_summary

    version = AUTOATTACK_NAMES[name]
    budget = {} if steps is None else {"steps": int(steps), "fab_steps": int(steps)}
    label = f"{name}_l2" if norm == "l2" else name
    positive = [float(e) for e in eps if e > 0]
    margins: dict[float, list] = {float(e): [] for e in eps}
    clean_correct, n, offset = [], 0, 0
    parts: dict[float, list[dict]] = {e: [] for e in positive}  # per batch run_autoattack results
    for batch in prefetch_to_device(batches, 2):
        got = gather_batches([{"x": batch.images, "y": batch.labels, "m": batch.mask}])
        keep = got["m"] > 0
        images, labels = to_unit_float(got["x"][keep]), got["y"][keep]
        bs = min(batch_size, len(labels))
        if 0.0 in margins:
            margins[0.0].append(adversarial_margins(logits_fn, images, labels, bs))
            clean_correct.append(_clean_predictions(logits_fn, images, bs) == labels)
        for e in positive:
            r = run_autoattack(logits_fn, images, labels, e, norm, jax.random.fold_in(key, _crc(name)), version, bs,
                               return_adversarial=True, index_offset=offset, **budget)
            margins[e].append(adversarial_margins(logits_fn, r.pop("x_adv"), labels, bs))
            r.pop("robust")
            parts[e].append(r)
        n += len(labels)
        offset += len(got["m"])  # the stream's index of the next batch's first row
    if n == 0:
        raise ValueError("empty dataset: images has no examples.")
    results = [_combine_autoattack(parts[e], n) for e in positive]
    for r in results:
        if verbose:
            print(format_autoattack(r, model_name))
    by_eps = dict(zip(positive, results))
    rows = []
    for e in eps:
        margin = np.concatenate(margins[float(e)])
        # eps = 0: the clean accuracy (the same argmax rule as run_autoattack's clean pass).
        acc = by_eps[float(e)]["robust_accuracy"] if e > 0 else float(np.mean(np.concatenate(clean_correct)))
        rows.append({"model": model_name, "attack": label, "eps": float(e), "accuracy": acc,
                     "margin": float(np.mean(margin, dtype=np.float64)), **snr_summary(margin), "n": int(n),
                     "norm": norm, "steps": budget.get("steps", REFERENCE_BUDGET["apgd_steps"])})
    for r in results:
        r["flags"] = autoattack_flags(r, [o for o in results if o is not r])
    return rows, results


def _combine_autoattack(parts: list[dict], n: int) -> dict:
    """One ``run_autoattack`` result from those of the batches of a set of ``n`` examples (counts
    summed; accuracies = count / n, as on the whole set)."""
    first = parts[0]
    sizes = [p["n_examples"] for p in parts]
    clean = sum(int(round(p["clean_accuracy"] * m)) for p, m in zip(parts, sizes))
    stages_out, robust = [], clean
    for s, row in enumerate(first["stages"]):
        new = sum(p["stages"][s]["new_adversarial"] for p in parts)
        robust -= new
        stages_out.append({**row, "robust_accuracy": robust / n, "new_adversarial": new,
                           "wall_s": sum(p["stages"][s]["wall_s"] for p in parts)})
    result = {"version": first["version"], "norm": first["norm"], "eps": first["eps"], "n_examples": int(n),
              "clean_accuracy": clean / n, "robust_accuracy": robust / n, "stages": stages_out}
    result["flags"] = autoattack_flags(result)
    return result

