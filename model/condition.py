"""What a model can be conditioned on, and how a condition becomes an embedding that is added to
the U-Net's time embedding. Pure math: no files, no params import (no torch at import time,
so that params validation stays cheap: the network part imports torch when built).

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

import math
from collections.abc import Mapping, Sequence
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


def _unit(kind: str, value):  # noqa: ANN001, ANN202 (a float or a tensor)
    """A continuous value on the scale its Fourier features expect: one period = 1 for the
    cyclic kinds, about [-1, 1] for the others."""
    if kind == "month":
        return (value - 1) / 12
    if kind == "lon":
        return value / 360
    if kind == "lat":
        return value / 90
    if kind == "gsd":
        return value.clamp(min=1e-3).log10() / 2 if hasattr(value, "log10") else math.log10(value) / 2
    return 2 * value - 1  # tree_cover


def _frequencies(kind: str):  # noqa: ANN202
    import torch

    if kind in ("month", "lon"):  # cyclic: whole periods only
        return 2 * math.pi * torch.arange(1, FOURIER_FREQUENCIES + 1, dtype=torch.float32)
    # 2^0 .. 2^7 half-periods over [-1, 1]: coarse to fine
    return math.pi * 2.0 ** torch.arange(FOURIER_FREQUENCIES, dtype=torch.float32) / 2


def build_condition_embedding(condition: Mapping[str, Sequence[str] | None], width: int):
    """The module mapping condition rows (B, len(condition)) to embeddings (B, width);
    `condition` maps each kind the model uses to its class names (None for continuous kinds)."""
    import torch
    from torch import nn

    class ConditionEmbedding(nn.Module):
        """Sum over kinds of a class embedding, or a linear map of Fourier features; a
        learnt "absent" embedding per kind where the value is NaN."""

        def __init__(self) -> None:
            super().__init__()
            self.kinds = ordered_kinds(list(condition))
            self.classes = nn.ModuleDict()
            self.fourier = nn.ModuleDict()
            self.absent = nn.ParameterDict()
            for kind in self.kinds:
                names = condition[kind]
                if kind in CLASS_KINDS:
                    if not names:
                        raise ValueError(f"condition {kind!r} needs its class names")
                    self.classes[kind] = nn.Embedding(len(names) + 1, width)  # last: absent
                else:
                    self.register_buffer(f"freq_{kind}", _frequencies(kind), persistent=False)
                    self.fourier[kind] = nn.Linear(2 * FOURIER_FREQUENCIES, width)
                    self.absent[kind] = nn.Parameter(torch.zeros(width))

        def forward(self, cond: torch.Tensor) -> torch.Tensor:
            if cond.ndim != 2 or cond.shape[1] != len(self.kinds):
                raise ValueError(f"expected conditions of shape (B, {len(self.kinds)}) for "
                                 f"{self.kinds}, got {tuple(cond.shape)}")
            cond = cond.float()
            total = None
            for j, kind in enumerate(self.kinds):
                value = cond[:, j]
                missing = value.isnan()
                known = value.nan_to_num(0.0)  # no NaN reaches a gradient
                if kind in CLASS_KINDS:
                    table = self.classes[kind]
                    index = known.long().clamp(0, table.num_embeddings - 2)
                    index = torch.where(missing, table.num_embeddings - 1, index)
                    emb = table(index)
                else:
                    args = _unit(kind, known)[:, None] * getattr(self, f"freq_{kind}")[None, :]
                    emb = self.fourier[kind](torch.cat((args.sin(), args.cos()), dim=-1))
                    emb = torch.where(missing[:, None], self.absent[kind][None, :].to(emb.dtype), emb)
                total = emb if total is None else total + emb
            return total

    return ConditionEmbedding()


def guided(unconditional, conditional, guidance: float):  # noqa: ANN001, ANN201
    """Classifier-free guidance: u + w (c - u). w = 0 unconditional, 1 conditional, > 1 guided."""
    return unconditional + guidance * (conditional - unconditional)
