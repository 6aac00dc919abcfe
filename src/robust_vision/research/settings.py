"""Settings of the decomposition study (``robust-vision-research run``), validated like a config.

A study file (``configs/research/study.yaml``) is YAML with the keys of :class:`StudySettings`;
every key is checked by the project's config machinery (unknown key, wrong type or a value out
of range -> :class:`robust_vision.config.ConfigError` naming the key). The built-in defaults
equal ``configs/research/study.yaml``; ``quick`` holds dotted overrides applied by ``--quick``
(``seeds: 2`` etc.) and ``--set KEY=VALUE`` sets any key afterwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from robust_vision.config import ConfigError, build_section, config_field, parse_override

__all__ = ["ClassificationSettings", "CNNSettings", "PatternSettings", "QUICK", "StudySettings", "load_study",
           "settings_to_dict"]

PROTOCOLS = ("pattern", "classification")

# --quick: a few minutes on 2 CPU cores (measured; see docs/RESEARCH.md). Images stay 64x64;
# the CNN is narrower and trained for fewer epochs, fewer images / seeds / noise draws. The
# learning rate stays 1e-3: at 3e-3 the batch-norm CNN's eval-mode accuracy swung between 50% and
# 100% from one epoch to the next (measured), so the final-epoch model was a lottery.
QUICK: dict[str, Any] = {
    "seeds": 2,
    "pattern.n_images": 10,
    "pattern.n_noisy": 5,
    "classification.n_draws": 1,
    "classification.cnn.features": [8, 16],
    "classification.cnn.epochs": 8,
}


@dataclass
class PatternSettings:
    n_images: int = config_field(50, min=1, help="images (one fresh crossbar each), drawn from all ten digits per seed")
    n_noisy: int = config_field(20, min=1, help="noisy copies of its own image each crossbar is tested on, per condition")
    iterations: int = config_field(30, min=1, help="updates on the single image (target [1, 0])")
    hebbian_eta: float = config_field(0.2, min=0.0, min_exclusive=True, help="Hebbian learning rate")
    sgd_eta: float = config_field(0.01, min=0.0, min_exclusive=True, help="SGD-MSE learning rate")
    images_dir: Optional[str] = config_field(
        None, help="folder of images (e.g. the original KITTI depth-map PNGs) instead of the bundled digits: "
                   "grayscale, resized to image_size, n_images taken at evenly spaced positions of the sorted list")
    mlp_iterations: int = config_field(60, min=1, help="original protocol: gradient-descent steps per image MLP")
    mlp_learning_rate: float = config_field(0.001, min=0.0, min_exclusive=True,
                                            help="original protocol: plain gradient-descent step size")
    mlp_hidden: int = config_field(128, min=1, help="original protocol: hidden ReLU units (no biases)")


@dataclass
class CNNSettings:
    features: list[int] = config_field(factory=lambda: [32, 64], help="channels of the CNN stages (the seed's 2-stage CNN)")
    dropout_rate: float = config_field(0.1, min=0.0, max=0.99, help="dropout before the classifier")
    epochs: int = config_field(30, min=1, help="epochs of every backprop model (CNNs and the linear baselines)")
    batch_size: int = config_field(32, min=1, help="minibatch of the backprop models")
    learning_rate: float = config_field(0.001, min=0.0, min_exclusive=True, help="Adam learning rate")


@dataclass
class ClassificationSettings:
    target_digit: int = config_field(0, min=0, max=9, help="digit of class 0 ('target')")
    control_digit: int = config_field(1, min=0, max=9, help="digit of class 1 ('control')")
    crossbar_epochs: int = config_field(30, min=1, help="epochs of the Hebbian / SGD-MSE crossbars")
    crossbar_batch_size: int = config_field(32, min=1, help="minibatch of the crossbars (update = batch mean)")
    hebbian_eta: float = config_field(0.2, min=0.0, min_exclusive=True, help="Hebbian learning rate")
    sgd_eta: float = config_field(0.01, min=0.0, min_exclusive=True, help="SGD-MSE learning rate")
    n_draws: int = config_field(4, min=1, help="noise draws per test image and condition")
    linear_baselines: bool = config_field(True, help="also train linear models with CE / margin-10 (architecture experiment)")
    cnn: CNNSettings = field(default_factory=CNNSettings)


@dataclass
class StudySettings:
    protocols: list[str] = config_field(factory=lambda: list(PROTOCOLS), help="pattern and/or classification")
    seeds: int = config_field(3, min=1, help="seeds 0..N-1 (init, shuffling, image choice, noise)")
    image_size: int = config_field(64, min=4, help="digits resized to image_size x image_size, grayscale")
    noise_types: list[str] = config_field(factory=lambda: ["gaussian", "salt_pepper", "occlusion"], help="noise grid")
    levels: list[float] = config_field(factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                             help="severities; 0.0 = clean (reported separately)")
    clip_ranges: dict[str, list[float]] = config_field(
        factory=lambda: {"loose": [0.0, 2.0], "physical": [0.0, 1.0], "tight": [0.0, 0.5]},
        help="Hebbian clip ranges of the constraints experiment (keys loose, physical, tight)")
    divergence_bound: float = config_field(1e6, min=0.0, min_exclusive=True, help="max|W| beyond this = diverged")
    pattern: PatternSettings = field(default_factory=PatternSettings)
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)
    quick: dict[str, Any] = config_field(factory=lambda: dict(QUICK), help="dotted overrides applied by --quick")


def settings_to_dict(s: StudySettings) -> dict:
    """Plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(s)


def _set(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{p}' is not a section of the study settings")
    node[parts[-1]] = value


def _check(s: StudySettings) -> StudySettings:
    bad = [p for p in s.protocols if p not in PROTOCOLS]
    if bad or not s.protocols:
        raise ConfigError(f"protocols: got {s.protocols!r}; expected some of {', '.join(PROTOCOLS)}")
    if sorted(s.clip_ranges) != ["loose", "physical", "tight"]:
        raise ConfigError(f"clip_ranges: got keys {sorted(s.clip_ranges)}; expected loose, physical, tight")
    for name, rng in s.clip_ranges.items():
        if len(rng) != 2 or not rng[0] < rng[1]:
            raise ConfigError(f"clip_ranges.{name}: got {rng!r}; expected [lo, hi] with lo < hi")
    if any(not 0.0 <= lvl <= 1.0 for lvl in s.levels) or 0.0 not in s.levels or len(s.levels) < 2:
        raise ConfigError(f"levels: got {s.levels!r}; expected severities in [0, 1] including 0.0 (clean) "
                          "and at least one noisy level")
    from robust_vision.corruptions import get_noise

    for name in s.noise_types:
        try:
            get_noise(name)
        except KeyError as exc:
            raise ConfigError(f"noise_types: {exc.args[0]}") from None
    c = s.classification
    if c.target_digit == c.control_digit:
        raise ConfigError("classification.target_digit and control_digit: must differ (a binary task)")
    if len(c.cnn.features) < 1:
        raise ConfigError("classification.cnn.features: list at least one stage width, e.g. [32, 64]")
    return s


def load_study(path: str | Path | None = None, *, quick: bool = False,
               overrides: list[str] | None = None) -> StudySettings:
    """Study settings from ``path`` (or the built-in defaults), then ``--quick``, then overrides.

    Args:
        path: YAML study file, or None for the defaults (= configs/research/study.yaml).
        quick: apply the settings' ``quick`` overrides.
        overrides: ``KEY=VALUE`` strings (dotted keys, YAML values), applied last.

    Raises:
        ConfigError: missing / invalid file, unknown key, bad value.
    """
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study file {str(path)!r} not found; pass an existing YAML file, e.g. "
                              "configs/research/study.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"study file {str(path)!r} is not valid YAML; fix the syntax") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"study file {str(path)!r}: expected a mapping of study keys at the top level")
    base = build_section(StudySettings, raw, "")
    if quick:
        for key, value in base.quick.items():
            _set(raw, key, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set(raw, key, value)
    return _check(build_section(StudySettings, raw, ""))
