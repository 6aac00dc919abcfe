"""The registry of evaluation parts (big_vision's evaluator contract): one module per part.

A part module (``parts/<name>.py``) exposes

* ``run(ctx) -> result``: built from the eval config and the context (``runner.EvalContext``),
  one streamed pass per model over the evaluated split; returns its named results;
* ``summary(ctx, out) -> list[str]``: the lines it prints once it has run;

and may override the defaults of :class:`Part`: ``record(out, result)`` (where the result goes
in the ``EvalOutcome``: by default its section ``key`` of results.json) and
``write(out_dir, out)`` (its tables: by default ``tables.SUITE_TABLES[key]``). The runner only
loops over :data:`PARTS`; a new part is one module and one line here. Modules are imported
when a part runs, so the registry is read before JAX (``--parts`` is checked first).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


@dataclass(frozen=True)
class Part:
    """One evaluation part: its ``--parts`` name (= its module), its section of results.json
    (``key``), its line in the printed timings, whether the config enables it in the plain
    command, and the flag that configures it (for a part asked for without its settings)."""

    name: str
    key: str
    timing: str
    enabled: Callable[[Any], bool]
    needs: str = ""
    # The module that runs instead of ``name``'s, chosen by the eval config (None: ``name``'s).
    variant: Callable[[Any], str] | None = None

    @property
    def module(self) -> ModuleType:
        return import_module(f"{__name__}.{self.name}")

    def run(self, ctx) -> Any:
        """The part's results on ``ctx`` (``run(ctx)`` of its module, or of its variant's)."""
        name = self.variant(ctx.cfg.evaluation) if self.variant else self.name
        return import_module(f"{__name__}.{name}").run(ctx)

    def record(self, out, result) -> None:
        """Put ``result`` into the ``EvalOutcome`` ``out`` (default: ``out.suite[key]``)."""
        own = getattr(self.module, "record", None)
        if own is not None:
            return own(out, result)
        out.suite[self.key] = result

    def write(self, out_dir: Path, out) -> list[Path]:
        """Write this part's tables from ``out`` (default: its ``tables.SUITE_TABLES`` entry)."""
        own = getattr(self.module, "write", None)
        if own is not None:
            return own(out_dir, out)
        return write_tables(out_dir, self.key, out.suite[self.key])


def write_tables(out_dir: Path, key: str, section: dict) -> list[Path]:
    """The CSV tables of one suite part from its results.json ``section``
    (``tables.SUITE_TABLES[key]``; a table without rows is not written)."""
    from robust_vision.io import write_csv
    from robust_vision.tables import SUITE_TABLES

    return [write_csv(out_dir / filename, section[rows], columns)
            for filename, rows, columns in SUITE_TABLES[key] if section[rows]]


# The parts, in the order they run.
PARTS: dict[str, Part] = {p.name: p for p in (
    Part("grid", "grid", "grid", lambda e: True),
    Part("corruptions", "corruptions", "corruptions", lambda e: e.suite != "none", "--suite imagenet-c",
         variant=lambda e: "corruptions" if e.suite_data is None else "published"),
    Part("attacks", "attacks", "attacks", lambda e: bool(e.attacks), "--attacks fgsm,pgd"),
    Part("certify", "certification", "certification", lambda e: bool(e.certify)),
    Part("verify", "verified", "verification", lambda e: bool(e.verify), "--verify ibp,crown"),
    Part("calibration", "calibration", "calibration", lambda e: bool(e.calibration)),
)}
