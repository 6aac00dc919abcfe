"""robust-vision-analyze: spectrum, boundary, features and prune on one tiny trained model."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_overrides
from robust_vision.analysis.cli import analyze_main
from robust_vision.analysis.feature_maps import check_compare
from robust_vision.analysis.features import collect_layers, layer_shapes
from robust_vision.analysis.spectrum_cmd import layer_spectrum
from robust_vision.cli import train_main
from test_datasets import load
from robust_vision.runs.loading import load_trained_model
from robust_vision.evaluation.spectrum import eigenspectrum


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    argv = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml")]
    for o in tiny_overrides(run_dir, epochs=2):
        argv += ["--override", o]
    assert train_main(argv) == 0
    return run_dir


@pytest.fixture(scope="module")
def loaded(run):
    model = load_trained_model(run)
    return model, load(model.config.data).test


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _analyze(*argv):
    return analyze_main([str(a) for a in argv])


def test_spectrum_embedding_and_conv_layer(run, loaded, tmp_path):
    model, test = loaded
    out = tmp_path / "spec"
    assert _analyze("spectrum", "--checkpoint", run, "--output", out) == 0
    for name in ("spectrum.csv", "spectrum.json", "spectrum.png", "spectrum.pdf"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "spectrum.json").read_text())
    assert summary["layer"] == "embedding" and summary["n_examples"] == len(test.labels)
    assert np.isfinite(summary["alpha"]) and summary["fit_rank_first"] < summary["fit_rank_last"]
    eigs = np.array([float(r["eigenvalue"]) for r in _rows(out / "spectrum.csv")])
    assert eigs.size == summary["dim"] == 16
    assert np.all(np.diff(eigs) <= 1e-9 * eigs[0])
    # The eigenvalues sum to the trace of the covariance, computed here independently.
    emb = collect_layers(model, test.images, ["embedding"])["embedding"].astype(np.float64)
    np.testing.assert_allclose(eigs.sum(), np.var(emb, axis=0, ddof=1).sum(), rtol=1e-6)

    # A conv stage with more dimensions (8*8*8 = 512) than test images: the Gram-matrix route.
    out2 = tmp_path / "spec_stage1"
    assert _analyze("spectrum", "--checkpoint", run, "--output", out2, "--layer", "stage1",
                    "--max-examples", 200, "--format", "png") == 0
    s2 = json.loads((out2 / "spectrum.json").read_text())
    assert s2["dim"] == 512 and s2["n_eigenvalues"] == 200 and np.isfinite(s2["alpha"])
    np.testing.assert_allclose(s2["eigenvalue_sum"], s2["trace"], rtol=1e-6)
    assert not (out2 / "spectrum.pdf").exists()


def test_gram_route_matches_covariance():
    x = np.random.default_rng(0).normal(size=(20, 50)) * np.linspace(2.0, 0.1, 50)
    np.testing.assert_allclose(layer_spectrum(x), eigenspectrum(x)[:20], atol=1e-10)


def test_spectrum_unknown_layer_lists_layers(run, tmp_path, capsys):
    assert _analyze("spectrum", "--checkpoint", run, "--output", tmp_path, "--layer", "conv9") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "conv9" in err
    assert "stage1 (8x8x8)" in err and "stage2 (4x4x16)" in err and "embedding (16)" in err


def test_boundary_origin_is_the_models_prediction(run, loaded, tmp_path):
    model, test = loaded
    index, res = 5, 21
    out = tmp_path / "boundary"
    assert _analyze("boundary", "--checkpoint", run, "--output", out, "--index", index, "--resolution", res,
                    "--span", 0.3, "--noise", "gaussian:0.2") == 0
    for name in ("boundary.csv", "boundary.json", "boundary.png", "boundary.pdf"):
        assert (out / name).is_file(), name
    rows = _rows(out / "boundary.csv")
    assert len(rows) == 2 * res * res
    clean = [r for r in rows if r["center"] == "clean"]
    alphas = sorted({float(r["alpha"]) for r in clean})
    assert len(alphas) == res and alphas[0] == -0.3 and alphas[-1] == 0.3 and 0.0 in alphas
    origin = [r for r in clean if float(r["alpha"]) == 0.0 and float(r["beta"]) == 0.0]
    expected = int(np.argmax(model.logits_fn()(test.images[index][None])[0]))
    assert len(origin) == 1 and int(origin[0]["predicted"]) == expected
    summary = json.loads((out / "boundary.json").read_text())
    assert summary["true_label"] == int(test.labels[index])
    assert summary["centers"]["clean"]["origin_class"] == expected
    assert set(summary["centers"]) == {"clean", "gaussian:0.2"}
    for d in summary["centers"]["clean"]["distances"].values():
        assert d is None or 0 < d <= 0.3


def test_boundary_bad_input_exits_2(run, loaded, tmp_path, capsys):
    n = len(loaded[1].labels)
    assert _analyze("boundary", "--checkpoint", run, "--output", tmp_path, "--index", n) == 2
    assert f"0..{n - 1}" in capsys.readouterr().err
    assert _analyze("boundary", "--checkpoint", run, "--output", tmp_path, "--index", 0, "--resolution", 20) == 2
    assert "odd" in capsys.readouterr().err
    assert _analyze("boundary", "--checkpoint", run, "--output", tmp_path, "--index", 0, "--noise", "rain:0.3") == 2
    assert "gaussian" in capsys.readouterr().err  # the error lists the valid noise types


def test_features_compare_with_itself_gives_identical_rows(run, tmp_path):
    out = tmp_path / "features"
    assert _analyze("features", "--checkpoint", run, "--output", out, "--image", 2, "--compare", run) == 0
    for name in ("features.csv", "features.json", "feature_maps.png", "feature_maps.pdf"):
        assert (out / name).is_file(), name
    rows = _rows(out / "features.csv")
    names = list(dict.fromkeys(r["model"] for r in rows))
    assert len(names) == 2 and names[1] == f"{names[0]} (compare)"
    strip = lambda r: {k: v for k, v in r.items() if k != "model"}  # noqa: E731
    first = [strip(r) for r in rows if r["model"] == names[0]]
    assert first == [strip(r) for r in rows if r["model"] == names[1]]
    assert [r["layer"] for r in first[::2]] == ["stage1", "stage2", "embedding"]
    assert all(float(r["relative_change"]) > 0 for r in first if r["condition"] == "gaussian:0.3")


def test_features_compare_needs_same_input_shape():
    a = SimpleNamespace(name="a", input_shape=(8, 8, 1))
    check_compare(a, SimpleNamespace(name="b", input_shape=(8, 8, 1)))
    with pytest.raises(ValueError, match="same image size"):
        check_compare(a, SimpleNamespace(name="b", input_shape=(32, 32, 3)))


def test_prune_sparsity_and_unpruned_accuracy(run, loaded, tmp_path):
    model, test = loaded
    out = tmp_path / "prune"
    targets = [0.0, 0.5, 0.9]
    assert _analyze("prune", "--checkpoint", run, "--output", out, "--sparsities", *targets,
                    "--levels", 0, 0.3, "--format", "png") == 0
    for name in ("pruning.csv", "pruning.json", "pruning.png"):
        assert (out / name).is_file(), name
    rows = _rows(out / "pruning.csv")
    assert len(rows) == len(targets) * 2
    for r in rows:
        assert abs(float(r["sparsity_measured"]) - float(r["sparsity_target"])) <= 0.01
    logits = jax.jit(model.forward)(model.variables, test.images)
    unpruned = float(np.mean(np.argmax(np.asarray(logits), axis=-1) == test.labels))
    row = next(r for r in rows if float(r["sparsity_target"]) == 0.0 and float(r["level"]) == 0.0)
    assert float(row["accuracy"]) == pytest.approx(unpruned, abs=1e-12)
    noisy = [float(r["accuracy"]) for r in rows if float(r["level"]) == 0.3]
    assert len(noisy) == len(targets) and all(0.0 <= a <= 1.0 for a in noisy)


def test_layer_order_is_the_models():
    # layer_shapes must not depend on jit's sorted dict keys: a fake model whose features
    # come in non-alphabetical order.
    class Parts:
        def merge(self, params, state, train):
            return lambda x, return_features: (x, {"zeta": x, "alpha": x[:, 0], "embedding": x[:, 0, 0]})

    fake = SimpleNamespace(parts=Parts(), variables=(None, None), input_shape=(2, 2, 1))
    assert list(layer_shapes(fake)) == ["zeta", "alpha", "embedding"]
