"""Every bad input and fault gets a clear one-line answer and loses nothing (issue 14, item 8).

The cases are tables: add a row when a new bad input is found. Each CLI case checks the exit
code, that stderr is exactly one ``error: ...`` line (no traceback) and that it names the thing
to fix. Training runs are tiny (8x8 digits, 2 epochs) and shared by the checkpoint cases.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from robust_vision.config import DataConfig, load_config
from robust_vision.io import check_output_dir
from robust_vision.preflight import SizeError, check_memory
from robust_vision.runs.lock import RunLock

GIB = 2**30


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0], err
    assert "Traceback" not in err[0]
    return err[0]


def _train_cli(argv: list[str]) -> int:
    from robust_vision.cli import train_main

    return train_main(argv)


# --------------------------------------------------------------------------- config files


def _alias_bomb(levels: int = 12, fan: int = 9) -> bytes:
    """A ~1 KB YAML whose aliases stand for fan**levels values (9**12 ~ 3e11)."""
    lines = ["metadata:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return ("\n".join(lines) + "\n").encode()


CONFIG_FILE_CASES = [
    ("empty", b"", "is empty"),
    ("comments_only", b"# nothing here\n", "is empty"),
    ("top_level_list", b"- model\n- training\n", "top level is a list"),
    ("top_level_scalar", b"42\n", "top level is a int"),
    ("binary", bytes(range(256)) * 4, "binary file"),
    ("latin1", b"metadata:\n  note: caf\xe9\n", "not UTF-8"),
    ("bad_yaml", b"model: [unclosed\n", "not valid YAML"),
    ("alias_bomb", _alias_bomb(), "expands to more than"),
    ("recursive_alias", b"metadata:\n  a: &a [1, *a]\n", "recursive alias"),
    ("recursive_mapping", b"metadata: &m\n  self: *m\n", "recursive alias"),
]


@pytest.mark.parametrize("name, content, message", CONFIG_FILE_CASES, ids=[c[0] for c in CONFIG_FILE_CASES])
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, capsys, name, content, message):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    t0 = time.process_time()
    rc = _train_cli(["--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert time.process_time() - t0 < 5  # the bomb is bounded, not expanded
    line = _one_error_line(capsys)
    assert rc == 2
    assert message in line and str(path) in line, line
    assert not (tmp_path / "run").exists()  # nothing was created


def test_alias_bomb_is_small_and_a_modest_alias_is_fine(tmp_path):
    assert len(_alias_bomb()) < 1500
    path = tmp_path / "ok.yaml"
    path.write_text("metadata:\n  base: &b [1, 2, 3]\n  copy: *b\ntraining:\n  epochs: 2\n")
    cfg = load_config(path)
    assert cfg.metadata["copy"] == [1, 2, 3] and cfg.training.epochs == 2


OVERRIDE_CASES = [
    (["training=1"], "'training' is a section"),
    (["data=cifar10"], "'data' is a section"),
    (["training.epochs=abc"], "training.epochs: got 'abc'"),
    (["training.nope=1"], "training.nope: unknown key"),
    (["epochs"], "expected KEY=VALUE"),
]


@pytest.mark.parametrize("overrides, message", OVERRIDE_CASES, ids=[o[0][0] for o in OVERRIDE_CASES])
def test_bad_override_names_the_right_key(tmp_path, capsys, overrides, message):
    argv = ["--config", "configs/quickstart.yaml", "--run-dir", str(tmp_path / "run")]
    for o in overrides:
        argv += ["--override", o]
    assert _train_cli(argv) == 2
    assert message in _one_error_line(capsys)


# --------------------------------------------------------------------------- sizes


SIZE_CASES = [  # (overrides, available bytes, key named in the message)
    (["training.batch_size=1000000000"], 64 * GIB, "training.batch_size"),
    # The local-rule trainers hold the whole training set; backprop training streams it.
    (["training.learning_rule=hebbian", "model.name=crossbar", "data.image_size=2000"], 16 * GIB, "data.image_size"),
    (["training.learning_rule=hebbian", "model.name=crossbar", "data.dataset_name=cifar10", "data.image_size=512"],
     64 * GIB, "data.image_size"),
    (["training.batch_size=8192", "data.dataset_name=cifar10", "data.image_size=512"], 64 * GIB, "training.batch_size"),
]


@pytest.mark.parametrize("overrides, available, key", SIZE_CASES, ids=[c[2] + str(i) for i, c in enumerate(SIZE_CASES)])
def test_sizes_beyond_memory_are_refused_with_the_estimate(overrides, available, key):
    cfg = load_config(None, overrides)
    with pytest.raises(SizeError, match=rf"^{key}: .* need about [0-9.]+ GiB.*{available / GIB:.1f} GiB is available"):
        check_memory(cfg, available=available)


def test_sizes_that_fit_pass_and_the_estimate_is_the_float32_size():
    from robust_vision.data.sources import source_shape

    local_rule = ["training.learning_rule=hebbian", "model.name=crossbar", "data.image_size=2000"]
    check_memory(load_config(None, local_rule), available=64 * GIB)  # 1797 x 2000^2 x 4 B = 26.8 GiB
    n, hwc = source_shape(DataConfig(dataset_name="digits", image_size=[2000, 2000]))
    assert (n, hwc) == (1797, (2000, 2000, 1))
    with pytest.raises(SizeError, match="26.8 GiB"):
        check_memory(load_config(None, local_rule), available=20 * GIB)
    # Backprop training streams: the same 26.8 GiB dataset fits in 20 GiB, only its batches in flight count.
    check_memory(load_config(None, ["data.image_size=2000", "training.batch_size=64"]), available=20 * GIB)


def test_huge_batch_fails_before_anything_is_allocated(tmp_path, capsys):
    rc = _train_cli(["--config", "configs/quickstart.yaml", "--run-dir", str(tmp_path / "run"),
                     "--override", "training.batch_size=1000000000"])
    assert rc == 2
    assert "training.batch_size: 1000000000 images" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- training faults


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-epoch tiny run, trained once with a *relative* checkpoint_dir (for the resume-path case)."""
    from robust_vision.training.trainer import train

    base = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        cfg = load_config(None, tiny_overrides(Path("run"), epochs=2))
        train(cfg, log=lambda s: None)
    finally:
        os.chdir(cwd)
    return base / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _state_file(checkpoint: Path) -> Path:
    files = sorted((p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    return files[0]  # the largest file: array data


def test_every_checkpoint_has_a_manifest_that_verifies(trained_run):
    from robust_vision.runs.checkpoint import MANIFEST, verify_checkpoint

    checkpoints = [p for p in (trained_run / "checkpoints").glob("*/*") if p.is_dir() and p.name.isdigit()]
    assert len(checkpoints) >= 3  # epochs/1, epochs/2, best/<e>
    for ckpt in checkpoints:
        assert (ckpt / MANIFEST).is_file()
        assert verify_checkpoint(ckpt) is None


def test_flipped_bytes_are_detected_on_restore(trained_run, tmp_path):
    from robust_vision.runs.loading import load_trained_model
    from robust_vision.runs.checkpoint import CheckpointError, verify_checkpoint

    run = _copy(trained_run, tmp_path)
    best = next((run / "checkpoints" / "best").iterdir())
    target = _state_file(best)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert "does not match its checksum" in verify_checkpoint(best)
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*use another checkpoint"):
        load_trained_model(run)


def test_missing_state_gets_the_damage_hint_not_the_config_hint(trained_run, tmp_path):
    from robust_vision.runs.checkpoint import MANIFEST, CheckpointError, restore_checkpoint

    run = _copy(trained_run, tmp_path)
    ckpt = run / "checkpoints" / "epochs" / "2"
    shutil.rmtree(ckpt / "state")
    with pytest.raises(CheckpointError, match="state/.* is missing") as info:
        restore_checkpoint(ckpt, {})
    assert "data.image_size" not in str(info.value)
    (ckpt / MANIFEST).unlink()  # an older checkpoint without a manifest, loaded on request: still the right hint
    from robust_vision.runs import checkpoint

    checkpoint.allow_unverified(True)
    try:
        with pytest.raises(CheckpointError, match="incomplete checkpoint"):
            restore_checkpoint(ckpt, {})
    finally:
        checkpoint.allow_unverified(False)


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(trained_run, tmp_path):
    from robust_vision.training.trainer import train

    run = _copy(trained_run, tmp_path)
    target = _state_file(run / "checkpoints" / "epochs" / "2")
    target.write_bytes(target.read_bytes()[:-7])  # truncated
    logs: list[str] = []
    cfg = load_config(None, tiny_overrides(run, epochs=2))  # absolute path: same run as the relative one
    result = train(cfg, resume=True, log=logs.append)
    text = "\n".join(logs)
    assert "checkpoint of epoch 2 is damaged" in text and "Resuming from epoch 1, the newest checkpoint" in text
    assert [int(r["epoch"]) for r in result.history] == [1, 2]  # epoch 2 was retrained


def test_resume_with_the_run_dir_spelled_absolute(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path)
    # The saved config says checkpoint_dir "run" (relative): the absolute spelling is the same run.
    assert "checkpoint_dir: run" in (run / "config.yaml").read_text()
    argv = ["--config", str(run / "config.yaml"), "--resume", "--run-dir", str(run.resolve())]
    assert _train_cli(argv) == 0, capsys.readouterr().err


def test_disk_full_is_one_line_exit_1_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    from robust_vision.runs.checkpoint import verify_checkpoint

    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    run = tmp_path / "run"
    argv = ["--config", "configs/quickstart.yaml"]
    for o in tiny_overrides(run, epochs=2):
        argv += ["--override", o]
    capsys.readouterr()
    rc = _train_cli(argv)
    line = _one_error_line(capsys)
    assert rc == 1
    assert "disk full" in line and "epoch 1) is kept" in line
    assert verify_checkpoint(run / "checkpoints" / "epochs" / "1") is None


def test_second_training_on_a_locked_run_dir_stops_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        rc = _train_cli(["--config", "configs/quickstart.yaml", "--run-dir", str(run)])
    assert rc == 2
    assert "in use by another training" in _one_error_line(capsys)
    RunLock(run).acquire().release()  # released: the next training may start


DIVERGENCE_CASES = [  # (epoch train loss, first-batch loss, diverged?)
    (float("nan"), 2.3, True),
    (float("inf"), 2.3, True),
    (1e30, 2.3, True),    # the case: huge but finite, at chance
    (3e4, 2.3, True),     # > 1e4 x 2.3
    (2.2e4, 2.3, False),  # < 1e4 x 2.3
    (5.0, 2.3, False),    # a bad epoch, not divergence
    (2e4, 0.01, True),    # the reference is floored at 1.0 ...
    (9e3, 0.01, False),   # ... so a near-perfect start is not held to its tiny loss
    (1e5, None, True),
]


@pytest.mark.parametrize("loss, reference, expected", DIVERGENCE_CASES)
def test_divergence_rule(loss, reference, expected):
    from robust_vision.training.trainer import diverged

    assert diverged(loss, reference) is expected


def test_swallowed_ctrl_c_is_not_lost():
    from robust_vision.interrupts import check_interrupt, sigint_guard

    with sigint_guard():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except KeyboardInterrupt:
            pass  # what a callback that swallows exceptions does
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    check_interrupt()  # outside the guard the flag is cleared


@pytest.mark.parametrize("when", ["compile", "epoch"])
def test_ctrl_c_exits_130_cleanly(tmp_path, repo_root, when):
    run = tmp_path / "run"
    args = [sys.executable, "-c", "import sys; from robust_vision.cli import train_main; sys.exit(train_main())",
            "--config", str(repo_root / "configs/quickstart.yaml")]
    for o in tiny_overrides(run, epochs=50):
        args += ["--override", o]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if when == "compile":  # a real compile to interrupt, not a read of the session's compile cache
        env["ROBUST_VISION_CACHE_DIR"] = "off"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    if when == "compile":  # the "Model ..." line is printed just before the first step compiles
        for line in proc.stdout:
            if line.startswith("Model ") or time.time() > deadline:
                break
    else:
        marker = run / "checkpoints" / "epochs" / "1" / "checksums.json"
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "Segmentation" not in err
    RunLock(run).acquire().release()


# --------------------------------------------------------------------------- sweeps


def test_sweep_freezes_its_base_config(tmp_path):
    from robust_vision.experiments.trials import TrialFactory

    path = tmp_path / "base.yaml"
    path.write_text("training:\n  epochs: 3\nsweep:\n  parameters:\n    training.margin_lambda: [1, 2]\n")
    factory = TrialFactory(path, [], tmp_path / "out", progress_bar=False)
    path.write_text("training:\n  epochs: 99\n")  # edited while the sweep runs
    trial = factory.build({"training.margin_lambda": 2})
    assert trial.cfg.training.epochs == 3 and trial.cfg.training.margin_lambda == 2.0


def test_interrupted_trial_is_marked_interrupted(tmp_path, monkeypatch):
    from robust_vision.experiments import trials

    path = tmp_path / "base.yaml"
    path.write_text("sweep:\n  parameters:\n    training.margin_lambda: [1]\n")
    spec = trials.parse_sweep_section({"parameters": {"training.margin_lambda": [1]}})
    trial = trials.TrialFactory(path, [], tmp_path, progress_bar=False).build({"training.margin_lambda": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trials, "run_trial", interrupted)
    table = trials.TrialTable(tmp_path, spec.keys)
    runner = trials.TrialRunner(table, spec, retry_failed=False, log=lambda s: None, train_log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        runner(trial, 1, 1)
    rows, _ = trials.read_trials(tmp_path / "trials.csv")
    assert rows[trial.trial_id]["status"] == "interrupted"
    assert not trials.TrialTable(tmp_path, spec.keys).finished(trial.trial_id, False)  # resumed by the next run


# --------------------------------------------------------------------------- tables given to plot / compare

BINARY = bytes(range(256)) * 8


@pytest.mark.parametrize("content, message", [(BINARY, "binary file"), (b"epoch,train_loss\n\xff\xfe,1\n", "not UTF-8")])
def test_binary_csv_given_to_plot_names_the_file(tmp_path, capsys, content, message):
    from robust_vision.viz import main as plot_main

    (tmp_path / "metrics.csv").write_bytes(content)
    assert plot_main([str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert message in line and str(tmp_path / "metrics.csv") in line


def test_binary_csv_given_to_compare_names_the_file(tmp_path, capsys):
    from robust_vision.experiments.cli import compare_main

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_bytes(BINARY)
    assert compare_main(["--exp1", str(tmp_path / "a"), "--exp2", str(tmp_path / "b"),
                         "--output", str(tmp_path / "out"), "--no-plots"]) == 2
    line = _one_error_line(capsys)
    assert "binary file" in line and "metrics.csv" in line


# --------------------------------------------------------------------------- outputs


def test_output_that_is_a_file_fails_first(tmp_path, trained_run, capsys):
    from robust_vision.cli import eval_main

    out = tmp_path / "out.txt"
    out.write_text("keep me")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output_dir(out)
    t0 = time.process_time()
    assert eval_main(["--checkpoint", str(trained_run), "--output", str(out), "--no-plots"]) == 2
    assert "is a file, not a directory" in _one_error_line(capsys)
    assert time.process_time() - t0 < 10  # refused before the evaluation ran
    assert out.read_text() == "keep me"
    new = tmp_path / "new" / "dir"
    assert check_output_dir(new) == new and not (tmp_path / "new").exists()  # checked, nothing created
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(out / "sub")  # under a file: cannot be created


# --------------------------------------------------------------------------- image folders (data layer)


def _png(size: int = 8, value: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder_cfg(path: Path) -> DataConfig:
    return DataConfig(dataset_name="image_folder", data_dir=str(path), val_fraction=0.25, test_fraction=0.25)


def test_empty_class_folder_is_reported(tmp_path):
    from robust_vision.data.readers import DatasetError
    from test_datasets import load

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(value=40 * i))
    (tmp_path / "emu").mkdir()
    with pytest.raises(DatasetError, match="class folder 'emu' .* holds no images"):
        load(_folder_cfg(tmp_path))


def test_absolute_zip_member_names_are_not_a_class_called_slash(tmp_path):
    from test_datasets import load

    path = tmp_path / "abs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("cat", "dog"):
            for i in range(4):
                zf.writestr(zipfile.ZipInfo(f"/{cls}/{i}.png"), _png(value=40 * i))
    assert load(_folder_cfg(path)).class_names == ("cat", "dog")


def test_decompression_bomb_in_a_zip_is_one_dataset_error(tmp_path, monkeypatch):
    from PIL import Image

    from robust_vision.data.readers import DatasetError
    from test_datasets import load

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("cat", "dog"):
            for i in range(2):
                zf.writestr(f"{cls}/{i}.png", _png(size=32))
    # 32 x 32 = 1024 pixels > 2 x the limit: Pillow raises DecompressionBombError, as for a 900-MP PNG.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetError, match="cannot decode .*exceeds limit"):
        load(_folder_cfg(path))


# --------------------------------------------------------------------------- fast failures (item 4)

FAST_FAILURE_CASES = [  # (argv after train_main, message): answered before JAX is imported
    (["--config", "configs/nope.yaml"], "not found"),
    (["--config", "configs/baseline.yaml", "--override", "data.data_dir=/nonexistent"], "cifar-10-batches-py"),
    (["--config", "configs/quickstart.yaml", "--override", "training.batch_size=1000000000"], "GiB"),
    (["--config", "configs/quickstart.yaml", "--override", "training.epochs=-1"], "training.epochs"),
]


@pytest.mark.parametrize("argv, message", FAST_FAILURE_CASES, ids=[m for _, m in FAST_FAILURE_CASES])
def test_user_error_costs_well_under_a_second_of_cpu(repo_root, tmp_path, argv, message):
    import resource

    code = ("import sys; from robust_vision.cli import train_main; rc = train_main(sys.argv[1:]); "
            "print('jax imported' if 'jax' in sys.modules else 'no jax'); sys.exit(rc)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code, *argv, "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=repo_root, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout.strip() == "no jax"
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


def test_missing_cifar10_says_which_files_to_put_where(tmp_path):
    from robust_vision.preflight import check_data_source

    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz.*DIR/cifar-10-batches-py/ holds data_batch_1..5 "
                                         r"and test_batch.*configs/baseline_digits.yaml"):
        check_data_source(load_config("configs/baseline.yaml", [f"data.data_dir={tmp_path}"]).data)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(b"")
    check_data_source(load_config("configs/baseline.yaml", [f"data.data_dir={tmp_path}"]).data)  # present: passes
