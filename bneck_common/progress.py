"""The one look of bneck's progress bars (rich, on stderr so stdout stays clean for --json)."""

from __future__ import annotations

from typing import Any


def progress_bar(description: str = "{task.description}", transient: bool = False) -> Any:
    """A rich Progress showing description, bar, done/total, elapsed time and ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=transient)
