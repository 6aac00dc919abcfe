"""What the evaluation parts share: the suite's names, the keys they derive from one seed, the
checks of suite settings that run before any work, and the printed-number format.

The parts themselves (one module each, ``evaluation/parts``) take ``logits_fn`` (images
(B, H, W, C) float32 in [0, 1] -> logits (B, K), eval mode, weights closed over:
``LoadedModel.logits_fn()``) and return tidy rows (lists of dicts, one per table row; the CSV
columns are in ``robust_vision.tables``). Pass the *same* ``logits_fn`` object to every call for
one model: jitted functions are cached on it.

Randomness: every part derives its keys from one seed with :func:`part_key` and folds in
names (corruption, attack, noise type) and batch indices, never a position in a list, so a
number does not change when other parts or conditions are added, and two models evaluated
with the same seed see the same corrupted / noisy images (common random numbers).
Definitions and commands are in docs/EVALUATION.md.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Sequence

import jax

from robust_vision.corruptions import HELD_OUT, IMAGENET_C

LogitsFn = Callable[[jax.Array], jax.Array]

SUITES: dict[str, list[str]] = {"imagenet-c": list(IMAGENET_C), "imagenet-c-all": list(IMAGENET_C) + list(HELD_OUT)}

# CLI / config attack names -> attack registry names (robust_vision.attacks.ATTACKS).
ATTACK_NAMES: dict[str, str] = {"fgsm": "fgsm", "pgd": "pgd", "apgd": "apgd_ce", "sparse": "sparse_pixel",
                                "noise": "noise_attack", "apgd-t": "apgd_t", "apgd-dlr": "apgd_dlr", "fab-t": "fab_t",
                                "square": "square"}
# Ensembles run by the AutoAttack part (parts/autoattack.py), not through robust_accuracy.
AUTOATTACK_NAMES = ("autoattack", "autoattack-rand")
GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "apgd-dlr", "fab-t", "autoattack", "autoattack-rand")


def _crc(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def part_key(seed: int, part: str) -> jax.Array:
    """The key of one suite part ("corruptions", "attacks", "certify", "calibration"):
    a function of the seed and the part's name only."""
    return jax.random.fold_in(jax.random.key(seed), _crc(part))


def resolve_suite(suite: str) -> list[str]:
    """Corruption names of a suite ("imagenet-c": the 15, "imagenet-c-all": 15 + 4 held-out)."""
    if suite not in SUITES:
        raise ValueError(f"unknown corruption suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return list(SUITES[suite])


def check_attacks(attacks: Sequence[str], norm: str) -> None:
    """Fail fast (before any work) on an unknown attack name or an impossible combination."""
    unknown = [a for a in attacks if a not in ATTACK_NAMES and a not in AUTOATTACK_NAMES]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; valid attacks: {', '.join([*ATTACK_NAMES, *AUTOATTACK_NAMES])}")
    from robust_vision.preflight import check_attack_combination

    check_attack_combination(attacks, norm)


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number of a printed summary; None and non-finite values as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)
