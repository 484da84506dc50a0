"""What the CLI modules share: the usage-error type (exit 2) and the consoles."""

from __future__ import annotations

import click
from rich.console import Console

console_err = Console(stderr=True)
console_out = Console()


class UserError(click.ClickException):
    """A usage error: one line on stderr, exit code 2 (bad value, missing file, ...)."""

    exit_code = 2


class OutOfSpace(click.ClickException):
    """The disk (or quota) filled up while a command wrote its outputs: one line, exit code 1. Everything
    already committed (finished trials in the study, finished iterations) is kept; the message says how to go on."""

    exit_code = 1


def out_of_space(exc: OSError, resume_hint: str) -> OutOfSpace | None:
    """An `OutOfSpace` for a full disk or quota (ENOSPC, EDQUOT), else None (the error is something else)."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return OutOfSpace(f"no space left on the device{where}: free some space, then {resume_hint}")
