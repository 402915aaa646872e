"""Start a `canopy` command as several torch.distributed ranks on this machine (gloo over
127.0.0.1), the way torchrun does: one process per rank with RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT set. Starting the ranks ourselves, not through torchrun, gives each rank's
exit code and stderr, and lets a test signal or kill one of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def start(args: list[str], world: int, cwds: list[Path] | None = None) -> list[subprocess.Popen]:
    """`python -m canopy.cli ARGS` as ranks 0..world-1; rank r runs in cwds[r] if given."""
    port = free_port()
    cmd = [sys.executable, "-m", "canopy.cli", *args]
    return [subprocess.Popen(cmd, env=rank_env(rank, world, port), text=True,
                             cwd=cwds[rank] if cwds else None,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for rank in range(world)]


@dataclass
class Finished:
    code: int
    out: str
    err: str


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[Finished]:
    """Wait for every rank (killing all if one overruns: a hang fails the test, never the
    suite)."""
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(Finished(proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def run(args: list[str], world: int, cwds: list[Path] | None = None,
        timeout: float = 120) -> list[Finished]:
    return finish(start(args, world, cwds), timeout)


def single(args: list[str], cwd: Path | None = None, timeout: float = 120) -> Finished:
    """The same command as one plain process (no torchrun variables)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "canopy.cli", *args], env=env, cwd=cwd,
                          text=True, capture_output=True, timeout=timeout)
    return Finished(proc.returncode, proc.stdout, proc.stderr)
