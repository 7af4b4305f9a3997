"""The closing lines of every command: what it did and the paths it wrote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console


def print_summary(command: str, rows: Mapping[str, Any]) -> None:
    """``vdistill <command> done`` and one aligned line per output, paths as given."""
    width = max(map(len, rows), default=0)
    lines = [f"[bold green]vdistill {command}[/bold green] done"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows.items()]
    Console().print("\n".join(lines), highlight=False, soft_wrap=True)
