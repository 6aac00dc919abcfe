"""The evaluation runner of ``robust-vision-eval``: executes a plan of parts on loaded models.

The parts are registered in ``evaluation.parts.PARTS`` (one module each, run in this order):
``grid`` (the noise grid, robustness_results.csv), ``corruptions`` (ImageNet-C style suite with
CE / mCE, generated or published), ``attacks`` (robust accuracy vs budget, sanity checks,
AutoAttack), ``certify`` (randomized smoothing), ``verify`` (bound propagation) and
``calibration`` (reliability, temperature, conformal, selective).

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
from robust_vision.evaluation.parts import PARTS as _REGISTRY

PARTS = tuple(_REGISTRY)


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
    if parts is None and not asked:
        return [p for p in PARTS if _REGISTRY[p].enabled(ecfg)]
    chosen = set(parts or ()) | set(asked)
    for p in chosen:
        if _REGISTRY[p].needs and not _REGISTRY[p].enabled(ecfg):
            raise ValueError(f"part {p!r} needs its settings: add {_REGISTRY[p].needs} (or set it in the config)")
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
        from robust_vision.batched import source_batches

        return source_batches(self.source if source is None else source, self.cfg.evaluation.batch_size, n)

    def check(self, model) -> None:
        """``model`` fits the evaluated data: its input shape and class count (one-line error)."""
        from robust_vision.runs.loading import check_model_data

        info = self.source.info
        check_model_data(model, info.image_shape, info.num_classes, self.where,
                         "evaluate on data with the classes the model was trained on (data.classes, --data)")

    def per_model(self, desc: str):
        """The models one by one, with a progress bar over them."""
        with self.progress(len(self.models), desc) as bar:
            for model in self.models:
                yield model
                bar.update(1)

    def progress(self, total: int, desc: str):
        """A progress bar of ``total`` steps (off with ``quiet``)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=self.quiet, dynamic_ncols=True)


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
    from robust_vision.distributed import is_main_process
    from robust_vision.interrupts import check_interrupt

    unknown = [p for p in plan if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown evaluation part {unknown[0]!r}; valid parts: {', '.join(PARTS)}")
    write = is_main_process()  # every process computes; only process 0 writes tables
    for m in ctx.models:
        ctx.check(m)
    out = EvalOutcome()
    if ctx.cfg.evaluation.reference_checkpoint and "corruptions" not in plan:
        ctx.log("note: --reference is used by the corruption suite only (--suite imagenet-c); ignored")
    if write:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
    parts = [part for name, part in _REGISTRY.items() if name in plan]
    for part in parts:
        check_interrupt()  # a Ctrl-C swallowed inside a JAX callback (while loading or compiling)
        with timed(out.timings, part.timing):
            result = part.run(ctx)
        part.record(out, result)
        for line in part.module.summary(ctx, out):
            ctx.log(line)
    check_interrupt()
    if write:  # every table at the end, together: an interrupted evaluation leaves none of its own
        for part in parts:
            part.write(ctx.out_dir, out)
    ctx.log("")
    ctx.log(format_timings(out.timings))
    return out
