"""Train the seed's crossbar with a local rule (Hebbian or SGD-MSE) into a run directory.

``train_local_rule(cfg)`` is the local-rule counterpart of
:func:`robust_vision.training.trainer.train`: same run-directory layout, so
``robust-vision-eval --checkpoint RUN`` restores a Hebbian run like a backprop one::

    RUN/config.yaml          the config exactly as used
    RUN/metrics.csv          one row per epoch, runs.history.METRIC_COLUMNS (see below)
    RUN/weight_stats.json    mean/std/min/max/max_abs/diverged of the final W (+ rule, eta, clip)
    RUN/checkpoints/         Orbax, the backprop trainer's state layout
                             {params, model_state, opt_state, ema_params=None, step}

The algorithm is exactly :func:`robust_vision.training.hebbian.train_crossbar` with
``key = jax.random.key(training.seed)``: W0 = init_crossbar(init_key), then
``training.hebbian.iterations`` epochs of ``hebbian.crossbar_epoch`` (one key per epoch from
``split(shuffle_key, iterations)``; minibatches of ``training.batch_size``, the batch *mean* of
the per-example updates, then the clip). It runs epoch by epoch here so that every epoch is
logged and checkpointed (``training.loop.RunBook``, as the backprop trainer). The data are read
through ``data.sources`` and materialised once (``read_examples``): the local rules update the
crossbar from the whole (N, D) matrix, and their data are tiny by construction.

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
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_vision.config import Config, ConfigError
from robust_vision.data.sources import RecordSource, read_examples
from robust_vision.metrics import log_snr_from_scores, logit_margin, snr_summary
from robust_vision.io import write_json
from robust_vision.models import create_model
from robust_vision.models.crossbar import init_crossbar
from robust_vision.models.state import split_model
from robust_vision.optim import init_train_state, make_optimizer
from robust_vision.runs.resume import check_run_request, last_epoch
from robust_vision.training.hebbian import LocalRule, crossbar_epoch, weight_stats
from robust_vision.training.loop import RunBook, TrainResult, checkpoint_store, describe_data, training_sources

__all__ = ["LOCAL_RULES", "local_rule_of", "train_local_rule"]

LOCAL_RULES = ("hebbian", "sgd_mse")
WEIGHT_STATS_JSON = "weight_stats.json"


def local_rule_of(cfg: Config) -> LocalRule:
    """The rule, eta, clip range and divergence bound a config asks for (its epochs are
    ``runs.resume.last_epoch``: ``training.hebbian.iterations``).

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
    eta = h.eta if tcfg.learning_rule == "hebbian" else h.sgd_eta
    return LocalRule(tcfg.learning_rule, eta, clip, h.divergence_bound).resolved()


# --------------------------------------------------------------------------- jitted pieces


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


@dataclass(frozen=True)
class _Split:
    """A split materialised for the crossbar: x (N, D) float32 in [0, 1], labels y (N,) int32."""

    x: jax.Array
    y: jax.Array

    @classmethod
    def read(cls, source: RecordSource) -> "_Split":
        images, labels = read_examples(source)
        return cls(jnp.asarray(images.reshape(len(images), -1)), jnp.asarray(labels))


@dataclass
class _LocalLoop:
    """The fixed pieces of a local-rule run's epochs, and the first diverged epoch (carried over)."""

    cfg: Config
    rule: LocalRule
    epochs: int
    train: _Split
    val: _Split
    book: RunBook
    batch_size: int
    state_of: Callable[[jax.Array, int], dict]
    log: Callable[[str], None]
    diverged_epoch: int | None = None

    def run_epoch(self, W: jax.Array, key: jax.Array, epoch: int) -> jax.Array:
        """One pass of the rule (``hebbian.crossbar_epoch``), its metrics.csv row, and a checkpoint
        when the epoch is the best, a ``save_every`` one or the last."""
        rule, tcfg = self.rule, self.cfg.training
        t0 = time.perf_counter()
        W = crossbar_epoch(W, self.train.x, self.targets, key, jnp.float32(rule.eta), rule.clip_range, rule=rule.name,
                           batch_size=self.batch_size)
        tr = _summary(W, self.train.x, self.train.y, rule.name)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                               "train_margin": tr["margin"], "train_snr": tr["snr"], "learning_rate": rule.eta}
        if len(self.val.y):
            va = _summary(W, self.val.x, self.val.y, rule.name)
            row.update(val_loss=va["loss"], val_accuracy=va["accuracy"], val_margin=va["margin"],
                       val_snr=va["snr"], val_snr_median=va["snr_median"], val_ece=None)
        row["epoch_time_s"] = time.perf_counter() - t0
        improved = self.book.record(row)
        val = f"  Val Acc: {row['val_accuracy']:.4f}  SNR: {row['val_snr']:.4g}" if "val_accuracy" in row else ""
        self.log(f"Epoch {epoch}/{self.epochs}  Train Acc: {row['train_accuracy']:.4f}  "
                 f"SNR: {row['train_snr']:.4g}{val}")
        self._note_divergence(W, epoch)
        if improved or epoch % tcfg.save_every == 0 or epoch == self.epochs:
            steps = -(-len(self.train.y) // self.batch_size)
            self.book.save(self.state_of(W, epoch * steps), improved, diverged_epoch=self.diverged_epoch)
        return W

    @functools.cached_property
    def targets(self) -> jax.Array:
        """One-hot targets of the train split (N, K), built once for every epoch."""
        return jax.nn.one_hot(self.train.y, self.book.describe["num_classes"], dtype=jnp.float32)

    def _note_divergence(self, W: jax.Array, epoch: int) -> None:
        stats = weight_stats(W, self.rule.bound)
        if stats["diverged"] and self.diverged_epoch is None:
            self.diverged_epoch = epoch
            self.log(f"  DIVERGED at epoch {epoch}: max|W| = {stats['max_abs']:.3g}, {stats['n_nan']} NaN, "
                     f"{stats['n_posinf'] + stats['n_neginf']} inf entries (bound {self.rule.bound:g}); "
                     f"training goes on, the outcome is recorded in {WEIGHT_STATS_JSON}")


# --------------------------------------------------------------------------- entry point


def train_local_rule(cfg: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the crossbar of ``cfg`` with its local rule and write ``cfg.training.checkpoint_dir``.

    ``cfg``: ``model.name: crossbar`` and ``training.learning_rule`` hebbian or sgd_mse (e.g.
    configs/hebbian.yaml), else ConfigError. ``resume`` continues from the latest checkpoint that
    verifies (same config, else TrainingError; the same result as an uninterrupted run, as every
    epoch's shuffling key is fixed by the seed). Returns the TrainResult (one history row per epoch).
    """
    rule, epochs = local_rule_of(cfg), last_epoch(cfg)
    tcfg = cfg.training
    run_dir, _ = check_run_request(cfg, resume)
    data = training_sources(cfg)
    train, val = _Split.read(data.train), _Split.read(data.val)
    n_train, d = train.x.shape
    batch_size = min(int(tcfg.batch_size), n_train)
    steps_per_epoch = -(-n_train // batch_size)
    # The registry's model gives the checkpoint its structure; its weights are replaced by
    # train_crossbar's initialisation so that both entry points give the same numbers.
    model = create_model(cfg.model, input_shape=data.image_shape, num_classes=data.num_classes, seed=tcfg.seed)
    tx, _ = make_optimizer(tcfg, steps_per_epoch)

    def state_of(W: jax.Array, step: int) -> dict:
        model.W[...] = W
        return {**init_train_state(split_model(model), tx, False), "step": jnp.asarray(step, jnp.int32)}

    init_key, shuffle_key = jax.random.split(jax.random.key(tcfg.seed))
    W = init_crossbar(init_key, d, data.num_classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint_store(run_dir, tcfg) as store:
        describe = describe_data(data, ema=False, learning_rule=rule.name, outputs="crossbar_log_scores")
        loop = _LocalLoop(cfg, rule, epochs, train, val, RunBook(cfg, run_dir, store, describe), batch_size, state_of,
                          log)
        state, meta = loop.book.resume(state_of(W, 0), resume, log)
        if meta:
            nnx.update(model, state["params"])
            W, loop.diverged_epoch = model.W[...], meta.get("diverged_epoch")
        clip = "none" if rule.clip_range is None else f"[{rule.clip_range[0]:g}, {rule.clip_range[1]:g}]"
        log(f"Dataset {data.name}: {n_train} train / {len(val.y)} val (test is not read), images {data.image_shape}, "
            f"{data.num_classes} classes")
        log(f"Crossbar {d}x{data.num_classes}, rule {rule.name}, eta {rule.eta:g}, clip {clip}, {epochs} epochs "
            f"of {steps_per_epoch} update(s) (batch {batch_size})")
        epoch_keys = jax.random.split(shuffle_key, epochs)
        for epoch in range(loop.book.start_epoch, epochs + 1):
            W = loop.run_epoch(W, epoch_keys[epoch - 1], epoch)
    _write_weight_stats(loop, W)
    return loop.book.result()


def _write_weight_stats(loop: _LocalLoop, W: jax.Array) -> None:
    """weight_stats.json of the final W, and the closing log lines."""
    rule, book = loop.rule, loop.book
    stats = weight_stats(W, rule.bound)
    write_json(book.run_dir / WEIGHT_STATS_JSON, {
        **stats, "rule": rule.name, "eta": rule.eta,
        "clip_range": None if rule.clip_range is None else list(rule.clip_range), "epochs": loop.epochs,
        "bound": rule.bound, "diverged_epoch": loop.diverged_epoch,
    })
    verdict = (f"DIVERGED (first at epoch {loop.diverged_epoch})" if stats["diverged"] else "stable")
    loop.log(f"Weights: mean {stats['mean']:.4g}, std {stats['std']:.4g}, range [{stats['min']:.4g}, "
             f"{stats['max']:.4g}]; {verdict}")
    if book.best_epoch is not None:
        metric = loop.cfg.training.best_metric
        loop.log(f"Best checkpoint saved: epoch {book.best_epoch}, {metric}={book.best_value:.4f}")
