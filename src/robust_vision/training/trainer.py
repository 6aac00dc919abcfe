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

import csv
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import yaml
from flax import nnx
from tqdm.auto import tqdm

from robust_vision.io import write_csv
from robust_vision.config import Config, ConfigError, config_to_dict, save_config
from robust_vision.data.batch import to_unit_float
from robust_vision.data.pipeline import (check_batch_divisible, data_mesh, device_multiple, eval_batches, num_batches,
                                         replicate, train_batches)
from robust_vision.data.sources import (ConcatSource, RecordSource, SubsetSource, converted, describe_splits,
                                        open_splits, stream_shape)
from robust_vision.distributed import gather_batches, is_main_process, main_only
from robust_vision.evaluation.batched import prefetch_to_device, stream_per_example
from robust_vision.evaluation.metrics import summarize
from robust_vision.interrupts import check_interrupt
from robust_vision.losses import make_loss
from robust_vision.models import create_model
from robust_vision.runs.checkpoint import CheckpointStore, is_better
from robust_vision.models.stages import stage_names
from robust_vision.regularizers import make_regularizer
from robust_vision.training.adversarial import adversarial_hooks, write_adversarial_examples
from robust_vision.training.finetune import load_initial_weights
from robust_vision.training.pretrain import pretrain_local_layer
from robust_vision.training.steps import (init_train_state, make_eval_step, make_logits_fn, make_robust_eval_step,
                                          make_run_optimizer, make_train_step, model_program_key, split_model)

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_margin", "train_snr",
                  "val_loss", "val_accuracy", "val_margin", "val_snr", "val_snr_median", "val_ece",
                  "learning_rate", "epoch_time_s", "val_pgd_accuracy"]

# Config keys that may differ between a run and its resumption (they do not change the numbers).
# training.checkpoint_dir: the run being resumed is read from it, so a different spelling of the same
# directory (relative vs absolute) names the same run.
_RESUMABLE_CHANGES = {("training", "epochs"), ("training", "progress_bar"), ("training", "log_dir"),
                      ("training", "checkpoint_dir"), ("training", "write_figures")}

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


class TrainingError(RuntimeError):
    """Training cannot continue (diverged, or the run directory does not match the request)."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int | None
    best_value: float | None


def _check_n_classes(cfg: Config, num_classes: int) -> None:
    if cfg.model.n_classes is not None and cfg.model.n_classes != num_classes:
        raise ValueError(f"model.n_classes: got {cfg.model.n_classes}; the dataset {cfg.data.dataset_name!r} has "
                         f"{num_classes} classes (set model.n_classes: null to take it from the data)")


def dataset_for(cfg: Config) -> Dataset:
    """The whole dataset of a config as in-memory arrays (``load_dataset``), train capped by
    ``data.max_train_examples`` there. Only for trainers whose data is small by construction (the
    crossbar / local-rule trainer); the backprop trainer streams (``training_sources``)."""
    dataset = load_dataset(cfg.data)
    _check_n_classes(cfg, dataset.num_classes)
    return dataset


@dataclass(frozen=True)
class TrainData:
    """What the backprop trainer reads: the train and val record sources, every record brought
    to ``image_shape`` (H, W, C) when read; images uint8 or float32 [0, 1] (see ``data.batch``)."""

    name: str
    train: RecordSource
    val: RecordSource
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    where: tuple[str, ...] = ()  # describe_splits lines: each split's origin, size and hold-outs


def training_sources(cfg: Config) -> TrainData:
    """The train and val sources of ``cfg.data`` (``open_splits``; test is not opened), capped by
    ``data.max_train_examples`` (a SubsetSource), resized / channel-converted to one shape."""
    splits = open_splits(cfg.data, ("train", "val"))
    info = splits["train"].info
    _check_n_classes(cfg, info.num_classes)
    shape = stream_shape(splits["train"], cfg.data.image_size, cfg.data.channels, also=(splits["val"],))
    return TrainData(cfg.data.dataset_name, converted(splits["train"], shape), converted(splits["val"], shape), shape,
                     info.num_classes, info.class_names, tuple(describe_splits(splits)))


def _with_adversarial_examples(cfg: Config, data: TrainData, run_dir: Path, log: Callable[[str], None]) -> TrainData:
    """The ``augment`` method: the training split plus adversarial examples of a trained model,
    kept in a float32 .npy store in the run directory (at most one per training image) and read
    from there like any source: no split is held in host memory."""
    from robust_vision.runs.loading import check_input_shape, load_trained_model

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


def read_history(path: Path, up_to_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= up_to_epoch]
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]


def write_history(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv atomically (temp file + rename): a crash never leaves half a file."""
    write_csv(path, rows, METRIC_COLUMNS,
              cell=lambda column, value: int(value) if column == "epoch" and value is not None else value)


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config_to_dict(cfg)
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            old = (saved.get(section) or {}).get(key, value)
            if old != value and (section, key) not in _RESUMABLE_CHANGES:
                raise TrainingError(f"--resume: {section}.{key} is {value!r} but the run in {run_dir} used {old!r}; "
                                    "resume with the same config (only training.epochs may change) or use another "
                                    "training.checkpoint_dir")


def check_run_request(cfg: Config, resume: bool) -> tuple[Path, bool]:
    """The checks every trainer makes before it touches the run directory: a known
    ``best_metric``, no overwrite of an existing run without ``resume``, and with ``resume`` the
    same config as the saved run. Returns (run directory, whether it holds checkpoints)."""
    tcfg = cfg.training
    if tcfg.best_metric not in METRIC_COLUMNS[1:]:
        raise ConfigError(f"training.best_metric: got {tcfg.best_metric!r}; expected a metrics.csv column: "
                          f"{', '.join(METRIC_COLUMNS[1:])}")
    if tcfg.best_metric == "val_pgd_accuracy" and tcfg.val_attack.steps == 0:
        raise ConfigError("training.best_metric: val_pgd_accuracy needs the held-out attack; set "
                          "training.val_attack.steps (e.g. 10) or pick another best_metric")
    run_dir = Path(tcfg.checkpoint_dir)
    store_dir = run_dir / "checkpoints"
    has_checkpoints = store_dir.exists() and any(store_dir.rglob("meta"))
    if has_checkpoints and not resume:
        raise TrainingError(f"{run_dir} already holds checkpoints; pass --resume to continue that run, or set "
                            "training.checkpoint_dir to a new directory (nothing was overwritten)")
    if resume:
        check_resume_config(run_dir, cfg)
    return run_dir, has_checkpoints


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

    from robust_vision.preflight import RunLock, check_memory

    check_run_request(cfg, resume)
    check_memory(cfg)
    # One lock per run: process 0 holds it for the whole process group (the others share the run).
    with RunLock(cfg.training.checkpoint_dir) if is_main_process() else nullcontext():
        if cfg.training.learning_rule != "backprop":
            from robust_vision.training.crossbar_trainer import train_local_rule

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
    model = create_model(cfg.model, input_shape=data.image_shape, num_classes=data.num_classes, seed=tcfg.seed)
    if tcfg.certified.method != "none" and tcfg.certified.ibp_init:  # a resumed / init_from run loads over it
        from robust_vision.training.certified import ibp_initialize

        ibp_initialize(model, tcfg.seed)
    resuming = resume and has_checkpoints
    if not resuming and tcfg.init_from is None:
        pretrain_local_layer(model, cfg, data.train, run_dir, log)
    parts = split_model(model)
    if tcfg.init_from is not None and not resuming:
        params, model_state = load_initial_weights(tcfg.init_from, parts.params, parts.model_state, log)
        parts = replace(parts, params=params, model_state=model_state)
    n_train = len(data.train)
    steps_per_epoch = num_batches(n_train, tcfg.batch_size)
    tx, schedule = make_run_optimizer(tcfg, cfg.model, parts.params, steps_per_epoch)
    if tcfg.freeze_stages:
        log(f"Frozen stages: {', '.join(stage_names(cfg.model)[:tcfg.freeze_stages])} (the optimizer leaves them "
            "untouched)")
    state = init_train_state(parts, tx, tcfg.ema_enabled)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(parts.params))
    store = CheckpointStore(run_dir, save_every=tcfg.save_every, best_mode=tcfg.best_mode)
    try:
        return _train_loop(cfg, resume, log, run_dir, store, data, mesh, model, parts, tx, schedule, state,
                           n_params, n_train, steps_per_epoch)
    except KeyboardInterrupt:
        jax.effects_barrier()  # let dispatched steps finish before the runtime is torn down
        raise
    finally:
        store.close()  # also on Ctrl-C / errors: no Orbax thread outlives the run


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


def _validate(cfg: Config, data: TrainData, mesh, state, eval_step, robust_step, attack_key) -> dict:
    """The validation columns of one metrics.csv row: loss, accuracy, margin, SNR, ECE of the
    val split and, with ``training.val_attack``, PGD accuracy on ``max_examples`` of its images."""
    tcfg = cfg.training
    params = state["ema_params"] if tcfg.ema_enabled else state["params"]
    val_pe = _per_example(lambda xb, yb, _i: eval_step(params, state["model_state"], xb, yb),
                          data.val, tcfg.eval_batch_size, mesh)
    vs = summarize(val_pe)
    row = dict(val_loss=vs["loss"], val_accuracy=vs["accuracy"], val_margin=vs["margin"], val_snr=vs["snr"],
               val_snr_median=vs["snr_median"], val_ece=vs["ece"])
    if robust_step is not None:
        held = _held_out(data.val, tcfg.val_attack.max_examples)
        pgd_pe = _per_example(lambda xb, yb, i: robust_step(params, state["model_state"], xb, yb,
                                                              jax.random.fold_in(attack_key, i)),
                              held, tcfg.eval_batch_size, mesh)
        row["val_pgd_accuracy"] = float(np.mean(pgd_pe["pgd_correct"], dtype=np.float64))
    return row


def _train_loop(cfg, resume, log, run_dir, store, data: TrainData, mesh, model, parts, tx, schedule, state,
                n_params, n_train, steps_per_epoch) -> TrainResult:
    tcfg = cfg.training
    main = is_main_process()
    history: list[dict] = []
    start_epoch, best_value, best_epoch = 1, None, None
    # On the mesh before a restore, so every process restores (collectively) into global arrays.
    state = replicate(mesh, state)
    if resume and store.latest_epoch() is not None:
        state, meta = store.restore_latest_valid(state, log)
        start_epoch = int(meta["epoch"]) + 1
        best_value, best_epoch = meta.get("best_value"), meta.get("best_epoch")
        history = read_history(run_dir / "metrics.csv", int(meta["epoch"]))
        log(f"Resuming {run_dir} from epoch {meta['epoch']}")
    elif resume:
        log(f"--resume: no checkpoint in {run_dir}; starting from scratch")
    if main:
        save_config(cfg, run_dir / "config.yaml")

    where = cfg.data.data_dir or ("bundled with scikit-learn" if cfg.data.dataset_name == "digits" else "-")
    log(f"Dataset {data.name} from {where}: {n_train} train / {len(data.val)} val (streamed; test is not read), "
        f"images {data.image_shape}, {data.num_classes} classes")
    for line in data.where:  # each split's origin and size, and every hold-out
        log(line)
    log(f"Model {cfg.model.name}: {n_params:,} parameters; {mesh.devices.size} device(s) "
        f"({jax.devices()[0].platform}, {jax.process_count()} process(es)); {steps_per_epoch} steps/epoch")

    # Everything the steps close over comes from these configs (and the steps per epoch, in the
    # learning-rate schedule): the key under which their traced programs are kept (program_cache).
    program_key = model_program_key(parts, cfg.model, tcfg, steps_per_epoch=steps_per_epoch)
    train_step = make_train_step(parts, tx, make_loss(tcfg), tcfg, extra_loss=make_regularizer(tcfg.regularizers),
                                 program_key=program_key, **_train_hooks(tcfg, steps_per_epoch))
    eval_step = make_eval_step(parts, program_key)
    vcfg = tcfg.val_attack
    robust_step = make_robust_eval_step(parts, vcfg.eps, vcfg.steps, vcfg.step_size, program_key) if vcfg.steps else None
    attack_key = jax.random.key(tcfg.seed + 0xA77AC)  # the same draws every epoch: epochs compare on equal terms
    base_key = jax.random.fold_in(jax.random.key(tcfg.seed), 0x5EED)
    reference_loss = None  # see diverged()

    for epoch in range(start_epoch, tcfg.epochs + 1):
        t0 = time.perf_counter()
        epoch_key = jax.random.fold_in(base_key, epoch)
        outputs = []
        bar = tqdm(total=steps_per_epoch, desc=f"Epoch {epoch}/{tcfg.epochs}", leave=False,
                   disable=not (tcfg.progress_bar and main), unit="step")
        # Batches stream from the input pipeline (the order is epoch_permutation(seed, epoch)); each
        # process reads its own rows of every global batch, and the device prefetch joins them into
        # global arrays while the previous step runs. uint8 sources become float32 [0, 1] on device.
        batches = prefetch_to_device(train_batches(data.train, tcfg.batch_size, tcfg.seed, epoch), mesh=mesh)
        for i, (x, y, m) in enumerate(batches):
            state, per_ex = train_step(state, to_unit_float(x), y, m, jax.random.fold_in(epoch_key, i))
            outputs.append(dict(per_ex, mask=m))  # the global mask, gathered with the outputs
            bar.update(1)
            check_interrupt()  # a Ctrl-C swallowed inside a JAX callback still stops the run
        bar.close()
        gathered = gather_batches(outputs)
        keep = gathered.pop("mask") > 0
        train_pe = {k: v[keep] for k, v in gathered.items()}
        train_summary = summarize(train_pe)
        if reference_loss is None:  # the loss of the starting weights (the first step's forward pass)
            first = slice(0, tcfg.batch_size)  # gathered rows are in batch order
            reference_loss = float(np.mean(gathered["loss"][first][keep[first]]))
        if diverged(train_summary["loss"], reference_loss):
            last = store.latest_epoch()
            kept = (f"the last good checkpoint (epoch {last}) is kept in {run_dir / 'checkpoints'}" if last is not None
                    else "no checkpoint was written (it diverged before the first one)")
            raise TrainingError(f"training diverged at epoch {epoch} (train loss = {train_summary['loss']:.4g}, "
                                f"{train_summary['loss'] / max(reference_loss, 1.0):.2g}x the first batch's "
                                f"{reference_loss:.4g}); {kept}; lower training.learning_rate "
                                "(or training.margin_lambda) and start a new run")

        row = {"epoch": epoch, "train_loss": train_summary["loss"], "train_accuracy": train_summary["accuracy"],
               "train_margin": train_summary["margin"], "train_snr": train_summary["snr"],
               "learning_rate": float(schedule(int(state["step"]) - 1)), "epoch_time_s": None}
        validate = epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs
        if validate and len(data.val):
            row.update(_validate(cfg, data, mesh, state, eval_step, robust_step, attack_key))
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        if main:
            write_history(run_dir / "metrics.csv", history)

        log(f"Epoch {epoch}/{tcfg.epochs}")
        log(f"  Train Loss: {row['train_loss']:.4f}  Train Acc: {row['train_accuracy']:.4f}  "
            f"SNR: {_fmt_snr(row['train_snr'])}")
        if row.get("val_loss") is not None:
            log(f"  Val Loss:   {row['val_loss']:.4f}  Val Acc:   {row['val_accuracy']:.4f}  "
                f"SNR: {_fmt_snr(row['val_snr'])}")
        if row.get("val_pgd_accuracy") is not None:
            log(f"  Val PGD-{tcfg.val_attack.steps} Acc: {row['val_pgd_accuracy']:.4f}")

        metric_value = row.get(tcfg.best_metric)
        improved = is_better(metric_value, best_value, tcfg.best_mode)
        if improved:
            best_value, best_epoch = metric_value, epoch
        meta = {"epoch": epoch, "metrics": row, "best_metric": tcfg.best_metric, "best_value": best_value,
                "best_epoch": best_epoch, "model": config_to_dict(cfg)["model"],
                "input_shape": list(data.image_shape), "num_classes": data.num_classes,
                "class_names": list(data.class_names), "ema": tcfg.ema_enabled}
        store.save(epoch, state, meta, is_best=improved)
        if stop_early(history, best_epoch, tcfg.early_stop_patience, tcfg.best_metric):
            log(f"Early stop after epoch {epoch}: {tcfg.best_metric} has not improved on epoch {best_epoch}'s "
                f"for {tcfg.early_stop_patience} validations")
            break

    from robust_vision.training.run_outputs import write_run_outputs

    ecfg = cfg.evaluation
    if main:
        write_run_outputs(run_dir, history, plots=tcfg.write_figures, style=ecfg.plot_style, dpi=ecfg.dpi,
                          formats=list(ecfg.format), log=log)
    if best_epoch is not None:
        best_row = next((r for r in history if int(r["epoch"]) == best_epoch), {})
        log(f"Best checkpoint saved: epoch {best_epoch}, {tcfg.best_metric}={best_value:.4f}, "
            f"SNR={_fmt_snr(best_row.get('val_snr'))}")
    return TrainResult(run_dir=run_dir, history=history, best_epoch=best_epoch, best_value=best_value)
