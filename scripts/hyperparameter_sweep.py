#!/usr/bin/env python
"""The seed document's ``python scripts/hyperparameter_sweep.py ...``: ``robust-vision-sweep ...``.

Same flags; without ``--config`` it sweeps ``configs/research/lambda_sweep.yaml`` (the seed's
``python scripts/hyperparameter_sweep.py --output ./sweep_results --epochs 10`` names none).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runs from a fresh clone too (before `pip install -e .`): the package is in ../src.
sys.path.insert(0, str(REPO / "src"))

from robust_vision.experiments.cli import sweep_main  # noqa: E402

DEFAULT_CONFIG = Path("configs/research/lambda_sweep.yaml")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv) and not {"-h", "--help"} & set(argv):
        config = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else REPO / DEFAULT_CONFIG
        print(f"no --config given: sweeping {config}", file=sys.stderr)
        argv = ["--config", str(config), *argv]
    return sweep_main(argv)


if __name__ == "__main__":
    sys.exit(main())
