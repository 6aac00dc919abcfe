"""The training loop: data -> jitted steps -> metrics.csv, checkpoints, resume.

The backprop trainer streams its data: train and val are record sources (``data.sources``)
read lazily through the Grain pipeline (``data.pipeline.train_batches`` / ``eval_batches``), so
host memory holds the batches in flight, not the splits, and does not grow with the dataset.

Everything random is a pure function of ``training.seed``, the epoch and the step index
(shuffling, augmentation, dropout, mixup), and the full train state (parameters, batch
statistics, optimizer, EMA, step) is checkpointed, so ``--resume`` after a crash ends with
the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from robust_vision.config import Config, ConfigError, TrainingConfig
from robust_vision.data.batch import to_unit_float
from robust_vision.data.pipeline import (check_batch_divisible, data_mesh, device_multiple, eval_batches, num_batches,
                                         replicate, train_batches)
from robust_vision.data.sources import ConcatSource, RecordSource, SubsetSource
from robust_vision.distributed import gather_batches, is_main_process, main_only
from robust_vision.evaluation.batched import prefetch_to_device, stream_per_example
from robust_vision.evaluation.metrics import summarize
from robust_vision.interrupts import check_interrupt
from robust_vision.losses import make_loss
from robust_vision.models import create_model
from robust_vision.models.stages import stage_names
from robust_vision.models.state import ModelParts, make_logits_fn, model_program_key, split_model
from robust_vision.optim import init_train_state, make_run_optimizer
from robust_vision.regularizers import make_regularizer
from robust_vision.runs.loading import check_input_shape, load_trained_model
from robust_vision.runs.paths import checkpoints_dir
from robust_vision.runs.resume import TrainingError, check_run_request, run_finished
from robust_vision.training.adversarial import adversarial_hooks, write_adversarial_examples
from robust_vision.training.crossbar_trainer import train_local_rule
from robust_vision.training.finetune import load_initial_weights
from robust_vision.training.loop import (RunBook, TrainData, TrainResult, checkpoint_store, describe_data,
                                         training_sources)
from robust_vision.training.pretrain import pretrain_local_layer
from robust_vision.training.run_outputs import write_run_outputs
from robust_vision.training.steps import make_eval_step, make_robust_eval_step, make_train_step

# Divergence beyond NaN. The reference is the mean loss of the first training batch this process
# sees, i.e. the loss of the starting weights (at initialisation a cross-entropy is ~log K), floored at
# 1.0 so that a nearly perfect resumed or fine-tuned model is not held to its tiny loss. An epoch whose
# mean train loss exceeds DIVERGENCE_FACTOR x that reference has left the basin it started in: a loss
# four orders of magnitude above the untrained model's is not a slow start, and no recipe here (warm-up,
# adversarial, margin, regularised) raises its loss by more than ~10x.
DIVERGENCE_FACTOR = 1e4


def diverged(train_loss: float, reference_loss: float | None) -> bool:
    """Whether an epoch's mean train loss means divergence: non-finite, or greater than
    DIVERGENCE_FACTOR x max(reference_loss, 1) (reference: the loss of the first batch)."""
    if not math.isfinite(train_loss):
        return True
    reference = reference_loss if reference_loss is not None and math.isfinite(reference_loss) else 1.0
    return train_loss > DIVERGENCE_FACTOR * max(reference, 1.0)


def stop_early(history: list[dict], best_epoch: int | None, patience: int | None, metric: str) -> bool:
    """Whether ``patience`` validations (rows that hold ``metric``) have passed since the best
    epoch without a better value; never with ``patience`` None or before any best epoch."""
    if patience is None or best_epoch is None:
        return False
    since = [r for r in history if int(r["epoch"]) > best_epoch and r.get(metric) is not None]
    return len(since) >= patience


def _with_adversarial_examples(cfg: Config, data: TrainData, run_dir: Path, log: Callable[[str], None]) -> TrainData:
    """The ``augment`` method: the training split plus adversarial examples of a trained model,
    kept in a float32 .npy store in the run directory (at most one per training image) and read
    from there like any source: no split is held in host memory."""
    acfg = cfg.training.adversarial
    source_path = acfg.augment_source or cfg.training.init_from
    source = load_trained_model(source_path)
    check_input_shape(source, data.image_shape, f"{cfg.data.dataset_name} (training split)")
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cfg.training.seed), 0xAD7)
    # Every process attacks the whole split (as the model sees it) and keeps its own store.
    store = run_dir / "augment" / f"adversarial_examples.p{jax.process_index()}.npy"
    adv, stats = write_adversarial_examples(source.logits_fn(), data.train, acfg, key, store,
                                            batch_size=cfg.training.eval_batch_size)
    log(f"Adversarial augmentation: {acfg.augment_attack} (eps={acfg.eps:g}) on {source.run_dir}: "
        f"{stats['correct']} of {stats['attacked']} training images classified correctly, "
        f"{stats['successful']} attacks succeeded, {stats['added']} examples added, stored in {store} "
        f"({time.perf_counter() - t0:.1f} s)")
    train = ConcatSource([data.train, adv], replace(data.train.info, image_shape=data.image_shape, description=(
        f"{data.train.info.description} + {len(adv)} adversarial examples")), as_float=True)
    return replace(data, train=train)


def _fmt_snr(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    return f"{value:.1f}" if value < 1e6 else f"{value:.3e}"


def _check_activations(cfg: Config, data) -> None:
    """``preflight.check_activation_memory`` of one training batch, on the abstract model (nothing
    allocated): the input-only estimate of ``check_memory`` misses activations, ~6x the inputs of
    a 2000 px batch, and the process died with SIGSEGV instead of a message."""
    from robust_vision.preflight import activations_may_matter, check_activation_memory

    shape = (cfg.training.batch_size, *data.image_shape)
    if not activations_may_matter(shape):  # the common case: no model is built for the estimate
        return
    abstract = split_model(nnx.eval_shape(lambda: create_model(cfg.model, input_shape=data.image_shape,
                                                                   num_classes=data.num_classes, seed=0)))
    logits = make_logits_fn(abstract)
    check_activation_memory(lambda params, state, x: logits(params, state, x), (abstract.params, abstract.model_state),
                            shape)


def _train_hooks(tcfg, steps_per_epoch: int | None = None) -> dict:
    """Loss hooks of ``make_train_step``: AugMix (training.augmix), adversarial training or
    certified training (training.certified, whose eps ramp needs ``steps_per_epoch``)."""
    from robust_vision.training.augmix import augmix_hooks
    from robust_vision.training.certified import certified_hooks

    if tcfg.augmix.enabled and tcfg.adversarial.method in ("pgd", "trades", "mart"):
        raise ConfigError(f"training.augmix.enabled with training.adversarial.method={tcfg.adversarial.method}: "
                          "pick one of them (both replace the training loss)")
    if tcfg.certified.method != "none" and (tcfg.augmix.enabled or tcfg.adversarial.method != "none" or tcfg.use_mixup):
        raise ConfigError(f"training.certified.method={tcfg.certified.method} replaces the training loss: turn off "
                          "training.augmix, training.adversarial and training.use_mixup")
    hooks = augmix_hooks(tcfg.augmix) or adversarial_hooks(tcfg.adversarial)
    if tcfg.certified.method != "none":
        if steps_per_epoch is None:
            raise ValueError("certified training needs steps_per_epoch (the eps ramp is in epochs)")
        hooks = certified_hooks(tcfg.certified, steps_per_epoch)
    return hooks


def train(cfg: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the model of ``cfg`` and write the run directory ``cfg.training.checkpoint_dir``.

    Before anything is loaded: the run request is checked, the sizes are checked against the
    machine's memory (``preflight.check_memory``) and the run directory is locked, so a second
    training on the same directory stops at once with a one-line error.
    """
    from contextlib import nullcontext

    from robust_vision.preflight import check_memory
    from robust_vision.runs.lock import RunLock

    check_run_request(cfg, resume)
    check_memory(cfg)
    # One lock per run: process 0 holds it for the whole process group (the others share the run).
    with RunLock(cfg.training.checkpoint_dir) if is_main_process() else nullcontext():
        if resume and run_finished(cfg.training.checkpoint_dir, cfg):
            main_only(log)(f"--resume: {cfg.training.checkpoint_dir} holds every epoch of this run; nothing is "
                           "left to train (its outputs are written again)")
        if cfg.training.learning_rule != "backprop":
            return train_local_rule(cfg, resume=resume, log=log)
        return _train_backprop(cfg, resume=resume, log=log)


def _train_backprop(cfg: Config, *, resume: bool, log: Callable[[str], None]) -> TrainResult:
    tcfg = cfg.training
    run_dir, has_checkpoints = check_run_request(cfg, resume)  # again, under the lock
    log = main_only(log)  # only process 0 prints and writes files; checkpoints are collective

    data = training_sources(cfg)
    mesh = data_mesh()
    check_batch_divisible(tcfg.batch_size, mesh, "training.batch_size")
    run_dir.mkdir(parents=True, exist_ok=True)
    if tcfg.adversarial.method == "augment":
        data = _with_adversarial_examples(cfg, data, run_dir, log)
    _check_activations(cfg, data)
    parts = _initial_parts(cfg, data, run_dir, resume and has_checkpoints, log)
    steps_per_epoch = num_batches(len(data.train), tcfg.batch_size)
    tx, schedule = make_run_optimizer(tcfg, cfg.model, parts.params, steps_per_epoch)
    if tcfg.freeze_stages:
        log(f"Frozen stages: {', '.join(stage_names(cfg.model)[:tcfg.freeze_stages])} (the optimizer leaves them "
            "untouched)")
    state = init_train_state(parts, tx, tcfg.ema_enabled)
    with checkpoint_store(run_dir, tcfg) as store:
        book = RunBook(cfg, run_dir, store, describe_data(data, ema=tcfg.ema_enabled), write=is_main_process())
        # On the mesh before a restore, so every process restores (collectively) into global arrays.
        state, _ = book.resume(replicate(mesh, state), resume, log)
        _log_start(cfg, data, mesh, parts, steps_per_epoch, log)
        loop = _Loop(cfg, data, mesh, book, _make_steps(cfg, parts, tx, steps_per_epoch), schedule, log)
        for epoch in range(book.start_epoch, tcfg.epochs + 1):
            state = loop.run_epoch(state, epoch)
            if stop_early(book.history, book.best_epoch, tcfg.early_stop_patience, tcfg.best_metric):
                log(f"Early stop after epoch {epoch}: {tcfg.best_metric} has not improved on epoch "
                    f"{book.best_epoch}'s for {tcfg.early_stop_patience} validations")
                break
    _finish(cfg, book, log)
    return book.result()


def _initial_parts(cfg: Config, data: TrainData, run_dir: Path, resuming: bool,
                   log: Callable[[str], None]) -> ModelParts:
    """The model of ``cfg``, split: freshly initialised (IBP initialisation for certified
    training, the unsupervised layer pretrained), or with ``training.init_from``'s weights; a
    resumed run loads its checkpoint over it."""
    tcfg = cfg.training
    model = create_model(cfg.model, input_shape=data.image_shape, num_classes=data.num_classes, seed=tcfg.seed)
    if tcfg.certified.method != "none" and tcfg.certified.ibp_init:
        from robust_vision.training.certified import ibp_initialize

        ibp_initialize(model, tcfg.seed)
    if not resuming and tcfg.init_from is None:
        pretrain_local_layer(model, cfg, data.train, run_dir, log)
    parts = split_model(model)
    if tcfg.init_from is not None and not resuming:
        params, model_state = load_initial_weights(tcfg.init_from, parts.params, parts.model_state, log)
        parts = replace(parts, params=params, model_state=model_state)
    return parts


def _log_start(cfg: Config, data: TrainData, mesh, parts: ModelParts, steps_per_epoch: int,
               log: Callable[[str], None]) -> None:
    """The dataset, model and device lines printed before the first epoch."""
    where = cfg.data.data_dir or ("bundled with scikit-learn" if cfg.data.dataset_name == "digits" else "-")
    log(f"Dataset {data.name} from {where}: {len(data.train)} train / {len(data.val)} val (streamed; test is not "
        f"read), images {data.image_shape}, {data.num_classes} classes")
    for line in data.where:  # each split's origin and size, and every hold-out
        log(line)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(parts.params))
    log(f"Model {cfg.model.name}: {n_params:,} parameters; {mesh.devices.size} device(s) "
        f"({jax.devices()[0].platform}, {jax.process_count()} process(es)); {steps_per_epoch} steps/epoch")


@dataclass(frozen=True)
class _Steps:
    """The jitted steps of a run: train, validation and (with ``training.val_attack``) held-out PGD."""

    train: Callable
    eval: Callable
    robust: Callable | None


def _make_steps(cfg: Config, parts: ModelParts, tx, steps_per_epoch: int) -> _Steps:
    tcfg = cfg.training
    # Everything the steps close over comes from these configs (and the steps per epoch, in the
    # learning-rate schedule): the key under which their traced programs are kept (program_cache).
    program_key = model_program_key(parts, cfg.model, tcfg, steps_per_epoch=steps_per_epoch)
    train_step = make_train_step(parts, tx, make_loss(tcfg), tcfg, extra_loss=make_regularizer(tcfg.regularizers),
                                 program_key=program_key, **_train_hooks(tcfg, steps_per_epoch))
    vcfg = tcfg.val_attack
    robust_step = (make_robust_eval_step(parts, vcfg.eps, vcfg.steps, vcfg.step_size, program_key)
                   if vcfg.steps else None)
    return _Steps(train_step, make_eval_step(parts, program_key), robust_step)


def _per_example(fn, source: RecordSource, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """``fn(images, labels, batch_index) -> {name: (B,) array}`` over every record of ``source`` in order,
    streamed (``eval_batches`` + device prefetch, ``evaluation.batched.stream_per_example``;
    images float32 [0, 1] on device); the real examples' values, (N,) each, gathered across
    processes. The batch size is rounded up to a multiple of the device count and, unlike the
    evaluators, not capped at N: validation keeps one compiled program whatever the split size."""
    batch_size = device_multiple(batch_size, mesh)
    return stream_per_example(lambda x, y, i: fn(to_unit_float(x), y, i), eval_batches(source, batch_size), mesh=mesh)


def _held_out(source: RecordSource, max_examples: int) -> RecordSource:
    """``max_examples`` records of ``source`` evenly spaced over it (all of them when it has fewer):
    hold-outs are stored class by class, so the first N would miss most classes."""
    if len(source) <= max_examples:
        return source
    return SubsetSource(source, np.linspace(0, len(source) - 1, max_examples).round().astype(np.int64), source.info)


@dataclass
class _Loop:
    """The fixed pieces of a backprop run's epochs, and the one thing they carry over:
    ``reference_loss``, the loss of the starting weights (see ``diverged``)."""

    cfg: Config
    data: TrainData
    mesh: Any
    book: RunBook
    steps: _Steps
    schedule: Callable[[int], Any]
    log: Callable[[str], None]
    reference_loss: float | None = None

    def run_epoch(self, state: dict, epoch: int) -> dict:
        """Train one epoch, validate when due, then write its metrics.csv row and checkpoint."""
        t0 = time.perf_counter()
        tcfg = self.cfg.training
        state, train = self._train_pass(state, epoch)
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "train_margin": train["margin"], "train_snr": train["snr"],
               "learning_rate": float(self.schedule(int(state["step"]) - 1)), "epoch_time_s": None}
        if (epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs) and len(self.data.val):
            row.update(self._validate(state))
        row["epoch_time_s"] = time.perf_counter() - t0
        improved = self.book.record(row)
        _log_row(row, epoch, tcfg, self.log)
        self.book.save(state, improved)
        return state

    def _train_pass(self, state: dict, epoch: int) -> tuple[dict, dict]:
        """One pass over the training split; returns (state, ``summarize`` of its per-example outputs)."""
        tcfg = self.cfg.training
        epoch_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(tcfg.seed), 0x5EED), epoch)
        outputs = []
        bar = tqdm(total=num_batches(len(self.data.train), tcfg.batch_size),
                   desc=f"Epoch {epoch}/{tcfg.epochs}", leave=False, unit="step",
                   disable=not (tcfg.progress_bar and self.book.write))
        # Batches stream from the input pipeline (the order is epoch_permutation(seed, epoch)); each
        # process reads its own rows of every global batch, and the device prefetch joins them into
        # global arrays while the previous step runs. uint8 sources become float32 [0, 1] on device.
        batches = prefetch_to_device(train_batches(self.data.train, tcfg.batch_size, tcfg.seed, epoch), mesh=self.mesh)
        for i, (x, y, m) in enumerate(batches):
            state, per_ex = self.steps.train(state, to_unit_float(x), y, m, jax.random.fold_in(epoch_key, i))
            outputs.append(dict(per_ex, mask=m))  # the global mask, gathered with the outputs
            bar.update(1)
            check_interrupt()  # a Ctrl-C swallowed inside a JAX callback still stops the run
        bar.close()
        gathered = gather_batches(outputs)
        keep = gathered.pop("mask") > 0
        summary = summarize({k: v[keep] for k, v in gathered.items()})
        if self.reference_loss is None:  # the loss of the starting weights (the first step's forward pass)
            first = slice(0, tcfg.batch_size)  # gathered rows are in batch order
            self.reference_loss = float(np.mean(gathered["loss"][first][keep[first]]))
        self._check_diverged(summary["loss"], epoch)
        return state, summary

    def _check_diverged(self, train_loss: float, epoch: int) -> None:
        if not diverged(train_loss, self.reference_loss):
            return
        last = self.book.store.latest_epoch()
        kept = (f"the last good checkpoint (epoch {last}) is kept in {checkpoints_dir(self.book.run_dir)}"
                if last is not None else "no checkpoint was written (it diverged before the first one)")
        raise TrainingError(f"training diverged at epoch {epoch} (train loss = {train_loss:.4g}, "
                            f"{train_loss / max(self.reference_loss, 1.0):.2g}x the first batch's "
                            f"{self.reference_loss:.4g}); {kept}; lower training.learning_rate "
                            "(or training.margin_lambda) and start a new run")

    def _validate(self, state: dict) -> dict:
        """The validation columns of one metrics.csv row: loss, accuracy, margin, SNR, ECE of the
        val split and, with ``training.val_attack``, PGD accuracy on ``max_examples`` of its images."""
        tcfg = self.cfg.training
        params = state["ema_params"] if tcfg.ema_enabled else state["params"]
        val_pe = _per_example(lambda xb, yb, _i: self.steps.eval(params, state["model_state"], xb, yb),
                              self.data.val, tcfg.eval_batch_size, self.mesh)
        vs = summarize(val_pe)
        row = dict(val_loss=vs["loss"], val_accuracy=vs["accuracy"], val_margin=vs["margin"], val_snr=vs["snr"],
                   val_snr_median=vs["snr_median"], val_ece=vs["ece"])
        if self.steps.robust is not None:
            attack_key = jax.random.key(tcfg.seed + 0xA77AC)  # the same draws every epoch: epochs compare fairly
            held = _held_out(self.data.val, tcfg.val_attack.max_examples)
            pgd_pe = _per_example(lambda xb, yb, i: self.steps.robust(params, state["model_state"], xb, yb,
                                                                      jax.random.fold_in(attack_key, i)),
                                  held, tcfg.eval_batch_size, self.mesh)
            row["val_pgd_accuracy"] = float(np.mean(pgd_pe["pgd_correct"], dtype=np.float64))
        return row


def _log_row(row: dict, epoch: int, tcfg: TrainingConfig, log: Callable[[str], None]) -> None:
    log(f"Epoch {epoch}/{tcfg.epochs}")
    log(f"  Train Loss: {row['train_loss']:.4f}  Train Acc: {row['train_accuracy']:.4f}  "
        f"SNR: {_fmt_snr(row['train_snr'])}")
    if row.get("val_loss") is not None:
        log(f"  Val Loss:   {row['val_loss']:.4f}  Val Acc:   {row['val_accuracy']:.4f}  "
            f"SNR: {_fmt_snr(row['val_snr'])}")
    if row.get("val_pgd_accuracy") is not None:
        log(f"  Val PGD-{tcfg.val_attack.steps} Acc: {row['val_pgd_accuracy']:.4f}")


def _finish(cfg: Config, book: RunBook, log: Callable[[str], None]) -> None:
    """The run's figures and TensorBoard files (process 0), and the best-checkpoint line."""
    ecfg = cfg.evaluation
    if book.write:
        write_run_outputs(book.run_dir, book.history, plots=cfg.training.write_figures, style=ecfg.plot_style,
                          dpi=ecfg.dpi, formats=list(ecfg.format), log=log)
    if book.best_epoch is not None:
        best_row = next((r for r in book.history if int(r["epoch"]) == book.best_epoch), {})
        log(f"Best checkpoint saved: epoch {book.best_epoch}, {cfg.training.best_metric}={book.best_value:.4f}, "
            f"SNR={_fmt_snr(best_row.get('val_snr'))}")
