"""The seed document's command lines (/work/shared/seeds/robust-vision.txt, 'Quick Reproduction'
and 'Quick Start') run as written, plus tiny-settings overrides (issue 14, item 1).

The scripts run in this process (runpy) from a scratch directory that has the repo's configs/,
so the one tiny training is shared by the evaluation, comparison and plotting lines after it.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

from robust_vision.runs.loading import resolve_checkpoint
from robust_vision.runs.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--override", "model.features=[8, 16]", "--override", "data.image_size=null",
        "--override", "training.epochs=1", "--override", "training.progress_bar=false",
        "--override", "training.batch_size=256"]


def _script(path: str, *args: str) -> int:
    """Run ``python scripts/...`` ARGS in this process; its exit code."""
    saved = sys.argv
    sys.argv = [path, *args]
    try:
        runpy.run_path(str(REPO / path), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    """A scratch working directory with configs/ and the seed's margin_lambda_1 run (1 tiny epoch)."""
    work = tmp_path_factory.mktemp("seed")
    (work / "configs").symlink_to(REPO / "configs")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        # Seed, "Step 1: Train All Variants": Margin Loss lambda=1
        rc = _script("scripts/train.py", "--config", "configs/research/margin_ablation.yaml",
                     "--override", "training.margin_lambda=1.0",
                     "--override", "training.checkpoint_dir=./checkpoints/research/margin_lambda_1", *TINY)
        assert rc == 0
        yield work
    finally:
        os.chdir(cwd)


def test_seed_train_eval_compare_plot_lines(seed_dir, capsys):
    run = Path("checkpoints/research/margin_lambda_1")
    assert (run / "metrics.csv").is_file()
    # The seed: figures are generated automatically; training writes its curves and TensorBoard files.
    assert (run / "plots" / "training_curves.png").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # "Step 2: Evaluate All Models", with the seed's RUN/best spelling.
    rc = _script("scripts/eval_robustness.py", "--checkpoint", "./checkpoints/research/margin_lambda_1/best",
                 "--config", "configs/research/margin_ablation.yaml", "--output", "./results/research/eval_lambda_1",
                 *TINY, "--noise-types", "gaussian", "--levels", "0", "0.5", "--no-calibration", "--no-plots")
    assert rc == 0, capsys.readouterr().err
    assert Path("results/research/eval_lambda_1/robustness_results.csv").is_file()
    # "Compare results"
    rc = _script("scripts/compare_experiments.py", "--exp1", "./checkpoints/research/margin_lambda_1",
                 "--exp2", "./results/research/eval_lambda_1", "--output", "./comparison_results", "--no-plots")
    assert rc == 0, capsys.readouterr().err
    assert any(Path("comparison_results").iterdir())
    # "Step 3: Generate Comparison Plots" (format png only, to keep the test short)
    rc = _script("scripts/research/plot_ablation_results.py", "--results_dir", "./results/research",
                 "--output", "./paper_figures", "--style", "publication", "--dpi", "300", "--format", "png")
    assert rc == 0, capsys.readouterr().err
    assert list(Path("paper_figures").rglob("*.png"))


def test_seed_sweep_lines_validate(seed_dir, capsys):
    # "Experiment 2" and "Hyperparameter Tuning" (the latter names no config); --dry-run: no training.
    assert _script("scripts/hyperparameter_sweep.py", "--config", "configs/research/lambda_sweep.yaml",
                   "--output", "./sweep_results", "--dry-run") == 0
    assert _script("scripts/hyperparameter_sweep.py", "--output", "./sweep_results", "--epochs", "10",
                   "--dry-run") == 0
    out = capsys.readouterr()
    assert "margin_lambda" in out.out and "no --config given" in out.err


def test_seed_checkpoint_spellings_resolve(seed_dir):
    run = Path("checkpoints/research/margin_lambda_1")
    best = next((run / "checkpoints" / "best").iterdir())
    assert resolve_checkpoint(run / "best") == (run, best)
    assert resolve_checkpoint(run / f"best_checkpoint_{best.name}") == (run, best)
    with pytest.raises(CheckpointError, match=rf"best checkpoint is epoch {best.name}; pass {run} .*{best}"):
        resolve_checkpoint(run / "best_checkpoint_18")
    with pytest.raises(CheckpointError, match="does not exist; train first"):
        resolve_checkpoint(Path("checkpoints/baseline/best_checkpoint_18"))


@pytest.mark.parametrize("command", ["train", "eval", "plot", "research", "sweep", "compare", "analyze"])
def test_python_m_robust_vision_dispatches_every_command(command, capsys):
    from robust_vision.__main__ import main

    try:
        code = main([command, "--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_python_m_robust_vision_unknown_command(capsys):
    from robust_vision.__main__ import main

    assert main(["trian"]) == 2
    assert "expected one of train, eval" in capsys.readouterr().err


def test_tensorboard_files_hold_the_metrics_and_are_skipped_without_tensorboardx(tmp_path, monkeypatch):
    import importlib.util

    from robust_vision.training import run_outputs

    history = [{"epoch": 1, "train_loss": 2.0, "val_accuracy": 0.5, "val_snr": float("nan")},
               {"epoch": 2, "train_loss": 1.0, "val_accuracy": 0.75, "val_snr": 3.0}]
    out = run_outputs.write_tensorboard(tmp_path, history)
    scalars = _read_events(next(out.glob("events.out.tfevents.*")))
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.0)]
    assert scalars["val/accuracy"] == [(1, 0.5), (2, 0.75)]
    assert scalars["val/snr"] == [(2, 3.0)]  # nan is not a point
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    assert run_outputs.write_tensorboard(tmp_path / "other", history) is None


def _read_events(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, pos, out = path.read_bytes(), 0, {}
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
