"""Train the seed's crossbar with a local rule (Hebbian or SGD-MSE) into a run directory.

``train_local_rule(cfg)`` is the local-rule counterpart of
:func:`robust_vision.training.trainer.train`: same run-directory layout, so
``robust-vision-eval --checkpoint RUN`` restores a Hebbian run like a backprop one::

    RUN/config.yaml          the config exactly as used
    RUN/metrics.csv          one row per epoch, trainer.METRIC_COLUMNS (see below)
    RUN/weight_stats.json    mean/std/min/max/max_abs/diverged of the final W (+ rule, eta, clip)
    RUN/checkpoints/         Orbax, the backprop trainer's state layout
                             {params, model_state, opt_state, ema_params=None, step}

The algorithm is exactly :func:`robust_vision.training.hebbian.train_crossbar` with
``key = jax.random.key(training.seed)``: W0 = init_crossbar(init_key), then
``training.hebbian.iterations`` epochs; each epoch reshuffles (one key per epoch from
``split(shuffle_key, iterations)``) and applies one update per minibatch of
``training.batch_size`` with the batch *mean* of the per-example updates (last partial batch
masked), followed by the clip. It runs epoch by epoch here (one jitted ``lax.scan`` per
epoch) so that every epoch is logged and checkpointed; the final W equals train_crossbar's.

Settings (all from the config): rule = ``training.learning_rule`` (hebbian | sgd_mse);
eta = ``training.hebbian.eta`` (hebbian) or ``training.hebbian.sgd_eta`` (sgd_mse);
clip = ``training.hebbian.clip_range``; divergence bound = ``training.hebbian.divergence_bound``.
The optimizer section is unused by the rules; it only shapes the (never used) ``opt_state``
the checkpoint carries so that the shared loader can restore it.

metrics.csv columns, computed on the whole split after each epoch (the backprop trainer's
train_* columns come from the training pass itself; the crossbar has no dropout or
augmentation, so after-epoch values are the honest ones):

* ``*_accuracy``: argmax_k s_k == y (non-finite scores count as wrong);
* ``*_margin``: mean score margin s_y - max_{j != y} s_j (score units);
* ``*_snr`` / ``val_snr_median``: geometric mean / median of s_y / max_{j != y} s_j with the
  seed's 1e-6 (DESIGN.md; finite values only, nan when none);
* ``*_loss``: 0.5 * ||s - onehot(y)||^2 for sgd_mse (its objective); empty for Hebbian, which
  minimises nothing; ``val_ece``: empty (scores are not probabilities);
* ``learning_rate``: eta; ``epoch_time_s``: wall time of the epoch.

Divergence (non-finite W, or max|W| > divergence_bound) is an outcome: it is logged, written
to weight_stats.json (with the first diverged epoch) and training completes; nothing raises.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_vision.config import Config, ConfigError, config_to_dict, save_config
from robust_vision.metrics import log_snr_from_scores, logit_margin, snr_summary
from robust_vision.io import write_json
from robust_vision.models import create_model
from robust_vision.runs.checkpoint import CheckpointStore, is_better
from robust_vision.training.hebbian import ClipRange, get_rule, init_crossbar, weight_stats
from robust_vision.training.steps import init_train_state, make_optimizer, split_model
from robust_vision.training.trainer import (TrainResult, check_run_request, dataset_for, read_history,
                                            write_history)

__all__ = ["LOCAL_RULES", "local_rule_settings", "train_local_rule"]

LOCAL_RULES = ("hebbian", "sgd_mse")
WEIGHT_STATS_JSON = "weight_stats.json"


def local_rule_settings(cfg: Config) -> dict[str, Any]:
    """The rule, eta, clip range, epochs and divergence bound a config asks for.

    Raises:
        ConfigError: the config does not describe a local-rule crossbar run.
    """
    tcfg = cfg.training
    if tcfg.learning_rule not in LOCAL_RULES:
        raise ConfigError(f"training.learning_rule: got {tcfg.learning_rule!r}; train_local_rule runs "
                          f"{' or '.join(LOCAL_RULES)} (backprop runs use robust_vision.training.trainer.train)")
    if cfg.model.name != "crossbar":
        raise ConfigError(f"model.name: got {cfg.model.name!r}; learning_rule {tcfg.learning_rule!r} trains the "
                          "crossbar model only, set model.name: crossbar (see configs/hebbian.yaml)")
    h = tcfg.hebbian
    clip = None if h.clip_range is None else (float(h.clip_range[0]), float(h.clip_range[1]))
    return {"rule": tcfg.learning_rule, "eta": float(h.eta if tcfg.learning_rule == "hebbian" else h.sgd_eta),
            "clip_range": clip, "epochs": int(h.iterations), "bound": float(h.divergence_bound)}


# --------------------------------------------------------------------------- jitted pieces


@functools.partial(jax.jit, static_argnames=("rule", "batch_size"))
def _epoch(W: jax.Array, x: jax.Array, t: jax.Array, key: jax.Array, eta: jax.Array, clip_range: ClipRange,
           *, rule: str, batch_size: int) -> jax.Array:
    """One shuffled pass of ``rule`` over x (N, D) with targets t (N, K): W (D, K) -> W.

    Same batches as hebbian._train_crossbar: permutation(key) padded to whole batches with
    masked rows; the rule's batch mean is rescaled to a mean over the real rows only."""
    n = x.shape[0]
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    perm = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros((pad,), jnp.int32)])
    valid = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    update = get_rule(rule)

    def body(W: jax.Array, idx_valid: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        idx, ok = idx_valid
        xb, tb = x[idx] * ok[:, None], t[idx] * ok[:, None]  # padded rows are 0: no contribution
        # The rules divide by the batch length; eta * B / count makes it a mean over real rows.
        scale = batch_size / jnp.maximum(ok.sum(), 1.0)
        return update(W, xb, tb, eta * scale, clip_range), None

    W, _ = jax.lax.scan(body, W, (perm.reshape(n_batches, batch_size), valid.reshape(n_batches, batch_size)))
    return W


@jax.jit
def _per_example(W: jax.Array, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """Per-example crossbar metrics of x (N, D), y (N,): each (N,)."""
    s = x @ W  # (N, K) scores
    finite = jnp.all(jnp.isfinite(s), axis=-1)
    target = jax.nn.one_hot(y, s.shape[-1], dtype=jnp.float32)
    return {
        "correct": (jnp.argmax(s, axis=-1) == y) & finite,
        "log_snr": log_snr_from_scores(s, y),
        "margin": logit_margin(s, y),
        "mse": 0.5 * jnp.sum((s - target) ** 2, axis=-1),
    }


def _summary(W: jax.Array, x: jax.Array, y: jax.Array, rule: str) -> dict[str, Optional[float]]:
    """Whole-split reductions (host, float64): accuracy, margin, snr, snr_median, loss."""
    pe = {k: np.asarray(v, np.float64) for k, v in jax.device_get(_per_example(W, x, y)).items()}
    log_snr = pe["log_snr"][np.isfinite(pe["log_snr"])]
    with np.errstate(invalid="ignore", over="ignore"):
        return {
            "accuracy": float(pe["correct"].mean()),
            "margin": float(np.mean(pe["margin"])),
            **snr_summary(log_snr),
            "loss": float(np.mean(pe["mse"])) if rule == "sgd_mse" else None,
        }


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (Orbax's JSON metadata rejects NaN)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- entry point


def train_local_rule(cfg: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the crossbar of ``cfg`` with its local rule and write ``cfg.training.checkpoint_dir``.

    Args:
        cfg: a config with ``model.name: crossbar`` and ``training.learning_rule`` hebbian or
            sgd_mse (e.g. configs/hebbian.yaml).
        resume: continue a run from its latest checkpoint (same config; identical result to an
            uninterrupted run, as every epoch's shuffling key is fixed by the seed).
        log: receives the progress lines.

    Returns:
        TrainResult(run_dir, history (one dict per epoch, METRIC_COLUMNS), best_epoch, best_value).

    Raises:
        ConfigError: not a crossbar / local-rule config, or an unknown best_metric.
        TrainingError: the run directory already holds checkpoints and ``resume`` is False, or
            ``resume`` with a config that differs from the saved one.
    """
    s = local_rule_settings(cfg)
    tcfg = cfg.training
    run_dir, _ = check_run_request(cfg, resume)

    # Whole arrays on purpose: the local rules update a crossbar from the full (N, D) training
    # matrix on device in one jitted scan per epoch, and their data is tiny by construction
    # (flattened digits / small patterns); the backprop trainer streams instead.
    dataset = dataset_for(cfg)
    k = dataset.num_classes
    x_train = jnp.asarray(dataset.train.images.reshape(len(dataset.train), -1))  # (N, D) in [0, 1]
    y_train = jnp.asarray(dataset.train.labels)
    t_train = jax.nn.one_hot(y_train, k, dtype=jnp.float32)  # (N, K) target signal
    x_val = jnp.asarray(dataset.val.images.reshape(len(dataset.val), -1))
    y_val = jnp.asarray(dataset.val.labels)
    n_train, d = x_train.shape
    batch_size = min(int(tcfg.batch_size), n_train)
    steps_per_epoch = -(-n_train // batch_size)

    # The registry's model gives the checkpoint its structure; its weights are replaced below by
    # train_crossbar's initialisation so that both entry points give the same numbers.
    model = create_model(cfg.model, input_shape=dataset.image_shape, num_classes=k, seed=tcfg.seed)
    tx, _ = make_optimizer(tcfg, steps_per_epoch)
    init_key, shuffle_key = jax.random.split(jax.random.key(tcfg.seed))
    epoch_keys = jax.random.split(shuffle_key, s["epochs"])
    W = init_crossbar(init_key, d, k)

    def state_of(W: jax.Array, step: int) -> dict:
        model.W[...] = W
        parts = split_model(model)
        return {**init_train_state(parts, tx, False), "step": jnp.asarray(step, jnp.int32)}

    run_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(run_dir, save_every=tcfg.save_every, best_mode=tcfg.best_mode)
    history: list[dict] = []
    start_epoch, best_value, best_epoch, diverged_epoch = 1, None, None, None
    if resume and store.latest_epoch() is not None:
        state, meta = store.restore(state_of(W, 0))
        nnx.update(model, state["params"])
        W = model.W[...]
        start_epoch = int(meta["epoch"]) + 1
        best_value, best_epoch = meta.get("best_value"), meta.get("best_epoch")
        diverged_epoch = meta.get("diverged_epoch")
        history = read_history(run_dir / "metrics.csv", int(meta["epoch"]))
        log(f"Resuming {run_dir} from epoch {meta['epoch']}")
    elif resume:
        log(f"--resume: no checkpoint in {run_dir}; starting from scratch")
    save_config(cfg, run_dir / "config.yaml")

    clip_text = "none" if s["clip_range"] is None else f"[{s['clip_range'][0]:g}, {s['clip_range'][1]:g}]"
    log(f"Dataset {dataset.name}: {n_train} train / {len(dataset.val)} val / {len(dataset.test)} test, "
        f"images {dataset.image_shape}, {k} classes")
    log(f"Crossbar {d}x{k}, rule {s['rule']}, eta {s['eta']:g}, clip {clip_text}, {s['epochs']} epochs of "
        f"{steps_per_epoch} update(s) (batch {batch_size})")

    eta = jnp.float32(s["eta"])
    for epoch in range(start_epoch, s["epochs"] + 1):
        t0 = time.perf_counter()
        W = _epoch(W, x_train, t_train, epoch_keys[epoch - 1], eta, s["clip_range"], rule=s["rule"],
                   batch_size=batch_size)
        tr = _summary(W, x_train, y_train, s["rule"])
        row: dict[str, Any] = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                               "train_margin": tr["margin"], "train_snr": tr["snr"], "learning_rate": s["eta"]}
        if len(dataset.val):
            va = _summary(W, x_val, y_val, s["rule"])
            row.update(val_loss=va["loss"], val_accuracy=va["accuracy"], val_margin=va["margin"],
                       val_snr=va["snr"], val_snr_median=va["snr_median"], val_ece=None)
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        write_history(run_dir / "metrics.csv", history)
        log(f"Epoch {epoch}/{s['epochs']}  Train Acc: {row['train_accuracy']:.4f}  SNR: {row['train_snr']:.4g}"
            + (f"  Val Acc: {row['val_accuracy']:.4f}  SNR: {row['val_snr']:.4g}" if "val_accuracy" in row else ""))

        stats = weight_stats(W, s["bound"])
        if stats["diverged"] and diverged_epoch is None:
            diverged_epoch = epoch
            log(f"  DIVERGED at epoch {epoch}: max|W| = {stats['max_abs']:.3g}, {stats['n_nan']} NaN, "
                f"{stats['n_posinf'] + stats['n_neginf']} inf entries (bound {s['bound']:g}); training goes on, "
                f"the outcome is recorded in {WEIGHT_STATS_JSON}")

        improved = is_better(row.get(tcfg.best_metric), best_value, tcfg.best_mode)
        if improved:
            best_value, best_epoch = row[tcfg.best_metric], epoch
        if improved or epoch % tcfg.save_every == 0 or epoch == s["epochs"]:
            meta = _clean({"epoch": epoch, "metrics": row, "best_metric": tcfg.best_metric, "best_value": best_value,
                           "best_epoch": best_epoch, "model": config_to_dict(cfg)["model"],
                           "input_shape": list(dataset.image_shape), "num_classes": k,
                           "class_names": list(dataset.class_names), "ema": False,
                           "learning_rule": s["rule"], "outputs": "crossbar_log_scores",
                           "diverged_epoch": diverged_epoch})
            store.save(epoch, state_of(W, epoch * steps_per_epoch), meta, is_best=improved)
    store.close()

    stats = weight_stats(W, s["bound"])
    write_json(run_dir / WEIGHT_STATS_JSON, {
        **stats, "rule": s["rule"], "eta": s["eta"], "clip_range": None if s["clip_range"] is None else list(s["clip_range"]),
        "epochs": s["epochs"], "bound": s["bound"], "diverged_epoch": diverged_epoch,
    })
    verdict = (f"DIVERGED (first at epoch {diverged_epoch})" if stats["diverged"] else "stable")
    log(f"Weights: mean {stats['mean']:.4g}, std {stats['std']:.4g}, range [{stats['min']:.4g}, {stats['max']:.4g}]; "
        f"{verdict}")
    if best_epoch is not None:
        log(f"Best checkpoint saved: epoch {best_epoch}, {tcfg.best_metric}={best_value:.4f}")
    return TrainResult(run_dir=run_dir, history=history, best_epoch=best_epoch, best_value=best_value)
