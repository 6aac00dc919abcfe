import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from robust_vision.config import load_config
from robust_vision.data.pipeline import augment, batch_indices
from robust_vision.runs.resume import TrainingError
from robust_vision.training.trainer import train


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_batches_cover_every_example_once():
    seen = []
    for b in batch_indices(10, 4, np.arange(10)[::-1]):
        assert b.indices.shape == (4,)
        seen.extend(b.indices[b.mask > 0].tolist())
    assert sorted(seen) == list(range(10))


def test_augment_is_identity_when_off_and_keeps_range():
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    key = jax.random.key(1)
    np.testing.assert_array_equal(augment(key, x, flip=False, crop_padding=0, noise_std=0.0), x)
    y = augment(key, x, flip=True, crop_padding=2, noise_std=0.3)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_training_learns_and_writes_run_dir(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", epochs=3) + ["training.learning_rate=0.003"])
    result = train(cfg, log=lambda s: None)
    rows = _read(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_accuracy"]) > 0.5
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert result.best_epoch is not None
    assert (tmp_path / "run" / "checkpoints" / "best" / str(result.best_epoch)).is_dir()
    # The run directory is never overwritten by accident.
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, log=lambda s: None)


@pytest.mark.parametrize("opt, schedule, loss", [("sgd", "warmup_cosine", "margin"), ("adamw", "constant", "focal")])
def test_optimizers_schedules_losses_mixup_ema(tmp_path, opt, schedule, loss):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", epochs=1) + [
        f"training.optimizer={opt}", f"training.lr_schedule={schedule}", f"training.loss_type={loss}",
        "training.use_mixup=true", "training.ema_enabled=true", "training.augment_flip=true",
        "training.augment_crop_padding=1", "training.noise_augment_std=0.05", "training.warmup_epochs=0.5",
        "training.weight_decay=0.0001", "training.grad_clip_norm=1.0"])
    rows = train(cfg, log=lambda s: None).history
    assert np.isfinite(rows[0]["train_loss"]) and 0.0 <= rows[0]["val_accuracy"] <= 1.0


def test_divergence_is_reported_not_checkpointed(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", epochs=2) + [
        "training.learning_rate=1e38", "training.optimizer=sgd", "training.momentum=0.99", "model.use_batch_norm=false"])
    with pytest.raises(TrainingError, match="diverged"):
        train(cfg, log=lambda s: None)


def _cli(run_dir: Path, repo_root: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-c", "import sys; from robust_vision.cli import train_main; sys.exit(train_main())",
            "--config", str(repo_root / "configs/quickstart.yaml")]
    for o in tiny_overrides(run_dir, epochs=4):
        args += ["--override", o]
    return args + list(extra)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, repo_root):
    from robust_vision.cli import train_main

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The uninterrupted reference runs the same command in this process (one process start
    # fewer); the killed and the resumed run are real processes, and load the reference's
    # compiled programs from the session's compile cache (conftest).
    assert train_main(_cli(tmp_path / "ref", repo_root)[3:]) == 0

    proc = subprocess.Popen(_cli(tmp_path / "cut", repo_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    marker = tmp_path / "cut" / "checkpoints" / "epochs" / "2" / "commit_success.txt"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A half-written checkpoint (what a kill during a save leaves) must not harm the resume.
    (tmp_path / "cut" / "checkpoints" / "epochs" / "3.orbax-checkpoint-tmp-1").mkdir(exist_ok=True)

    resumed = subprocess.run(_cli(tmp_path / "cut", repo_root, "--resume"), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]  # noqa: E731
    assert drop_time(_read(tmp_path / "cut" / "metrics.csv")) == drop_time(_read(tmp_path / "ref" / "metrics.csv"))
