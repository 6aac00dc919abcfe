"""Adversarial attacks, adversarial-training losses and attack-based evaluation.

Every attack has the signature ``f(logits_fn, x, y, key, eps, **hyper) -> x_adv`` (see
``docs/ATTACKS.md``); ``ATTACKS`` maps names to them and ``get_attack`` looks one up.
"""

from robust_vision.attacks.evaluate import (
    SANITY_CHECKS, AttackSanityWarning, per_example_robustness, robust_accuracy, sanity_checks,
)
from robust_vision.attacks.gradient import apgd_ce, apgd_checkpoints, fgsm, pgd
from robust_vision.attacks.registry import ATTACKS, get_attack
from robust_vision.attacks.sparse import noise_attack, sparse_pixel, sparse_pixel_count
from robust_vision.attacks.training import madry_pgd_examples, trades_examples, trades_loss, trades_objective

__all__ = [
    "ATTACKS", "SANITY_CHECKS", "AttackSanityWarning", "apgd_ce", "apgd_checkpoints", "fgsm", "get_attack",
    "madry_pgd_examples", "noise_attack", "per_example_robustness", "pgd", "robust_accuracy",
    "sanity_checks", "sparse_pixel", "sparse_pixel_count", "trades_examples", "trades_loss", "trades_objective",
]
