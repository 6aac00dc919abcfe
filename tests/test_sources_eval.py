"""robust-vision-eval --data: a whole archive evaluated as the checkpoint's input; published corruption sets."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from robust_vision.cli import eval_main
from robust_vision.config import load_config
from robust_vision.training.trainer import train

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("srcev") / "run"
    train(load_config(None, tiny_overrides(run, epochs=1) + ["data.max_train_examples=128"]), log=lambda s: None)
    return run


def test_eval_data_zip_with_only_test_evaluates_every_image(digits_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    archive = tmp_path / "only_test.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(23):  # 16x16 RGB PNGs: resized to 8x8 and converted to gray as the checkpoint's input
            img = np.repeat(np.kron(digits.images[i] * 255 / 16, np.ones((2, 2)))[..., None], 3, -1).astype(np.uint8)
            path = tmp_path / f"{i}.png"
            Image.fromarray(img).save(path)
            z.write(path, f"test/{digits.target[i]}/{i}.png")
    # every class folder must exist for 10 classes
    with zipfile.ZipFile(archive, "a") as z:
        for c in range(10):
            if not any(n.startswith(f"test/{c}/") for n in z.namelist()):
                z.write(tmp_path / "0.png", f"test/{c}/extra.png")
    n_images = len(zipfile.ZipFile(archive).namelist())
    out = tmp_path / "out"
    args = ["--checkpoint", str(digits_run), "--data", str(archive), "--output", str(out), "--no-plots",
            "--levels", "0", "--noise-types", "gaussian", "--n-draws", "1", "--no-calibration"]
    assert eval_main(args) == 0
    assert f"Evaluation data (test): {n_images} images" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["n_images"] == n_images
    # no train split in the archive: one-line error, exit 2, nothing written
    args2 = ["--checkpoint", str(digits_run), "--data", str(archive), "--output", str(tmp_path / "o2"), "--no-plots",
             "--split", "train"]
    assert eval_main(args2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no train split" in err[0] and not (tmp_path / "o2").exists()


def test_published_cifar10_c_table(digits_run, tmp_path):
    from robust_vision.evaluation.parts.published import published_corruption_errors
    from robust_vision.runs.loading import load_trained_model
    from robust_vision.evaluation.parts.corruptions import corruption_summary
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = 12
    clean = np.rint(np.repeat(digits.images[:n, ..., None] * 255 / 16, 3, -1)).astype(np.uint8)
    np.save(tmp_path / "labels.npy", np.tile(digits.target[:n], 5))
    np.save(tmp_path / "gaussian_noise.npy", np.concatenate([clean] * 5))
    np.save(tmp_path / "contrast.npy", np.concatenate([np.zeros_like(clean)] * 5))
    model = load_trained_model(str(digits_run))
    errors = published_corruption_errors(model.logits_fn(), str(tmp_path), "cifar10-c", model.input_shape,
                                         model.num_classes, model_name="m", batch_size=8)
    assert errors.corruptions == ["contrast", "gaussian_noise"] and errors.severities == [1, 2, 3, 4, 5]
    # severity copies of the same images give the same error; the error is an exact multiple of 1/n
    same = {errors.errors[("gaussian_noise", s)] for s in range(1, 6)}
    assert len(same) == 1 and round(same.pop() * n, 9) % 1 == 0
    rows, aggregate = corruption_summary(errors)
    assert [r["corruption"] for r in rows] == ["contrast", "gaussian_noise"] and aggregate["mce"] is None


def test_eval_cli_published_cifar10_c_writes_the_corruption_tables(digits_run, tmp_path, capsys):
    """`robust-vision-eval --suite cifar10-c DIR` evaluates the published files only (no noise grid)
    and writes the generated suite's tables: identical images at every severity give one error."""
    import csv

    from sklearn.datasets import load_digits

    digits = load_digits()
    n = 12
    clean = np.rint(digits.images[:n, ..., None] * 255 / 16).astype(np.uint8)  # 8x8 gray, the run's input
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(digits.target[:n], 5))
    np.save(folder / "gaussian_noise.npy", np.concatenate([clean] * 5))
    out = tmp_path / "out"
    assert eval_main(["--checkpoint", str(digits_run), "--output", str(out), "--no-plots", "--quiet",
                      "--suite", "cifar10-c", str(folder)]) == 0
    assert not (out / "robustness_results.csv").exists()  # only the part asked for ran
    with (out / "corruption_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["corruption"], int(r["severity"])) for r in rows] == [("gaussian_noise", s) for s in range(1, 6)]
    assert len({r["error"] for r in rows}) == 1 and all(int(r["n"]) == n for r in rows)
    suite = json.loads((out / "results.json").read_text())["suite"]["corruptions"]
    assert suite["suite"] == "cifar10-c" and suite["suite_data"] == str(folder)
    # three words after --suite: one-line error, exit 2, nothing written
    assert eval_main(["--checkpoint", str(digits_run), "--output", str(tmp_path / "o2"), "--suite", "a", "b",
                      "c"]) == 2
    assert "--suite" in capsys.readouterr().err and not (tmp_path / "o2").exists()
