"""The attack part: robust accuracy vs budget under each attack of ``evaluation.attacks``, the
AutoAttack-style sanity checks, and the AutoAttack ensembles (``parts/autoattack.py``), on the
first ``evaluation.attack_max_examples`` examples. Tables: attack_results.csv,
attack_sanity.csv (``tables.SUITE_TABLES["attacks"]``)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Sequence

import jax

from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.batched import take_examples
from robust_vision.evaluation.suite import (ATTACK_NAMES, AUTOATTACK_NAMES, GRADIENT_ATTACKS, LogitsFn, _crc,
                                            check_attacks, part_key)


def _default_steps(registry_name: str) -> int:
    """The attack's own default number of iterations (1 for fgsm)."""
    import inspect

    from robust_vision.attacks import get_attack

    param = inspect.signature(get_attack(registry_name)).parameters.get("steps")
    return 1 if param is None else int(param.default)


def _attack_plan(name: str, *, eps: Sequence[float], norm: str, steps: int | None,
                 sparse_fractions: Sequence[float], noise_radii: Sequence[float], unroll: bool
                 ) -> tuple[list[float], str, dict[str, Any]]:
    """(budgets, budget norm, static hyper-parameters) of one attack."""
    with_steps = {} if steps is None else {"steps": int(steps)}
    if name == "fgsm":
        return list(eps), "linf", {}
    if name in ("pgd", "apgd"):
        return list(eps), norm, {"norm": norm, **with_steps, **({"unroll": True} if unroll else {})}
    if name in ("apgd-t", "apgd-dlr", "fab-t"):
        return list(eps), norm, {"norm": norm, **with_steps}
    if name == "square":
        return list(eps), norm, {"norm": norm}
    if name == "sparse":
        return list(sparse_fractions), "l0_fraction", with_steps
    return list(noise_radii), "l2", with_steps  # noise


def attack_suite_stream(logits_fn: LogitsFn, batches: Callable[[], Iterable[Batch]], *, model_name: str,
                        attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                        steps: int | None = None, batch_size: int = 256,
                        sparse_fractions: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05),
                        noise_radii: Sequence[float] = (0.0, 0.5, 1.0, 2.0), sanity: bool = True,
                        sanity_examples: int = 256, unroll: bool = False) -> tuple[list[dict], list[dict]]:
    """Robust accuracy of ``logits_fn`` under each attack, for each budget, over a stream.

    ``batches()`` returns a fresh pass of fixed-size masked ``Batch``es (images uint8 or float32
    in [0, 1]), one pass per attack. ``attacks``: names in ``ATTACK_NAMES`` (the AutoAttack names
    are left to ``parts/autoattack.py``); ``eps``: budgets of the gradient attacks in [0, 1] pixel
    units (Linf, or the L2 radius with ``norm="l2"``), sparse uses ``sparse_fractions`` (fraction
    of pixels) and noise ``noise_radii`` (L2); ``key``: the part key, attack a uses
    fold_in(key, crc32(a)); ``steps``: None = each attack's default; ``batch_size``: the sanity
    checks' batch; ``sanity``: :func:`attack_sanity_stream` on the first ``sanity_examples``;
    ``unroll``: unroll the pgd / apgd loops (compile time grows with the steps, issue 11).
    Returns (rows of attack_results.csv: ``attack`` gets ``_l2`` for the L2 threat model, ``norm``
    is the budget's unit, ``steps`` the iterations used; rows of attack_sanity.csv).
    """
    from robust_vision.attacks.evaluate import robust_accuracy_stream

    check_attacks(attacks, norm)
    rows: list[dict] = []
    for name in attacks:
        if name in AUTOATTACK_NAMES:
            continue  # run by parts/autoattack.py
        budgets, budget_norm, hyper = _attack_plan(name, eps=eps, norm=norm, steps=steps,
                                                   sparse_fractions=sparse_fractions, noise_radii=noise_radii,
                                                   unroll=unroll)
        if not budgets:
            continue
        result = robust_accuracy_stream(logits_fn, batches(), jax.random.fold_in(key, _crc(name)),
                                        ATTACK_NAMES[name], budgets, **hyper)
        for r in result:
            # The norm is part of the name when it is not the attack's usual one (pgd_l2).
            label = f"{name}_l2" if name in ("pgd", "apgd", "apgd-t", "apgd-dlr", "fab-t", "square") and norm == "l2" else name
            rows.append({"model": model_name, **r, "attack": label, "norm": budget_norm,
                         "steps": hyper.get("steps", _default_steps(ATTACK_NAMES[name]))})
    sanity_rows = attack_sanity_stream(logits_fn, batches(), model_name=model_name, attacks=attacks, eps=eps,
                                       key=key, norm=norm, steps=steps, batch_size=batch_size,
                                       sanity_examples=sanity_examples) if sanity else []
    return rows, sanity_rows


def attack_sanity_stream(logits_fn: LogitsFn, batches: Iterable[Batch], *, model_name: str,
                         attacks: Sequence[str], eps: Sequence[float], key: jax.Array, norm: str = "linf",
                         steps: int | None = None, batch_size: int = 256, sanity_examples: int = 256) -> list[dict]:
    """Rows of attack_sanity.csv: ``sanity_checks`` at the largest eps on the first
    ``sanity_examples`` examples of ``batches`` (only those are read) when a gradient attack
    (fgsm / pgd / apgd) is in ``attacks`` (its PGD uses min(steps, 20) steps, 10 by default);
    [] otherwise. ``key`` is the part key (the checks use fold_in(key, crc32("sanity")))."""
    from robust_vision.attacks import AttackSanityWarning, sanity_checks

    sanity_rows: list[dict] = []
    eps_check = max(eps, default=0.0)
    if eps_check > 0 and any(a in GRADIENT_ATTACKS for a in attacks):
        images, labels = take_examples(batches, sanity_examples)
        images, k = to_unit_float(images), len(labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AttackSanityWarning)
            passed = sanity_checks(logits_fn, images, labels, jax.random.fold_in(key, _crc("sanity")),
                                   eps_check, norm=norm, pgd_steps=min(steps or 10, 20), batch_size=min(batch_size, k))
        messages = {}
        for w in caught:
            text = str(w.message)
            for check in passed:
                if f"'{check}'" in text:
                    messages.setdefault(check, text)
        sanity_rows = [{"model": model_name, "check": c, "passed": bool(ok), "eps": float(eps_check), "n": k,
                        "message": messages.get(c, "")} for c, ok in passed.items()]
    return sanity_rows


def _fmt_eps(eps: float) -> str:
    """8/255 for budgets on the 1/255 grid (how Linf budgets are usually quoted), else 0.05."""
    k = eps * 255
    return f"{round(k)}/255" if 0 < k <= 64 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def format_attack_summary(rows: list[dict], sanity_rows: list[dict]) -> str:
    """Robust accuracy vs budget per model and attack, and the sanity-check verdicts."""
    lines = ["ADVERSARIAL ROBUSTNESS (robust accuracy vs budget)", "═" * 68]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines.append(f"  {model}:")
        for attack in dict.fromkeys(r["attack"] for r in rows if r["model"] == model):
            sel = [r for r in rows if r["model"] == model and r["attack"] == attack]
            pairs = "  ".join(f"{_fmt_eps(r['eps'])}:{r['accuracy']:.3f}" for r in sel)
            lines.append(f"    {attack:<6} ({sel[0]['norm']}) eps:acc  {pairs}")
        checks = [r for r in sanity_rows if r["model"] == model]
        if checks:
            failed = [r["check"] for r in checks if not r["passed"]]
            verdict = "all passed" if not failed else "FAILED: " + ", ".join(failed)
            lines.append(f"    sanity checks at eps={checks[0]['eps']:.4g} on {checks[0]['n']} examples: {verdict}")
            lines += [f"      {r['message']}" for r in checks if not r["passed"]]
    return "\n".join(lines)



def run(ctx) -> dict:
    """Robust accuracy vs budget, sanity checks and AutoAttack on the first
    ``evaluation.attack_max_examples`` examples, each attack one streamed pass over them."""
    from robust_vision.evaluation.parts import autoattack

    ecfg = ctx.cfg.evaluation
    total = ctx.n_images
    n = total if ecfg.attack_max_examples is None else min(ecfg.attack_max_examples, total)

    def batches():
        return ctx.batches(n)

    key = part_key(ecfg.seed, "attacks")
    settings = dict(eps=ecfg.attack_eps, key=key, norm=ecfg.attack_norm, steps=ecfg.attack_steps,
                    batch_size=ecfg.batch_size)
    rows, sanity = [], []
    with ctx.progress(len(ctx.models) * len(ecfg.attacks), "attacks") as bar:
        for m in ctx.models:
            for attack in ecfg.attacks:
                # One attack at a time (same keys as all at once: they depend on the attack's
                # name only); sanity checks once per model, after its last attack.
                r, _ = attack_suite_stream(ctx.logits_fns[m.name], batches, model_name=m.name, attacks=[attack],
                                           sparse_fractions=ecfg.attack_sparse_fractions,
                                           noise_radii=ecfg.attack_noise_radii, sanity=False, **settings)
                rows += r
                bar.set_postfix_str(f"{m.name}: {attack}")
                bar.update(1)
            sanity += attack_sanity_stream(ctx.logits_fns[m.name], batches(), model_name=m.name,
                                           attacks=ecfg.attacks, **settings)
    results = autoattack.run(ctx, batches, rows)
    return {"attacks": list(ecfg.attacks), "norm": ecfg.attack_norm, "steps": ecfg.attack_steps, "n_examples": n,
            "results": rows, "sanity_checks": sanity, **({"autoattack": results} if results else {})}


def summary(ctx, out) -> list[str]:
    section = out.suite["attacks"]
    return ["", format_attack_summary(section["results"], section["sanity_checks"])]
