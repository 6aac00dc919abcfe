#!/usr/bin/env python
"""The seed document's ``python scripts/research/plot_ablation_results.py``::

    python scripts/research/plot_ablation_results.py --results_dir ./results/research \
        --output ./paper_figures --style publication --dpi 300

Every results directory under ``--results_dir`` (the ``eval_lambda_*`` folders of the seed's
step 2, or any folder holding robustness_results.csv) is redrawn by ``robust-vision-plot``,
with the cross-run comparison figures in ``--output``.
"""

import argparse
import sys
from pathlib import Path

# Runs from a fresh clone too (before `pip install -e .`): the package is in ../../src.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from robust_vision.viz import main as plot_main  # noqa: E402
from robust_vision.runs.paths import METRICS_FILE  # noqa: E402
from robust_vision.tables import ROBUSTNESS_CSV  # noqa: E402


def result_dirs(root: Path) -> list[Path]:
    """``root`` itself if it holds tables, else its sub-directories that do (sorted)."""
    def has_tables(d: Path) -> bool:
        return (d / ROBUSTNESS_CSV).is_file() or (d / METRICS_FILE).is_file()

    if has_tables(root):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and has_tables(d)) if root.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plot_ablation_results.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", "--results-dir", required=True, help="folder of results directories")
    parser.add_argument("--output", required=True, help="folder for the figures")
    parser.add_argument("--style", default="publication", help="publication or default")
    parser.add_argument("--dpi", default="300", help="PNG resolution")
    parser.add_argument("--format", default="png,pdf", help="figure formats, e.g. png,pdf")
    args = parser.parse_args(argv)
    root = Path(args.results_dir)
    dirs = result_dirs(root)
    if not dirs:
        print(f"error: {root} holds no results directories ({ROBUSTNESS_CSV} or {METRICS_FILE}); run "
              f"robust-vision-eval --output {root}/<name> first", file=sys.stderr)
        return 2
    return plot_main([*map(str, dirs), "--output", args.output, "--style", args.style, "--dpi", str(args.dpi),
                      "--format", args.format])


if __name__ == "__main__":
    sys.exit(main())
