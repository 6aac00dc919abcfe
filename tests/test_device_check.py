"""benchmarks/device_check.py --smoke: the accelerator check's whole code path (prepare, Fast-AT
training through the trainer, AutoAttack per stage, the PyTorch step, the input pipeline) at toy
size on CPU, on a generated CIFAR-like zip pair."""

import importlib.util
import json

from conftest import REPO_ROOT


def _device_check():
    spec = importlib.util.spec_from_file_location("device_check", REPO_ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_smoke_writes_one_table_and_one_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # --smoke sets it; restored after the test
    out = tmp_path / "device_check.json"
    assert _device_check().main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = capsys.readouterr().out
    for row in ("(a) train images/s", "(b)   after apgd-ce", "(b)   after square", "(c) ", "(d) pipeline images/s"):
        assert row in text, row
    result = json.loads(out.read_text())
    train, aa = result["train"], result["autoattack"]
    assert result["smoke"] and result["device"].startswith("cpu")
    assert result["prepare"]["splits"]["train"] + result["prepare"]["splits"]["val"] == 80  # 10 classes x 8 images
    assert train["epochs"] == 1 and train["n_train"] == result["prepare"]["splits"]["train"]
    assert train["images_per_s"] > 0 and train["wall_s"] > 0 and 0 <= train["compile_s_cold"] <= train["wall_s"]
    assert 0.0 <= train["val_pgd10_accuracy"] <= 1.0
    assert [s["attack"] for s in aa["stages"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["n_examples"] == 16 and aa["eps"] == "8/255"
    assert aa["robust_accuracy"] <= aa["clean_accuracy"] and all(s["wall_s"] >= 0 for s in aa["stages"])
    assert sum(s["wall_s"] for s in aa["stages"]) <= aa["wall_s"]
    assert result["pipeline"]["images_per_s"] > 0
    torch = result["torch"]
    assert "note" in torch or torch["eager_images_per_s"] > 0
