"""Terminal output shared by the CLI and the demo: a console as wide as the terminal
(or COLUMNS; 120 when piped), and tables that fit 80 columns."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def console() -> Console:
    # A terminal's own width (or COLUMNS); piped (CI logs, `| less`): 120.
    tty = sys.stdout.isatty() or "COLUMNS" in os.environ
    return Console(width=None if tty else 120)


def table(
    title: str | None, *columns: str, right: Iterable[str] = (), header: bool = True
) -> Table:
    """A table for an 80-column terminal: a rule under the header and no other lines,
    one space between columns, no cell wrapped (``right``: the right-aligned ones)."""
    aligned = set(right)
    t = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        show_header=header,
        min_width=len(title or ""),  # a title wider than the columns is not wrapped
    )
    for col in columns:
        t.add_column(col, justify="right" if col in aligned else "left", no_wrap=True)
    return t


def plural(n: int, word: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def fits(out: Console, renderable: Table) -> bool:
    """Whether ``renderable`` fits ``out``'s width without squeezing a column."""
    unbounded = out.options.update_width(10_000)  # measured as wide as it wants
    return Measurement.get(out, unbounded, renderable).maximum <= out.width


def compact(n: int) -> str:
    """Three significant figures and a suffix past 99,999: ``1.02M``, ``18.0G``."""
    if abs(n) < 100_000:
        return f"{n:,}"
    for suffix, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g}{suffix}" if value < 1000 else f"{value:,.0f}{suffix}"
    return f"{n:,}"
