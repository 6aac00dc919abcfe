"""Adversarial training options of ``training.adversarial``, turned into train-step hooks.

* ``pgd`` (Madry et al. 2018): every batch is replaced by Linf PGD examples (random start,
  ``steps`` steps of ``step_size``) of the current model; the loss is computed on them.
* ``trades`` (Zhang et al. 2019): loss = CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv
  maximising the KL term in the Linf ball.
* ``mart`` (Wang et al. 2020): PGD examples as ``pgd``; loss = boosted CE on x_adv + beta *
  KL(f(x) || f(x_adv)) * (1 - p_y(x)) (``attacks.training.mart_objective``).
* ``augment`` (the training-robust-networks seed): before training, attack a *trained* model
  (``augment_source``, else ``init_from``) on the training images it classifies correctly,
  keep the successful adversarial examples with their true labels, and add them to the
  training set once; then train (usually fine-tune) on the enlarged set. The examples are
  streamed from the training source into a float32 .npy store in the run directory
  (``write_adversarial_examples``), which the trainer reads as one more record source.

The attacks see the eval-mode model (see ``steps.make_train_step``); attacks are the
project's own (``robust_vision.attacks``).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.attacks import get_attack, madry_pgd_examples, trades_examples, trades_objective
from robust_vision.config import AdversarialConfig
from robust_vision.data.batch import Batch, to_unit_float
from robust_vision.data.pipeline import eval_batches
from robust_vision.data.sources import ArraySource, RecordSource, SourceInfo

TrainHooks = dict[str, Callable]

# The training attacks' iterations run in a rolled lax.fori_loop. They used to be unrolled: on
# CPU the rolled loop ran ~8x slower (issue 13), because XLA:CPU emitted the loop body's
# input-gradient convolutions as slow generic loops; the models' convolution (models/conv.py)
# removed that. Madry PGD-7 / PGD-10 train step, quickstart CNN, batch 64, 2 loaded cores,
# interleaved (benchmarks/train_step_conv.py --adv-steps K --unroll-compare): rolled / unrolled
# step time 0.97-1.12 (min; medians 0.95-1.07), compile time 0.64-0.89 (docs/ATTACKS.md).
UNROLL = False


def adversarial_hooks(acfg: AdversarialConfig) -> TrainHooks:
    """Keyword arguments for ``make_train_step`` (empty for ``none`` and ``augment``)."""
    if acfg.method == "pgd":
        def transform(logits_fn, images, labels, key):
            return madry_pgd_examples(logits_fn, images, labels, key, acfg.eps, steps=acfg.steps,
                                      step_size=acfg.step_size, unroll=UNROLL)
        return {"example_transform": transform}
    if acfg.method == "trades":
        def pair_transform(logits_fn, images, labels, key):
            return trades_examples(logits_fn, images, key, acfg.eps, steps=acfg.steps, step_size=acfg.step_size,
                                   unroll=UNROLL)
        return {"pair_transform": pair_transform,
                "pair_loss": functools.partial(trades_objective, beta=acfg.trades_beta)}
    if acfg.method == "mart":
        from robust_vision.attacks.training import mart_objective

        def mart_pair(logits_fn, images, labels, key):
            return madry_pgd_examples(logits_fn, images, labels, key, acfg.eps, steps=acfg.steps,
                                      step_size=acfg.step_size, unroll=UNROLL)
        return {"pair_transform": mart_pair, "pair_loss": functools.partial(mart_objective, beta=acfg.mart_beta)}
    return {}


def _attack_hyper(acfg: AdversarialConfig) -> dict:
    if acfg.augment_attack == "pgd":
        return {"steps": acfg.steps, "step_size": acfg.step_size}
    if acfg.augment_attack == "noise_attack":
        return {"steps": acfg.steps}
    return {}


def _attacked_batches(logits_fn: Callable[[jax.Array], jax.Array], batches: Iterable[Batch], acfg: AdversarialConfig,
                      key: jax.Array) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
    """Attack every batch (images uint8 or float32 [0, 1]; padding rows masked out); per batch
    yield (x_adv (M, H, W, C) float32 [0, 1], labels (M,)) of the successful attacks on correctly
    classified images, the number classified correctly and the number of real images. Batch i
    draws from ``fold_in(key, i)``."""
    attack = get_attack(acfg.augment_attack)
    hyper = _attack_hyper(acfg)

    @jax.jit
    def run(xb, yb, kb):
        xb = to_unit_float(xb)  # on device
        correct = jnp.argmax(logits_fn(xb), -1) == yb
        x_adv = attack(logits_fn, xb, yb, kb, acfg.eps, **hyper)
        fooled = jnp.argmax(logits_fn(x_adv), -1) != yb
        return x_adv, correct & fooled, correct

    for i, batch in enumerate(batches):
        x_adv, keep, correct = jax.device_get(run(jnp.asarray(batch.images), jnp.asarray(batch.labels),
                                                  jax.random.fold_in(key, i)))
        valid = np.asarray(batch.mask) > 0
        keep, correct = keep & valid, correct & valid
        yield x_adv[keep].astype(np.float32), np.asarray(batch.labels)[keep], int(correct.sum()), int(valid.sum())


def _source_batches(source: RecordSource, batch_size: int) -> Iterator[Batch]:
    # Every record on this process (the attack runs unsharded, as the source model is replicated).
    return eval_batches(source, batch_size, shard_index=0, shard_count=1)


def adversarial_examples(logits_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, labels: np.ndarray,
                         acfg: AdversarialConfig, key: jax.Array, batch_size: int = 256
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``augment`` method's examples of in-memory arrays: attack ``logits_fn`` (a trained,
    eval-mode model) on the images it classifies correctly; keep the successful attacks.

    images (N, H, W, C) float32 in [0, 1] (or uint8), labels (N,) -> (x_adv (M, H, W, C) float32,
    y (M,), stats) with M <= ``augment_max_examples``; stats counts attacked / correct /
    successful examples. The trainer streams instead (``write_adversarial_examples``)."""
    info = SourceInfo(int(np.max(labels)) + 1 if len(labels) else 1, (), tuple(images.shape[1:]), "arrays")
    kept_x, kept_y, n_correct = [], [], 0
    for x, y, correct, _ in _attacked_batches(logits_fn, _source_batches(ArraySource(images, labels, info), batch_size),
                                              acfg, key):
        kept_x.append(x)
        kept_y.append(y)
        n_correct += correct
    x = np.concatenate(kept_x).astype(np.float32)
    y = np.concatenate(kept_y).astype(labels.dtype)
    successful = len(y)
    if acfg.augment_max_examples is not None:
        x, y = x[:acfg.augment_max_examples], y[:acfg.augment_max_examples]
    return x, y, {"attacked": len(labels), "correct": n_correct, "successful": successful, "added": len(y)}


def write_adversarial_examples(logits_fn: Callable[[jax.Array], jax.Array], source: RecordSource,
                               acfg: AdversarialConfig, key: jax.Array, path: Path, batch_size: int = 256
                               ) -> tuple[RecordSource, dict]:
    """``adversarial_examples`` of a record source, streamed: batches are read from ``source``
    and the kept examples written to ``path``, a float32 (M_max, H, W, C) .npy store with
    M_max = min(``augment_max_examples``, len(source)), so host memory holds one batch.

    Returns (an ArraySource over the first M rows of the memory-mapped store, float32 [0, 1], with
    the true labels; stats as ``adversarial_examples``). Same examples, in the same order, as
    ``adversarial_examples`` on the decoded arrays with the same key and batch size."""
    h, w, c = source.info.image_shape  # type: ignore[misc]
    cap = min(acfg.augment_max_examples or len(source), len(source))
    path.parent.mkdir(parents=True, exist_ok=True)
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(max(cap, 1), h, w, c))
    labels, added, attacked, n_correct, successful = [], 0, 0, 0, 0
    for x, y, correct, real in _attacked_batches(logits_fn, _source_batches(source, batch_size), acfg, key):
        take = min(len(y), cap - added)
        store[added:added + take] = x[:take]
        labels.append(y[:take])
        added += take
        attacked, n_correct, successful = attacked + real, n_correct + correct, successful + len(y)
    store.flush()
    del store  # reopened read-only below
    images = np.load(path, mmap_mode="r")[:added]
    y = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
    adv = ArraySource(images, y, replace(source.info, image_shape=(h, w, c), description=(
        f"{added} adversarial examples ({acfg.augment_attack}, eps={acfg.eps:g}) in '{path}'")))
    return adv, {"attacked": attacked, "correct": n_correct, "successful": successful, "added": added}
