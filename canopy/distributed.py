"""Several processes, one run: torch.distributed as launched by `torchrun` (nanoGPT's way).

torchrun (or any launcher) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
each process's environment; without them a stage runs as one process, exactly as before, and
nothing here calls torch.distributed. Rank 0 is the main process: it alone takes the output
lock and writes outputs; other ranks compute and say nothing.

Backends: NCCL on CUDA (rank r on cuda:LOCAL_RANK), gloo on CPU. Every collective has the
`timeout` given at init, so a rank that dies or hangs makes the others stop within it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from canopy.errors import RunAborted, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, total: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of `total` items (total % world == 0)."""
        per = total // self.world
        return self.rank * per, (self.rank + 1) * per

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK on CUDA, else `device` unchanged."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = Dist()


def from_env() -> Dist:
    """The ranks torchrun describes in the environment; one process when WORLD_SIZE is unset."""
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return SINGLE
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as err:
        raise UserError(f"the torchrun environment is malformed ({err}): launch with torchrun") from None
    if not (world >= 1 and 0 <= rank < world and 0 <= local_rank < local_world):
        raise UserError(f"RANK {rank}, LOCAL_RANK {local_rank}, WORLD_SIZE {world} do not fit "
                        "together: launch with torchrun")
    return Dist(rank, local_rank, world, local_world)


def is_main_process() -> bool:
    """Whether this process may print and write: rank 0, or not launched by torchrun."""
    return os.environ.get("RANK", "0") == "0"


def refuse(stage: str) -> None:
    """For a stage that runs as one process only."""
    if from_env().enabled:
        raise UserError(f"canopy {stage} runs as one process: run it without torchrun "
                        "(WORLD_SIZE is set above 1)")


def check_devices(dist: Dist, device: torch.device, key: str) -> None:
    """Refuse more ranks on a node than it has GPUs, or a device DDP cannot use."""
    if not dist.enabled:
        return
    if device.type == "cuda" and dist.local_world > torch.cuda.device_count():
        raise UserError(f"torchrun starts {dist.local_world} processes on this node but it has "
                        f"{torch.cuda.device_count()} CUDA GPUs: pass --nproc-per-node "
                        f"{torch.cuda.device_count()} or fewer")
    if device.type == "mps":
        raise UserError(f"{key} is mps, which torch.distributed cannot use: run without "
                        "torchrun, or on CUDA or CPU")


@contextlib.contextmanager
def process_group(dist: Dist, device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the process group for the block (nothing when one process), then leave it."""
    if not dist.enabled:
        yield
        return
    import torch.distributed as td

    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(dist.local_rank)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        td.init_process_group(backend, rank=dist.rank, world_size=dist.world,
                              timeout=datetime.timedelta(seconds=timeout_s))
        # A first collective: init returns before every rank has connected with some backends.
        td.barrier()
    except (RuntimeError, ValueError, td.DistError) as err:
        _destroy()
        raise UserError(f"could not join the {dist.world} ranks at {where} within {timeout_s:g} s "
                        f"({_first_line(err)}): check MASTER_ADDR/MASTER_PORT (torchrun "
                        "--rdzv-endpoint) and that every node was started") from None
    try:
        yield
    finally:
        _destroy()


def _destroy() -> None:
    import torch.distributed as td

    if td.is_initialized():
        with contextlib.suppress(Exception):
            td.destroy_process_group()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


@contextlib.contextmanager
def collectives(what: str) -> Iterator[None]:
    """A collective that fails means another rank is gone (killed, crashed, timed out): say
    so in one line instead of a backend traceback."""
    import torch.distributed as td

    try:
        yield
    except (td.DistError, RuntimeError) as err:
        # DDP's all-reduce inside backward raises a plain RuntimeError from the backend.
        if td.is_initialized() and (isinstance(err, td.DistError) or _from_backend(err)):
            raise RunAborted(f"another rank stopped or cannot be reached during {what} "
                             f"({_first_line(err)}); the last complete checkpoint is kept") from None
        raise


def _from_backend(err: BaseException) -> bool:
    text = str(err).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout"))


def max_int(dist: Dist, value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (e.g. "has any rank been asked to stop")."""
    if not dist.enabled:
        return value
    import torch.distributed as td

    flag = torch.tensor([value], dtype=torch.int64, device=device)
    with collectives("training"):
        td.all_reduce(flag, op=td.ReduceOp.MAX)
    return int(flag.item())


def mean(dist: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (log rows: the loss of the global batch)."""
    if not dist.enabled:
        return value
    import torch.distributed as td

    out = value.detach().clone().float()
    with collectives("training"):
        td.all_reduce(out, op=td.ReduceOp.SUM)
    return out / dist.world


def barrier(dist: Dist, what: str) -> None:
    if dist.enabled:
        import torch.distributed as td

        with collectives(what):
            td.barrier()


def broadcast(dist: Dist, value: Any, what: str) -> Any:
    """Rank 0's `value` on every rank (a small picklable object)."""
    if not dist.enabled:
        return value
    import torch.distributed as td

    box = [value]
    with collectives(what):
        td.broadcast_object_list(box, src=0)
    return box[0]


def gather(dist: Dist, value: Any, what: str) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not dist.enabled:
        return [value]
    import torch.distributed as td

    out: list[Any] = [None] * dist.world
    with collectives(what):
        td.all_gather_object(out, value)
    return out


def on_main(dist: Dist, action: Callable[[], T], what: str) -> T | None:
    """Run `action` on rank 0 only; a UserError there stops every rank (quietly: rank 0
    prints it), instead of leaving them waiting for rank 0 in their next collective."""
    error, result = None, None
    if dist.is_main:
        try:
            result = action()
        except UserError as err:
            error = str(err)
    error = broadcast(dist, error, what)
    if error is not None:
        raise UserError(error)
    return result


@contextlib.contextmanager
def main_context(dist: Dist, make: Callable[[], contextlib.AbstractContextManager[T]],
                 what: str) -> Iterator[T | None]:
    """Enter the context manager `make()` on rank 0 only (the output lock, the staging
    folder), with on_main's error handling; other ranks get None."""
    with contextlib.ExitStack() as stack:
        value = on_main(dist, lambda: stack.enter_context(make()), what)
        yield value
