"""Verified accuracy by bound propagation (robust_vision.verify), streamed over the eval split.

One entry point, :func:`verified_stream`: for every batch of the first N examples, the clean
prediction, PGD at every budget (the upper bound on robust accuracy on the same points) and,
per method and budget, the lower bound of the logit margin over the eps-ball & [0, 1]; an
example is verified when that bound is > 0. One table, ``verified_results.csv``
(``tables.VERIFIED_CSV``, ``tables.VERIFIED_COLUMNS``; :func:`verified_rows`).

A verified example that PGD breaks would be a wrong certificate: it stops the run with
:class:`CertificateViolation` (never a warning).
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.attacks.gradient import pgd
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.verify import check_method, margin_bounds, worst_margin
from robust_vision.verify.convert import check_supported


class CertificateViolation(RuntimeError):
    """An example verified at some eps that PGD misclassifies at that eps: a bug in the bounds."""


def _programs(model, norm: str, methods: Sequence[str], pgd_steps: int, alpha_steps: int):
    """Jitted (variables, x, y, eps[, key]) programs: clean correctness, PGD correctness, and the
    worst-margin lower bound of each method."""
    forward = model.forward

    @jax.jit
    def clean(variables, x, y):
        return jnp.argmax(forward(variables, x), axis=-1) == y

    @jax.jit
    def attacked(variables, x, y, eps, key):
        logits_fn = lambda z: forward(variables, z)  # noqa: E731
        x_adv = pgd(logits_fn, x, y, key, eps, norm=norm, steps=pgd_steps)
        return jnp.argmax(logits_fn(x_adv), axis=-1) == y

    def bound_program(method: str):
        @jax.jit
        def bound(variables, x, y, eps):
            net = model.parts.merge(variables[0], variables[1], train=False)
            return worst_margin(margin_bounds(net, x, y, eps, norm=norm, method=method, alpha_steps=alpha_steps), y)
        return bound

    return clean, attacked, {m: bound_program(m) for m in methods}


def verified_stream(model, batches: Iterable[Batch], *, methods: Sequence[str], eps: Sequence[float], norm: str,
                    key: jax.Array, pgd_steps: int = 20, alpha_steps: int = 20) -> dict:
    """Per-example results of every method and budget over ``batches`` (a loaded model:
    ``runs.loading.LoadedModel``). Returns {"clean": (N,) bool, "pgd": {eps: (N,) bool},
    "margin": {(method, eps): (N,) lower bounds}, "seconds": {method: compute seconds}}.
    The first batch compiles every program before the clock starts (timings exclude compiling)."""
    methods = [check_method(m) for m in methods]
    check_supported(model.parts.merge(model.params, model.model_state, train=False))  # before any work
    clean_fn, pgd_fn, bound_fns = _programs(model, norm, methods, pgd_steps, alpha_steps)
    variables = model.variables
    clean, attacked, margin = [], {e: [] for e in eps}, {(m, e): [] for m in methods for e in eps}
    seconds = {m: 0.0 for m in methods}
    for j, batch in enumerate(batches):
        x, y = jnp.asarray(to_unit_float(batch.images)), jnp.asarray(batch.labels)
        keep = np.asarray(batch.mask) > 0
        clean.append(np.asarray(clean_fn(variables, x, y))[keep])
        for i, e in enumerate(eps):
            attacked[e].append(np.asarray(pgd_fn(variables, x, y, e, jax.random.fold_in(key, j * 1000 + i)))[keep])
            for m in methods:
                if j == 0 and i == 0:
                    jax.block_until_ready(bound_fns[m](variables, x, y, e))  # compile outside the clock
                start = time.perf_counter()
                lb = np.asarray(jax.block_until_ready(bound_fns[m](variables, x, y, e)))
                seconds[m] += time.perf_counter() - start
                margin[(m, e)].append(lb[keep])
    if not clean:
        raise ValueError("verify: no examples to verify")
    result = {"clean": np.concatenate(clean), "pgd": {e: np.concatenate(v) for e, v in attacked.items()},
              "margin": {k: np.concatenate(v) for k, v in margin.items()}, "seconds": seconds}
    check_certificates(result)
    return result


def check_certificates(result: dict) -> None:
    """Stop if any example is verified but misclassified clean or by PGD at the same eps."""
    for (method, e), lb in result["margin"].items():
        broken = (lb > 0) & ~(result["pgd"][e] & result["clean"])
        if broken.any():
            i = int(np.flatnonzero(broken)[0])
            raise CertificateViolation(
                f"verify: {method} verified example {i} at eps={e:g} (margin lower bound {lb[i]:.4g}) but it is "
                "misclassified clean or under PGD: the bound is wrong (a bug; please report it)")


def verified_rows(result: dict, *, model_name: str, norm: str) -> list[dict]:
    """Rows of ``verified_results.csv``: one per method x eps. Verified accuracy <= PGD accuracy
    <= clean accuracy on the same examples (``check_certificates`` has enforced the first)."""
    n = len(result["clean"])
    rows = []
    for (method, e), lb in result["margin"].items():
        rows.append({"model": model_name, "method": method, "norm": norm, "eps": float(e), "n_examples": n,
                     "clean_accuracy": float(result["clean"].mean()), "pgd_accuracy": float(result["pgd"][e].mean()),
                     "verified_accuracy": float(np.mean(lb > 0)), "mean_margin_lower_bound": float(np.mean(lb)),
                     "seconds_per_image": result["seconds"][method] / (n * len(result["pgd"]))})
    return rows


def format_verified_summary(rows: list[dict]) -> str:
    """The printed table: one line per model x method x eps."""
    lines = ["VERIFIED ACCURACY (bound propagation)",
             f"  {'model':<20} {'method':<12} {'eps':>8} {'clean':>7} {'PGD':>7} {'verified':>9} {'s/img':>8}"]
    for r in rows:
        lines.append(f"  {r['model']:<20} {r['method']:<12} {r['eps']:>8.4g} {r['clean_accuracy']:>7.1%} "
                     f"{r['pgd_accuracy']:>7.1%} {r['verified_accuracy']:>9.1%} {r['seconds_per_image']:>8.4f}")
    return "\n".join(lines)
