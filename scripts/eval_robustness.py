#!/usr/bin/env python
"""The seed document's `python scripts/eval_robustness.py ...`: the same as `robust-vision-eval ...` (same flags)."""

import sys
from pathlib import Path

# Runs from a fresh clone too (before `pip install -e .`): the package is in ../src.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from robust_vision.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(eval_main())
