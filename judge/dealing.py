"""Which images a judge sees, in which order, under which ids.

Draws use the operating system's randomness, not params `seed`: params.yaml is public, and a
seeded deal would let anyone who reads it know which image comes next and of which class.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence

from canopy.judge.catalog import Catalog, Identity

_SYSTEM_RANDOM = random.SystemRandom()
ID_BYTES = 16  # 128 random bits: ids cannot be guessed, only received


def new_id() -> str:
    """An opaque id (22 URL-safe characters) that says nothing about what it names."""
    return secrets.token_urlsafe(ID_BYTES)


def pick_round(catalog: Catalog, seen: set[Identity], size: int) -> list[Identity]:
    """`size` images, half real and half generated (fewer when a class runs short), shuffled;
    images this judge has not seen yet come first."""
    per_class = min(size // 2, len(catalog.real), len(catalog.generated))
    picked = _draw(catalog.real, seen, per_class) + _draw(catalog.generated, seen, per_class)
    _SYSTEM_RANDOM.shuffle(picked)
    return picked


def _draw(pool: Sequence[Identity], seen: set[Identity], count: int) -> list[Identity]:
    fresh = [identity for identity in pool if identity not in seen]
    if len(fresh) >= count:
        return _SYSTEM_RANDOM.sample(fresh, count)
    again = [identity for identity in pool if identity in seen]
    return fresh + _SYSTEM_RANDOM.sample(again, count - len(fresh))
