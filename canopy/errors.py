"""User-facing errors: one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix (bad params, missing input...). The message says how."""


@contextlib.contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """Turn UserError (and Ctrl-C) into one line on stderr and a non-zero exit code."""
    try:
        yield
    except UserError as err:
        message = " ".join(str(err).split("\n"))
        print(f"canopy {stage}: error: {message}", file=sys.stderr)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        print(f"canopy {stage}: interrupted; no partial output was left behind", file=sys.stderr)
        raise typer.Exit(130) from None
