"""Attack registry: name -> ``f(logits_fn, x, y, key, eps, **hyper) -> x_adv``."""

from __future__ import annotations

from typing import Callable

from robust_vision.attacks.apgd_l1 import apgd_l1
from robust_vision.attacks.apgd_t import apgd_dlr, apgd_t
from robust_vision.attacks.fab import fab_t
from robust_vision.attacks.gradient import apgd_ce, fgsm, pgd
from robust_vision.attacks.square import square
from robust_vision.attacks.sparse import noise_attack, sparse_pixel

AttackFn = Callable[..., "object"]

ATTACKS: dict[str, AttackFn] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "apgd_ce": apgd_ce,
    "sparse_pixel": sparse_pixel,
    "noise_attack": noise_attack,
    "apgd_dlr": apgd_dlr,
    "apgd_l1": apgd_l1,
    "apgd_t": apgd_t,
    "fab_t": fab_t,
    "square": square,
}


def get_attack(name: str) -> AttackFn:
    """The attack registered under ``name``; an unknown name raises ``ValueError`` listing
    the valid names."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(sorted(ATTACKS))}") from None
