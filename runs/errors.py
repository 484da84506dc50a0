"""What the CLI modules share: the usage-error type (exit 2) and the consoles."""

from __future__ import annotations

import click
from rich.console import Console

console_err = Console(stderr=True)
console_out = Console()


class UserError(click.ClickException):
    """A usage error: one line on stderr, exit code 2 (bad value, missing file, ...)."""

    exit_code = 2
