"""Real data, end to end: a few hundred images of the shared CIFAR-10 (JPEG q75) zips through
robust-vision-train (1 epoch) -> robust-vision-eval --data on a slice of the test split (noise
grid + AutoAttack on 32 images with reduced iterations) -> figures and the RobustBench card.

Skipped when ``../shared/data/cifar10_jpeg`` (relative to the repository) is absent."""

import csv
import json
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from robust_vision.cli import eval_main, train_main

DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10_jpeg"
pytestmark = pytest.mark.skipif(not (DATA / "train.zip").is_file() or not (DATA / "test.zip").is_file(),
                                reason="the shared CIFAR-10 zips (../shared/data/cifar10_jpeg/{train,test}.zip "
                                       "from the repository root) are absent on this machine")
PER_CLASS = 50  # test images per class in the evaluated slice (500 images)


def _test_slice(path: Path) -> Path:
    """A zip of the first PER_CLASS test images of every class (the shared file's layout)."""
    with zipfile.ZipFile(DATA / "test.zip") as src, zipfile.ZipFile(path, "w") as dst:
        taken: dict[str, int] = {}
        for name in sorted(src.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and name.endswith(".jpg") and taken.get(parts[1], 0) < PER_CLASS:
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                dst.writestr(name, src.read(name))
    assert len(taken) == 10 and set(taken.values()) == {PER_CLASS}
    return path


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_cifar10_zips_train_eval_autoattack_figures(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "eval"
    train_args = ["--config", str(REPO_ROOT / "configs/cifar10/standard_preact_resnet18.yaml"), "--run-dir", str(run),
                  "--no-progress", "--override", f"data.data_dir={DATA / 'train.zip'}"]
    for o in ("model.name=cnn", "model.features=[32, 64]", "model.dropout_rate=0.0", "data.max_train_examples=1500",
              "data.val_fraction=0.004", "training.epochs=1", "training.batch_size=32", "training.optimizer=adam",
              "training.learning_rate=0.002", "training.lr_schedule=constant", "training.weight_decay=0",
              "training.augment_crop_padding=0", "training.write_figures=false"):
        train_args += ["--override", o]
    assert train_main(train_args) == 0
    log = capsys.readouterr().out
    assert "1500 train / 200 val" in log and "train.zip" in log
    assert len(_rows(run / "metrics.csv")) == 1

    eval_args = ["--checkpoint", str(run), "--data", str(_test_slice(tmp_path / "test_slice.zip")),
                 "--output", str(out), "--noise-types", "gaussian", "--levels", "0", "0.2",
                 "--attacks", "autoattack", "--eps", "8/255", "--attack-steps", "5", "--attack-max-examples", "32",
                 "--card", "authors=A. Tester", "--card", "additional_data=false",
                 "--parts", "grid", "--format", "png", "--dpi", "40", "--quiet"]
    assert eval_main(eval_args) == 0
    grid = _rows(out / "robustness_results.csv")
    assert [(r["noise_type"], float(r["level"])) for r in grid] == [("gaussian", 0.0), ("gaussian", 0.2)]
    clean = float(grid[0]["accuracy"])
    # Chance is 0.1: P(accuracy > 0.15 on 500 images | chance) ~ 1e-4 (binomial, 3.7 standard deviations).
    assert clean > 0.15, f"clean accuracy {clean} on 500 test images is not above chance (0.1)"
    attacks = _rows(out / "attack_results.csv")
    assert [float(r["eps"]) for r in attacks if r["attack"] == "autoattack"] == [pytest.approx(8 / 255)]
    card = json.loads((out / "autoattack.json").read_text())
    assert (card["dataset"], card["eps"], card["threat_model"], card["authors"]) == ("cifar10", "8/255", "Linf",
                                                                                      "A. Tester")
    assert card["additional_data"] is False and card["link"] is None and card["reported"] is None
    assert float(card["autoattack_acc"]) <= float(card["clean_acc"]) <= 100.0
    payload = json.loads((out / "results.json").read_text())
    assert payload["n_images"] == 10 * PER_CLASS and payload["suite"]["attacks"]["n_examples"] == 32
    assert (out / "plots" / "robustness_accuracy.png").is_file() and (out / "plots" / "attack_accuracy.png").is_file()
