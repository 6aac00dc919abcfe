"""``robust-vision-eval --verify`` and certified training (training.certified)."""

from __future__ import annotations

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_vision.cli import eval_main
from robust_vision.config import CertifiedConfig, ConfigError, load_config
from robust_vision.evaluation.verified import CertificateViolation, check_certificates
from robust_vision.training.certified import certified_hooks, eps_at, ibp_initialize, ramp_fraction
from verify_nets import tiny_model


def test_eval_verify_writes_table_figure_and_results(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tiny_run), "--output", str(out), "--verify", "ibp", "crown-ibp",
            "--eps", "0", "0.01", "--verify-max-examples", "6", "--attack-steps", "5", "--format", "png", "--dpi", "40", "--quiet"]
    assert eval_main(args) == 0
    assert "VERIFIED ACCURACY" in capsys.readouterr().out
    with open(out / "verified_results.csv") as f:
        rows = list(csv.DictReader(f))
    # (CROWN and alpha-CROWN run in tests/test_verify_soundness.py: their cost is per neuron)
    assert {(r["method"], float(r["eps"])) for r in rows} == {(m, e) for m in ("ibp", "crown-ibp") for e in (0.0, 0.01)}
    for r in rows:
        verified, pgd, clean = float(r["verified_accuracy"]), float(r["pgd_accuracy"]), float(r["clean_accuracy"])
        assert int(r["n_examples"]) == 6 and verified <= pgd <= clean
        if float(r["eps"]) == 0:  # the bound at eps 0 is the margin itself: verified = correct
            assert verified == clean
    by = {(r["method"], float(r["eps"])): r for r in rows}
    assert float(by[("crown-ibp", 0.01)]["mean_margin_lower_bound"]) >= float(by[("ibp", 0.01)]["mean_margin_lower_bound"])
    payload = json.loads((out / "results.json").read_text())
    assert payload["parts"] == ["verify"] and len(payload["suite"]["verified"]["results"]) == 4
    assert (out / "plots" / "verified_accuracy.png").is_file()


def test_a_certificate_that_pgd_breaks_stops_the_run():
    result = {"clean": np.array([True, True]), "pgd": {0.1: np.array([True, False])},
              "margin": {("ibp", 0.1): np.array([0.5, 0.2])}, "seconds": {"ibp": 0.0}}
    with pytest.raises(CertificateViolation, match="example 1 at eps=0.1"):
        check_certificates(result)


def test_eval_verify_unknown_method_exits_2(tiny_run, tmp_path, capsys):
    code = eval_main(["--checkpoint", str(tiny_run), "--output", str(tmp_path / "o"), "--verify", "deepz",
                      "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and "deepz" in err and err.count("\n") == 1, err


def test_smooth_ramp_is_continuous_monotone_and_reaches_eps():
    r = jnp.linspace(0, 1, 401)
    value = ramp_fraction(r, "smooth")
    assert float(value[0]) == 0 and abs(float(value[-1]) - 1) < 1e-6
    assert bool(jnp.all(jnp.diff(value) >= 0))
    step = 1.0 / 400  # value and slope are continuous where the power turns linear (r = 1/4)
    left, right = (value[100] - value[99]) / step, (value[101] - value[100]) / step
    assert abs(float(left - right)) < 0.02 * float(right)
    assert float(value[100]) < 0.25  # slower than linear early on
    ccfg = CertifiedConfig(method="ibp", eps=0.3, warmup_epochs=2, ramp_epochs=4)
    eps = [float(eps_at(jnp.asarray(s), ccfg, 10)) for s in (0, 19, 20, 59, 100)]
    assert eps[:2] == [0.0, 0.0] and 0 < eps[2] < 0.01 and eps[3] == pytest.approx(0.3) and eps[4] == pytest.approx(0.3)


def test_ibp_initialisation_scale():
    model, _, _ = tiny_model("linear")
    ibp_initialize(model, seed=0)
    kernel = np.asarray(model.hidden[0].kernel[...])
    assert float(np.std(kernel)) == pytest.approx(math.sqrt(2 * math.pi) / kernel.shape[0], rel=0.3)
    assert np.all(np.asarray(model.hidden[0].bias[...]) == 0)


def test_certified_loss_at_eps_zero_is_the_natural_loss_and_grows_with_eps():
    model, shape, classes = tiny_model("cnn")
    model.train()  # batch norm on the batch's statistics, in the bounds as in the forward pass
    model.dropout.deterministic = True  # the bounds are of the inference network (dropout = identity)
    x = jax.random.uniform(jax.random.key(0), (4, *shape))
    y = jnp.array([0, 1, 2, 0])
    natural = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
    for method in ("ibp", "crown-ibp"):
        ccfg = CertifiedConfig(method=method, eps=0.05, warmup_epochs=1, ramp_epochs=1, kappa_start=0.5,
                               kappa_end=0.0, regularizer_weight=0.0)
        loss = certified_hooks(ccfg, steps_per_epoch=10)["certified_loss"]
        np.testing.assert_allclose(loss(model, x, y, natural, jnp.asarray(0)), natural, rtol=1e-5)  # warm-up
        full = loss(model, x, y, natural, jnp.asarray(100))  # eps = 0.05, kappa = 0: the bound loss only
        assert bool(jnp.all(full >= natural - 1e-5))  # the worst case in the ball is no better than x itself


def test_certified_training_runs_through_the_train_step(tmp_path):
    from robust_vision.training.trainer import train

    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path / "run", epochs=1) + [
        "model.name=cnn_small", "training.certified.method=ibp", "training.certified.eps=0.05",
        "training.certified.warmup_epochs=0", "training.certified.ramp_epochs=1"])
    train(cfg, log=lambda s: None)
    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses)


def test_certified_with_adversarial_training_is_refused(tmp_path):
    from robust_vision.training.trainer import train

    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path / "run", epochs=1) + [
        "model.name=cnn_small", "training.certified.method=ibp", "training.adversarial.method=pgd"])
    with pytest.raises(ConfigError, match="replaces the training loss"):
        train(cfg, log=lambda s: None)
