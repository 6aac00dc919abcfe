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
import numpy as np

from robust_vision.research.tables import (accuracy50_rows, curve_rows, experiment_rows, factor_rows,
                                           linearity_rows, master_rows, method_summaries, weight_rows)
from robust_vision.research.verdicts import compare_claims, consistent, validation_checklist

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


def _ex(key: str, ratio: float, lo: float | None = None, hi: float | None = None, protocol: str = CLS) -> dict:
    """An experiment-table row with its paired ratio (and change) to the reference."""
    lo, hi = ratio if lo is None else lo, ratio if hi is None else hi
    return {"protocol": protocol, "method_key": key, "ratio_to_reference": ratio, "ratio_to_reference_lo": lo,
            "ratio_to_reference_hi": hi, "change_percent": (ratio - 1) * 100, "change_percent_lo": (lo - 1) * 100,
            "change_percent_hi": (hi - 1) * 100}


def test_claims_reproduced_and_not(tmp_path):
    master = _master({"cnn_margin_10": 2500.0, "cnn_ce": 10.0, "cnn_margin_1": 300.0, "hebbian_uncon": 200.0})
    experiments = {
        "loss": [_ex("cnn_ce", 1.0), _ex("cnn_margin_10", 300.0, 150.0, 600.0)],   # 300x: within 3x of 375x
        "learning_rule": [_ex("hebbian_uncon", 1.0), _ex("sgd_uncon", 0.1, 0.05, 0.2)],  # 10x [5x, 20x] vs 133x
        "constraints": [_ex("hebbian_uncon", 1.0), _ex("hebbian_physical", 0.6), _ex("hebbian_tight", 0.35)],
        "architecture": [_ex("linear_ce", 1.0), _ex("cnn_ce", 10.0)]}
    factors = [{"protocol": CLS, "rank": i + 1, "factor": f, "ratio_best_to_worst": r} for i, (f, r) in
               enumerate([("Loss function", 300.0), ("Learning rule", 10.0), ("Architecture", 10.0),
                          ("Constraints", 2.9)])]
    claims = compare_claims(master, _acc50(0.9, 0.6), experiments, factors)
    assert _claim(claims, "Loss function").verdict == "reproduced"
    assert _claim(claims, "Loss function").value == pytest.approx(300.0)
    assert "[90% CI 150x, 600x]" in _claim(claims, "Loss function").measured
    lr = _claim(claims, "Learning rule")  # inverted: Hebbian / SGD = 10x [5x, 20x]
    assert lr.verdict == "not reproduced" and lr.value == pytest.approx(10.0) and "[90% CI 5x, 20x]" in lr.measured
    assert _claim(claims, "Constraints: tight").verdict == "reproduced"  # -65% vs -66%
    assert _claim(claims, "Constraints: physical").value == pytest.approx(-40.0)
    assert _claim(claims, "Constraints: physical").verdict == "reproduced"
    assert _claim(claims, "Architecture").verdict == "reproduced"
    assert _claim(claims, "Factor ranking").verdict == "reproduced"
    assert _claim(claims, "Margin model SNR").verdict == "reproduced"
    assert all(c.verdict == "reproduced" for c in claims if c.claim.startswith(("Baseline", "SNR roughly")))
    assert all(c.protocol for c in claims)


def test_verdict_rule_uses_the_interval(tmp_path):
    # The tolerance band of 375x is [125x, 1125x]: a point of 100x is outside it, but an interval
    # reaching 140x is consistent with the claim; one ending at 110x is not.
    assert consistent((100.0, 80.0, 140.0), 375 / 3, 375 * 3)
    assert not consistent((100.0, 50.0, 110.0), 375 / 3, 375 * 3)
    assert not consistent((100.0, math.nan, math.nan), 375 / 3, 375 * 3)
    master = _master({"cnn_ce": 10.0, "cnn_margin_10": 1000.0})
    for (lo, hi), verdict in (((80.0, 140.0), "reproduced"), ((50.0, 110.0), "not reproduced")):
        ex = {"loss": [_ex("cnn_ce", 1.0), _ex("cnn_margin_10", 100.0, lo, hi)]}
        assert _claim(compare_claims(master, [], ex, []), "Loss function").verdict == verdict
    # a threshold claim: SNR > 2000 with point 1500 [1200, 2100] reaches the claimed side; the
    # checklist (point estimate) still fails it
    master = [{**r, "snr_clean_lo": 1200.0, "snr_clean_hi": 2100.0} for r in _master({"cnn_margin_10": 1500.0})]
    checklist = validation_checklist(master, [], _figures(tmp_path))
    assert checklist[0].status == "FAIL" and "[90% CI 1200, 2100]" in checklist[0].measured
    assert _claim(compare_claims(master, [], {}, []), "Margin model SNR").verdict == "reproduced"


def test_claims_diverged_and_missing(tmp_path):
    master = _master({"hebbian_uncon": 200.0, "sgd_uncon": math.nan, "hebbian_tight": 10.0})
    experiments = {"learning_rule": [_ex("hebbian_uncon", 1.0), _ex("sgd_uncon", math.nan)],
                   "constraints": [_ex("hebbian_uncon", 1.0), _ex("hebbian_tight", 0.05)]}
    claims = compare_claims(master, [], experiments, [])
    lr = _claim(claims, "Learning rule")
    assert lr.verdict == "not reproduced" and "diverged" in lr.measured
    assert _claim(claims, "Loss function").verdict == "not measured"
    assert _claim(claims, "Constraints: tight").measured == "-95.0%"
    assert _claim(claims, "Factor ranking").verdict == "not measured"


# ------------------------------------------------------------------------------- tables


def _record(key: str, snr: float, diverged: bool = False, seed: int = 0, protocol: str = CLS,
            spread: float = 0.0, n: int = 20) -> RunRecord:
    """Rows at Gaussian 0 and 0.5 and n units whose log-SNR is log(snr) (x2 when clean) +- spread
    (alternating, so the geometric mean is exactly snr) and whose correctness alternates 1, 0.5."""
    rows = [{"noise_type": "gaussian", "level": lvl, "accuracy": 0.75, "snr": snr * (2 if lvl == 0 else 1)}
            for lvl in (0.0, 0.5)]
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    log_snr = np.stack([np.log(snr * 2) + spread * sign, np.log(snr) + spread * sign], axis=1)
    correct = np.stack([np.where(sign > 0, 1.0, 0.5)] * 2, axis=1)
    return RunRecord(protocol, method_by_key(key), seed, rows, diverged=diverged,
                     units={"correct": correct, "log_snr": log_snr})


def test_master_ranks_diverged_last_and_factor_ratio():
    records = [_record(k, snr, k == "sgd_uncon", seed) for seed in (0, 1) for k, snr in [
        ("hebbian_uncon", 100.0), ("hebbian_tight", 25.0), ("sgd_uncon", 1e9), ("cnn_ce", 4.0)]]
    summaries = method_summaries(records)
    master = master_rows(summaries)
    assert [r["method_key"] for r in master] == ["hebbian_uncon", "hebbian_tight", "cnn_ce", "sgd_uncon"]
    assert master[-1]["status"] == "diverged" and master[0]["relative_to_best_percent"] == pytest.approx(100.0)
    # no spread across units: the interval collapses onto the point
    assert master[0]["snr_clean"] == pytest.approx(200.0) and master[0]["snr_noisy_lo"] == pytest.approx(100.0)
    assert master[0]["n_units"] == 40 and master[0]["accuracy_clean"] == pytest.approx(0.75)
    factors = {r["factor"]: r for r in factor_rows(summaries)}
    assert factors["Constraints"]["ratio_best_to_worst"] == pytest.approx(4.0)
    assert factors["Constraints"]["effect"].startswith("-75%")
    assert factors["Learning rule"]["best_method"] == "SGD Uncon."  # SNR is SNR; the flag says diverged


def test_intervals_bracket_the_point_and_pair_the_units():
    from robust_vision.research.methods import EXPERIMENTS

    records = [_record(k, snr, seed=seed, spread=s) for seed in (0, 1) for k, snr, s in [
        ("hebbian_uncon", 100.0, 1.0), ("hebbian_tight", 25.0, 1.0), ("sgd_uncon", 5.0, 0.5)]]
    summaries = method_summaries(records)
    for r in master_rows(summaries) + accuracy50_rows(summaries) + curve_rows(records):
        for col in ("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy", "accuracy_gauss50", "snr", "accuracy"):
            if col in r:
                assert r[f"{col}_lo"] <= r[col] + 1e-9 <= r[f"{col}_hi"] + 2e-9, (r["method_key"], col)
    uncon = next(s for s in summaries if s["method_key"] == "hebbian_uncon")
    assert uncon["snr_noisy_lo"] < 100.0 < uncon["snr_noisy_hi"]  # per-unit spread -> a real interval
    # tight = uncon / 4 unit by unit: the paired ratio has no spread at all
    constraints = next(e for e in EXPERIMENTS if e.key == "constraints")
    tight = next(r for r in experiment_rows(summaries, constraints) if r["method_key"] == "hebbian_tight")
    assert tight["ratio_to_reference"] == pytest.approx(0.25)
    assert tight["ratio_to_reference_lo"] == pytest.approx(0.25) and tight["ratio_to_reference_hi"] == pytest.approx(0.25)
    assert tight["change_percent"] == pytest.approx(-75.0)
    acc = next(r for r in accuracy50_rows(summaries) if r["method_key"] == "hebbian_uncon")
    assert acc["degradation_percent"] == pytest.approx(0.0) and acc["accuracy_gauss50"] == pytest.approx(0.75)


def _lin_row(r: tuple, steps: tuple = ((2.0, 1.5, 3.0), (5.0, 3.0, 8.0))) -> list[dict]:
    row = {"protocol": CLS, "pearson_r": r[0], "pearson_r_lo": r[1], "pearson_r_hi": r[2], "pearson_r_log": 0.9}
    for col, t in zip(("ratio_lambda_1_to_0", "ratio_lambda_10_to_1"), steps):
        row[col], row[f"{col}_lo"], row[f"{col}_hi"] = t
    for v, snr in zip((0, 1, 10), (10.0, 20.0, 100.0)):
        row[f"snr_clean_lambda_{v}"] = snr
    return [row]


def test_linearity_claim_decided_on_the_interval(tmp_path):
    master = _master({"cnn_margin_10": 100.0, "cnn_margin_1": 20.0, "cnn_ce": 10.0})
    # r = 0.8 fails the checklist (point), but an interval reaching 0.95 is consistent with the claim
    lin = _lin_row((0.8, 0.6, 0.95))
    item = validation_checklist(master, [], _figures(tmp_path), lin)[4]
    assert item.status == "FAIL" and "r = 0.8 [90% CI 0.6, 0.95]" in item.measured
    assert _claim(compare_claims(master, [], {}, [], linearity=lin), "SNR roughly").verdict == "reproduced"
    assert _claim(compare_claims(master, [], {}, [], linearity=_lin_row((0.8, 0.6, 0.85))),
                  "SNR roughly").verdict == "not reproduced"
    # a step whose interval lies wholly below 1 contradicts "non-decreasing", whatever r says
    falling = _lin_row((0.95, 0.92, 0.99), ((0.5, 0.3, 0.8), (5.0, 3.0, 8.0)))
    assert _claim(compare_claims(master, [], {}, [], linearity=falling), "SNR roughly").verdict == "not reproduced"
    assert validation_checklist(master, [], _figures(tmp_path), falling)[4].status == "FAIL"
    rising = _lin_row((0.95, 0.92, 0.99), ((0.9, 0.7, 1.2), (5.0, 3.0, 8.0)))  # a dip inside the noise
    assert _claim(compare_claims(master, [], {}, [], linearity=rising), "SNR roughly").verdict == "reproduced"


def test_linearity_rows_resample_the_three_methods_jointly():
    records = [_record(k, snr, seed=seed, spread=s) for seed in (0, 1) for k, snr, s in [
        ("cnn_ce", 10.0, 0.5), ("cnn_margin_1", 20.0, 0.5), ("cnn_margin_10", 100.0, 0.5)]]
    (row,) = linearity_rows(method_summaries(records))
    snrs = np.array([20.0, 40.0, 200.0])  # clean SNR is 2x the noisy one in _record
    assert row["snr_clean_lambda_10"] == pytest.approx(200.0) and row["n_units"] == 40
    assert row["pearson_r"] == pytest.approx(np.corrcoef([0.0, 1.0, 10.0], snrs)[0, 1])
    assert row["pearson_r_log"] == pytest.approx(np.corrcoef([0.0, 1.0, 10.0], np.log(snrs))[0, 1])
    # the units of the three methods move together (same alternating spread), so the paired steps
    # have no spread, and every resample keeps the same SNR ratios: r's interval collapses
    assert row["ratio_lambda_1_to_0_lo"] == pytest.approx(2.0) and row["ratio_lambda_10_to_1_hi"] == pytest.approx(5.0)
    assert row["pearson_r_lo"] == pytest.approx(row["pearson_r"]) == pytest.approx(row["pearson_r_hi"])
    # independent spreads: a real interval around the point
    records[2] = _record("cnn_margin_10", 100.0, seed=0, spread=-1.5)
    (row,) = linearity_rows(method_summaries(records))
    assert row["pearson_r_lo"] < row["pearson_r"] < row["pearson_r_hi"]
    assert row["ratio_lambda_10_to_1_lo"] < row["ratio_lambda_10_to_1"] < row["ratio_lambda_10_to_1_hi"]
    assert linearity_rows(method_summaries(records[:2])) == []  # margin-10 missing: no row


def test_weight_rows_interval_over_seeds():
    def rec(seed: int, mean: float) -> RunRecord:
        return RunRecord(CLS, method_by_key("hebbian_uncon"), seed, [], weight_stats={
            "mean": mean, "std": 0.1 * mean, "min": -mean, "max": 2 * mean, "max_abs": 2 * mean, "n": 10,
            "n_finite": 10})

    (one,) = weight_rows([rec(0, 1.0)])
    assert one["mean"] == pytest.approx(1.0) and math.isnan(one["mean_lo"])  # one seed: no interval
    (row,) = weight_rows([rec(s, m) for s, m in enumerate((1.0, 2.0, 3.0, 4.0))])
    assert row["mean"] == pytest.approx(2.5) and 1.0 <= row["mean_lo"] < 2.5 < row["mean_hi"] <= 4.0
    assert row["std"] == pytest.approx(0.25) and row["min"] == -4.0 and row["max"] == 8.0


def test_factor_ranking_claim_uses_the_intervals():
    def factors(ratios: dict) -> list[dict]:
        return [{"protocol": CLS, "rank": i + 1, "factor": f, "ratio_best_to_worst": t[0],
                 "ratio_best_to_worst_lo": t[1], "ratio_best_to_worst_hi": t[2]}
                for i, (f, t) in enumerate(sorted(ratios.items(), key=lambda kv: -kv[1][0]))]

    seed_order = {"Loss function": (300.0, 100.0, 900.0), "Learning rule": (10.0, 5.0, 20.0),
                  "Architecture": (9.0, 5.0, 15.0), "Constraints": (2.9, 2.0, 4.0)}
    assert _claim(compare_claims([], [], {}, factors(seed_order)), "Factor ranking").verdict == "reproduced"
    swapped = {**seed_order, "Architecture": (11.0, 5.0, 15.0)}  # points swapped, intervals overlap
    assert _claim(compare_claims([], [], {}, factors(swapped)), "Factor ranking").verdict == "reproduced"
    separated = {**seed_order, "Loss function": (1.2, 1.0, 1.5)}  # loss wholly below learning rule
    claim = _claim(compare_claims([], [], {}, factors(separated)), "Factor ranking")
    assert claim.verdict == "not reproduced" and "Loss function < Learning rule" in claim.note


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
                 "experiment_architecture", "factor_importance", "accuracy_at_50_gaussian", "weight_stats",
                 "lambda_linearity"):
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
    for r in master:
        for col in ("snr_noisy", "snr_clean", "accuracy_clean", "accuracy_noisy"):
            assert r[f"{col}_lo"] is not None and r[f"{col}_hi"] is not None, col
            if r["status"] == "ok":
                assert r[f"{col}_lo"] <= r[col] * (1 + 1e-9) + 1e-12 and r[col] <= r[f"{col}_hi"] * (1 + 1e-9) + 1e-12
    assert "ratio_to_reference_lo" in read_rows(out / "experiment_loss.csv")[0]
    assert "ratio_best_to_worst_hi" in read_rows(out / "factor_importance.csv")[0]
    assert "90% CI" in (out / "claims.md").read_text()
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
