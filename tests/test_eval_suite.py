"""The robustness suite wired into robust-vision-eval: corruption benchmark (CE / mCE),
attacks, certification, calibration, and the CLI end to end, on the session's one tiny
8x8-digits model (conftest.tiny_run)."""

import csv
import json
import math

import numpy as np
import pytest

from robust_vision.cli import eval_main
from robust_vision.config import load_config
from robust_vision.data.sources import ArraySource, SourceInfo
from test_datasets import load
from robust_vision.evaluation import suite
from robust_vision.batched import source_batches
from robust_vision.evaluation.parts.attacks import attack_suite_stream
from robust_vision.evaluation.parts.calibration import CalibrationSettings, calibration_tables_stream
from robust_vision.evaluation.parts.certify import certification_stream
from robust_vision.evaluation.parts.corruptions import CorruptionErrors, corruption_errors_stream, corruption_summary
from robust_vision.runs.loading import load_trained_model

CHEAP_CORRUPTIONS = ["gaussian_noise", "impulse_noise", "contrast", "brightness"]


@pytest.fixture(scope="module")
def trained(tiny_run):
    run = tiny_run
    model = load_trained_model(run)
    data = load(model.config.data)
    return run, model, model.logits_fn(), data


def _batches(images, labels, batch_size):
    """A small in-memory split as the streaming parts read it (a record source, batched)."""
    info = SourceInfo(num_classes=10, class_names=tuple(map(str, range(10))), image_shape=images.shape[1:],
                      description="test")
    return source_batches(ArraySource(np.asarray(images, np.float32), labels, info), batch_size)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_corruption_ce_of_a_model_against_itself_is_one(trained):
    _, _, logits_fn, data = trained
    test = data.split("test")
    kw = dict(model_name="tiny", corruptions=CHEAP_CORRUPTIONS, severities=[1, 2, 3, 4, 5], scale="cifar",
              key=suite.part_key(0, "corruptions"))
    errors = corruption_errors_stream(logits_fn, _batches(test.images, test.labels, 512), **kw)
    again = corruption_errors_stream(logits_fn, _batches(test.images, test.labels, 512), **kw)
    rows, agg = corruption_summary(again, errors)
    assert again.errors == errors.errors  # same keys -> same corrupted images -> same numbers
    table = errors.rows()
    assert len(table) == len(CHEAP_CORRUPTIONS) * 5
    for c in CHEAP_CORRUPTIONS:
        assert sorted(r["severity"] for r in table if r["corruption"] == c) == [1, 2, 3, 4, 5]
    assert all(0.0 <= r["error"] <= 1.0 and r["accuracy"] == pytest.approx(1 - r["error"]) for r in table)
    assert all(r["ce"] == pytest.approx(1.0) for r in rows)
    assert agg["mce"] == pytest.approx(1.0) and agg["relative_mce"] == pytest.approx(1.0)
    assert agg["n_corruptions"] == len(CHEAP_CORRUPTIONS)
    # Without a reference the CE columns are empty and the aggregate says why.
    rows_none, agg_none = corruption_summary(errors, None)
    assert all(r["ce"] is None and r["relative_ce"] is None for r in rows_none)
    assert agg_none["mce"] is None and "reference" in agg_none["note"]
    # CE is the ratio of summed errors: a reference twice as wrong gives CE 1/2.
    worse = CorruptionErrors("ref", errors.clean_error, {k: min(1.0, 2 * v) for k, v in errors.errors.items()},
                                   errors.n, "cifar", errors.corruptions, errors.severities)
    # A reference whose error never grows has no relative CE (NaN, left out of the mean).
    flat = CorruptionErrors("flat", 0.5, {k: 0.5 for k in errors.errors}, errors.n, "cifar",
                                  errors.corruptions, errors.severities)
    rows_flat, agg_flat = corruption_summary(errors, flat)
    assert all(math.isnan(r["relative_ce"]) for r in rows_flat) and agg_flat["n_relative"] == 0
    assert math.isnan(agg_flat["relative_mce"]) and agg_flat["n_corruptions"] == len(CHEAP_CORRUPTIONS)
    half, _ = corruption_summary(errors, worse)
    for r in half:
        num = sum(errors.errors[(r["corruption"], s)] for s in range(1, 6))
        den = sum(worse.errors[(r["corruption"], s)] for s in range(1, 6))
        assert r["ce"] == pytest.approx(num / den)


def test_attack_table_starts_at_clean_accuracy_and_pgd_is_monotone(trained):
    _, _, logits_fn, data = trained
    test = data.split("test")
    x, y = test.images[:128], test.labels[:128]
    clean = float(np.mean(np.argmax(np.asarray(logits_fn(x)), -1) == y))
    eps = [0.0, 0.05, 0.1, 0.2]
    rows, sanity = attack_suite_stream(logits_fn, lambda: _batches(x, y, 128), model_name="tiny",
                                       attacks=["fgsm", "pgd"], eps=eps, key=suite.part_key(0, "attacks"), steps=5,
                                       batch_size=128, sanity_examples=64)
    assert [(r["attack"], r["eps"]) for r in rows] == [(a, e) for a in ("fgsm", "pgd") for e in eps]
    for attack in ("fgsm", "pgd"):
        assert next(r for r in rows if r["attack"] == attack and r["eps"] == 0.0)["accuracy"] == clean
    pgd = [r["accuracy"] for r in rows if r["attack"] == "pgd"]
    assert all(b <= a for a, b in zip(pgd, pgd[1:])), pgd
    assert pgd[-1] < clean
    assert {r["check"] for r in sanity} >= {"eps0_unchanged", "monotone_in_eps", "pgd_stronger_than_fgsm"}
    assert all(r["passed"] or r["message"] for r in sanity)
    with pytest.raises(ValueError, match="valid attacks"):
        suite.check_attacks(["pgd", "cw"], "linf")
    with pytest.raises(ValueError, match="Linf"):
        suite.check_attacks(["fgsm"], "l2")


def test_certified_accuracy_curve_is_monotone(trained):
    _, _, logits_fn, data = trained
    test = data.split("test")
    n, alpha, sigma = 200, 0.01, 0.25
    rows, examples = certification_stream(logits_fn, _batches(test.images[:30], test.labels[:30], 16),
                                          model_name="tiny", sigmas=[sigma], key=suite.part_key(0, "certify"), n0=20,
                                          n=n, alpha=alpha, batch_size=16)  # 2 chunks, the last one padded
    acc = [r["certified_accuracy"] for r in sorted(rows, key=lambda r: r["radius"])]
    assert rows[0]["radius"] == 0.0 and 0.5 in [r["radius"] for r in rows]
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    assert all(0.0 <= r["abstain_fraction"] <= 1.0 and r["n"] == 30 for r in rows)
    assert len(examples) == 30
    r_max = sigma * __import__("scipy").stats.norm.ppf(alpha ** (1 / n))
    assert all(e["radius"] <= r_max + 1e-9 and (e["prediction"] >= 0 or e["radius"] == 0) for e in examples)


def test_conformal_coverage_on_clean_data_is_near_target(trained):
    _, _, logits_fn, data = trained
    val, test = data.split("val"), data.split("test")
    settings = CalibrationSettings(noise_types=["gaussian"], levels=[0.0, 0.5], seed=0,
                                   key=suite.part_key(0, "calibration"), alphas=[0.1])
    out = calibration_tables_stream(logits_fn, _batches(val.images, val.labels, 512),
                                    _batches(test.images, test.labels, 512), model_name="tiny", settings=settings)
    assert out["temperature"] > 0 and out["n_calibration"] == len(val.labels)
    clean = [r for r in out["conformal"] if r["level"] == 0.0]
    assert {r["method"] for r in clean} == {"lac", "aps"}
    for r in clean:  # valid at 1 - alpha for exchangeable data; loose for 180 / 360 examples
        assert 0.8 <= r["coverage"] <= 1.0, r
    counts = [r["count"] for r in out["reliability"] if r["level"] == 0.0]
    assert sum(counts) == len(test.labels) and len(counts) == 15
    cal = next(r for r in out["calibration"] if r["level"] == 0.0)
    assert 0 <= cal["ece"] <= 1 and 0 <= cal["ece_temperature"] <= 1
    sel = [r for r in out["selective"] if r["level"] == 0.0]
    assert sel[-1]["coverage"] == 1.0 and sel[-1]["selective_accuracy"] == pytest.approx(cal["accuracy"])


def test_eval_cli_writes_every_suite_table_and_figure(trained, tmp_path, capsys):
    run = trained[0]
    out = tmp_path / "out"
    args = ["--checkpoint", str(run), "--output", str(out), "--noise-types", "gaussian", "--levels", "0", "0.3",
            "--suite", "imagenet-c", "--severities", "1", "--reference", str(run), "--attacks", "fgsm,pgd",
            "--eps", "0", "0.1", "--attack-steps", "3", "--certify", "--n", "100", "--n0", "10",
            "--max-examples", "20", "--format", "png", "--dpi", "40", "--parts", "grid,calibration"]
    assert eval_main(args) == 0
    text = capsys.readouterr().out
    for header in ("CORRUPTION BENCHMARK", "ADVERSARIAL ROBUSTNESS", "CERTIFIED ROBUSTNESS", "CALIBRATION"):
        assert header in text
    for name in ("corruption_results.csv", "corruption_summary.csv", "corruption_mce.csv", "attack_results.csv",
                 "attack_sanity.csv", "certified_accuracy.csv", "certified_examples.csv", "reliability.csv",
                 "calibration_summary.csv", "conformal_results.csv", "selective_accuracy.csv"):
        assert (out / name).is_file(), name
    for fig in ("corruption_errors", "corruption_ce", "attack_accuracy", "certified_accuracy", "reliability",
                "conformal", "selective_accuracy"):
        assert (out / "plots" / f"{fig}.png").is_file(), fig
    corr = _rows(out / "corruption_results.csv")
    assert len({r["corruption"] for r in corr}) == 15 and {r["severity"] for r in corr} == {"1"}
    mce = {r["model"]: r for r in _rows(out / "corruption_mce.csv")}
    assert float(mce["tiny_run"]["mce"]) == pytest.approx(1.0)  # the reference is the same run
    attacks = _rows(out / "attack_results.csv")
    assert {(r["attack"], float(r["eps"])) for r in attacks} == {(a, e) for a in ("fgsm", "pgd") for e in (0, 0.1)}
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["suite"]) == {"corruptions", "attacks", "certification", "calibration"}
    assert payload["suite"]["certification"]["n_examples"] == 20
    assert all(math.isfinite(v) for v in payload["timings_s"].values())
    assert set(payload["timings"]) == {"grid", "corruptions", "attacks", "certification", "calibration"}
    for t in payload["timings"].values():
        assert 0 <= t["compile"] <= t["total"] and t["compute"] == pytest.approx(t["total"] - t["compile"], abs=2e-3)


def test_eval_cli_runs_only_the_parts_asked_for(trained, tmp_path, capsys):
    out = tmp_path / "attacks_only"
    # eps 0 only: no sanity checks, so the test stays cheap (the part selection is what it checks)
    args = ["--checkpoint", str(trained[0]), "--output", str(out), "--attacks", "fgsm", "--eps", "0",
            "--attack-max-examples", "16", "--no-plots", "--quiet"]
    assert eval_main(args) == 0
    text = capsys.readouterr().out
    assert "ADVERSARIAL ROBUSTNESS" in text and "ROBUSTNESS EVALUATION RESULTS" not in text
    assert "CALIBRATION" not in text and "TIMINGS" in text
    assert not (out / "robustness_results.csv").exists() and (out / "attack_results.csv").is_file()
    payload = json.loads((out / "results.json").read_text())
    assert payload["parts"] == ["attacks"] and set(payload["suite"]) == {"attacks"}
    assert set(payload["timings"]) == {"attacks"} and payload["results"] == []


def test_plan_parts_default_explicit_and_errors():
    from robust_vision.evaluation.runner import parse_parts, plan_parts

    ecfg = load_config(None, []).evaluation
    assert plan_parts(ecfg) == ["grid", "calibration"]  # the plain command keeps today's default
    ecfg.attacks = ["pgd"]
    assert plan_parts(ecfg) == ["grid", "attacks", "calibration"]  # the config enables attacks
    assert plan_parts(ecfg, asked=["attacks"]) == ["attacks"]
    assert plan_parts(ecfg, parts=parse_parts("calibration,grid"), asked=["attacks"]) == [
        "grid", "attacks", "calibration"]
    with pytest.raises(ValueError, match="valid parts"):
        parse_parts("grid,attack")
    with pytest.raises(ValueError, match="--suite"):
        plan_parts(ecfg, parts=["corruptions"])


@pytest.mark.parametrize("flags, message", [
    (["--attacks", "fgsm,cw"], "evaluation.attacks"),
    (["--suite", "imagenet-x"], "evaluation.suite"),
    (["--attacks", "fgsm", "--attack-norm", "l2"], "Linf"),
    (["--severities", "0"], "evaluation.severities"),
    (["--parts", "grid,nope"], "valid parts"),
])
def test_eval_cli_bad_suite_input_exits_2(trained, tmp_path, capsys, flags, message):
    code = eval_main(["--checkpoint", str(trained[0]), "--output", str(tmp_path / "o"), "--no-plots", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
