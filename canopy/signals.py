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


@contextlib.contextmanager
def interrupt_on_stop_signals(first: Callable[[int], None] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the block, as Ctrl-C does on a terminal:
    the cleanup that runs on it (staging folders removed, the old output kept) runs, and
    canopy.errors.user_errors turns it into "interrupted" and exit code 130. `first(signum)`
    runs first, at the moment the signal arrives, and may raise another exception instead."""
    def raise_interrupt(signum: int, frame: Any) -> None:
        if first is not None:
            first(signum)
        raise KeyboardInterrupt

    with handling_stop_signals(raise_interrupt):
        yield
