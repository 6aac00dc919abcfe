"""Time README command 1 (quickstart training + evaluation) as a new user would run it.

    python benchmarks/first_run.py [--keep DIR]

Runs ``robust-vision-train --config configs/quickstart.yaml --resume`` and ``robust-vision-eval``
on it in fresh subprocesses (imports and compilation included), into a scratch directory, then
pastes the training command a second time (it must resume, not fail). Prints wall and CPU time
(user + system of the child processes) of each step, the machine's CPU count and load average:
the numbers behind the times quoted in README.md and configs/quickstart.yaml.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(args: list[str], cwd: Path) -> tuple[float, float, int, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, (proc.stdout + proc.stderr)[-600:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="work in this directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="first_run_"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "configs").exists():
        (work / "configs").symlink_to(REPO / "configs")
    py = [sys.executable, "-m", "robust_vision"]
    steps = [
        ("train", [*py, "train", "--config", "configs/quickstart.yaml", "--resume"]),
        ("eval", [*py, "eval", "--checkpoint", "runs/quickstart", "--config", "configs/quickstart.yaml",
                  "--output", "results/quickstart"]),
        ("train again (2nd paste)", [*py, "train", "--config", "configs/quickstart.yaml", "--resume"]),
    ]
    print(f"cpus={os.cpu_count()} load_average={os.getloadavg()[0]:.1f} work={work}")
    total_wall = total_cpu = 0.0
    for name, cmd in steps:
        wall, cpu, rc, tail = _timed(cmd, work)
        total_wall += wall
        total_cpu += cpu
        print(f"{name:<24} rc={rc}  wall {wall:7.1f} s  cpu {cpu:7.1f} s")
        if rc != 0:
            print(tail)
            return 1
    print(f"{'total':<24}       wall {total_wall:7.1f} s  cpu {total_cpu:7.1f} s  "
          f"load_average_after={os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
