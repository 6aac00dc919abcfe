"""The evaluation runner of ``robust-vision-eval``: executes a plan of parts on loaded models.

Parts (``PARTS``), in the order they run:

* ``grid``: the noise grid (``robustness.evaluate_robustness``), robustness_results.csv;
* ``corruptions``: the ImageNet-C style suite with CE / mCE (``suite.corruption_suite``);
* ``attacks``: robust accuracy vs budget and sanity checks (``suite.attack_suite``);
* ``certify``: randomized-smoothing certification (``suite.certification``);
* ``verify``: deterministic certification by bound propagation (``verified.verified_stream``);
* ``calibration``: reliability, temperature, conformal, selective (``suite.calibration_tables``).

:func:`plan_parts` decides which parts run: the ones asked for, and nothing else; the plain
command (nothing asked) keeps the historical default (grid + calibration + whatever the
config enables). :func:`run_plan` runs them and records, per part, wall seconds split into
compile seconds (JAX tracing, lowering and XLA compilation, or the persistent-cache read)
and compute seconds (the rest), printed at the end and stored in results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from robust_vision.compile_cache import timed

PARTS = ("grid", "corruptions", "attacks", "certify", "verify", "calibration")
# results.json / table names of the suite parts (the grid has its own tables).
SUITE_KEYS = {"corruptions": "corruptions", "attacks": "attacks", "certify": "certification",
              "verify": "verified", "calibration": "calibration"}


def parse_parts(text: str | Sequence[str] | None) -> list[str] | None:
    """``"grid,attacks"`` (or a list of such strings) -> ["grid", "attacks"] in ``PARTS`` order;
    None -> None. An unknown name raises ValueError listing the valid ones."""
    if text is None:
        return None
    values = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ValueError(f"unknown evaluation part {unknown[0]!r} in --parts; valid parts: {', '.join(PARTS)}")
    if not names:
        raise ValueError(f"--parts is empty; name at least one of: {', '.join(PARTS)}")
    return [p for p in PARTS if p in names]


def plan_parts(ecfg, *, parts: Sequence[str] | None = None, asked: Sequence[str] = ()) -> list[str]:
    """The parts to run, in ``PARTS`` order.

    Args:
      ecfg: the EvaluationConfig (its suite / attacks / certify / calibration switches).
      parts: an explicit list (``--parts``): exactly these run. A suite part named here must
        be configured (e.g. ``attacks`` needs a non-empty attack list).
      asked: suite parts requested on the command line (``--suite``, ``--attacks``,
        ``--certify``, ``--calibration``): when any is given, only those run, plus ``parts``.
    Without either, the plain command's default: the grid, calibration when
    ``ecfg.calibration``, and the suite parts the config enables.
    """
    enabled = {"grid": True, "corruptions": ecfg.suite != "none", "attacks": bool(ecfg.attacks),
               "certify": bool(ecfg.certify), "verify": bool(ecfg.verify), "calibration": bool(ecfg.calibration)}
    if parts is None and not asked:
        return [p for p in PARTS if enabled[p]]
    chosen = set(parts or ()) | set(asked)
    missing = {"corruptions": "--suite imagenet-c", "attacks": "--attacks fgsm,pgd", "verify": "--verify ibp,crown"}
    for p in chosen:
        if p in missing and not enabled[p]:
            raise ValueError(f"part {p!r} needs its settings: add {missing[p]} (or set it in the config)")
    return [p for p in PARTS if p in chosen]


@dataclass
class EvalContext:
    """Everything the parts need: the config, the models, the data and where to write.

    ``source`` is the evaluated split as a record source (``data.sources``): every part streams
    it in fixed-size batches (:meth:`batches`), so no part holds the split's images.
    ``val_source`` opens the calibration (validation) split; it is called only when the
    calibration part runs (None: there is none). ``noise_types`` / ``levels`` are the grid's
    conditions (calibration uses the same); ``where`` names the data in error messages.
    ``dataset`` is the layout name of the evaluated data (``--data``'s, else the config's) and
    ``card`` the user's model-card fields (``preflight.parse_card``), for autoattack.json."""

    cfg: Any
    models: list
    source: Any
    noise_types: list[str]
    levels: list[float]
    where: str
    out_dir: Path
    val_source: Callable[[], Any] | None = None
    log: Callable[[str], None] = print
    quiet: bool = False
    logits_fns: dict = field(default_factory=dict)
    dataset: str = ""
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One logits function per model, reused by every part (jitted functions are cached on it).
        if not self.logits_fns:
            self.logits_fns = {m.name: m.logits_fn() for m in self.models}

    @property
    def n_images(self) -> int:
        return len(self.source)

    def batches(self, n: int | None = None, source: Any = None):
        """A fresh pass over the first ``n`` examples (all: None) of ``source`` (default the
        evaluated split), in batches of ``evaluation.batch_size`` (``batched.source_batches``)."""
        from robust_vision.evaluation.batched import source_batches

        return source_batches(self.source if source is None else source, self.cfg.evaluation.batch_size, n)


def config_split_sources(data_cfg, split: str) -> tuple[Any, Callable[[], Any]]:
    """The evaluated ``split`` of a config's dataset (``data.sources.open_splits``: the same
    partition, order and preprocessing as training) as a record source, and a function that opens
    its validation split the same way (only calibration calls it). Only the asked split is opened;
    records are read batch by batch, never decoded whole."""
    from robust_vision.data.sources import converted, open_splits, stream_shape

    def open_one(name: str):
        source = open_splits(data_cfg, (name,))[name]
        return converted(source, stream_shape(source, data_cfg.image_size, data_cfg.channels))

    return open_one(split), lambda: open_one("val")


def check_model_data(model, dataset, where: str) -> None:
    """The model's input shape and class count match the data (a Dataset, or a record source's
    ``info``) (one-line ValueError otherwise)."""
    from robust_vision.runs.loading import check_input_shape

    info = getattr(dataset, "info", dataset)
    check_input_shape(model, info.image_shape, where)
    if model.num_classes != info.num_classes:
        raise ValueError(f"{model.name} predicts {model.num_classes} classes but {where} has {info.num_classes}; "
                         "evaluate on data with the classes the model was trained on (data.classes, --data)")


def _progress(ctx: EvalContext, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=ctx.quiet, dynamic_ncols=True)


# --------------------------------------------------------------------------- parts


def grid_part(ctx: EvalContext) -> dict:
    """The noise grid of every model: {"results": rows, "confidences": {...}}."""
    from robust_vision.evaluation.robustness import evaluate_robustness

    ecfg = ctx.cfg.evaluation
    rows, confidences = [], {}
    with _progress(ctx, len(ctx.models), "noise grid") as bar:
        for m in ctx.models:
            res = evaluate_robustness(m.forward, m.variables, None, None, model_name=m.name,
                                      noise_types=ctx.noise_types, levels=ctx.levels, n_draws=ecfg.n_draws,
                                      batch_size=ecfg.batch_size, seed=ecfg.seed, ece_bins=ecfg.ece_bins,
                                      batches=ctx.batches)
            rows += res.rows
            confidences.update(res.confidences)
            bar.update(1)
    return {"results": rows, "confidences": confidences}


def corruption_part(ctx: EvalContext) -> dict:
    """Corruption benchmark of every model (and of the reference model, for CE / mCE)."""
    from robust_vision.evaluation import suite
    from robust_vision.runs.loading import load_trained_model

    ecfg = ctx.cfg.evaluation
    if ecfg.suite_data is not None:
        return published_corruption_part(ctx)
    corruptions = suite.resolve_suite(ecfg.suite)
    scale = suite.resolve_scale(ecfg.corruption_scale, ctx.source.info.image_shape)
    key = suite.part_key(ecfg.seed, "corruptions")
    kw = dict(corruptions=corruptions, severities=list(ecfg.severities), scale=scale, key=key)
    reference = None
    rows, summary, aggregates = [], [], []
    with _progress(ctx, len(ctx.models) + bool(ecfg.reference_checkpoint), "corruptions") as bar:
        if ecfg.reference_checkpoint:
            ref_model = load_trained_model(ecfg.reference_checkpoint, None)
            if ref_model.name in {m.name for m in ctx.models}:
                ref_model.name = f"{ref_model.name} (reference)"
            check_model_data(ref_model, ctx.source, ctx.where)
            reference = suite.corruption_errors_stream(ref_model.logits_fn(), ctx.batches(),
                                                       model_name=ref_model.name, **kw)
            bar.update(1)
        for m in ctx.models:
            errors = suite.corruption_errors_stream(ctx.logits_fns[m.name], ctx.batches(), model_name=m.name, **kw)
            m_summary, agg = suite.corruption_summary(errors, reference)
            rows += errors.rows()
            summary += m_summary
            aggregates.append(agg)
            bar.update(1)
    if reference is not None:  # the reference's own rows (CE = 1 by definition) for the figures
        ref_summary, ref_agg = suite.corruption_summary(reference, reference)
        rows += reference.rows()
        summary += ref_summary
        aggregates.append(ref_agg)
    return {"suite": ecfg.suite, "scale": scale, "severities": list(ecfg.severities),
            "reference": reference.model if reference else None,
            "reference_checkpoint": ecfg.reference_checkpoint, "results": rows, "summary": summary,
            "aggregate": aggregates}


def published_corruption_part(ctx: EvalContext) -> dict:
    """The corruption part on published pre-corrupted files (``evaluation.suite_data``, layout
    ``evaluation.suite``): the same per-corruption x severity rows, summary and CE / mCE as the
    generated suite; the clean error is that of the evaluated split (``--data`` / the config's)."""
    from dataclasses import replace as dc_replace

    import jax

    from robust_vision.data.published import published_corruption_errors
    from robust_vision.evaluation import suite
    from robust_vision.runs.loading import load_trained_model

    ecfg = ctx.cfg.evaluation

    def errors_of(model, logits_fn):
        errors = published_corruption_errors(logits_fn, ecfg.suite_data, ecfg.suite, model.input_shape,
                                             model.num_classes, model_name=model.name, batch_size=ecfg.batch_size)
        clean = suite.corruption_errors_stream(logits_fn, ctx.batches(), model_name=model.name, corruptions=[],
                                               severities=[], scale=ecfg.suite, key=jax.random.key(0))
        return dc_replace(errors, clean_error=clean.clean_error)  # streamed: wrong / N of the evaluated split

    reference = None
    if ecfg.reference_checkpoint:
        ref_model = load_trained_model(ecfg.reference_checkpoint, None)
        if ref_model.name in {m.name for m in ctx.models}:
            ref_model.name = f"{ref_model.name} (reference)"
        reference = errors_of(ref_model, ref_model.logits_fn())
    rows, summary, aggregates = [], [], []
    with _progress(ctx, len(ctx.models), "corruptions (published)") as bar:
        for m in ctx.models:
            errors = errors_of(m, ctx.logits_fns[m.name])
            m_summary, agg = suite.corruption_summary(errors, reference)
            rows += errors.rows()
            summary += m_summary
            aggregates.append(agg)
            bar.update(1)
    if reference is not None:
        ref_summary, ref_agg = suite.corruption_summary(reference, reference)
        rows += reference.rows()
        summary += ref_summary
        aggregates.append(ref_agg)
    severities = sorted({r["severity"] for r in rows}) if rows else []
    return {"suite": ecfg.suite, "suite_data": ecfg.suite_data, "scale": "published", "severities": severities,
            "reference": reference.model if reference else None,
            "reference_checkpoint": ecfg.reference_checkpoint, "results": rows, "summary": summary,
            "aggregate": aggregates}


def attack_part(ctx: EvalContext) -> dict:
    """Robust accuracy vs budget, sanity checks and AutoAttack on the first
    ``evaluation.attack_max_examples`` examples, each attack one streamed pass over them."""
    from robust_vision.evaluation import suite

    ecfg = ctx.cfg.evaluation
    total = ctx.n_images
    n = total if ecfg.attack_max_examples is None else min(ecfg.attack_max_examples, total)

    def batches():
        return ctx.batches(n)

    key = suite.part_key(ecfg.seed, "attacks")
    rows, sanity = [], []
    with _progress(ctx, len(ctx.models) * len(ecfg.attacks), "attacks") as bar:
        for m in ctx.models:
            for attack in ecfg.attacks:
                # One attack at a time (same keys as all at once: they depend on the attack's
                # name only); sanity checks once per model, after its last attack.
                r, s = suite.attack_suite_stream(ctx.logits_fns[m.name], batches, model_name=m.name,
                                                 attacks=[attack], eps=ecfg.attack_eps, key=key,
                                                 norm=ecfg.attack_norm, steps=ecfg.attack_steps,
                                                 batch_size=ecfg.batch_size,
                                                 sparse_fractions=ecfg.attack_sparse_fractions,
                                                 noise_radii=ecfg.attack_noise_radii, sanity=False)
                rows += r
                bar.set_postfix_str(f"{m.name}: {attack}")
                bar.update(1)
            sanity += suite.attack_sanity_stream(ctx.logits_fns[m.name], batches(), model_name=m.name,
                                                 attacks=ecfg.attacks, eps=ecfg.attack_eps, key=key,
                                                 norm=ecfg.attack_norm, steps=ecfg.attack_steps,
                                                 batch_size=ecfg.batch_size)
    autoattack = autoattack_part(ctx, batches, rows)
    return {"attacks": list(ecfg.attacks), "norm": ecfg.attack_norm, "steps": ecfg.attack_steps, "n_examples": n,
            "results": rows, "sanity_checks": sanity, **({"autoattack": autoattack} if autoattack else {})}


def autoattack_part(ctx: EvalContext, batches: Callable, rows: list) -> dict:
    """The AutoAttack names of ``evaluation.attacks`` on the examples of ``batches()`` (a fresh
    pass per call): per-stage results (printed), rows appended to the attack table, and
    ``autoattack.json`` in the RobustBench format (``autoattack_<i>.json`` for further models)
    written by process 0."""
    from robust_vision.attacks.autoattack import (autoattack_suite_stream, card_dataset, format_autoattack,
                                                  write_autoattack_json)
    from robust_vision.distributed import is_main_process
    from robust_vision.evaluation import suite

    ecfg = ctx.cfg.evaluation
    out = {}
    for name in [a for a in ecfg.attacks if a in suite.AUTOATTACK_NAMES]:
        for i, m in enumerate(ctx.models):
            r, results = autoattack_suite_stream(ctx.logits_fns[m.name], batches(), model_name=m.name, name=name,
                                                 eps=ecfg.attack_eps, norm=ecfg.attack_norm,
                                                 key=suite.part_key(ecfg.seed, "attacks"), batch_size=ecfg.batch_size,
                                                 steps=ecfg.attack_steps, verbose=False)
            for result in results:  # robust accuracy after each stage, per budget
                ctx.log(format_autoattack(result, m.name))
            rows += r
            out[f"{m.name}/{name}"] = results
            if results and is_main_process():
                stem = name.replace("-", "_") + (f"_{i}" if i else "")
                ctx.out_dir.mkdir(parents=True, exist_ok=True)
                dataset = card_dataset(ctx.dataset, ctx.source.info.class_names, m.input_shape)
                write_autoattack_json(ctx.out_dir / f"{stem}.json", results, model_name=m.name, dataset=dataset,
                                      architecture=m.config.model.name, card=ctx.card)
    return out


def certify_part(ctx: EvalContext) -> dict:
    from robust_vision.evaluation import suite

    ecfg = ctx.cfg.evaluation
    n = min(ecfg.certify_max_examples, ctx.n_images)
    rows, examples = [], []
    with _progress(ctx, len(ctx.models), "certification") as bar:
        for m in ctx.models:
            r, e = suite.certification_stream(ctx.logits_fns[m.name], ctx.batches(n), model_name=m.name,
                                       sigmas=ecfg.certify_sigma, key=suite.part_key(ecfg.seed, "certify"),
                                       n0=ecfg.certify_n0, n=ecfg.certify_n, alpha=ecfg.certify_alpha,
                                       batch_size=ecfg.batch_size)
            rows += r
            examples += e
            bar.update(1)
    return {"sigma": list(ecfg.certify_sigma), "n0": ecfg.certify_n0, "n": ecfg.certify_n,
            "alpha": ecfg.certify_alpha, "n_examples": n, "examples": f"the first {n} of the {ecfg.split} split",
            "results": rows, "per_example": examples}


def verify_part(ctx: EvalContext) -> dict:
    """Verified accuracy of every model by bound propagation at every attack budget."""
    from robust_vision.evaluation import suite
    from robust_vision.evaluation.batched import source_batches
    from robust_vision.evaluation.verified import verified_rows, verified_stream

    ecfg = ctx.cfg.evaluation
    n = min(ecfg.verify_max_examples, ctx.n_images)
    rows = []
    with _progress(ctx, len(ctx.models), "verification") as bar:
        for m in ctx.models:
            result = verified_stream(m, source_batches(ctx.source, ecfg.verify_batch_size, n), methods=ecfg.verify,
                                     eps=ecfg.attack_eps, norm=ecfg.attack_norm,
                                     key=suite.part_key(ecfg.seed, "verify"), pgd_steps=ecfg.attack_steps or 20,
                                     alpha_steps=ecfg.verify_alpha_steps)
            rows += verified_rows(result, model_name=m.name, norm=ecfg.attack_norm)
            bar.update(1)
    return {"methods": list(ecfg.verify), "norm": ecfg.attack_norm, "eps": list(ecfg.attack_eps), "n_examples": n,
            "examples": f"the first {n} of the {ecfg.split} split", "results": rows}


def calibration_part(ctx: EvalContext) -> tuple[dict, dict]:
    """(merged tables of every model, per-model results for the printed summary)."""
    from robust_vision.evaluation import suite

    ecfg = ctx.cfg.evaluation
    # The validation split is opened here only: a run without calibration never reads it.
    cal = ctx.val_source() if ecfg.split != "val" and ctx.val_source is not None else None
    note = None
    if ecfg.split == "val":
        note = "evaluation split is val: no separate calibration split, temperature and conformal sets skipped"
    elif cal is None or len(cal) == 0:
        cal, note = None, "empty validation split: temperature and conformal sets skipped"
    per_model = {}
    with _progress(ctx, len(ctx.models), "calibration") as bar:
        for m in ctx.models:
            per_model[m.name] = suite.calibration_tables_stream(
                ctx.logits_fns[m.name], None if cal is None else ctx.batches(source=cal), ctx.batches(),
                model_name=m.name, noise_types=ctx.noise_types, levels=ctx.levels, seed=ecfg.seed,
                key=suite.part_key(ecfg.seed, "calibration"), alphas=ecfg.conformal_alpha, n_bins=ecfg.ece_bins)
            bar.update(1)
    merged = {k: [r for res in per_model.values() for r in res[k]]
              for k in ("reliability", "calibration", "conformal", "selective")}
    merged["temperature"] = {name: res["temperature"] for name, res in per_model.items()}
    merged["calibration_split"] = None if cal is None else "val"
    merged["n_calibration"] = 0 if cal is None else len(cal)
    merged["note"] = note
    return merged, per_model


def write_suite_tables(out_dir: Path, parts: dict) -> list:
    """The CSV tables of the suite parts present in ``parts`` (keys as in results.json)."""
    from robust_vision.io import write_csv
    from robust_vision.tables import SUITE_TABLES

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for part, specs in SUITE_TABLES.items():
        if part not in parts:
            continue
        for filename, key, columns in specs:
            if parts[part][key]:
                written.append(write_csv(out_dir / filename, parts[part][key], columns))
    return written


def format_timings(timings: dict[str, dict]) -> str:
    """One line per part: total, compile and compute seconds."""
    lines = ["TIMINGS (s)            total   compile   compute"]
    for name, t in timings.items():
        lines.append(f"  {name:<18} {t['total']:8.1f}  {t['compile']:8.1f}  {t['compute']:8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the plan


@dataclass
class EvalOutcome:
    """What ran: grid rows / confidences (empty without the grid), the suite parts (results.json
    keys), per-model calibration results, the baseline comparison and per-part timings."""

    rows: list = field(default_factory=list)
    confidences: dict = field(default_factory=dict)
    suite: dict = field(default_factory=dict)
    calibration_per_model: dict = field(default_factory=dict)
    comparison: dict | None = None
    timings: dict = field(default_factory=dict)


def run_plan(ctx: EvalContext, plan: Sequence[str]) -> EvalOutcome:
    """Run the parts of ``plan`` (names in ``PARTS``) in ``PARTS`` order, print each part's
    summary as it completes, write every table to ``ctx.out_dir`` and return the outcome."""
    from robust_vision.evaluation import suite
    from robust_vision.evaluation.report import (
        comparison_at,
        format_comparison,
        format_summary,
        write_robustness_tables,
    )

    unknown = [p for p in plan if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown evaluation part {unknown[0]!r}; valid parts: {', '.join(PARTS)}")
    from robust_vision.distributed import is_main_process
    from robust_vision.interrupts import check_interrupt

    ecfg, log = ctx.cfg.evaluation, ctx.log
    write = is_main_process()  # every process computes; only process 0 writes tables
    for m in ctx.models:
        check_model_data(m, ctx.source, ctx.where)
    out = EvalOutcome()
    if ecfg.reference_checkpoint and "corruptions" not in plan:
        log("note: --reference is used by the corruption suite only (--suite imagenet-c); ignored")
    if write:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        if part not in plan:
            continue
        check_interrupt()  # a Ctrl-C swallowed inside a JAX callback (while loading or compiling)
        if part == "grid":
            with timed(out.timings, "grid"):
                grid = grid_part(ctx)
            out.rows, out.confidences = grid["results"], grid["confidences"]
            log(format_summary(out.rows))
            if len(ctx.models) > 1:
                out.comparison = comparison_at(out.rows, ctx.models[0].name, ctx.models[1].name)
                log("")
                log(format_comparison(out.comparison))
        elif part == "corruptions":
            with timed(out.timings, "corruptions"):
                out.suite["corruptions"] = corruption_part(ctx)
            log("")
            log(suite.format_corruption_summary(out.suite["corruptions"]["aggregate"],
                                                out.suite["corruptions"]["summary"]))
        elif part == "attacks":
            with timed(out.timings, "attacks"):
                out.suite["attacks"] = attack_part(ctx)
            log("")
            log(suite.format_attack_summary(out.suite["attacks"]["results"], out.suite["attacks"]["sanity_checks"]))
        elif part == "certify":
            with timed(out.timings, "certification"):
                out.suite["certification"] = certify_part(ctx)
            log("")
            log(suite.format_certification_summary(out.suite["certification"]["results"]))
            log(f"  ({out.suite['certification']['examples']})")
        elif part == "verify":
            from robust_vision.evaluation.verified import format_verified_summary

            with timed(out.timings, "verification"):
                out.suite["verified"] = verify_part(ctx)
            log("")
            log(format_verified_summary(out.suite["verified"]["results"]))
            log(f"  ({out.suite['verified']['examples']}, {out.suite['verified']['norm']})")
        elif part == "calibration":
            with timed(out.timings, "calibration"):
                merged, out.calibration_per_model = calibration_part(ctx)
            out.suite["calibration"] = merged
            log("")
            log(suite.format_calibration_summary(out.calibration_per_model, ecfg.conformal_alpha))
            if merged["note"]:
                log(f"  note: {merged['note']}")
    check_interrupt()
    if write:  # every table at the end, together: an interrupted evaluation leaves none of its own
        if "grid" in plan:
            write_robustness_tables(ctx.out_dir, out.rows, out.confidences)
        write_suite_tables(ctx.out_dir, out.suite)
    log("")
    log(format_timings(out.timings))
    return out
