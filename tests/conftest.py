"""Shared test fixtures. Multi-device code is tested on CPU with 4 virtual devices; the flag
must be set before JAX is imported, which is why it lives here."""

import atexit
import os
import shutil
import tempfile

# XLA's LLVM backend at optimisation level 0: the suite compiles hundreds of small programs and
# runs each a few times, so compiling is most of its time; level 0 compiles them 35-50% faster
# (the whole suite on 2 idle cores: 10 min 32 s -> 6 min 59 s) and changes results only by
# float rounding. Subprocesses get it too (FAST_COMPILE_FLAG). The tests that assert two programs
# agree bit for bit compile those at XLA's default level (DEFAULT_OPT_LEVEL, compiler_options).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
DEFAULT_OPT_LEVEL = {"xla_backend_optimization_level": 3}  # XLA's default (xla/debug_options_flags.cc)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=1 {FAST_COMPILE_FLAG}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never write the user's persistent compilation cache (~/.cache/robust-vision/jax): the
# session gets its own, removed at exit. Compiling is most of a tiny run's time, and the tests
# build the same programs again and again (every train() call and every subprocess compiles
# its steps afresh), so one session cache, inherited by the subprocesses, saves most of it.
if "ROBUST_VISION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="robust-vision-test-jax-cache-")
    os.environ["ROBUST_VISION_CACHE_DIR"] = _SESSION_CACHE
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from robust_vision.compile_cache import enable_compile_cache_early  # noqa: E402 (does not import JAX)

# JAX is not imported yet: its own environment variables turn the cache on for this process and
# for every subprocess (also those that never reach a robust-vision entry point).
enable_compile_cache_early()

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(run_dir: Path, epochs: int = 2) -> list[str]:
    """Config overrides for a seconds-long training run on 8x8 digits."""
    return [
        "model.features=[8, 16]", "data.image_size=null", f"training.epochs={epochs}",
        "training.batch_size=128", "training.eval_batch_size=256", "training.progress_bar=false",
        f"training.checkpoint_dir={run_dir}", "training.save_every=1",
        "training.write_figures=false",  # no end-of-training figures (tests/test_scripts.py draws them once)
    ]


@pytest.fixture(autouse=True)
def _session_compile_cache():
    """Point JAX back at the session cache before each test: a test of the cache switch
    (tests/test_evaluation.py) turns it off for the process."""
    from robust_vision.compile_cache import enable_compile_cache

    enable_compile_cache()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """ONE tiny trained run (default CNN on 8x8 digits, 3 epochs) shared by the evaluation tests
    of the session; tests read it and write elsewhere."""
    from robust_vision.config import load_config
    from robust_vision.training.trainer import train

    run = tmp_path_factory.mktemp("shared") / "tiny_run"
    train(load_config(None, tiny_overrides(run, epochs=3) + ["training.learning_rate=0.003"]), log=lambda s: None)
    return run


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
