"""Shared test fixtures. Multi-device code is tested on CPU with 4 virtual devices; the flag
must be set before JAX is imported, which is why it lives here."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never write the user's persistent compilation cache (~/.cache/robust-vision/jax).
os.environ.setdefault("ROBUST_VISION_CACHE_DIR", "off")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(run_dir: Path, epochs: int = 2) -> list[str]:
    """Config overrides for a seconds-long training run on 8x8 digits."""
    return [
        "model.features=[8, 16]", "data.image_size=null", f"training.epochs={epochs}",
        "training.batch_size=128", "training.eval_batch_size=256", "training.progress_bar=false",
        f"training.checkpoint_dir={run_dir}", "training.save_every=1",
        "training.write_figures=false",  # no end-of-training figures (tests/test_scripts.py draws them once)
    ]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
