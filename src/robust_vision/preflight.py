"""Checks a run makes before it allocates or imports anything heavy.

Nothing here imports JAX: a user error (a size that cannot fit, a bad flag or evaluation setting)
costs a fraction of a second, not the seconds of the JAX / Orbax imports. The run directory's
lock and disk-full detection live in ``runs/lock.py``.

Memory rule (``check_memory``): backprop training streams its splits through the input
pipeline (``data/pipeline.py``), so host memory holds the batches in flight, not the dataset: a
request whose float32 batches in flight (``BATCHES_IN_FLIGHT`` x (B, H, W, C) plus index, label and
mask) exceed the memory this machine has *available* (``/proc/meminfo`` MemAvailable, else physical
memory) is refused with the estimate. The local-rule trainers (``training.learning_rule`` hebbian /
sgd_mse) hold the whole training set as float32 NHWC arrays (one jitted scan per epoch), so for
them the dataset's float32 size must fit too. Each estimate is a lower bound (model activations
come on top).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from robust_vision.config import Config, DataConfig

# Bytes per batch example besides the image: an int64 index, an int32 label, a float32 mask.
_PER_EXAMPLE_OVERHEAD = 8 + 4 + 4
# Batches a streamed training holds on the host at once: Grain's prefetch buffer (2), the device
# prefetch queue (2, batched.prefetch_to_device) and the batch being consumed.
BATCHES_IN_FLIGHT = 5


class SizeError(ValueError):
    """A requested size whose memory cannot fit on this machine (exit code 2)."""


def available_memory_bytes() -> int:
    """Memory this process may still allocate: MemAvailable of /proc/meminfo, else physical RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def check_memory(cfg: "Config", *, available: Optional[int] = None) -> None:
    """Refuse a dataset or training batch whose float32 size exceeds the available memory.

    Raises :class:`SizeError` with a one-line message that states the estimate and the key to change.
    """
    from robust_vision.data.sources import source_shape  # the source knows its layout and size

    available = available_memory_bytes() if available is None else available
    n, hwc = source_shape(cfg.data)
    if hwc is None:
        return
    image_bytes = 4 * hwc[0] * hwc[1] * hwc[2]
    if n is not None and cfg.training.learning_rule != "backprop":
        need = n * image_bytes  # the local-rule trainers load the full set once, as float32 arrays
        if need > available:
            raise SizeError(f"data.image_size: {n} images of {hwc[0]}x{hwc[1]}x{hwc[2]} float32 need about "
                            f"{_gib(need)} of memory, {_gib(available)} is available; use a smaller "
                            f"data.image_size (or fewer images): training.learning_rule="
                            f"{cfg.training.learning_rule} holds the whole training set")
    batch = cfg.training.batch_size
    need = BATCHES_IN_FLIGHT * batch * (image_bytes + _PER_EXAMPLE_OVERHEAD)
    if need > available:
        hint = f" (the dataset has {n} images)" if n is not None else ""
        raise SizeError(f"training.batch_size: {batch} images of {hwc[0]}x{hwc[1]}x{hwc[2]} float32 need about "
                        f"{_gib(need)} for the {BATCHES_IN_FLIGHT} batches in flight, {_gib(available)} is "
                        f"available; use a smaller training.batch_size{hint}")


# --------------------------------------------------------------------------- user-supplied tables


# --------------------------------------------------------------------------- data sources

CIFAR10_HELP = ("download the python version of CIFAR-10 (cifar-10-python.tar.gz, "
                "https://www.cs.toronto.edu/~kriz/cifar.html), extract it so that "
                "DIR/cifar-10-batches-py/ holds data_batch_1..5 and test_batch, and set data.data_dir: DIR "
                "(or use configs/baseline_digits.yaml, which needs no download)")


def check_data_source(data: "DataConfig") -> None:
    """The dataset files a config names exist (checked before JAX is imported). A missing
    CIFAR-10 says which archive to put where; image folders are checked by
    ``data.sources.check_image_sizes``, other sources by their readers."""
    if data.dataset_name != "cifar10":
        return
    if data.data_dir is None:
        raise ValueError(f"cifar10: data.data_dir is not set; {CIFAR10_HELP}")
    root = Path(data.data_dir).expanduser()
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    if not (folder / "data_batch_1").is_file() or not (folder / "test_batch").is_file():
        raise ValueError(f"cifar10: no CIFAR-10 batches in {data.data_dir} (data.data_dir); {CIFAR10_HELP}")


# --------------------------------------------------------------------------- process-group flags


def check_process_flags(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int],
                        timeout_s: Optional[int] = None) -> None:
    """The values of the distributed flags that were given (``--coordinator``, ``--num-processes``,
    ``--process-id``, ``--coordinator-timeout``), checked before JAX is imported; which of them
    must come together is checked when the group is formed (``distributed.initialize``)."""
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
            raise ValueError(f"--coordinator: got {coordinator!r}; expected HOST:PORT, e.g. 10.0.0.1:1234")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes: got {num_processes}; expected a positive integer")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        expected = f"0 .. {num_processes - 1}" if num_processes is not None else "an integer >= 0"
        raise ValueError(f"--process-id: got {process_id}; expected {expected} (one distinct id per process)")
    if timeout_s is not None and timeout_s < 1:
        raise ValueError(f"--coordinator-timeout: got {timeout_s}; expected seconds >= 1")


# --------------------------------------------------------------------------- bounded evaluation work

def check_attack_combination(attacks: Sequence[str], norm: str) -> None:
    """The attack norm is linf or l2, and no Linf-only attack is asked under l2 (checked before
    JAX is imported; ``evaluation.suite.check_attacks`` adds the attack names)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"attack norm must be linf or l2, got {norm!r}")
    if norm == "l2" and "fgsm" in attacks:
        raise ValueError("fgsm is an Linf attack; drop it from the attack list or use attack norm linf")


# The corruption suites generated on the fly (evaluation.suite.SUITES; tests/test_trust.py keeps
# the two equal); the other suite names are published files, read from ``--suite NAME DIR``.
GENERATED_SUITES = ("imagenet-c", "imagenet-c-all")


def check_suite(suite: str, suite_data: Optional[str]) -> None:
    """A suite without published files (``evaluation.suite_data``) is one that is generated."""
    if suite != "none" and suite_data is None and suite not in GENERATED_SUITES:
        raise ValueError(f"unknown corruption suite {suite!r}; valid suites: {', '.join(GENERATED_SUITES)}")


# autoattack.json's fields a user may fill (--card KEY=VALUE); the others are measured.
CARD_USER_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "venue", "reported",
                  "architecture", "dataset", "footnote")


def parse_card(items: Sequence[str] | None) -> dict[str, Any]:
    """``["authors=A, B", "additional_data=false", ...]`` -> card fields. Keys: CARD_USER_KEYS;
    ``additional_data`` is true/false, ``number_forward_passes`` a positive integer, the rest text.
    A bad item raises ValueError with a one-line message."""
    card: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in CARD_USER_KEYS:
            raise ValueError(f"--card {item!r}: expected KEY=VALUE with KEY one of {', '.join(CARD_USER_KEYS)}")
        if key == "additional_data":
            if value.strip().lower() not in ("true", "false"):
                raise ValueError(f"--card {item!r}: additional_data is true or false")
            card[key] = value.strip().lower() == "true"
        elif key == "number_forward_passes":
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"--card {item!r}: number_forward_passes is a positive integer")
            card[key] = int(value)
        else:
            card[key] = value
    return card


# The architectures robust-vision-import converts weights of (runs.import_weights.IMPORTABLE
# is this tuple; tests/test_trust.py keeps it equal to the registry's WideResNets), named here so
# a misspelt --model fails before JAX is imported.
IMPORTABLE_MODELS = ("preact_resnet18", "wrn-28-10", "wrn-34-10", "wrn-34-20", "wrn-70-16")
# The noise types of the robustness grid (corruptions.noise.NOISES; tests/test_trust.py keeps
# the two equal), named here so a misspelt one fails before JAX is imported.
NOISE_TYPES = ("gaussian", "salt_pepper", "fog", "occlusion")
# Forward passes per evaluated image that a single command may ask for. A CPU laptop does about
# 1e3-1e4 small-model forward passes per second, so each limit is hours of work per image;
# beyond it a typo (an extra zero or three) would run for days or exhaust memory first.
MAX_PASSES_PER_IMAGE = {"grid": 100_000, "attacks": 1_000_000, "certify": 10_000_000}
MAX_ATTACK_STEPS = 100_000


def _too_much(what: str, estimate: float, limit: int, fix: str) -> None:
    if estimate > limit:
        raise SizeError(f"{what} asks for {estimate:.3g} forward passes per image (at most {limit:.0e}); {fix}")


def check_evaluation_work(ecfg) -> None:
    """Values of the evaluation section that are out of range or multiply into unbounded work,
    refused before anything runs, with the estimate: noise types and levels, attack budgets (Linf
    eps in [0, 1]), draws, steps, restarts and queries, certification draws."""
    unknown = [t for t in ecfg.noise_types if t not in NOISE_TYPES]
    if unknown:
        raise ValueError(f"evaluation.noise_types: unknown noise type {unknown[0]!r}; valid types: "
                         f"{', '.join(NOISE_TYPES)} (--noise-types)")
    bad = [v for v in ecfg.noise_levels if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"evaluation.noise_levels: {bad[0]} is outside [0, 1] (severity: Gaussian std, "
                         "salt-and-pepper probability, fog intensity, occlusion area) (--levels)")
    grid = len(ecfg.noise_types) * len(ecfg.noise_levels) * ecfg.n_draws
    _too_much(f"evaluation.n_draws={ecfg.n_draws} x {len(ecfg.noise_types)} noise types x "
              f"{len(ecfg.noise_levels)} levels", grid, MAX_PASSES_PER_IMAGE["grid"], "lower --n-draws")
    if ecfg.attack_norm == "linf":
        bad = [e for e in ecfg.attack_eps if not 0.0 <= e <= 1.0]
        if bad:
            raise ValueError(f"evaluation.attack_eps: {bad[0]} is outside [0, 1]: an Linf budget in pixel units "
                             "of images in [0, 1] (e.g. 8/255 = 0.0314) (--eps)")
    if ecfg.attacks:
        steps = ecfg.attack_steps or 100
        if steps > MAX_ATTACK_STEPS:
            raise SizeError(f"evaluation.attack_steps: {steps} steps x {len(ecfg.attack_eps)} budgets (at most "
                            f"{MAX_ATTACK_STEPS} steps); lower --attack-steps")
        _too_much(f"evaluation.attack_steps={steps} x {len(ecfg.attack_eps)} budgets x "
                  f"{len(ecfg.attacks)} attacks", 2 * steps * len(ecfg.attack_eps) * len(ecfg.attacks),
                  MAX_PASSES_PER_IMAGE["attacks"], "lower --attack-steps or use fewer --eps values")
    if ecfg.certify:
        draws = (ecfg.certify_n0 + ecfg.certify_n) * len(ecfg.certify_sigma)
        _too_much(f"evaluation.certify_n={ecfg.certify_n} + certify_n0={ecfg.certify_n0} draws x "
                  f"{len(ecfg.certify_sigma)} sigmas", draws, MAX_PASSES_PER_IMAGE["certify"],
                  "lower --n / --n0 (Cohen et al. certify with n = 100000)")


# --------------------------------------------------------------------------- activations

# Backpropagation keeps (about) every intermediate of the forward pass for the backward one; the
# estimate below sums them. Below this many times the input batch, activations cannot matter on
# a machine that passed check_memory, and the (tracing) estimate is skipped.
_ACTIVATION_GATE = 1000


def _jaxpr_bytes(jaxpr) -> int:
    """Bytes of every intermediate an (open) jaxpr computes, nested jaxprs included."""
    import numpy as np

    total = 0
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_bytes(inner)
        for var in eqn.outvars:
            aval = getattr(var, "aval", None)
            shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
            if shape is not None and dtype is not None:
                try:
                    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                except TypeError:  # extended dtypes (PRNG keys): negligible
                    pass
    return total


def activations_may_matter(batch_shape: tuple[int, ...], available: Optional[int] = None) -> bool:
    """Whether a float32 batch of ``batch_shape`` is large enough that its activations might not fit
    (else ``check_activation_memory`` skips the trace, and a caller can skip building the model)."""
    available = available_memory_bytes() if available is None else available
    batch_bytes = 4
    for d in batch_shape:
        batch_bytes *= int(d)
    return batch_bytes * _ACTIVATION_GATE >= available


def check_activation_memory(forward, args: tuple, batch_shape: tuple[int, ...], *, key: str = "training.batch_size",
                            available: Optional[int] = None) -> int | None:
    """Refuse a training batch whose forward-pass intermediates (kept for backpropagation; traced
    with ``jax.make_jaxpr``, nothing is computed or compiled) exceed the available memory, with the
    estimate. ``forward(*args, images)``: images (B, H, W, C) float32 -> logits; ``args`` may be
    ShapeDtypeStructs (an ``nnx.eval_shape`` model's parameters). Returns the estimate in bytes,
    or None when the batch is too small for it to matter (not traced)."""
    import jax
    import numpy as np

    available = available_memory_bytes() if available is None else available
    batch_bytes = 4 * int(np.prod(batch_shape, dtype=np.int64))
    if not activations_may_matter(batch_shape, available):
        return None
    need = _jaxpr_bytes(jax.make_jaxpr(forward)(*args, jax.ShapeDtypeStruct(batch_shape, np.float32)).jaxpr)
    if need > available:
        b, h, w, c = batch_shape
        raise SizeError(f"{key}: a batch of {b} images of {h}x{w}x{c} keeps about {_gib(need)} of activations for "
                        f"backpropagation ({_gib(batch_bytes)} of inputs), {_gib(available)} is available; use a "
                        f"smaller {key} or data.image_size")
    return need
