"""Rendering for the CLI: tables, JSON documents and tab-separated rows.

Data goes to stdout, messages to stderr. Three modes (`-o`):

- `table`: for people; rich tables, colour only on a terminal and without
  --no-color / NO_COLOR.
- `json`: one JSON document per command (always an object), or one object
  per line for streams. The shapes are in `views`.
- `plain`: tab-separated rows, no header, one record per line: for `cut`,
  `awk` and `while read`. Null is the empty field, booleans are true/false.

rich is imported only here and only when a table or a progress display is
drawn: shell completion and `-o json` never pay for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from raftfleet_cli.views import dumps

if TYPE_CHECKING:
    from rich.console import Console

MODES = ("table", "json", "plain")
_WIDE_COLUMNS = 1000  # off a terminal a table is never folded to 80 columns


def color_wanted(no_color_flag: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """False when --no-color is given or NO_COLOR is set to anything non-empty."""
    return not no_color_flag and not environ.get("NO_COLOR")


def make_console(file: IO[str], *, color: bool, stderr: bool = False) -> Console:
    """A rich console for `file`; imported on first use."""
    from rich.console import Console

    terminal = file.isatty()
    return Console(
        file=file,
        stderr=stderr,
        no_color=not color,
        highlight=False,
        soft_wrap=False,
        width=None if terminal else _WIDE_COLUMNS,
    )


def cell(value: object, *, plain: bool) -> str:
    """One value as table or plain text."""
    if value is None:
        return "" if plain else "-"
    if isinstance(value, bool):
        return ("true" if value else "false") if plain else ("yes" if value else "no")
    if isinstance(value, str):
        return value.replace("\t", " ").replace("\n", " ") if plain else value
    if isinstance(value, int | float):
        return str(value)
    return dumps(value)


class Output:
    """Where one command's results go, in the chosen mode."""

    def __init__(self, mode: str = "table", *, color: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown output mode {mode!r}")
        self.mode = mode
        self.color = color
        self._stdout: Console | None = None

    @property
    def json(self) -> bool:
        return self.mode == "json"

    @property
    def plain(self) -> bool:
        return self.mode == "plain"

    # stdout

    def document(self, doc: dict[str, Any]) -> None:
        """One JSON object on one line (also one line of a stream)."""
        self._write(dumps(doc))

    def value(self, value: object) -> None:
        """A data type's reply as JSON text: `$(raftfleet query g1 get)` is the value."""
        self._write(dumps(value))

    def text(self, line: str) -> None:
        self._write(line)

    def rows(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        title: str | None = None,
    ) -> None:
        """A table (table mode) or tab-separated rows without header (plain mode)."""
        rows = list(rows)
        if self.plain:
            for row in rows:
                self._write("\t".join(cell(v, plain=True) for v in row))
            return
        from rich import box
        from rich.table import Table

        table = Table(
            *columns,
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            header_style="bold",
            pad_edge=False,
            show_edge=False,
        )
        for row in rows:
            table.add_row(*(cell(v, plain=False) for v in row))
        self.console.print(table)

    def fields(self, pairs: Iterable[tuple[str, object]]) -> None:
        """A record as `key  value` lines (table mode only)."""
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in pairs:
            table.add_row(key, cell(value, plain=False))
        self.console.print(table)

    @property
    def console(self) -> Console:
        if self._stdout is None:
            self._stdout = make_console(sys.stdout, color=self.color)
        return self._stdout

    def _write(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def note(message: str) -> None:
    """A message for the operator on stderr (never data)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
