"""Robust accuracy over a whole dataset, and AutoAttack-style sanity checks.

``robust_accuracy`` attacks fixed-size batches with one compiled function (eps is a traced
argument, so neither a new batch nor a new eps recompiles); the last batch is padded and
only its real examples are counted, so every example counts exactly once and accuracy is
correct / total over the whole set (DESIGN.md), never a mean of per-batch accuracies.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.attacks._common import LogitsFn, ce_loss, loss_grad_logits
from robust_vision.attacks.registry import get_attack
from robust_vision.metrics import per_example_metrics, snr_summary
from robust_vision.program_cache import logits_program


class AttackSanityWarning(UserWarning):
    """A robustness evaluation failed a sanity check: the reported numbers may be too optimistic."""


def _check_dataset(images: Any, labels: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (N, H, W, C), got shape {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}.")
    if images.shape[0] == 0:
        raise ValueError("empty dataset: images has no examples.")
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(f"images must be in [0, 1] (got [{images.min():.3g}, {images.max():.3g}]); "
                         "divide uint8 images by 255 before attacking.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return images, labels.astype(np.int32)


def _attack_fn(attack: str | Callable) -> tuple[Callable, str]:
    if callable(attack):
        return attack, getattr(attack, "__name__", "custom")
    return get_attack(attack), attack


# Hyper-parameters that are traced (passed as arrays) rather than baked into the program,
# so one compiled program serves every value: the budget eps (always traced), the step
# size, the number of restarts and the iteration count (the attacks run a rolled loop with a
# traced trip count, attacks._common.loop). Everything else (norm, loss, unroll) is static: it
# changes the program's structure. With ``unroll=True`` the count stays static too, because a
# fully unrolled loop needs its length at trace time.
TRACED_HYPER = ("step_size", "restarts", "steps")
_INT_HYPER = ("restarts", "steps")


def _split_hyper(hyper: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """(static hyper-parameters as a hashable, order-independent tuple, traced ones as arrays)."""
    traced_names = [k for k in TRACED_HYPER if not (k == "steps" and hyper.get("unroll") is True)]
    static = {k: v for k, v in hyper.items() if k not in traced_names or v is None}
    traced = {k: jnp.asarray(v, jnp.int32 if k in _INT_HYPER else jnp.float32)
              for k, v in hyper.items() if k in traced_names and v is not None}
    return _static_items(static), traced


def _static_items(hyper: dict[str, Any]) -> tuple:
    """Hyper-parameters as a hashable, order-independent tuple (they are static under jit)."""
    items = tuple(sorted(hyper.items()))
    try:
        hash(items)
    except TypeError:
        raise ValueError(f"attack hyper-parameters must be hashable scalars / strings, got {hyper}") from None
    return items


def _attack_impl(logits_fn, xb, yb, kb, eps, traced, *, attack_fn, hyper):
    """(x_adv, correct, margin) of one batch. One program serves both the robust-accuracy pass
    (which keeps the metrics) and the sanity checks (which inspect x_adv): a second program per
    attack would be traced and lowered again on every run, compilation cache or not."""
    x_adv = attack_fn(logits_fn, xb, yb, kb, eps, **dict(hyper), **traced)
    m = per_example_metrics(logits_fn(x_adv), yb)
    return x_adv, m["correct"], m["margin"]


# Jitted functions, one per (attack, model function, static hyper-parameters), reused
# across calls, batches, eps, step sizes and restarts (all traced), so repeated evaluations of
# one model (sanity checks, eps sweeps) compile once. Bounded LRU: a dropped entry frees its
# executables and the model parameters its logits_fn closes over (long sweeps over
# checkpoints must not accumulate them).
_JIT_CACHE: "collections.OrderedDict[tuple, Callable]" = collections.OrderedDict()
_JIT_CACHE_SIZE = 8


def _grad_and_logits(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(gradient of the summed cross-entropy w.r.t. the images, logits) of one batch."""
    return loss_grad_logits(logits_fn, ce_loss, images, labels)[1:]


def _jitted(attack_fn: Callable, logits_fn: LogitsFn, hyper: tuple) -> Callable:
    """``fn(x, y, key, eps, traced_hyper_dict) -> (x_adv, correct, margin)``, jitted; for a
    loaded model's logits kept on disk, so a second run neither traces nor lowers it
    (``program_cache.logits_program``)."""
    key = (attack_fn, logits_fn, hyper)
    if key in _JIT_CACHE:
        _JIT_CACHE.move_to_end(key)
        return _JIT_CACHE[key]
    fn = logits_program(functools.partial(_attack_impl, attack_fn=attack_fn, hyper=hyper), logits_fn,
                        name=f"attack_{getattr(attack_fn, '__name__', 'custom')}",
                        key=[list(map(repr, h)) for h in hyper], sources=[attack_fn])
    _JIT_CACHE[key] = fn
    while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
        _JIT_CACHE.popitem(last=False)
    return fn


def _checked_stream(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches of a stream, each checked on the host as ``_check_dataset`` checks arrays."""
    from robust_vision.data.batch import Batch

    for batch in batches:
        images = np.asarray(batch.images)
        if images.dtype != np.uint8:
            _check_dataset(images, batch.labels, 1)  # float batches must be in [0, 1]
        elif images.ndim != 4:
            raise ValueError(f"images must be NHWC (N, H, W, C), got shape {images.shape}.")
        yield Batch(images, batch.labels, batch.mask)


def per_example_robustness_stream(logits_fn: LogitsFn, batches: Iterable[Any], key: jax.Array,
                                  attack: str | Callable, eps_list: Sequence[float], *, prefetch: int = 2,
                                  **hyper: Any) -> list[dict[str, np.ndarray]]:
    """Per-example ``correct`` (bool) and ``margin`` (logit margin at x_adv), (N,) each, for every
    eps, from one pass over ``batches`` (fixed-size masked ``Batch``es, images uint8 or float32 in
    [0, 1], prefetched to the device ``prefetch`` deep; padding dropped).

    Batch i is attacked with key fold_in(key, i) for every eps (common random numbers, so
    differences between eps are not noise). See ``robust_accuracy``.
    """
    from robust_vision.data.batch import to_unit_float
    from robust_vision.batched import stream_per_example

    attack_fn, _ = _attack_fn(attack)
    for eps in eps_list:
        if not float(eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
    static, traced = _split_hyper(hyper)
    run = _jitted(attack_fn, logits_fn, static)

    def attack_batch(x, y, i):
        x, k = to_unit_float(x), jax.random.fold_in(key, i)
        out = {}
        for j, eps in enumerate(eps_list):
            _, out[f"correct{j}"], out[f"margin{j}"] = run(x, y, k, jnp.float32(eps), traced)
        return out

    per = stream_per_example(attack_batch, _checked_stream(batches), prefetch=prefetch)
    if not per:
        raise ValueError("empty dataset: images has no examples.")
    return [{"correct": per[f"correct{j}"], "margin": per[f"margin{j}"]} for j in range(len(eps_list))]


def per_example_robustness(logits_fn: LogitsFn, images: Any, labels: Any, key: jax.Array,
                           attack: str | Callable, eps_list: Sequence[float], batch_size: int = 256,
                           **hyper: Any) -> list[dict[str, np.ndarray]]:
    """:func:`per_example_robustness_stream` over in-memory arrays: images (N, H, W, C) float in
    [0, 1], labels (N,) int, in batches of ``batch_size`` (capped at N; the last padded, the
    padding dropped). See ``robust_accuracy``."""
    from robust_vision.batched import array_batches

    images, labels = _check_dataset(images, labels, batch_size)
    return per_example_robustness_stream(logits_fn, array_batches(images, labels, batch_size), key, attack,
                                         eps_list, **hyper)


def robust_accuracy(logits_fn: LogitsFn, images: Any, labels: Any, key: jax.Array, attack: str | Callable,
                    eps_list: Sequence[float], batch_size: int = 256, **hyper: Any) -> list[dict[str, Any]]:
    """Accuracy under ``attack`` over a whole dataset, for each budget in ``eps_list``.

    Args:
      logits_fn: images (B, H, W, C) in [0, 1] -> logits (B, K), eval mode.
      images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
      key: PRNG key; attack: registry name (``ATTACKS``) or an attack function.
      eps_list: budgets (meaning depends on the attack: Linf / L2 radius, pixel fraction).
      batch_size: fixed batch size (one compilation for all batches and all eps).
      **hyper: hyper-parameters passed to the attack (steps=..., norm=...); ``step_size`` and
        ``restarts`` and ``steps`` are traced (``TRACED_HYPER``), the others static.
    Returns: one dict per eps with ``attack``, ``eps``, ``accuracy`` (correct / N),
      ``margin`` (mean logit margin at x_adv), ``snr`` / ``snr_median`` (from the margins,
      see ``metrics.snr_summary``) and ``n`` (= N).
    """
    per_eps = per_example_robustness(logits_fn, images, labels, key, attack, eps_list, batch_size, **hyper)
    return _accuracy_rows(attack, eps_list, per_eps)


def robust_accuracy_stream(logits_fn: LogitsFn, batches: Iterable[Any], key: jax.Array, attack: str | Callable,
                           eps_list: Sequence[float], **hyper: Any) -> list[dict[str, Any]]:
    """``robust_accuracy`` from one pass over a stream of fixed-size masked ``Batch``es
    (``per_example_robustness_stream``); the same rows."""
    per_eps = per_example_robustness_stream(logits_fn, batches, key, attack, eps_list, **hyper)
    return _accuracy_rows(attack, eps_list, per_eps)


def _accuracy_rows(attack: str | Callable, eps_list: Sequence[float], per_eps: list[dict[str, np.ndarray]]
                   ) -> list[dict[str, Any]]:
    _, name = _attack_fn(attack)
    rows = []
    for eps, r in zip(eps_list, per_eps):
        n = int(r["correct"].size)
        rows.append({"attack": name, "eps": float(eps), "accuracy": float(r["correct"].sum() / n),
                     "margin": float(np.mean(r["margin"], dtype=np.float64)), **snr_summary(r["margin"]),
                     "n": n})
    return rows


SANITY_CHECKS = ("deterministic", "outputs_are_logits", "eps0_unchanged", "monotone_in_eps",
                 "pgd_stronger_than_fgsm", "gradients_nonzero")


def sanity_checks(logits_fn: LogitsFn, images: Any, labels: Any, key: jax.Array, eps: float,
                  *, norm: str = "linf", pgd_steps: int = 10, batch_size: int = 256,
                  max_zero_grad_fraction: float = 0.0, checks: Sequence[str] | None = None) -> dict[str, bool]:
    """Checks that catch broken or over-optimistic robustness evaluations (after AutoAttack's
    ``checks.py``). Each failed check emits an ``AttackSanityWarning`` with the numbers.

    Checks (True = passed):
      ``deterministic``: logits_fn gives identical outputs twice (randomised defences need EOT);
      ``outputs_are_logits``: outputs are not probabilities (softmax outputs flatten CE gradients);
      ``eps0_unchanged``: fgsm, pgd and apgd_ce with eps = 0 return x exactly, and PGD accuracy
        at eps = 0 equals clean accuracy;
      ``monotone_in_eps``: PGD accuracy at eps * (0, 1/4, 1/2, 1) does not rise by more than 1/N;
      ``pgd_stronger_than_fgsm``: PGD accuracy <= FGSM accuracy + 1/N and PGD mean margin <=
        FGSM mean margin (PGD should never be weaker than one signed step on average);
      ``gradients_nonzero``: at most ``max_zero_grad_fraction`` of the examples (default: none,
        as AutoAttack) have an exactly-zero input gradient of the CE loss (gradient masking,
        quantisation or a saturated softmax: the attacks cannot move those examples).
    FGSM is Linf only: for ``norm="l2"`` the FGSM comparison is skipped (reported True).

    Args: as ``robust_accuracy``; ``eps`` the budget to check at; ``images`` should be a few
      hundred examples at most (the checks attack all of them); ``checks`` a subset of
      ``SANITY_CHECKS`` to run (default all).
    Returns: {check name: passed} for the checks run.
    """
    images, labels = _check_dataset(images, labels, batch_size)
    checks = SANITY_CHECKS if checks is None else tuple(checks)
    unknown = set(checks) - set(SANITY_CHECKS)
    if unknown:
        raise ValueError(f"unknown sanity checks {sorted(unknown)}; valid checks: {', '.join(SANITY_CHECKS)}")
    run = _SanityRun(logits_fn, images, labels, key, eps, norm, pgd_steps, batch_size, {c: True for c in checks})
    for check, names in _CHECKS:
        if set(names) & set(checks):
            check(run, max_zero_grad_fraction)
    return run.results


@dataclasses.dataclass
class _SanityRun:
    """What the checks of one ``sanity_checks`` call share: the data, the keys, the first batch
    (placed exactly as the robust-accuracy pass places its batches, sharded over the data mesh,
    so the checks reuse its compiled attack programs instead of specialising new ones to another
    input sharding), one (input gradient, logits) program, the PGD accuracies at
    eps * (0, 1/4, 1/2, 1) (computed once) and the results."""

    logits_fn: LogitsFn
    images: np.ndarray
    labels: np.ndarray
    key: jax.Array
    eps: float
    norm: str
    pgd_steps: int
    batch_size: int
    results: dict[str, bool]

    def __post_init__(self) -> None:
        from robust_vision.batched import array_batches, prefetch_to_device

        self.tol = 1.0 / self.images.shape[0]
        self.first = next(iter(prefetch_to_device(array_batches(self.images, self.labels, self.batch_size))))
        self.k_eps0, self.k_acc = jax.random.split(self.key)
        self.grad_and_logits = logits_program(_grad_and_logits, self.logits_fn, name="sanity_grad_logits")
        self.eps_grid = [0.0, self.eps / 4, self.eps / 2, self.eps]
        self._pgd_rows = None

    def fail(self, check: str, message: str) -> None:
        self.results[check] = False
        warnings.warn(f"attack sanity check '{check}' failed: {message}", AttackSanityWarning, stacklevel=4)

    def accuracy(self, attack: str, eps_list: Sequence[float], **hyper: Any) -> list[dict[str, Any]]:
        return robust_accuracy(self.logits_fn, self.images, self.labels, self.k_acc, attack, eps_list,
                               self.batch_size, **hyper)

    @property
    def pgd_rows(self) -> list[dict[str, Any]]:
        if self._pgd_rows is None:
            self._pgd_rows = self.accuracy("pgd", self.eps_grid, steps=self.pgd_steps, norm=self.norm)
        return self._pgd_rows


def _check_outputs(run: _SanityRun, _) -> None:
    """``deterministic`` and ``outputs_are_logits`` (one pair of forward passes for both)."""
    from robust_vision.distributed import to_host

    out1, out2 = (to_host(run.grad_and_logits(run.first.images, run.first.labels)[1]) for _ in range(2))
    if "deterministic" in run.results and not np.array_equal(out1, out2):
        run.fail("deterministic", f"logits_fn is random (max change {np.max(np.abs(out1 - out2)):.3g} between "
                 "two calls); evaluate randomised models with expectation over transformation, or fix the "
                 "randomness.")
    if ("outputs_are_logits" in run.results and out1.min() >= 0.0 and out1.max() <= 1.0
            and np.allclose(out1.sum(-1), 1.0, atol=1e-4)):
        run.fail("outputs_are_logits", "logits_fn returns probabilities (rows in [0,1] summing to 1); pass the "
                 "logits (before softmax), otherwise cross-entropy gradients vanish and attacks look weak.")


def _check_eps0(run: _SanityRun, _) -> None:
    from robust_vision.distributed import to_host

    pgd_rows = run.pgd_rows
    for name, hyper in (("fgsm", {}), ("pgd", {"steps": 3, "step_size": 0.1, "norm": run.norm}),
                        ("apgd_ce", {"steps": 5, "norm": run.norm})):
        if name == "fgsm" and run.norm != "linf":
            continue
        static, traced = _split_hyper(hyper)
        attack_fn = _jitted(get_attack(name), run.logits_fn, static)
        x0, _, _ = attack_fn(run.first.images, run.first.labels, run.k_eps0, jnp.float32(0.0), traced)
        x0, x_in = to_host((x0, run.first.images))  # global arrays: gathered on every process
        if not np.array_equal(x0, x_in):
            run.fail("eps0_unchanged", f"{name} with eps=0 changed the input (max change "
                     f"{float(np.max(np.abs(x0 - x_in))):.3g}).")
    clean = run.accuracy("fgsm", [0.0])[0]["accuracy"]
    if pgd_rows[0]["accuracy"] != clean:
        run.fail("eps0_unchanged", f"PGD accuracy at eps=0 ({pgd_rows[0]['accuracy']:.4f}) differs from clean "
                 f"accuracy ({clean:.4f}).")


def _check_monotone(run: _SanityRun, _) -> None:
    accs = [r["accuracy"] for r in run.pgd_rows]
    if any(b > a + run.tol for a, b in zip(accs, accs[1:])):
        run.fail("monotone_in_eps", f"PGD accuracy rises with eps: {dict(zip(run.eps_grid, accs))}; the attack is "
                 "not converging (more steps / restarts, or a smaller step size).")


def _check_pgd_vs_fgsm(run: _SanityRun, _) -> None:
    if run.norm != "linf":
        return
    pg = run.pgd_rows[-1]
    fg = run.accuracy("fgsm", [run.eps])[0]
    if pg["accuracy"] > fg["accuracy"] + run.tol or pg["margin"] > fg["margin"] + 1e-6:
        run.fail("pgd_stronger_than_fgsm", f"PGD-{run.pgd_steps} (acc {pg['accuracy']:.4f}, margin "
                 f"{pg['margin']:.4g}) is weaker than FGSM (acc {fg['accuracy']:.4f}, margin {fg['margin']:.4g}) "
                 f"at eps={run.eps}: gradients are unreliable (masking) or the PGD step size is wrong.")


def _check_gradients(run: _SanityRun, max_zero_grad_fraction: float) -> None:
    from robust_vision.distributed import to_host
    from robust_vision.batched import array_batches, prefetch_to_device

    zero = []
    for batch in prefetch_to_device(array_batches(run.images, run.labels, run.batch_size)):
        g, mask = to_host((run.grad_and_logits(batch.images, batch.labels)[0], batch.mask))
        zero.append(np.all(g.reshape(g.shape[0], -1) == 0, axis=1)[mask > 0])
    zero_frac = float(np.mean(np.concatenate(zero)))
    if zero_frac > max_zero_grad_fraction:
        run.fail("gradients_nonzero", f"{zero_frac:.1%} of the examples have an exactly-zero input gradient "
                 "(saturated softmax, non-differentiable layers or gradient masking); the attacks cannot move "
                 "them, so robust accuracy is overestimated. Try loss='margin' or check the model.")


# The checks' functions in the order they run, each with the checks it decides (the two output
# checks share one pair of forward passes).
_CHECKS = ((_check_outputs, ("deterministic", "outputs_are_logits")), (_check_eps0, ("eps0_unchanged",)),
           (_check_monotone, ("monotone_in_eps",)), (_check_pgd_vs_fgsm, ("pgd_stronger_than_fgsm",)),
           (_check_gradients, ("gradients_nonzero",)))
