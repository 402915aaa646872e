"""What a model can be conditioned on (the embedding that the U-Net adds to its time embedding
is model/condition_embedding.py). Plain Python, no torch import: params validation uses it.

A condition is one row of `len(kinds)` float32 values, in the order of CONDITION_KINDS among
the kinds the model uses:

  region      a class (the index of its name in the model's class list): an embedding row
  month       1 .. 12, cyclic: Fourier features of 2 pi month / 12 (December next to January)
  lat, lon    degrees (WGS84); lon is cyclic too
  gsd         metres per pixel, by its log10 (0.1 m and 10 m are as far apart as 1 m and 100 m)
  tree_cover  0 .. 1

NaN means "no condition": the value is absent from a tile, or dropped in training for
classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"), which
then trains the same network unconditionally; each kind has a learnt embedding for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

CLASS_KINDS = ("region",)
CONTINUOUS_KINDS = ("month", "lat", "lon", "gsd", "tree_cover")
CONDITION_KINDS = (*CLASS_KINDS, *CONTINUOUS_KINDS)
ConditionKind = Literal[CONDITION_KINDS]  # type: ignore[valid-type]  (params' allowed values)
FOURIER_FREQUENCIES = 8  # sin and cos of each: 16 features per continuous value


def ordered_kinds(kinds: Sequence[str]) -> list[str]:
    """`kinds` in CONDITION_KINDS order (the order of a condition row's values)."""
    unknown = sorted(set(kinds) - set(CONDITION_KINDS))
    if unknown:
        raise ValueError(f"unknown condition {unknown[0]!r}: use some of "
                         f"{', '.join(CONDITION_KINDS)}")
    return [kind for kind in CONDITION_KINDS if kind in kinds]
