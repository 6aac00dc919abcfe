"""robust-vision-sweep: grid trials, stable ids, resumption, validation, Optuna (when installed)."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import REPO_ROOT, tiny_overrides
from robust_vision.experiments import trials as trials_mod
from robust_vision.experiments.cli import sweep_main
from robust_vision.experiments.trials import TrialFactory, make_trial_id, parse_sweep_section
from robust_vision.runs.resume import TrainingError

CONFIG = REPO_ROOT / "configs" / "research" / "lambda_sweep.yaml"
HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


def _args(out: Path, values: str = "[0.5, 2.0]", *extra: str) -> list[str]:
    """Arguments of a seconds-long sweep: tiny model, 8x8 digits, 2 epochs per trial (no EMA,
    whose average would still be close to the initial weights after so few steps)."""
    args = ["--config", str(CONFIG), "--output", str(out),
            "--override", f"sweep.parameters={{training.margin_lambda: {values}}}"]
    for o in tiny_overrides(out / "unused", epochs=2) + ["training.learning_rate=0.003", "training.ema_enabled=false"]:
        args += ["--override", o]
    return args + list(extra)


def tiny_sweep(tmp_path_factory) -> Path:
    """A finished 2-trial sweep shared by the test modules of a session: whichever module comes
    first trains it, the other one's call finds both trials finished (the sweep's own resumption)."""
    out = tmp_path_factory.getbasetemp() / "tiny_lambda_sweep"
    assert sweep_main(_args(out)) == 0
    return out


def _rows(out: Path) -> dict[str, dict]:
    with (out / "trials.csv").open() as f:
        return {r["trial_id"]: r for r in csv.DictReader(f)}


def _counting_train(monkeypatch, fail: bool = False) -> list[tuple[str, bool]]:
    calls: list[tuple[str, bool]] = []
    real = trials_mod.train

    def counted(cfg, *, resume=False, log=print):
        calls.append((Path(cfg.training.checkpoint_dir).parent.name, resume))
        if fail:
            raise TrainingError("training diverged at epoch 1 (test)")
        return real(cfg, resume=resume, log=log)

    monkeypatch.setattr(trials_mod, "train", counted)
    return calls


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return tiny_sweep(tmp_path_factory)


def test_grid_writes_one_row_per_trial_and_the_ablation_figure(sweep_dir):
    rows = _rows(sweep_dir)
    assert list(rows) == ["margin_lambda=0.5", "margin_lambda=2.0"]
    for trial_id, r in rows.items():
        assert r["status"] == "complete"
        assert float(r["training.margin_lambda"]) in (0.5, 2.0)
        assert r["objective"] == r["noisy_accuracy"]  # sweep.metric: noisy_accuracy
        results = sweep_dir / "trials" / trial_id / "results" / "robustness_results.csv"
        with results.open() as f:
            table = list(csv.DictReader(f))
        noisy = next(t for t in table if t["noise_type"] == "gaussian" and float(t["level"]) == 0.5)
        assert float(noisy["accuracy"]) == pytest.approx(float(r["noisy_accuracy"]))
        assert (sweep_dir / "trials" / trial_id / "run" / "metrics.csv").is_file()
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["best"]["trial_id"] in rows and len(summary["trials"]) == 2
    assert (sweep_dir / "plots" / "sweep_margin_lambda.png").is_file()
    assert (sweep_dir / "plots" / "sweep_margin_lambda.pdf").is_file()


def test_rerun_never_retrains_finished_trials_and_resumes_half_finished_ones(sweep_dir, monkeypatch, capsys):
    done_metrics = sweep_dir / "trials" / "margin_lambda=0.5" / "run" / "metrics.csv"
    mtime = done_metrics.stat().st_mtime_ns
    # Simulate a crash after trial 2 trained but before its row was recorded.
    rows = _rows(sweep_dir)
    rows["margin_lambda=2.0"]["status"] = "running"
    with (sweep_dir / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(next(iter(rows.values()))))
        writer.writeheader()
        writer.writerows(rows.values())
    calls = _counting_train(monkeypatch)
    assert sweep_main(_args(sweep_dir)) == 0
    assert calls == [("margin_lambda=2.0", True)]  # resumed from its checkpoint, the finished one untouched
    assert done_metrics.stat().st_mtime_ns == mtime
    assert all(r["status"] == "complete" for r in _rows(sweep_dir).values())
    assert "finished earlier, not rerun" in capsys.readouterr().out

    # A grid value added later: the two finished trials keep their ids and are reused.
    calls.clear()
    assert sweep_main(_args(sweep_dir, "[0.5, 2.0, 4.0]", "--max-trials", "0")) == 0
    assert calls == []
    assert set(_rows(sweep_dir)) == {"margin_lambda=0.5", "margin_lambda=2.0"}


def test_changed_base_config_is_refused(sweep_dir):
    assert sweep_main(_args(sweep_dir, "[0.5, 2.0]", "--override", "training.learning_rate=0.01")) == 2


def test_unknown_keys_and_bad_metric_fail_before_training(tmp_path, monkeypatch, capsys):
    calls = _counting_train(monkeypatch)
    args = _args(tmp_path / "s", "[1.0]")
    assert sweep_main(args + ["--override", "sweep.parameters={training.margin_lamda: [1.0]}"]) == 2
    err = capsys.readouterr().err
    assert "training.margin_lamda: unknown key" in err and err.startswith("error:")
    assert sweep_main(args + ["--override", "sweep.metric=noisy_acc"]) == 2
    assert "sweep.metric" in capsys.readouterr().err
    assert sweep_main(args + ["--override", "sweep.grid_size=3"]) == 2
    assert "sweep.grid_size: unknown key" in capsys.readouterr().err
    # An invalid value of the swept key fails for that value, before any trial runs.
    assert sweep_main(_args(tmp_path / "s", "[1.0, -1.0]")) == 2
    assert "training.margin_lambda" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "s" / "trials.csv").exists()


def test_failed_trials_are_recorded_and_not_retried_unless_asked(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    calls = _counting_train(monkeypatch, fail=True)
    assert sweep_main(_args(out, "[1.0]")) == 1  # nothing completed
    assert _rows(out)["margin_lambda=1.0"]["status"] == "failed"
    assert "diverged" in _rows(out)["margin_lambda=1.0"]["error"]
    assert sweep_main(_args(out, "[1.0]")) == 1
    assert len(calls) == 1
    assert sweep_main(_args(out, "[1.0]", "--retry-failed")) == 1
    assert len(calls) == 2


def test_trial_ids_are_stable_and_safe():
    assert make_trial_id({"training.margin_lambda": 10.0}) == "margin_lambda=10.0"
    assert make_trial_id({"training.seed": 1, "evaluation.seed": 2}) == "training.seed=1__evaluation.seed=2"
    odd = make_trial_id({"model.name": "a/b"})
    assert "/" not in odd and odd != make_trial_id({"model.name": "a_b"})
    factory = TrialFactory(CONFIG, [], Path("/tmp/unused"), progress_bar=False)
    # 10 and 10.0 are the same config value, hence the same trial.
    assert factory.build({"training.margin_lambda": 10}).trial_id == "margin_lambda=10.0"


def test_sweep_section_validation():
    spec = parse_sweep_section({"parameters": {"training.margin_lambda": [1, 2]}})
    assert (spec.method, spec.metric, spec.direction, spec.noisy_condition) == \
        ("grid", "noisy_accuracy", "maximize", "gaussian@0.5")
    assert parse_sweep_section({"parameters": {"training.margin_lambda": [1]}, "metric": "val_loss"}).direction \
        == "minimize"
    with pytest.raises(ValueError, match="needs method: optuna"):
        parse_sweep_section({"parameters": {"training.learning_rate": {"low": 1e-4, "high": 1e-2}}})
    with pytest.raises(ValueError, match="noisy_condition"):
        parse_sweep_section({"parameters": {"training.margin_lambda": [1]}, "noisy_condition": "blur@0.5"})
    with pytest.raises(ValueError, match="cannot be swept"):
        parse_sweep_section({"parameters": {"training.checkpoint_dir": ["a", "b"]}})


@pytest.mark.skipif(HAS_OPTUNA, reason="optuna is installed; the missing-dependency message cannot be shown")
def test_optuna_missing_names_the_extra(tmp_path, capsys):
    assert sweep_main(_args(tmp_path / "s", "[1.0]", "--override", "sweep.method=optuna")) == 2
    assert 'pip install -e ".[sweep]"' in capsys.readouterr().err


@pytest.mark.skipif(not HAS_OPTUNA, reason='optuna is not installed (optional extra: pip install -e ".[sweep]")')
def test_optuna_two_trials_resume(tmp_path, monkeypatch):
    out = tmp_path / "s"
    extra = ["--override", "sweep.method=optuna", "--override", "sweep.n_trials=2", "--override", "sweep.seed=3"]
    args = _args(out, "{low: 0.1, high: 10.0, log: true}", *extra)
    calls: list[tuple[str, bool]] = []
    real = trials_mod.train

    def interrupted(cfg, *, resume=False, log=print):
        calls.append((Path(cfg.training.checkpoint_dir).parent.name, resume))
        raise KeyboardInterrupt

    monkeypatch.setattr(trials_mod, "train", interrupted)
    assert sweep_main(args) == 130  # Ctrl-C inside the first trial: its study trial stays RUNNING
    monkeypatch.setattr(trials_mod, "train", lambda cfg, **kw: (calls.append(
        (Path(cfg.training.checkpoint_dir).parent.name, kw.get("resume", False))), real(cfg, **kw))[1])
    assert sweep_main(args + ["--max-trials", "1"]) == 0
    assert calls[1][0] == calls[0][0]  # the interrupted trial is asked again (same parameters, same id)
    assert sweep_main(args) == 0
    assert len(calls) == 3
    rows = _rows(out)
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows.values())
    assert all(0.1 <= float(r["training.margin_lambda"]) <= 10.0 for r in rows.values())
    assert (out / "optuna.db").is_file()
    assert sweep_main(args) == 0 and len(calls) == 3  # the study is complete: nothing more to train
