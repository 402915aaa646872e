"""User-facing errors: one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from canopy.signals import interrupt_on_stop_signals

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


# A full disk or an exhausted quota: the user frees space, nothing in canopy is wrong.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """A problem the user can fix (bad params, missing input...). The message says how."""


class RunAborted(Exception):
    """A run of several ranks (torchrun) that lost one of them: one line, exit code 1."""


RUN_ABORTED_EXIT_CODE = 1


def _is_main_rank() -> bool:
    # Under torchrun every rank meets the same bad params: rank 0 alone says so.
    import os

    return os.environ.get("RANK", "0") == "0"


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def note_disk_full(err: OSError, folder: Path, needed: int | None = None) -> None:
    """Record on a disk-full error which folder was being written (and how many bytes), when
    the failing call did not say: a plain write() names no file."""
    if err.filename is None:
        err.filename = str(folder)
    if needed is not None and getattr(err, "bytes_needed", None) is None:
        err.bytes_needed = needed


def disk_full_message(err: OSError) -> str:
    folder = _folder_of(err.filename)
    if folder is None:
        return f"the disk is full ({err.strerror}): free some space and re-run"
    needed = getattr(err, "bytes_needed", None)
    parts = [f"{folder} is full ({err.strerror})"]
    if needed is not None:
        parts.append(f"{_megabytes(needed)} were needed")
    free = _free_bytes(folder)
    if free is not None:
        parts.append(f"{_megabytes(free)} free")
    return "; ".join(parts) + ": free some space there (or write elsewhere) and re-run"


def _folder_of(filename: object) -> Path | None:
    if not isinstance(filename, (str, bytes)) or not filename:
        return None
    path = Path(filename.decode(errors="replace") if isinstance(filename, bytes) else filename)
    return path if path.is_dir() else path.parent


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _let_rank_0_speak() -> None:
    # torchrun's agent stops every worker as soon as one exits with an error: a rank other
    # than 0 that met the same bad params waits a moment, so that rank 0 prints the line.
    import os
    import time

    if "TORCHELASTIC_RUN_ID" in os.environ:
        time.sleep(3)


def _rank_prefix() -> str:
    import os

    return f"rank {os.environ['RANK']}: " if "RANK" in os.environ else ""


def _lost_local_rank() -> bool:
    """Under torchrun: whether a worker of this node has exited. torchrun stops the others of
    a run with SIGTERM when one fails, and that SIGTERM can come before the collective that
    would have said so: it must not read as the user's interrupt. Checked when the signal
    arrives, before this node's other workers exit on the same SIGTERM."""
    import os

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    try:
        expected = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return False
    alive = _live_children(os.getppid())
    return expected > 1 and alive is not None and alive < expected


def _live_children(parent: int) -> int | None:
    """How many processes of `parent` are running (not zombies), from /proc; None where
    there is no /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    alive = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state not in ("Z", "X"):
            alive += 1
    return alive


def _stop_signal(signum: int) -> None:
    import signal

    if signum == signal.SIGTERM and _lost_local_rank():
        raise RunAborted("another rank stopped or cannot be reached (a worker of this node "
                         "exited, and torchrun stopped this one)")


@contextlib.contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """Turn UserError, and a full disk or quota, into one line on stderr and exit code 2.

    SIGTERM (what `kill`, DVC and job schedulers send) is handled like Ctrl-C, and Ctrl-C works
    even when SIGINT was inherited as ignored (canopy/signals.py), so the cleanup that runs on
    KeyboardInterrupt (removing staging folders, saving a checkpoint) runs too.
    """
    try:
        with interrupt_on_stop_signals(_stop_signal):
            yield
    except UserError as err:
        if _is_main_rank():
            message = " ".join(str(err).split("\n"))
            print(f"canopy {stage}: error: {message}", file=sys.stderr)
        else:
            _let_rank_0_speak()
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
    except RunAborted as err:
        print(f"canopy {stage}: error: {_rank_prefix()}{err}", file=sys.stderr)
        raise typer.Exit(RUN_ABORTED_EXIT_CODE) from None
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"canopy {stage}: error: {disk_full_message(err)}", file=sys.stderr)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        print(f"canopy {stage}: interrupted", file=sys.stderr)
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
