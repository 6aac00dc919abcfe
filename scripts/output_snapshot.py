"""Snapshot every user-facing output of the main commands, and compare two snapshots.

Refactors that must not change behaviour are checked with it (docs/ARCHITECTURE.md):

    python scripts/output_snapshot.py capture /tmp/before      # on the old code
    python scripts/output_snapshot.py capture /tmp/after       # on the new code
    python scripts/output_snapshot.py compare /tmp/before /tmp/after

`capture` runs the README commands (quickstart train + eval), the ImageNet-C suite,
AutoAttack, randomized-smoothing certification, bound-propagation verification, a baseline
comparison, the Hebbian (local-rule) trainer, the research quick run, the recipes quick run
and a grid sweep, each into OUT/<name>. `compare` checks every table and JSON file
(.csv, .json, .yaml, .txt, .md) of the two snapshots: byte-identical, or every number
within --tol (default 1e-6) where only float summation order may differ. Timing columns
and wall-clock fields are ignored; figures are compared by name only (their data are the
tables beside them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# (name, argv) pairs; {out} is the snapshot directory. Small budgets keep a capture at a few
# minutes on 2 CPU cores while still running every command's whole path.
COMMANDS: list[tuple[str, list[str]]] = [
    ("train", ["robust-vision-train", "--config", "configs/quickstart.yaml",
               "--run-dir", "{out}/runs/quickstart"]),
    ("eval", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
              "--config", "configs/quickstart.yaml", "--output", "{out}/results/quickstart"]),
    ("train_ref", ["robust-vision-train", "--config", "configs/quickstart.yaml",
                   "--override", "training.epochs=2", "--override", "training.seed=1",
                   "--run-dir", "{out}/runs/reference"]),
    ("baseline", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                  "--baseline", "{out}/runs/reference", "--levels", "0", "0.3",
                  "--noise-types", "gaussian", "--output", "{out}/results/baseline"]),
    ("suite", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
               "--output", "{out}/results/suite", "--suite", "imagenet-c",
               "--severities", "1", "3", "--reference", "{out}/runs/reference"]),
    ("autoattack", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                    "--output", "{out}/results/autoattack", "--attacks", "autoattack",
                    "--eps", "0.03", "--attack-max-examples", "24"]),
    ("attacks", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                 "--output", "{out}/results/attacks", "--attacks", "fgsm,pgd,apgd",
                 "--eps", "0", "0.03", "--attack-steps", "5", "--attack-max-examples", "48"]),
    ("certify", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                 "--output", "{out}/results/certify", "--certify", "--sigma", "0.25",
                 "--n0", "16", "--n", "64", "--max-examples", "24"]),
    ("verify", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                "--output", "{out}/results/verify", "--verify", "ibp,crown-ibp",
                "--eps", "0.01", "--verify-max-examples", "24"]),
    ("calibration", ["robust-vision-eval", "--checkpoint", "{out}/runs/quickstart",
                     "--output", "{out}/results/calibration", "--parts", "calibration"]),
    ("hebbian", ["robust-vision-train", "--config", "configs/hebbian.yaml",
                 "--run-dir", "{out}/runs/hebbian"]),
    ("hebbian_eval", ["robust-vision-eval", "--checkpoint", "{out}/runs/hebbian",
                      "--config", "configs/hebbian.yaml", "--output", "{out}/results/hebbian"]),
    ("research", ["robust-vision-research", "run", "--quick", "--seeds", "1",
                  "--output", "{out}/research"]),
    ("recipes", ["robust-vision-research", "run", "--experiment", "recipes", "--quick",
                 "--seeds", "1", "--output", "{out}/recipes"]),
    ("sweep", ["robust-vision-sweep", "--config", "configs/research/lambda_sweep.yaml",
               "--output", "{out}/sweep", "--epochs", "2",
               "--override", "sweep.parameters={training.margin_lambda: [0.1, 5.0]}"]),
    ("compare", ["robust-vision-compare", "--exp1", "{out}/runs/quickstart",
                 "--exp2", "{out}/runs/reference", "--output", "{out}/compare"]),
]

_TABLE_SUFFIXES = {".csv", ".json", ".yaml", ".txt", ".md", ".tsv"}
_FIGURE_SUFFIXES = {".png", ".pdf", ".svg"}
# Columns / keys / lines that measure time or describe the machine: they differ between any
# two runs and are not behaviour.
_VOLATILE = re.compile(
    r"(second|time|timing|_s$|elapsed|wall|duration|throughput|per_s|date|created|timestamp|"
    r"host|version|cache|pid|path)", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def capture(out: Path, only: list[str] | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED="0")
    failed = 0
    for name, argv in COMMANDS:
        if only and name not in only:
            continue
        args = [a.replace("{out}", str(out)) for a in argv]
        started = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.call(args + (["--quiet"] if _takes_quiet(args) else []),
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{name:12s} exit {code}  {time.perf_counter() - started:6.1f} s", flush=True)
        failed += code != 0
    return 1 if failed else 0


def _takes_quiet(args: list[str]) -> bool:
    return args[0] in {"robust-vision-eval", "robust-vision-sweep", "robust-vision-research"}


def _numbers_close(a: str, b: str, tol: float) -> bool:
    """True when a and b differ only in numbers, each pair within tol (absolute or relative)."""
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        return False
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)):
        fx, fy = float(x), float(y)
        if not math.isclose(fx, fy, rel_tol=tol, abs_tol=tol):
            return False
    return True


def _strip_volatile_json(value):
    if isinstance(value, dict):
        return {k: ("<volatile>" if _VOLATILE.search(k) else _strip_volatile_json(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_volatile_json(v) for v in value]
    return value


def _table_rows(rows: list[list[str]]) -> list[list[str]]:
    """``rows`` (a header row first) without the volatile columns."""
    if not rows:
        return rows
    keep = [i for i, col in enumerate(rows[0]) if not _VOLATILE.search(col)]
    return [[row[i] if i < len(row) else "" for i in keep] for row in rows]


def _text_lines(text: str) -> list[str]:
    """Lines of a text file without volatile lines; markdown tables lose their volatile columns."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            out.extend("|".join(r) for r in _table_rows(table))
            table = []
        if not _VOLATILE.search(line):
            out.append(line)
    return out


def _file_differs(a: Path, b: Path, tol: float, roots: tuple[Path, Path] | None = None) -> str | None:
    """None when equal (bytes, or numbers within tol); else a one-line reason. ``roots``: the two
    snapshot directories, which the files may name (run_dir, output_dir); each reads "<root>"."""
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return None
    if roots is not None:
        da = da.replace(str(roots[0]).encode(), b"<root>")
        db = db.replace(str(roots[1]).encode(), b"<root>")
    ta, tb = da.decode(errors="replace"), db.decode(errors="replace")
    if a.suffix == ".json":
        try:
            ta = json.dumps(_strip_volatile_json(json.loads(ta)), sort_keys=True)
            tb = json.dumps(_strip_volatile_json(json.loads(tb)), sort_keys=True)
        except ValueError:
            pass
        return None if _numbers_close(ta, tb, tol) else "JSON differs"
    if a.suffix == ".csv":
        ra, rb = _table_rows(list(csv.reader(ta.splitlines()))), _table_rows(list(csv.reader(tb.splitlines())))
        if len(ra) != len(rb):
            return f"{len(ra)} vs {len(rb)} rows"
        for i, (x, y) in enumerate(zip(ra, rb)):
            if not _numbers_close(",".join(x), ",".join(y), tol):
                return f"row {i}: {x} vs {y}"
        return None
    la, lb = _text_lines(ta), _text_lines(tb)
    if len(la) != len(lb):
        return f"{len(la)} vs {len(lb)} lines"
    for x, y in zip(la, lb):
        if not _numbers_close(x, y, tol):
            return f"line {x!r} vs {y!r}"
    return None


def _outputs(root: Path, suffixes: set[str]) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix in suffixes and "checkpoints" not in p.parts
            and not p.name.endswith(".log")}


def compare(before: Path, after: Path, tol: float) -> int:
    problems = []
    tables_a, tables_b = _outputs(before, _TABLE_SUFFIXES), _outputs(after, _TABLE_SUFFIXES)
    figures_a, figures_b = _outputs(before, _FIGURE_SUFFIXES), _outputs(after, _FIGURE_SUFFIXES)
    for name in sorted(tables_a ^ tables_b) + sorted(figures_a ^ figures_b):
        problems.append(f"{name}: only in {'before' if name in tables_a | figures_a else 'after'}")
    identical = 0
    for name in sorted(tables_a & tables_b):
        reason = _file_differs(before / name, after / name, tol, (before.resolve(), after.resolve()))
        if reason is None:
            identical += (before / name).read_bytes() == (after / name).read_bytes()
        else:
            problems.append(f"{name}: {reason}")
    print(f"{len(tables_a & tables_b)} tables compared ({identical} byte-identical), "
          f"{len(figures_a & figures_b)} figures by name; {len(problems)} differences")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("out", type=Path)
    cap.add_argument("--only", nargs="*", help="names of COMMANDS to run")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.command == "capture":
        return capture(args.out.resolve(), args.only)
    return compare(args.before, args.after, args.tol)


if __name__ == "__main__":
    sys.exit(main())
