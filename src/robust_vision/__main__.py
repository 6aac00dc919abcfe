"""``python -m robust_vision COMMAND ARGS``: every console script under one entry point.

    python -m robust_vision train --config configs/quickstart.yaml
    python -m robust_vision eval --checkpoint runs/quickstart --output results/quickstart

COMMAND is one of train, eval, plot, research, sweep, compare, analyze (the ``robust-vision-*``
scripts of the same names, with the same flags). Only the chosen command's module is imported.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function): the [project.scripts] table of pyproject.toml.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("robust_vision.cli", "train_main"),
    "eval": ("robust_vision.cli", "eval_main"),
    "plot": ("robust_vision.cli", "plot_main"),
    "research": ("robust_vision.research.cli", "research_main"),
    "sweep": ("robust_vision.experiments.cli", "sweep_main"),
    "compare": ("robust_vision.experiments.cli", "compare_main"),
    "analyze": ("robust_vision.analysis.cli", "analyze_main"),
}

USAGE = (f"usage: python -m robust_vision {{{','.join(COMMANDS)}}} ARGS\n"
         "  (python -m robust_vision COMMAND --help shows the flags of one command)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    entry = getattr(importlib.import_module(module), function)
    # No argv for a process of its own: the entry point reads sys.argv (and may exit hard on Ctrl-C).
    saved, sys.argv = sys.argv, [f"python -m robust_vision {command}", *rest]
    try:
        return int(entry() or 0)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
