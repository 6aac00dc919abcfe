import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robust_vision.config import ConfigError, config_to_dict, load_config, parse_override, save_config

# configs/research/study.yaml holds robust-vision-research's study settings, a different schema
# (tested in test_research.py); every other YAML under configs/ is a training config.
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if p.name != "study.yaml")


def test_every_shipped_config_loads():
    assert len(CONFIGS) >= 8
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.training.epochs >= 1, path


def test_seed_config_keys_are_moved_to_their_sections(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump({
        "metadata": {"framework": "robust-vision"},
        "training": {"dataset_name": "digits", "image_size": [32, 32], "checkpoint_every": 5,
                     "margin": 2.0, "margin_weight": 1.0, "loss_type": "combined"}}))
    cfg = load_config(path)
    assert cfg.data.dataset_name == "digits"
    assert cfg.data.image_size == [32, 32]
    assert cfg.training.save_every == 5
    assert cfg.training.margin_lambda == 2.0
    assert cfg.training.loss_weights == {"label_smoothing": 1.0, "margin": 1.0}


@pytest.mark.parametrize("override, fragment", [
    ("training.no_such_key=1", "training.no_such_key: unknown key"),
    ("training.epochs=abc", "training.epochs: got 'abc'; expected an integer"),
    ("training.learning_rate=-1", "training.learning_rate: got -1.0; expected a value in (0, inf]"),
    ("training.optimizer=rmsprop", "expected one of 'adam', 'adamw', 'sgd'"),
    ("training.ema_enabled=maybe", "expected true/false"),
    ("evaluation.noise_levels=[0, 1.5]", "severities in [0, 1]"),
    ("nosection.x=1", "nosection: unknown key"),
])
def test_bad_values_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_override_types_and_square_image_size():
    cfg = load_config(None, ["training.margin_lambda=10", "data.image_size=16", "evaluation.format=png",
                             "evaluation.noise_levels=[0, 0.5]", "training.learning_rate=1e-3"])
    assert cfg.training.margin_lambda == 10.0 and isinstance(cfg.training.margin_lambda, float)
    assert cfg.data.image_size == [16, 16]
    assert cfg.evaluation.format == ["png"]
    assert cfg.evaluation.noise_levels == [0.0, 0.5]
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert parse_override("a.b=") == ("a.b", None)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["training.epochs=3", "model.features=[4, 8]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(cfg)


def test_cli_unknown_key_exits_2_with_one_line(repo_root):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from robust_vision.cli import train_main; sys.exit(train_main())",
         "--config", str(repo_root / "configs/quickstart.yaml"), "--override", "training.no_such_key=1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.no_such_key: unknown key" in lines[0]
