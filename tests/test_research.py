"""robust-vision-research: checklist and claims decided from hand-made tables, table
aggregation (diverged methods rank last), study settings, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from robust_vision.config import ConfigError
from robust_vision.research.methods import MASTER_ORDER, method_by_key
from robust_vision.research.protocols import RunRecord
from robust_vision.research.settings import QUICK, load_study, settings_to_dict
from robust_vision.research.tables import factor_rows, master_rows, method_summaries, seed_summaries
from robust_vision.research.verdicts import compare_claims, validation_checklist

CLS = "classification"


def _master(snr_clean: dict, snr_noisy: dict | None = None, protocol: str = CLS) -> list[dict]:
    snr_noisy = snr_noisy or snr_clean
    return [{"protocol": protocol, "method_key": k, "snr_clean": v, "snr_noisy": snr_noisy[k]}
            for k, v in snr_clean.items()]


def _acc50(margin: float, ce: float) -> list[dict]:
    return [{"protocol": CLS, "method_key": "cnn_margin_10", "accuracy_gauss50": margin},
            {"protocol": CLS, "method_key": "cnn_ce", "accuracy_gauss50": ce}]


def _figures(tmp_path: Path, n: int = 2) -> list[Path]:
    paths = [tmp_path / f"fig{i}.png" for i in range(n)]
    for p in paths:
        p.write_bytes(b"png")
    return paths


# ----------------------------------------------------------------------------- checklist


def test_checklist_all_pass(tmp_path):
    master = _master({"cnn_margin_10": 2500.0, "cnn_margin_1": 300.0, "cnn_ce": 10.0})
    items = validation_checklist(master, _acc50(0.9, 0.6), _figures(tmp_path))
    assert [i.status for i in items] == ["PASS"] * 6
    assert items[4].value > 0.99 and "r of log SNR" in items[4].measured


def test_checklist_fail_and_not_measured(tmp_path):
    master = _master({"cnn_margin_10": 1500.0, "cnn_margin_1": 1600.0, "cnn_ce": 30.0})
    figs = _figures(tmp_path) + [tmp_path / "missing.pdf"]
    items = validation_checklist(master, _acc50(0.85, 0.70), figs)  # thresholds are strict
    assert [i.status for i in items] == ["FAIL"] * 6
    assert "missing.pdf" in items[5].measured
    # pattern-only tables: the CNN items are not measured, not failed
    items = validation_checklist(_master({"hebbian_uncon": 5.0}, protocol="pattern"), [], _figures(tmp_path))
    assert [i.status for i in items] == ["N/A"] * 5 + ["PASS"]
    # a diverged (nan) margin model fails instead of passing silently
    master = _master({"cnn_margin_10": math.nan, "cnn_margin_1": 1.0, "cnn_ce": 2.0})
    items = validation_checklist(master, _acc50(math.nan, 0.5), _figures(tmp_path))
    assert items[0].status == "FAIL" and items[2].status == "FAIL" and items[4].status == "FAIL"


# ------------------------------------------------------------------------------- claims


def _claim(claims, text, protocol=CLS):
    return next(c for c in claims if c.claim.startswith(text) and c.protocol == protocol)


def test_claims_reproduced_and_not(tmp_path):
    noisy = {"cnn_margin_10": 3000.0, "cnn_ce": 10.0, "cnn_margin_1": 50.0,  # loss 300x: within 3x of 375x
             "hebbian_uncon": 200.0, "sgd_uncon": 20.0,                     # 10x: not within 3x of 133x
             "hebbian_physical": 120.0, "hebbian_tight": 70.0}              # -40% and -65%
    master = _master({**noisy, "cnn_margin_10": 2500.0, "cnn_ce": 10.0, "cnn_margin_1": 300.0}, noisy)
    arch = [{"protocol": CLS, "method_key": "linear_ce", "snr_noisy": 1.0},
            {"protocol": CLS, "method_key": "cnn_ce", "snr_noisy": 10.0}]
    factors = [{"protocol": CLS, "rank": i + 1, "factor": f, "ratio_best_to_worst": r} for i, (f, r) in
               enumerate([("Loss function", 300.0), ("Learning rule", 10.0), ("Architecture", 10.0),
                          ("Constraints", 2.9)])]
    checklist = validation_checklist(master, _acc50(0.9, 0.6), _figures(tmp_path))
    claims = compare_claims(master, _acc50(0.9, 0.6), arch, factors, checklist)
    assert _claim(claims, "Loss function").verdict == "reproduced"
    assert _claim(claims, "Loss function").value == pytest.approx(300.0)
    assert _claim(claims, "Learning rule").verdict == "not reproduced"
    assert _claim(claims, "Constraints: tight").verdict == "reproduced"  # -65% vs -66%
    assert _claim(claims, "Constraints: physical").value == pytest.approx(-40.0)
    assert _claim(claims, "Constraints: physical").verdict == "reproduced"
    assert _claim(claims, "Architecture").verdict == "reproduced"
    assert _claim(claims, "Factor ranking").verdict == "reproduced"
    assert _claim(claims, "Margin model SNR").verdict == "reproduced"
    assert all(c.verdict == "reproduced" for c in claims if c.claim.startswith(("Baseline", "SNR roughly")))


def test_claims_diverged_and_missing(tmp_path):
    master = _master({"hebbian_uncon": 200.0, "sgd_uncon": math.nan, "hebbian_tight": 10.0})
    claims = compare_claims(master, [], [], [], validation_checklist(master, [], _figures(tmp_path)))
    lr = _claim(claims, "Learning rule")
    assert lr.verdict == "not reproduced" and "diverged" in lr.measured
    assert _claim(claims, "Loss function").verdict == "not measured"
    assert _claim(claims, "Constraints: tight").measured == "-95.0%"
    assert _claim(claims, "Factor ranking").verdict == "not measured"


# ------------------------------------------------------------------------------- tables


def _record(key: str, snr: float, diverged: bool = False, seed: int = 0, protocol: str = CLS) -> RunRecord:
    rows = [{"noise_type": "gaussian", "level": lvl, "accuracy": 1.0, "snr": snr * (2 if lvl == 0 else 1)}
            for lvl in (0.0, 0.5)]
    return RunRecord(protocol, method_by_key(key), seed, rows, diverged=diverged)


def test_master_ranks_diverged_last_and_factor_ratio():
    records = [_record(k, snr, k == "sgd_uncon", seed) for seed in (0, 1) for k, snr in [
        ("hebbian_uncon", 100.0), ("hebbian_tight", 25.0), ("sgd_uncon", 1e9), ("cnn_ce", 4.0)]]
    summaries = method_summaries(seed_summaries(records))
    master = master_rows(summaries)
    assert [r["method_key"] for r in master] == ["hebbian_uncon", "hebbian_tight", "cnn_ce", "sgd_uncon"]
    assert master[-1]["status"] == "diverged" and master[0]["relative_to_best_percent"] == pytest.approx(100.0)
    assert master[0]["snr_clean"] == pytest.approx(200.0) and master[0]["snr_noisy_std"] == 0.0
    factors = {r["factor"]: r for r in factor_rows(summaries)}
    assert factors["Constraints"]["ratio_best_to_worst"] == pytest.approx(4.0)
    assert factors["Constraints"]["effect"].startswith("-75%")
    assert factors["Learning rule"]["best_method"] == "SGD Uncon."  # SNR is SNR; the flag says diverged


# ------------------------------------------------------------------------------ settings


def test_settings_file_equals_defaults_and_errors(repo_root):
    from_file = load_study(repo_root / "configs" / "research" / "study.yaml")
    assert settings_to_dict(from_file) == settings_to_dict(load_study(None))
    quick = load_study(None, quick=True, overrides=["seeds=1"])
    assert quick.seeds == 1 and quick.classification.cnn.epochs == QUICK["classification.cnn.epochs"]
    assert quick.image_size == 64
    with pytest.raises(ConfigError, match="pattern.n_imgs: unknown key"):
        load_study(None, overrides=["pattern.n_imgs=3"])
    with pytest.raises(ConfigError, match="protocols"):
        load_study(None, overrides=["protocols=[kitti]"])
    with pytest.raises(ConfigError, match="levels"):
        load_study(None, overrides=["levels=[0.1, 0.5]"])


# ---------------------------------------------------------------------------- end to end


def test_backprop_configs_validate(tmp_path):
    from robust_vision.config import config_from_dict
    from robust_vision.research.protocols import backprop_config

    settings = load_study(None, quick=True)
    lin = config_from_dict(backprop_config(settings, method_by_key("linear_margin_10"), 1, tmp_path / "r"))
    assert lin.model.name == "linear" and lin.model.hidden_units == [] and lin.training.loss_type == "margin"
    assert lin.training.margin_lambda == 10.0 and lin.training.seed == 1 and lin.data.classes == [0, 1]
    cnn = config_from_dict(backprop_config(settings, method_by_key("cnn_ce"), 0, tmp_path / "c"))
    assert cnn.model.features == [8, 16] and cnn.data.image_size == [64, 64] and not cnn.training.ema_enabled


def test_research_main_tiny_end_to_end(tmp_path, capsys):
    from robust_vision.research.cli import research_main

    out = tmp_path / "study"
    tiny = ["--override", "image_size=8", "--override", "pattern.n_images=2", "--override", "pattern.n_noisy=2",
            "--override", "classification.cnn.epochs=1", "--override", "classification.cnn.features=[4]",
            "--override", "classification.crossbar_epochs=2", "--override", "levels=[0.0, 0.5]",
            # each noise type and model structure compiles its evaluator: keep one of each that matters
            "--override", "classification.linear_baselines=false", "--override", "noise_types=[gaussian]"]
    assert research_main(["run", "--quick", "--seeds", "1", "--output", str(out), *tiny]) == 0
    printed = capsys.readouterr().out
    assert "VALIDATION CHECKLIST" in printed and "Compared with the paper's claims" in printed

    for stem in ("master_results", "experiment_learning_rule", "experiment_constraints", "experiment_loss",
                 "experiment_architecture", "factor_importance", "accuracy_at_50_gaussian", "weight_stats"):
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.md").is_file(), stem
    for name in ("all_results.csv", "curves.csv", "checklist.md", "claims.md", "results.json"):
        assert (out / name).is_file(), name
    for stem in ("snr_by_method", "constraint_degradation", "robustness_curves_pattern",
                 "robustness_curves_classification"):
        for fmt in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{fmt}").stat().st_size > 0

    from robust_vision.research.tables import read_rows

    master = read_rows(out / "master_results.csv")
    cls = [r for r in master if r["protocol"] == CLS]
    assert sorted(r["method_key"] for r in cls) == sorted(MASTER_ORDER)
    assert [int(r["rank"]) for r in cls] == list(range(1, 9))
    assert {r["method_key"] for r in master if r["protocol"] == "pattern"} == {
        "hebbian_uncon", "hebbian_loose", "hebbian_physical", "hebbian_tight", "sgd_uncon", "mlp_mse", "mlp_margin_1",
        "mlp_margin_10"}
    original = read_rows(out / "original_protocol.csv")
    assert [r["method_key"] for r in original] == ["mlp_mse", "mlp_margin_1", "mlp_margin_10"]
    assert all(r["snr_log_ratio_lo"] is not None for r in original)
    assert "original code" in (out / "claims.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0] and len(results["checklist"]) == 6
    assert "[x]" in (out / "checklist.md").read_text() or "[ ]" in (out / "checklist.md").read_text()
    assert (out / "runs" / "classification" / "seed0" / "cnn_margin_10" / "metrics.csv").is_file()
    assert read_rows(out / "experiment_loss.csv") and not read_rows(out / "experiment_architecture.csv")

    # `report` re-decides the checklist from the tables on disk (nothing retrained).
    (out / "checklist.md").unlink()
    assert research_main(["report", "--output", str(out)]) == 0 and (out / "checklist.md").is_file()
    assert research_main(["report", "--output", str(tmp_path / "nothing")]) == 2

    # Rerunning into the same directory with other CNN settings refuses to overwrite those runs.
    code = research_main(["run", "--protocol", "classification", "--quick", "--seeds", "1", "--output", str(out),
                          *tiny, "--override", "classification.cnn.epochs=2"])
    assert code == 2 and "--fresh" in capsys.readouterr().err
