"""SIGINT and SIGTERM during a run: every stage stops on them, however it was started.

Python installs its Ctrl-C handler (KeyboardInterrupt) only if SIGINT was not inherited as
ignored, and a shell starts the background jobs of a script (`canopy etl &`) with SIGINT
ignored, so `kill -INT` would do nothing. So a stage installs its own handlers for the run
and puts the previous ones back afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, Any], Any]


@contextlib.contextmanager
def handling_stop_signals(handler: Handler) -> Iterator[None]:
    """`handler` answers SIGINT and SIGTERM for the block; the previous handlers come back after.

    Only the main thread can install handlers: elsewhere (a library caller's worker thread)
    signals are left alone.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            # None: a handler installed outside Python, which cannot be put back
            with contextlib.suppress(TypeError):
                signal.signal(sig, old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the block, as Ctrl-C does on a terminal:
    the cleanup that runs on it (staging folders removed, the old output kept) runs, and
    canopy.errors.user_errors turns it into "interrupted" and exit code 130."""
    with handling_stop_signals(_raise_interrupt):
        yield


class StopAfterStep:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current step; a
    second signal stops at once (the last good checkpoint is kept)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self._say = say
        self._installed = contextlib.ExitStack()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self._say(f"{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort)")

    def __enter__(self) -> StopAfterStep:
        self._installed.enter_context(handling_stop_signals(self._handle))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._installed.close()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """For worker processes (a DataLoader's worker_init_fn): Ctrl-C reaches the whole process
    group, and workers must not die before the main process has saved its checkpoint; it
    shuts them down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
