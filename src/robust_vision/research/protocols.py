"""The study's two protocols. Both return tidy per-condition rows with one SNR definition.

**Pattern** (the seed's research code): for each of N digit images (all ten digits, drawn per
seed, ``image_size``^2 grayscale, flattened) a fresh 2-output crossbar W ~ U[0, 0.01) is trained
on that single image with target [1, 0] for ``iterations`` updates (Hebbian eta 0.2, SGD-MSE eta
0.01 by default) and tested on ``n_noisy`` noisy copies of the same image per condition:
SNR = s_target / (s_control + 1e-6), correct = s_target > s_control
(:func:`robust_vision.training.hebbian.pattern_protocol`). Only crossbar methods apply.

**Classification**: a binary task from the bundled digits (class 0 = ``target_digit``, class 1 =
``control_digit``; default 0 vs 1) resized to ``image_size``^2 grayscale with the project's fixed
stratified train/val/test split (``data.split_seed`` 0). Every method trains on the train split
(the backprop models also validate on val) and is evaluated on the test split by
:func:`robust_vision.evaluation.robustness.evaluate_robustness`, with the same noise draws for every
method of a seed. The crossbars enter the evaluator through :func:`crossbar_forward`, whose
"logits" log(s + 1e-6) make the evaluator's SNR exp(logit margin) equal to the crossbar's
s_y / (max_{j!=y} s_j + 1e-6) (DESIGN.md), so SNR and accuracy have one definition for all eight
methods. Backprop models (CNN, linear) are trained by :func:`robust_vision.training.trainer.train`
into ``OUT/runs/classification/seed<S>/<method>/`` and evaluated at their final epoch.

Controlled comparisons: within a seed, every crossbar shares its initial weights and batch
order, every backprop model its initialisation seed and batch order, and every method its
noise draws.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from robust_vision.config import config_from_dict, config_to_dict
from robust_vision.data.images import preprocess
from robust_vision.data.pipeline import data_mesh, replicate
from robust_vision.batched import array_batches
from robust_vision.data.readers import IMAGE_SUFFIXES, DatasetError, decode_image
from robust_vision.data.sources import converted_splits, list_image_files, read_examples
from robust_vision.metrics import degradation_percent, summarize
from robust_vision.evaluation.robustness import evaluate_conditions_stream
from robust_vision.models.crossbar import crossbar_log_scores
from robust_vision.runs.paths import checkpoints_dir, config_file
from robust_vision.research.methods import Method
from robust_vision.research.settings import StudySettings
from robust_vision.training.hebbian import LocalRule, crossbar_scores, pattern_protocol, train_crossbar

__all__ = ["ROW_COLUMNS", "RunRecord", "StudyError", "backprop_config", "classification_data", "crossbar_forward",
           "evenly_spaced", "folder_images", "pattern_images", "run_original_mlp", "run_classification_method", "run_pattern_method"]

ROW_COLUMNS = ["protocol", "method_key", "method", "seed", "noise_type", "level", "accuracy", "snr", "snr_median",
               "mean_log_snr", "degradation", "n", "n_nonfinite"]
EVAL_BATCH = 256  # one batch size for every method, so every method sees the same noise draws
# The binary task in memory: split name -> (images float32 (N, S, S, 1) in [0, 1], labels int32 (N,)).
TaskData = dict[str, tuple[np.ndarray, np.ndarray]]


class StudyError(RuntimeError):
    """The study cannot proceed (e.g. an output directory holding different runs)."""


@dataclass
class RunRecord:
    """One method trained and evaluated with one seed."""

    protocol: str
    method: Method
    seed: int
    rows: list[dict]
    weight_stats: Optional[dict] = None  # crossbar methods only
    diverged: bool = False
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    run_dir: Optional[str] = None
    note: str = ""
    extra: dict = field(default_factory=dict)
    # Per resampling unit (a test example, or a pattern image) and row: "correct" (fraction of
    # the unit's noise draws classified correctly) and "log_snr" (mean log-SNR over its draws),
    # each (n_units, len(rows)) float64; None when the scores are undefined (diverged). The
    # bootstrap intervals of the tables resample these units.
    units: Optional[dict] = None


def _units(correct: list[np.ndarray], log_snr: list[np.ndarray]) -> dict:
    """Stack per-row (n_units,) arrays into the RunRecord.units columns."""
    return {"correct": np.stack(correct, axis=1).astype(np.float64),
            "log_snr": np.stack(log_snr, axis=1).astype(np.float64)}


def _with_degradation(rows: list[dict]) -> list[dict]:
    """Add ``degradation`` (% of the clean accuracy of the same noise type; None when clean)."""
    clean = {r["noise_type"]: r["accuracy"] for r in rows if r["level"] == 0.0}
    for r in rows:
        acc0 = clean.get(r["noise_type"])
        r["degradation"] = (None if r["level"] == 0.0 or acc0 is None or not np.isfinite(acc0)
                            else degradation_percent(acc0, r["accuracy"]))
    return rows


# --------------------------------------------------------------------------- pattern


@functools.lru_cache(maxsize=4)
def _digit_pool(image_size: int) -> np.ndarray:
    """All digits of the bundled set's train split, (N, S, S, 1) float32 in [0, 1]."""
    data = config_from_dict({"data": {"dataset_name": "digits", "image_size": [image_size, image_size],
                                      "channels": 1}}).data
    return read_examples(converted_splits(data, ("train",))["train"])[0]


def evenly_spaced(n_files: int, n: int) -> np.ndarray:
    """Positions of ``n`` items evenly spaced over a sorted list of ``n_files``: floor(i * n_files / n).

    (The original code took its images at evenly spaced positions of the sorted file list.)"""
    if n > n_files:
        raise ValueError(f"pattern.n_images: got {n}; only {n_files} images are available")
    return (np.arange(n) * n_files) // n


def folder_images(directory: str | Path, n: int, image_size: int) -> np.ndarray:
    """``n`` images of a folder (any depth, sorted by path) at evenly spaced positions, grayscale,
    resized to ``image_size``^2, (n, S, S, 1) float32 in [0, 1] (uint8 / 255; 16-bit / 65535).

    Listing and decoding are the image_folder layout's (``data.sources`` / ``data.readers``);
    each image goes to gray (ITU-R 601 luma) and is resized as a float image (``preprocess``)."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"--pattern-images: '{root}' is not a directory; pass a folder of PNG/JPEG images")
    files = sorted(list_image_files(root), key=lambda name: Path(name).parts)
    if not files:
        raise DatasetError(f"--pattern-images: no {'/'.join(IMAGE_SUFFIXES)} files found under '{root}'")
    size = (image_size, image_size)
    images = []
    for i in evenly_spaced(len(files), n):
        try:
            image = decode_image((root / files[i]).read_bytes(), unit_float=True)
        except Exception as exc:  # PIL raises several types for truncated / foreign files
            raise DatasetError(f"--pattern-images: cannot decode '{root / files[i]}' ({type(exc).__name__}: {exc}); "
                               "expected a PNG or JPEG image, remove or replace the file") from None
        images.append(preprocess(image, size, 1))
    return np.stack(images).astype(np.float32)


def pattern_images(settings: StudySettings, seed: int) -> np.ndarray:
    """The seed's N pattern images: a seeded draw (without replacement) from all ten digits, or,
    with ``pattern.images_dir``, the folder's images at evenly spaced positions (the same for
    every seed, as the original).

    Returns (n_images, S, S, 1) float32 in [0, 1]."""
    n = settings.pattern.n_images
    if settings.pattern.images_dir is not None:
        return folder_images(settings.pattern.images_dir, n, settings.image_size)
    pool = _digit_pool(settings.image_size)
    if n > len(pool):
        raise ValueError(f"pattern.n_images: got {n}; the digits train split has {len(pool)} images")
    idx = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), 0x1A6E), len(pool)))[:n]
    return pool[np.sort(idx)]


def run_original_mlp(settings: StudySettings, method: Method, seed: int, images: np.ndarray) -> RunRecord:
    """The original loss experiment (:mod:`robust_vision.research.original`) for ``method``'s lambda.

    Rows on the study's noise grid (``n_noisy`` draws per image and condition) use the
    evaluator's SNR with the outputs read as logits (exp of the mean out0 - out1), so they sit
    in the master table beside the crossbars. ``extra`` holds the original protocol's own
    numbers (Gaussian 0.1 .. 0.7, one draw per image, ratio out0 / (out1 + 1e-9)) per image."""
    from robust_vision.research import original as orig
    from robust_vision.training.hebbian import _condition_key

    p = settings.pattern
    x = jnp.asarray(images, jnp.float32)
    init_key, noise_key = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    params = jax.block_until_ready(orig.train_original_mlps(init_key, x.reshape(x.shape[0], -1),
                                                            method.margin_lambda, p.mlp_learning_rate,
                                                            hidden=p.mlp_hidden, iterations=p.mlp_iterations))
    t1 = time.perf_counter()
    rows, unit_correct, unit_log_snr = [], [], []
    for name in settings.noise_types:
        for i, level in enumerate(settings.levels):
            out = np.asarray(orig.evaluate_original(params, x, _condition_key(noise_key, name, i), jnp.float32(level),
                                                    noise_type=name, n_draws=p.n_noisy), np.float64)
            margin = out[..., 0] - out[..., 1]  # (N, n_noisy)
            finite = np.isfinite(margin)
            unit_correct.append((margin > 0).mean(axis=1))
            unit_log_snr.append(np.where(finite.any(axis=1), np.where(finite, margin, 0.0).sum(axis=1)
                                         / np.maximum(finite.sum(axis=1), 1), np.nan))
            rows.append({"protocol": "pattern", "method_key": method.key, "method": method.name, "seed": seed,
                         "noise_type": name, "level": float(level), "accuracy": float((margin > 0).mean()),
                         "snr": float(np.exp(margin[finite].mean())) if finite.any() else float("nan"),
                         "snr_median": float(np.exp(np.median(margin[finite]))) if finite.any() else float("nan"),
                         "mean_log_snr": float(margin[finite].mean()) if finite.any() else float("nan"),
                         "n": int(margin.size), "n_nonfinite": int((~finite).sum())})
    # The original's own evaluation: its levels, one Gaussian draw per image, its ratio.
    orig_key = jax.random.fold_in(noise_key, 0x0816)
    outs = np.stack([np.asarray(orig.evaluate_original(params, x, jax.random.fold_in(orig_key, i), jnp.float32(lvl),
                                                       noise_type="gaussian", n_draws=1), np.float64)[:, 0]
                     for i, lvl in enumerate(orig.ORIGINAL_LEVELS)], axis=1)  # (N, 7, 2)
    extra = {"original_outputs": outs}
    nonfinite = not all(np.isfinite(np.asarray(w)).all() for w in params)
    return RunRecord("pattern", method, seed, _with_degradation(rows), diverged=nonfinite, train_time_s=t1 - t0,
                     eval_time_s=time.perf_counter() - t1, extra=extra,
                     note="non-finite weights" if nonfinite else "", units=_units(unit_correct, unit_log_snr))


def run_pattern_method(settings: StudySettings, method: Method, seed: int, images: np.ndarray) -> RunRecord:
    """Train N single-image crossbars with ``method``'s rule and clip; evaluate the noise grid.

    Every method of a seed uses the same key: the same initial weights and noise draws."""
    if method.family == "mlp":
        return run_original_mlp(settings, method, seed, images)
    p = settings.pattern
    clip = None if method.clip is None else tuple(settings.clip_ranges[method.clip])
    eta = p.hebbian_eta if method.rule == "hebbian" else p.sgd_eta
    t0 = time.perf_counter()
    rule = LocalRule(method.rule, eta, clip, settings.divergence_bound)
    res = pattern_protocol(jax.random.key(seed), images, rule, iterations=p.iterations,
                           noise_types=settings.noise_types, levels=settings.levels, n_noisy=p.n_noisy, num_outputs=2)
    elapsed = time.perf_counter() - t0
    rows = []
    for r in res["rows"]:
        snr = r["snr"]
        rows.append({"protocol": "pattern", "method_key": method.key, "method": method.name, "seed": seed,
                     "noise_type": r["noise_type"], "level": float(r["level"]), "accuracy": r["accuracy"],
                     "snr": snr, "snr_median": r["snr_median"],
                     "mean_log_snr": float(np.log(snr)) if np.isfinite(snr) and snr > 0 else float("nan"),
                     "n": r["n"], "n_nonfinite": r["n_nonfinite"]})
    stats = {**res["weight_stats"], "n_models": res["n_images"], "n_diverged_models": res["n_diverged"]}
    units = _units([u["accuracy"] for u in res["per_image"]], [u["log_snr"] for u in res["per_image"]])
    return RunRecord("pattern", method, seed, _with_degradation(rows), weight_stats=stats,
                     diverged=res["n_diverged"] > 0, train_time_s=elapsed, units=units,
                     note=f"{res['n_diverged']}/{res['n_images']} single-image models diverged" if res["n_diverged"]
                     else "")


# --------------------------------------------------------------------------- classification


def classification_data_section(settings: StudySettings) -> dict:
    """The ``data`` config section of the binary task (also written into every run's config)."""
    c = settings.classification
    return {"dataset_name": "digits", "image_size": [settings.image_size, settings.image_size], "channels": 1,
            "classes": [c.target_digit, c.control_digit]}


def classification_data(settings: StudySettings) -> TaskData:
    """The binary digits task (train, val, test in memory): labels 0 = target digit, 1 = control digit."""
    data = config_from_dict({"data": classification_data_section(settings)}).data
    return {name: read_examples(source) for name, source in converted_splits(data).items()}


def crossbar_forward(W: jax.Array, images: jax.Array) -> jax.Array:
    """Evaluator forward of a crossbar: images (B, H, W, C) -> log(max(W^T x, 0) + 1e-6) (B, K).

    Its logit margin is the crossbar's log-SNR, its argmax the crossbar's decision (see
    :func:`robust_vision.models.crossbar.crossbar_log_scores`). Module-level, so every crossbar
    shares one compiled evaluator per noise type."""
    return crossbar_log_scores(crossbar_scores(W, images))


def _eval_rows(method: Method, seed: int, result_rows: list[dict]) -> list[dict]:
    return _with_degradation([{
        "protocol": "classification", "method_key": method.key, "method": method.name, "seed": seed,
        "noise_type": r["noise_type"], "level": float(r["level"]), "accuracy": r["accuracy"], "snr": r["snr"],
        "snr_median": r["snr_median"], "mean_log_snr": r["margin"], "n": r["n_images"] * r["n_draws"],
        "n_nonfinite": None} for r in result_rows])


def _nan_rows(settings: StudySettings, method: Method, seed: int, *, accuracy: float = float("nan"),
              n: int = 0) -> list[dict]:
    """Rows of a model without defined scores (diverged): SNR nan, ``accuracy`` as given."""
    nan = float("nan")
    return _with_degradation([
        {"protocol": "classification", "method_key": method.key, "method": method.name, "seed": seed,
         "noise_type": nt, "level": float(lvl), "accuracy": accuracy, "snr": nan, "snr_median": nan,
         "mean_log_snr": nan, "n": n, "n_nonfinite": n} for nt in settings.noise_types for lvl in settings.levels])


def _evaluate(settings: StudySettings, forward: Callable, variables: Any, dataset: TaskData, method: Method,
              seed: int) -> tuple[list[dict], dict]:
    """Rows of the noise grid (as evaluate_robustness) and the per-example units of each row.

    evaluate_conditions_stream is the evaluator's own per-example pass; the rows are its
    ``summarize`` reductions, so they equal evaluate_robustness's rows number for number."""
    n_draws = settings.classification.n_draws
    per_cond = evaluate_conditions_stream(forward, replicate(data_mesh(), variables),
                                          array_batches(*dataset["test"], EVAL_BATCH),
                                          noise_types=list(settings.noise_types), levels=list(settings.levels),
                                          seed=seed, n_draws=n_draws)
    n = len(dataset["test"][1])
    rows, unit_correct, unit_log_snr = [], [], []
    for noise_type in settings.noise_types:
        for level in settings.levels:
            clean = level == 0.0
            pe = per_cond[(None, 0.0) if clean else (noise_type, float(level))]
            s = summarize(pe)
            rows.append({"noise_type": noise_type, "level": float(level), "accuracy": s["accuracy"],
                         "snr": s["snr"], "snr_median": s["snr_median"], "margin": s["margin"], "n_images": n,
                         "n_draws": 1 if clean else n_draws})
            draws = 1 if clean else n_draws  # per-example arrays are draw-major: (draws * N,)
            unit_correct.append(np.asarray(pe["correct"], np.float64).reshape(draws, n).mean(axis=0))
            unit_log_snr.append(np.asarray(pe["margin"], np.float64).reshape(draws, n).mean(axis=0))
    return _eval_rows(method, seed, rows), _units(unit_correct, unit_log_snr)


def backprop_config(settings: StudySettings, method: Method, seed: int, run_dir: Path) -> dict:
    """The training config (as a raw mapping) of a CNN / linear method."""
    c = settings.classification.cnn
    model = ({"name": "cnn", "features": list(c.features), "dropout_rate": c.dropout_rate}
             if method.family == "cnn" else {"name": "linear", "hidden_units": [], "dropout_rate": 0.0})
    training = {"seed": seed, "epochs": c.epochs, "batch_size": c.batch_size, "eval_batch_size": EVAL_BATCH,
                "optimizer": "adam", "learning_rate": c.learning_rate, "loss_type": method.loss_type,
                # EMA off: with a few hundred steps a 0.99 average would still be mostly the initial weights.
                "ema_enabled": False, "progress_bar": False, "checkpoint_dir": str(run_dir),
                "save_every": c.epochs}
    if method.loss_type == "margin":
        training["margin_lambda"] = float(method.margin_lambda)
    return {"metadata": {"study": "robust-vision-research", "method": method.name, "seed": seed},
            "model": model, "data": classification_data_section(settings), "training": training,
            "evaluation": {"noise_types": list(settings.noise_types), "noise_levels": list(settings.levels),
                           "seed": seed, "n_draws": settings.classification.n_draws}}


def _train_or_reuse(cfg, *, fresh: bool, log: Callable[[str], None]) -> str:
    """Train ``cfg``'s run, reuse it when complete with the same config, resume it when partial.

    Returns "trained", "resumed" or "reused". A run directory with a *different* config is
    removed with ``fresh`` and otherwise refused (nothing is overwritten silently)."""
    from robust_vision.preflight import check_memory
    from robust_vision.runs.resume import run_finished
    from robust_vision.training.trainer import train

    run_dir = Path(cfg.training.checkpoint_dir)
    wanted = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    saved_path = config_file(run_dir)
    same = saved_path.is_file() and yaml.safe_load(saved_path.read_text()) == wanted
    if same and run_finished(run_dir, cfg):
        return "reused"
    check_memory(cfg)
    if same:
        train(cfg, resume=True, log=log)
        return "resumed"
    if run_dir.exists():
        if not fresh:
            raise StudyError(f"{run_dir} holds a run with other settings; use a new --output directory or pass "
                             "--fresh to retrain it (that removes the old run directory)")
        shutil.rmtree(run_dir)
    train(cfg, log=log)
    return "trained"


_FORWARDS: dict[Any, Callable] = {}


def _shared_forward(parts) -> Callable:
    """One forward function per model structure (GraphDef), so models that differ only in their
    weights share the evaluator's compiled programs instead of compiling once each."""
    if parts.eval_graph not in _FORWARDS:
        from robust_vision.models.state import make_logits_fn

        logits = make_logits_fn(parts)
        _FORWARDS[parts.eval_graph] = lambda variables, images: logits(variables[0], variables[1], images)
    return _FORWARDS[parts.eval_graph]


def run_classification_method(settings: StudySettings, method: Method, seed: int, dataset: TaskData, out_dir: Path,
                              *, fresh: bool = False, log: Callable[[str], None] = lambda s: None) -> RunRecord:
    """Train ``method`` on the train split and evaluate it on the test split's noise grid."""
    c = settings.classification
    if method.family == "crossbar":
        clip = None if method.clip is None else tuple(settings.clip_ranges[method.clip])
        eta = c.hebbian_eta if method.rule == "hebbian" else c.sgd_eta
        t0 = time.perf_counter()
        # Same key for every crossbar of a seed: same initial weights and batch order.
        train_images, train_labels = dataset["train"]
        W, stats = train_crossbar(jax.random.key(seed), train_images, train_labels,
                                  LocalRule(method.rule, eta, clip, settings.divergence_bound),
                                  epochs=c.crossbar_epochs, batch_size=c.crossbar_batch_size,
                                  num_classes=2)  # the binary task: target vs control
        W = jax.block_until_ready(W)
        t1 = time.perf_counter()
        note = ""
        if stats["n_finite"] < stats["n"]:
            # A non-finite entry makes its whole output line nan for every input (nan * 0 = nan), so
            # every score is nan: no SNR, and every decision counts as wrong, as in
            # hebbian.crossbar_accuracy. Nothing to evaluate.
            n_test = len(dataset["test"][1])
            rows = _nan_rows(settings, method, seed, accuracy=0.0, n=n_test * c.n_draws)
            note = "non-finite weights: every score nan, every decision counted wrong"
            zeros = np.zeros(n_test)
            units = _units([zeros] * len(rows), [zeros + np.nan] * len(rows))
        else:
            rows, units = _evaluate(settings, crossbar_forward, W, dataset, method, seed)
        return RunRecord("classification", method, seed, rows, weight_stats=stats, diverged=bool(stats["diverged"]),
                         train_time_s=t1 - t0, eval_time_s=time.perf_counter() - t1, note=note, units=units)

    from robust_vision.runs.loading import load_trained_model
    from robust_vision.runs.resume import TrainingError

    run_dir = Path(out_dir) / "runs" / "classification" / f"seed{seed}" / method.key
    cfg = config_from_dict(backprop_config(settings, method, seed, run_dir))
    t0 = time.perf_counter()
    try:
        how = _train_or_reuse(cfg, fresh=fresh, log=log)
    except TrainingError as exc:  # a diverged backprop run is an outcome, not a crash
        return RunRecord("classification", method, seed, _nan_rows(settings, method, seed), diverged=True,
                         train_time_s=time.perf_counter() - t0, run_dir=str(run_dir), note=f"training failed: {exc}")
    t1 = time.perf_counter()
    # The final epoch (checkpoints/epochs holds the latest), not the best-val-accuracy epoch:
    # every method is compared after the same number of epochs.
    model = load_trained_model(checkpoints_dir(run_dir) / "epochs", name=method.name)
    rows, units = _evaluate(settings, _shared_forward(model.parts), model.variables, dataset, method, seed)
    return RunRecord("classification", method, seed, rows, train_time_s=t1 - t0, units=units,
                     eval_time_s=time.perf_counter() - t1, run_dir=str(run_dir), note="" if how == "trained" else how)
