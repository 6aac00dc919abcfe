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
  training set once; then train (usually fine-tune) on the enlarged set.

The attacks see the eval-mode model (see ``steps.make_train_step``); attacks are the
project's own (``robust_vision.attacks``).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_vision.attacks import get_attack, madry_pgd_examples, trades_examples, trades_objective
from robust_vision.config import AdversarialConfig

TrainHooks = dict[str, Callable]

# The training attacks' iterations are unrolled: on CPU a rolled lax.fori_loop of PGD steps ran
# ~8x slower than the unrolled loop (5 steps, small CNN, 200 images: 13.4 s vs 1.6 s per call,
# measured for issue 13), for a one-off compile cost that grows with the steps.
UNROLL = True


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


def adversarial_examples(logits_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, labels: np.ndarray,
                         acfg: AdversarialConfig, key: jax.Array, batch_size: int = 256
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``augment`` method's examples: attack ``logits_fn`` (a trained, eval-mode model) on
    the images it classifies correctly; keep the successful attacks.

    images (N, H, W, C) float32 in [0, 1], labels (N,) -> (x_adv (M, H, W, C), y (M,), stats)
    with M <= ``augment_max_examples``; stats counts attacked / correct / successful examples.
    """
    attack = get_attack(acfg.augment_attack)
    hyper = _attack_hyper(acfg)

    @jax.jit
    def run(xb, yb, kb):
        correct = jnp.argmax(logits_fn(xb), -1) == yb
        x_adv = attack(logits_fn, xb, yb, kb, acfg.eps, **hyper)
        fooled = jnp.argmax(logits_fn(x_adv), -1) != yb
        return x_adv, correct & fooled, correct

    n = len(labels)
    kept_x, kept_y, n_correct = [], [], 0
    for i, start in enumerate(range(0, n, batch_size)):
        xb, yb = images[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - len(yb)  # one compiled shape for every batch
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        x_adv, keep, correct = jax.device_get(run(jnp.asarray(xb), jnp.asarray(yb), jax.random.fold_in(key, i)))
        valid = np.arange(batch_size) < batch_size - pad
        keep, correct = keep & valid, correct & valid
        n_correct += int(correct.sum())
        kept_x.append(x_adv[keep])
        kept_y.append(yb[keep])
    x = np.concatenate(kept_x).astype(np.float32)
    y = np.concatenate(kept_y).astype(labels.dtype)
    if acfg.augment_max_examples is not None:
        x, y = x[:acfg.augment_max_examples], y[:acfg.augment_max_examples]
    return x, y, {"attacked": n, "correct": n_correct, "successful": int(sum(len(k) for k in kept_y)),
                  "added": len(y)}
