"""The condition embedding of the U-Net (model/condition.py says what the kinds and values are):
per kind, a class embedding or a linear map of Fourier features, summed, plus a learnt "absent"
embedding where a value is NaN; and classifier-free guidance's mix. Pure math."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from canopy.model.condition import CLASS_KINDS, FOURIER_FREQUENCIES, ordered_kinds


def _unit(kind: str, value: torch.Tensor) -> torch.Tensor:
    """A continuous value on the scale its Fourier features expect: one period = 1 for the
    cyclic kinds, about [-1, 1] for the others."""
    if kind == "month":
        return (value - 1) / 12
    if kind == "lon":
        return value / 360
    if kind == "lat":
        return value / 90
    if kind == "gsd":  # log10 of metres: 0.1 m -> -0.5, 10 m -> 0.5
        return value.clamp(min=1e-3).log10() / 2
    return 2 * value - 1  # tree_cover


def _frequencies(kind: str) -> torch.Tensor:
    if kind in ("month", "lon"):  # cyclic: whole periods only
        return 2 * math.pi * torch.arange(1, FOURIER_FREQUENCIES + 1, dtype=torch.float32)
    # 2^0 .. 2^7 half-periods over [-1, 1]: coarse to fine
    return math.pi * 2.0 ** torch.arange(FOURIER_FREQUENCIES, dtype=torch.float32) / 2


class ConditionEmbedding(nn.Module):
    """Condition rows (B, len(kinds)) -> embeddings (B, width): the sum over kinds of a class
    embedding, or a linear map of Fourier features; a learnt "absent" embedding per kind
    where the value is NaN. `condition` maps each kind to its class names (None for a
    continuous kind)."""

    def __init__(self, condition: Mapping[str, Sequence[str] | None], width: int) -> None:
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
                self.classes[kind] = nn.Embedding(len(names) + 1, width)  # last row: absent
                # "absent" starts as no offset, as the continuous kinds' does: the unconditional
                # model then starts as the plain network rather than under a random shift that
                # only the few dropped images can train away (guidance 0 came closer to an
                # unconditioned model's SWD: docs/benchmarks.md "Conditioned generation")
                with torch.no_grad():
                    self.classes[kind].weight[-1].zero_()
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
                emb = table(torch.where(missing, table.num_embeddings - 1, index))
            else:
                args = _unit(kind, known)[:, None] * getattr(self, f"freq_{kind}")[None, :]
                emb = self.fourier[kind](torch.cat((args.sin(), args.cos()), dim=-1))
                emb = torch.where(missing[:, None], self.absent[kind][None, :].to(emb.dtype), emb)
            total = emb if total is None else total + emb
        return total


def guided(unconditional: torch.Tensor, conditional: torch.Tensor, guidance: float
           ) -> torch.Tensor:
    """Classifier-free guidance: u + w (c - u). w = 0 unconditional, 1 conditional, > 1 guided."""
    return unconditional + guidance * (conditional - unconditional)
