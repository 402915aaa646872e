"""User-facing errors: one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import typer

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """A problem the user can fix (bad params, missing input...). The message says how."""


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """Turn UserError into one line on stderr and exit code 2.

    SIGTERM (what `kill`, DVC and job schedulers send) is handled like Ctrl-C, so the cleanup
    that runs on KeyboardInterrupt (removing staging folders, saving a checkpoint) runs too.
    """
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    except UserError as err:
        message = " ".join(str(err).split("\n"))
        print(f"canopy {stage}: error: {message}", file=sys.stderr)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        print(f"canopy {stage}: interrupted", file=sys.stderr)
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)
