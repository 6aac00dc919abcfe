import csv
import json

import numpy as np
import pytest

from robust_vision.cli import eval_main
from test_datasets import load
from robust_vision.runs.loading import load_trained_model
from robust_vision.metrics import expected_calibration_error, per_example_metrics, snr_summary, summarize
from robust_vision.evaluation.robustness import evaluate_robustness


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return tiny_run  # the session's one tiny run (conftest)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_metric_definitions_known_values():
    s = summarize({"correct": np.array([1, 0, 1, 1]), "confidence": np.array([0.9, 0.6, 0.8, 0.7]),
                   "margin": np.log(np.array([4.0, 0.5, 2.0, 8.0]))})
    assert s["accuracy"] == 0.75
    assert s["snr"] == pytest.approx((4 * 0.5 * 2 * 8) ** 0.25)  # geometric mean of the odds
    assert s["snr_median"] == pytest.approx(8 ** 0.5)  # median of log-odds: the two middle odds 2 and 4 meet at sqrt(8)
    assert snr_summary(np.array([800.0]))["snr"] == float("inf")  # overflow is reported, not NaN
    # ECE: one bin holding confidences 0.9 with accuracy 0.5 -> |0.5 - 0.9| = 0.4
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1, 0])) == pytest.approx(0.4)


def test_grid_is_deterministic_and_accuracy_falls_with_noise(trained_run):
    model = load_trained_model(trained_run)
    data = load(model.config.data)
    levels = [0.0, 0.1, 0.3, 0.5, 0.7]
    kwargs = dict(model_name="m", noise_types=["gaussian", "salt_pepper"], levels=levels, n_draws=2,
                  batch_size=100, seed=3)
    first = evaluate_robustness(model.forward, model.variables, data.test.images, data.test.labels, **kwargs)
    second = evaluate_robustness(model.forward, model.variables, data.test.images, data.test.labels, **kwargs)
    assert first.rows == second.rows
    n = len(data.test.labels)
    for noise in ("gaussian", "salt_pepper"):
        acc = [r["accuracy"] for r in first.rows if r["noise_type"] == noise]
        # Non-increasing up to sampling noise of 2n image-draws (3 binomial standard errors).
        tol = 3 * np.sqrt(0.25 / (2 * n))
        assert all(b <= a + tol for a, b in zip(acc, acc[1:])), acc
        assert acc[-1] < acc[0]
    clean = [r for r in first.rows if r["level"] == 0.0]
    assert len({r["accuracy"] for r in clean}) == 1 and all(r["degradation"] is None for r in clean)
    assert first.confidences["m|gaussian|0.5"].shape == (2 * n,)


def test_eval_cli_writes_identical_tables_twice(trained_run, tmp_path, capsys):
    args = ["--checkpoint", str(trained_run), "--levels", "0", "0.2", "0.5", "--noise-types", "gaussian", "fog",
            "--baseline", str(trained_run), "--no-plots"]
    assert eval_main(args + ["--output", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "ROBUSTNESS EVALUATION RESULTS" in out and "COMPARISON WITH BASELINE" in out
    assert eval_main(args + ["--output", str(tmp_path / "b")]) == 0
    for name in ("robustness_results.csv", "robustness_gaussian.csv", "robustness_fog.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = _rows(tmp_path / "a" / "robustness_results.csv")
    assert {r["model"] for r in rows} == {"tiny_run", "tiny_run (baseline)"}
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    assert payload["versions"]["jax"] and payload["comparison"]["snr_ratio"] == pytest.approx(1.0)


def test_eval_errors_are_one_line(trained_run, tmp_path, capsys, repo_root):
    assert eval_main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    # Config whose image size does not match the checkpoint.
    assert eval_main(["--checkpoint", str(trained_run), "--output", str(tmp_path / "o"), "--no-plots",
                      "--override", "data.image_size=[16, 16]", "--override", "model.features=[8, 16]",
                      "--config", str(repo_root / "configs/quickstart.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on (8, 8, 1)" in err[0]
    # Config that describes another architecture.
    assert eval_main(["--checkpoint", str(trained_run), "--output", str(tmp_path / "o"), "--no-plots",
                      "--config", str(repo_root / "configs/quickstart.yaml"), "--override", "model.name=resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cnn' model" in err[0]


def test_compile_cache_dir_resolution_and_switch(tmp_path, monkeypatch):
    import jax

    from robust_vision.compile_cache import enable_compile_cache, resolve_cache_dir

    monkeypatch.delenv("ROBUST_VISION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "robust-vision" / "jax"
    assert resolve_cache_dir("off") is None and resolve_cache_dir(tmp_path / "c") == tmp_path / "c"
    monkeypatch.setenv("ROBUST_VISION_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "c") == tmp_path / "env"  # the environment wins
    try:
        assert enable_compile_cache() == tmp_path / "env" and (tmp_path / "env").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        jax.jit(lambda v: v * 3.0 + 1.0)(jax.numpy.arange(7.0)).block_until_ready()
        assert any((tmp_path / "env").iterdir())  # the program was written to the cache
    finally:
        monkeypatch.setenv("ROBUST_VISION_CACHE_DIR", "off")
        assert enable_compile_cache() is None
    assert not jax.config.jax_enable_compilation_cache


def _linear_forward(variables, images):
    return images.reshape(images.shape[0], -1) @ variables["w"] + variables["b"]


def _whole_split(variables, images, labels, noise_type, level, *, seed, n_draws, batch_size=16):
    """Per-example metrics of one condition computed the way the grid did before streaming: the
    split padded to whole batches, batch i of draw d corrupted with
    fold_in(condition_key(seed, type, level, d), i), concatenated over draws (N * n_draws,)."""
    import jax

    from robust_vision.corruptions import get_noise
    from robust_vision.evaluation.robustness import METRIC_NAMES, condition_key

    n = len(labels)
    n_batches = -(-n // batch_size)
    idx = np.resize(np.arange(n), n_batches * batch_size)
    x, y = images[idx].reshape(n_batches, batch_size, *images.shape[1:]), labels[idx].reshape(n_batches, -1)
    noise_fn = None if noise_type is None or level == 0.0 else get_noise(noise_type)
    out = []
    for draw in range(1 if noise_fn is None else n_draws):
        key = condition_key(seed, noise_type or "clean", level, draw)
        per = []
        for i in range(n_batches):
            xb = x[i] if noise_fn is None else noise_fn(jax.random.fold_in(key, i), x[i], jax.numpy.float32(level))
            per.append(per_example_metrics(_linear_forward(variables, xb), y[i]))
        out.append({k: np.concatenate([np.asarray(p[k]) for p in per])[:n] for k in METRIC_NAMES})
    return {k: np.concatenate([o[k] for o in out]) for k in METRIC_NAMES}


def test_streaming_grid_equals_whole_split_scan_bit_for_bit():
    """The streaming grid (batches prefetched to device, data read once for all conditions)
    gives the per-example values of the whole-split scan (the path before streaming) for
    float32 and uint8 input with a padded last batch: the same noisy images (same keys per
    batch), decisions bit for bit, float metrics to float32 rounding (the per-batch program
    is fused differently from the scan body, which moves the last bit of a softmax)."""
    import jax

    from robust_vision.data.batch import to_unit_float
    from robust_vision.batched import array_batches
    from robust_vision.evaluation.robustness import evaluate_conditions_stream

    rng = np.random.default_rng(0)
    n, k = 37, 5
    images_u8 = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    images = to_unit_float(images_u8)
    labels = rng.integers(0, k, n).astype(np.int32)
    variables = {"w": jax.numpy.asarray(rng.normal(size=(64, k)), jax.numpy.float32),
                 "b": jax.numpy.zeros((k,), jax.numpy.float32)}
    noise_types, levels = ["gaussian", "salt_pepper"], [0.0, 0.3]
    for source in (images, images_u8):
        stream = evaluate_conditions_stream(_linear_forward, variables, array_batches(source, labels, 16),
                                            noise_types=noise_types, levels=levels, seed=3, n_draws=2)
        old = {(None, 0.0): _whole_split(variables, images, labels, None, 0.0, seed=3, n_draws=1)}
        for nt in noise_types:
            old[(nt, 0.3)] = _whole_split(variables, images, labels, nt, 0.3, seed=3, n_draws=2)
        assert set(stream) == set(old)
        for cond, metrics in old.items():
            for name, values in metrics.items():
                assert values.shape == stream[cond][name].shape == ((n if cond[0] is None else 2 * n),)
                if name == "correct":  # decisions: bit for bit
                    np.testing.assert_array_equal(stream[cond][name], values, err_msg=f"{cond} {name}")
                else:  # same ops in a different XLA program (no scan): float32 rounding only
                    np.testing.assert_allclose(stream[cond][name], values, rtol=1e-5, atol=1e-5,
                                               err_msg=f"{cond} {name}")
