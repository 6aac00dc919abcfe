"""The README's quickstart train + eval still write the tables they wrote when the reference was
committed (issue 23, item 8): a refactor that changes any number, row, column or file name of
the quickstart's outputs fails here.

The run is the README's command at 2 epochs (seconds), compiled at the test suite's XLA level
(tests/conftest.py); the reference tables in tests/data/reference_quickstart/ were written by
the same code path under the same settings. Numbers must agree to 1e-6 (only float summation
order may differ); time columns are ignored. After an intended change of the outputs,
regenerate the reference with

    ROBUST_VISION_WRITE_REFERENCE=1 python -m pytest -q tests/test_reference_outputs.py

and say in the commit why the numbers changed. The whole-product check (every command) is
``scripts/output_snapshot.py`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "reference_quickstart"
# The tables the quickstart writes: (subdirectory of the output, file name).
TABLES = [
    ("run", "metrics.csv"),
    ("results", "robustness_results.csv"),
    ("results", "robustness_gaussian.csv"),
    ("results", "robustness_fog.csv"),
    ("results", "calibration_summary.csv"),
    ("results", "conformal_results.csv"),
    ("results", "reliability.csv"),
    ("results", "selective_accuracy.csv"),
    ("results", "results.json"),
]


def _snapshot_module():
    spec = importlib.util.spec_from_file_location("output_snapshot", REPO / "scripts" / "output_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command(name: str, *args: str) -> None:
    entry = {"train": "train_main", "eval": "eval_main"}[name]
    code = f"import sys; from robust_vision.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    _command("train", "--config", "configs/quickstart.yaml", "--override", "training.epochs=2",
             "--override", "training.progress_bar=false", "--override", "training.write_figures=false",
             "--run-dir", str(out / "run"))
    _command("eval", "--checkpoint", str(out / "run"), "--config", "configs/quickstart.yaml",
             "--output", str(out / "results"), "--no-plots", "--quiet")
    return out


def test_quickstart_tables_match_the_committed_reference(quickstart):
    if os.environ.get("ROBUST_VISION_WRITE_REFERENCE"):  # paths inside the tables read "<root>"
        for sub, name in TABLES:
            (REFERENCE / sub).mkdir(parents=True, exist_ok=True)
            text = (quickstart / sub / name).read_text().replace(str(quickstart), "<root>")
            (REFERENCE / sub / name).write_text(text)
    snapshot = _snapshot_module()
    differences = []
    for sub, name in TABLES:
        produced, committed = quickstart / sub / name, REFERENCE / sub / name
        assert produced.is_file(), f"the quickstart no longer writes {sub}/{name}"
        reason = snapshot._file_differs(committed, produced, 1e-6, (Path("<root>"), quickstart))
        if reason is not None:
            differences.append(f"{sub}/{name}: {reason}")
    assert not differences, "\n".join(differences)


def test_the_comparison_catches_a_changed_number(tmp_path):
    """The check above is not vacuous: one digit changed in one cell is a difference, a change
    below 1e-6 is not, and a time column is ignored."""
    snapshot = _snapshot_module()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("model,accuracy,epoch_time_s\nm,0.9861111111,1.5\n")
    b.write_text("model,accuracy,epoch_time_s\nm,0.9861111111,7.25\n")
    assert snapshot._file_differs(a, b, 1e-6) is None
    b.write_text("model,accuracy,epoch_time_s\nm,0.9861112111,1.5\n")
    assert snapshot._file_differs(a, b, 1e-6) is None
    b.write_text("model,accuracy,epoch_time_s\nm,0.9871111111,1.5\n")
    assert snapshot._file_differs(a, b, 1e-6) is not None
