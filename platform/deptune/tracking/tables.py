"""Terminal tables: how numbers are shown, and a console wide enough for a job log."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def wide_console() -> Console:
    """The terminal's width, or 160 columns when output is a pipe or a job log (rich defaults to 80)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def fmt(value: Any) -> str:
    """A cell: '-' for nothing, 4 significant digits for floats, thousands separators for big ints."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)
