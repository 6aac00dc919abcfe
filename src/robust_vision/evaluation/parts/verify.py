"""The verification part: verified accuracy of every model by bound propagation (IBP, CROWN,
...) at every attack budget (``evaluation.verified``), on the first
``evaluation.verify_max_examples`` examples. Table: verified_results.csv."""

from __future__ import annotations


def run(ctx) -> dict:
    from robust_vision.batched import source_batches
    from robust_vision.evaluation.suite import part_key
    from robust_vision.evaluation.verified import verified_rows, verified_stream

    ecfg = ctx.cfg.evaluation
    n = min(ecfg.verify_max_examples, ctx.n_images)
    rows = []
    for m in ctx.per_model("verification"):
        result = verified_stream(m, source_batches(ctx.source, ecfg.verify_batch_size, n), methods=ecfg.verify,
                                 eps=ecfg.attack_eps, norm=ecfg.attack_norm,
                                 key=part_key(ecfg.seed, "verify"), pgd_steps=ecfg.attack_steps or 20,
                                 alpha_steps=ecfg.verify_alpha_steps)
        rows += verified_rows(result, model_name=m.name, norm=ecfg.attack_norm)
    return {"methods": list(ecfg.verify), "norm": ecfg.attack_norm, "eps": list(ecfg.attack_eps), "n_examples": n,
            "examples": f"the first {n} of the {ecfg.split} split", "results": rows}


def summary(ctx, out) -> list[str]:
    from robust_vision.evaluation.verified import format_verified_summary

    section = out.suite["verified"]
    return ["", format_verified_summary(section["results"]), f"  ({section['examples']}, {section['norm']})"]
