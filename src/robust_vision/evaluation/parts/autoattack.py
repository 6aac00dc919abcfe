"""The AutoAttack part: the AutoAttack ensembles named in ``evaluation.attacks`` (standard,
rand), run by the attack part on its examples. Per-stage results are printed, rows go to the
attack table, and ``autoattack.json`` (RobustBench format; ``autoattack_<i>.json`` for further
models) is written by process 0."""

from __future__ import annotations

from typing import Callable


def run(ctx, batches: Callable, rows: list) -> dict:
    """The AutoAttack names of ``evaluation.attacks`` on the examples of ``batches()`` (a fresh
    pass per call); appends their rows to ``rows`` and returns {"<model>/<name>": results}."""
    from robust_vision.attacks.autoattack import autoattack_suite_stream, format_autoattack
    from robust_vision.distributed import is_main_process
    from robust_vision.evaluation.suite import AUTOATTACK_NAMES, part_key

    ecfg = ctx.cfg.evaluation
    out = {}
    for name in [a for a in ecfg.attacks if a in AUTOATTACK_NAMES]:
        for i, m in enumerate(ctx.models):
            r, results = autoattack_suite_stream(ctx.logits_fns[m.name], batches(), model_name=m.name, name=name,
                                                 eps=ecfg.attack_eps, norm=ecfg.attack_norm,
                                                 key=part_key(ecfg.seed, "attacks"), batch_size=ecfg.batch_size,
                                                 steps=ecfg.attack_steps, verbose=False)
            for result in results:  # robust accuracy after each stage, per budget
                ctx.log(format_autoattack(result, m.name))
            rows += r
            out[f"{m.name}/{name}"] = results
            if results and is_main_process():
                _write_json(ctx, m, name.replace("-", "_") + (f"_{i}" if i else ""), results)
    return out


def _write_json(ctx, model, stem: str, results: list) -> None:
    """OUT/<stem>.json in the RobustBench format, with the dataset and model-card fields."""
    from robust_vision.attacks.autoattack import card_dataset, write_autoattack_json

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    dataset = card_dataset(ctx.dataset, ctx.source.info.class_names, model.input_shape)
    write_autoattack_json(ctx.out_dir / f"{stem}.json", results, model_name=model.name, dataset=dataset,
                          architecture=model.config.model.name, card=ctx.card)
