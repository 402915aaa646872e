"""Training curves in dvclive (models/live/, drawn by dvc.yaml's plots): the rows logged every
train.log_every steps, what they measure, and the trimming that makes a resumed run show each
step once."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from canopy import distributed
from canopy.distributed import Dist
from canopy.errors import UserError


class NoLive:
    """What ranks other than 0 log to: nothing (they write no file)."""

    step = 0

    def log_metric(self, *args: Any) -> None:
        pass

    def log_image(self, *args: Any) -> None:
        pass

    def make_summary(self) -> None:
        pass

    def end(self) -> None:
        pass


class Meter:
    """Sums on the device between log rows: no per-step sync with the GPU. Under torchrun
    the loss is averaged over the ranks (the global batch's) where it is read: at log rows
    and checkpoints, which every rank reaches at the same steps."""

    def __init__(self, dist: Dist = distributed.SINGLE) -> None:
        self.dist = dist
        self._reset()

    def _reset(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.grad_norm: torch.Tensor | float = 0.0
        self.steps = 0
        self.images = 0
        self.since = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, images: int) -> None:
        self.loss = self.loss + loss.float()
        self.grad_norm = self.grad_norm + grad_norm.float()
        self.steps += 1
        self.images += images

    def _loss(self) -> float:
        if isinstance(self.loss, torch.Tensor):
            return float(distributed.mean(self.dist, self.loss))
        return float(self.loss)

    def check_finite(self, step: int) -> None:
        if self.steps:
            refuse_diverged(self._loss(), step)

    def flush(self, step: int) -> dict[str, float]:
        loss = self._loss()
        refuse_diverged(loss, step)
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        row = {
            "loss": loss / self.steps,
            "grad_norm": float(self.grad_norm) / self.steps,
            "images_per_s": self.images / elapsed,
        }
        self._reset()
        return row


def refuse_diverged(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise UserError(
            f"the loss became {loss} by step {step}: training diverged (the last "
            "good checkpoint is kept); lower train.lr, raise train.warmup_steps or use "
            "train.precision: fp32"
        )


def log_metrics(live: Any, step: int, row: dict[str, float], lr: float) -> None:
    live.step = step
    for name, value in row.items():
        live.log_metric(name, value)
    live.log_metric("lr", lr)
    live.make_summary()


def open_live(live_dir: Path, start: int) -> Any:
    """dvclive in <out>/live (dvc.yaml declares its metrics and plots). On resume, rows and
    preview grids from steps after the checkpoint (done before a crash) are dropped first, so
    the plots show each step once."""
    from dvclive import Live

    if start:
        _trim_live(live_dir, start)
        _drop_torn_summary(live_dir / "metrics.json")
    return Live(str(live_dir), resume=bool(start), dvcyaml=False, save_dvc_exp=False, report=None)


def _drop_torn_summary(summary: Path) -> None:
    """dvclive writes metrics.json in place: a kill in the middle leaves it empty or cut off,
    and dvclive's resume would fail to parse it. It only holds the latest row, which the next
    step writes again, so a torn one is dropped."""
    try:
        json.loads(summary.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        summary.unlink()


def _trim_live(live_dir: Path, step: int) -> None:
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        column = lines[0].rstrip("\n").split("\t").index("step") if "step" in lines[0] else 0
        kept = lines[:1] + [ln for ln in lines[1:] if _field_int(ln, column) <= step]
        tsv.write_text("".join(kept), encoding="utf-8")
    for image in (live_dir / "plots" / "images" / "samples").glob("*.png"):
        if image.stem.isdigit() and int(image.stem) > step:
            image.unlink()


def _field_int(line: str, column: int) -> int:
    fields = line.rstrip("\n").split("\t")
    try:
        return int(fields[column])
    except (IndexError, ValueError):
        return 0
