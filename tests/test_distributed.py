"""Multi-device and multi-process execution (robust_vision.distributed, data.pipeline placement).

Device counts are fixed when JAX starts, so every comparison runs its sides in subprocesses with
their own XLA_FLAGS; each subprocess has a timeout, so a hung process group fails the test
instead of hanging it.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_COMPILE_FLAG, REPO_ROOT, tiny_overrides

TIMEOUT_S = 240


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO_ROOT / "src"), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAG}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- (a) 1 vs 4 devices

_TWO_STEPS = r"""
import json, jax, numpy as np
from robust_vision.config import load_config
from robust_vision.data.pipeline import batch_indices, data_mesh, replicate, shard_batch
from robust_vision.data.sources import converted_splits, read_examples
from robust_vision.losses import make_loss
from robust_vision.models import create_model
from robust_vision.models.state import split_model
from robust_vision.optim import init_train_state, make_optimizer
from robust_vision.training.steps import make_train_step
cfg = load_config(None, ["model.features=[8, 16]", "data.image_size=null", "training.batch_size=32",
                         "training.ema_enabled=true"])
train = converted_splits(cfg.data, ("train",))["train"]
train_images, train_labels = read_examples(train)
model = create_model(cfg.model, input_shape=train_images.shape[1:], num_classes=train.info.num_classes, seed=0)
parts = split_model(model)
tx, _ = make_optimizer(cfg.training, 10)
mesh = data_mesh()
state = replicate(mesh, init_train_state(parts, tx, True))
step = make_train_step(parts, tx, make_loss(cfg.training), cfg.training)
losses = []
for i, b in zip(range(2), batch_indices(len(train_labels), 32)):
    x, y, m = shard_batch(mesh, train_images[b.indices], train_labels[b.indices], b.mask)
    state, pe = step(state, x, y, m, jax.random.key(i))
    losses.append(float(np.mean(np.asarray(pe["loss"]))))
print(json.dumps({"devices": mesh.devices.size, "losses": losses,
                  "param_sum": float(sum(np.abs(np.asarray(p)).sum() for p in jax.tree.leaves(state["params"])))}))
"""


def _two_steps(devices: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _TWO_STEPS], capture_output=True, text=True, env=_env(devices),
                          timeout=TIMEOUT_S, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device():
    one, four = _two_steps(1), _two_steps(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["losses"] == pytest.approx(one["losses"], abs=1e-5, rel=0)
    assert one["losses"][0] != one["losses"][1]  # the second step saw updated parameters
    assert four["param_sum"] == pytest.approx(one["param_sum"], rel=1e-5)


# --------------------------------------------------------------------------- (b) 2 processes vs 1

# Train two quickstart epochs, then evaluate a small noise grid, in one process per rank (the
# process group is formed once; robust-vision-eval finds it already initialized).
_TRAIN_EVAL = r"""
import sys
from robust_vision.cli import eval_main, train_main
out, overrides, dist = sys.argv[1], sys.argv[2].split("|"), sys.argv[3:]
rc = train_main(["--config", "configs/quickstart.yaml", "--run-dir", out + "/run", "--no-progress", *dist,
                 *[a for o in overrides for a in ("--override", o)]])
if rc == 0:
    rc = eval_main(["--checkpoint", out + "/run", "--output", out + "/eval", "--noise-types", "gaussian",
                    "--levels", "0", "0.3", "--no-plots", "--no-calibration", *dist])
sys.exit(rc)
"""

_TIME_COLUMNS = {"epoch_time_s"}


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _assert_tables_equal(a: Path, b: Path) -> None:
    rows_a, rows_b = _read(a), _read(b)
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k in ra.keys() - _TIME_COLUMNS:
            try:
                va, vb = float(ra[k]), float(rb[k])
            except ValueError:
                assert ra[k] == rb[k], (a.name, k)
                continue
            assert va == pytest.approx(vb, abs=1e-5, rel=0), (a.name, k, va, vb)


def test_two_processes_match_one_process(tmp_path):
    overrides = "|".join([o for o in tiny_overrides(tmp_path / "unused") if not o.startswith("training.checkpoint_dir")]
                         + ["data.max_train_examples=512"])
    port = _free_port()
    commands = [([sys.executable, "-c", _TRAIN_EVAL, str(tmp_path / "two"), overrides, "--coordinator",
                  f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), "--coordinator-timeout", "60"],
                 _env(2)) for i in range(2)]
    # The reference (1 process, 4 devices) runs at the same time.
    commands.append(([sys.executable, "-c", _TRAIN_EVAL, str(tmp_path / "one"), overrides], _env(4)))
    log_paths = [tmp_path / f"log{i}.txt" for i in range(len(commands))]
    ranks = []
    try:
        for (cmd, env), log_path in zip(commands, log_paths):
            with log_path.open("w") as log_file:
                ranks.append(subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT))
        for p in ranks:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in ranks:
            p.kill()
    logs = [path.read_text() for path in log_paths]
    assert [p.returncode for p in ranks] == [0, 0, 0], "\n".join(log[-1500:] for log in logs)
    assert "4 device(s) (cpu, 2 process(es))" in logs[0]
    assert "Epoch 1/2" not in logs[1]  # only process 0 prints
    assert "4 device(s) (cpu, 1 process(es))" in logs[2]

    _assert_tables_equal(tmp_path / "two" / "run" / "metrics.csv", tmp_path / "one" / "run" / "metrics.csv")
    _assert_tables_equal(tmp_path / "two" / "eval" / "robustness_results.csv",
                         tmp_path / "one" / "eval" / "robustness_results.csv")
    rows = _read(tmp_path / "two" / "eval" / "robustness_results.csv")
    assert {r["n_images"] for r in rows} == {"360"}  # every test image counted exactly once
    # Collective checkpoints: both epochs saved once, readable by the evaluator (above).
    assert sorted(p.name for p in (tmp_path / "two" / "run" / "checkpoints" / "epochs").iterdir()) == ["1", "2"]


# --------------------------------------------------------------------------- bad input

_INIT = "import sys; from robust_vision.cli import train_main; sys.exit(train_main(sys.argv[1:]))"


def _train_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _INIT, "--config", "configs/quickstart.yaml",
                           "--run-dir", str(tmp_path / "run"), *args],
                          capture_output=True, text=True, env=_env(1), timeout=120, cwd=REPO_ROOT)


def test_unreachable_coordinator_is_a_one_line_error(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # nobody listens there
    proc = _train_cli(["--coordinator", address, "--num-processes", "2", "--process-id", "1",
                       "--coordinator-timeout", "2"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and address in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_peer_is_a_one_line_error_on_process_0(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    proc = _train_cli(["--coordinator", address, "--num-processes", "2", "--process-id", "0",
                       "--coordinator-timeout", "2"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "[1]" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needle", [
    (["--num-processes", "2"], "--coordinator"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"], "--process-id"),
])
def test_bad_process_group_flags(args, needle):
    from robust_vision import distributed

    ns = type("Args", (), dict(coordinator=None, num_processes=None, process_id=None, coordinator_timeout=1))()
    for flag, value in zip(args[::2], args[1::2]):
        setattr(ns, flag.lstrip("-").replace("-", "_"), value if flag == "--coordinator" else int(value))
    with pytest.raises(distributed.DistributedError, match=needle):
        distributed.init_from_args(ns)


def test_single_process_needs_no_process_group(monkeypatch):
    from robust_vision import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                 "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False
    assert distributed.process_count() == 1 and distributed.is_main_process()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    for name, value in (("SLURM_STEP_NODELIST", "n[1-2]"), ("SLURM_NTASKS", "4"), ("SLURM_PROCID", "0"),
                        ("SLURM_LOCALID", "0")):
        monkeypatch.setenv(name, value)
    assert distributed.detected_cluster() == "SLURM"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None  # a one-task job is a plain single process


def test_gather_batches_keeps_batch_order():
    import jax.numpy as jnp
    import numpy as np

    from robust_vision.distributed import gather_batches

    out = gather_batches([{"a": jnp.arange(3.0)}, {"a": jnp.arange(3.0, 6.0)}])
    np.testing.assert_array_equal(out["a"], np.arange(6.0))
    assert gather_batches([]) == {}


# --------------------------------------------------------------------------- distributed sweeps

_SWEEP_WORKER = r"""
import sys
from robust_vision.experiments.cli import sweep_main
sys.exit(sweep_main(sys.argv[1:]))
"""


def test_two_sweep_workers_share_one_study(tmp_path):
    """Two robust-vision-sweep workers, one journal storage: 3 distinct trials, each trained once."""
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    args = ["--config", str(REPO_ROOT / "configs" / "research" / "lambda_sweep.yaml"), "--output", str(out),
            "--storage", "journal", "--no-plots",
            "--override", "sweep.parameters={training.margin_lambda: {low: 0.1, high: 10.0, log: true}}",
            "--override", "sweep.method=optuna", "--override", "sweep.n_trials=3", "--override", "sweep.seed=5"]
    for o in tiny_overrides(out / "unused", epochs=1) + ["training.ema_enabled=false", "data.max_train_examples=256"]:
        args += ["--override", o]
    log_paths = [tmp_path / f"worker{i}.txt" for i in range(2)]
    workers = []
    try:
        for path in log_paths:
            with path.open("w") as log_file:
                workers.append(subprocess.Popen([sys.executable, "-c", _SWEEP_WORKER, *args], env=_env(1),
                                                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT))
        for p in workers:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in workers:
            p.kill()
    logs = [p.read_text() for p in log_paths]
    assert [p.returncode for p in workers] == [0, 0], "\n".join(log[-1500:] for log in logs)

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="robust-vision-sweep",
                              storage=JournalStorage(JournalFileBackend(str(out / "optuna.journal"))))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # exactly n_trials, none lost, none extra
    ids = [t.user_attrs["trial_id"] for t in trials]
    assert len(set(ids)) == 3  # distinct trials
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sorted(r["trial_id"] for r in rows) == sorted(ids) and all(r["status"] == "complete" for r in rows)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(ids)  # each trained in its own directory
    trained = sum(int(line.split(";")[1].split()[0]) for log in logs for line in log.splitlines()
                  if "trained by this run" in line)
    assert trained == 3  # each trial trained exactly once across the two workers
