"""``touchpoint sql``: one statement, or an interactive prompt, over the store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TextIO

try:
    import readline  # line editing and history for the prompt
except ImportError:  # not on every platform: the prompt works without
    readline = None  # type: ignore[assignment]

from schemas.errors import ConfigError, TouchpointError
from schemas.settings import Settings
from sinks.report import render_table
from sinks.sql import TABLE_FORMAT, SqlConsole, has_format, open_console, parse_table

__all__ = ["FORMATS", "console", "history_file", "interactive", "run_statement"]

FORMATS: Final = {
    # what --format names → the ClickHouse format written (CSV and TSV with a header row)
    "CSV": "CSVWithNames",
    "TSV": "TabSeparatedWithNames",
    "JSONEachRow": "JSONEachRow",
    "Parquet": "Parquet",
}
MAX_TABLE_ROWS: Final = 1000


@contextmanager
def console(settings: Settings, *, read_write: bool) -> Iterator[SqlConsole]:
    """A SQL console on the database ``touchpoint report`` would read, closed on exit."""
    opened = open_console(
        settings.clickhouse_url(),
        settings.clickhouse,
        settings.clickhouse.database,
        read_write=read_write,
    )
    try:
        yield opened
    finally:
        opened.close()


def _statement(sql: str) -> str:
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise ConfigError("no SQL statement given")
    return text


def run_statement(
    opened: SqlConsole,
    sql: str,
    *,
    fmt: str | None = None,
    output: Path | None = None,
    max_rows: int = MAX_TABLE_ROWS,
) -> str:
    """Run ``sql``: to ``output`` in ``fmt`` (a :data:`FORMATS` name), or as text — an
    aligned table, or the statement's own ``FORMAT``. Returns the text to show."""
    statement = _statement(sql)
    if fmt is not None:
        data = opened.run(statement, FORMATS[fmt])
        if output is None:
            return data.decode("utf-8", "replace").rstrip("\n")
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(data)
        except OSError as exc:
            raise ConfigError(f"cannot write {output}: {exc.strerror or exc}") from exc
        return f"Wrote {len(data):,} bytes ({fmt}) to {output}."
    if has_format(statement):
        return opened.run(statement, TABLE_FORMAT).decode("utf-8", "replace").rstrip("\n")
    table = parse_table(opened.run(statement, TABLE_FORMAT, max_rows=max_rows + 1), max_rows)
    if not table.names:
        return "OK."
    rendered = render_table(table.names, table.rows, numeric=table.numeric)
    shown = f"{len(table.rows):,} row" + ("" if len(table.rows) == 1 else "s")
    if table.truncated:
        shown = f"the first {shown}; more not shown: use --format and --output, or LIMIT"
    return f"{rendered}\n({shown})"


def history_file() -> Path:
    """Where the prompt keeps its history: $XDG_CACHE_HOME/touchpoint (or ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "touchpoint" / "sql_history"


def interactive(
    opened: SqlConsole,
    *,
    stdin: TextIO,
    out: Callable[[str], None],
    err: Callable[[str], None],
    fmt: str | None = None,
) -> int:
    """A prompt: statements end with ``;`` (over several lines if need be), ``\\q`` or
    Ctrl-D ends it, Ctrl-C drops the statement being typed; a failing statement prints its
    error and the prompt goes on. Returns how many statements failed."""
    tty = stdin.isatty()
    history = history_file()
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    if tty:
        out(r"Touchpoint SQL: end a statement with ;  \q or Ctrl-D to leave.")
    failed = 0
    lines: list[str] = []
    try:
        while True:
            prompt = ("touchpoint> " if not lines else "         -> ") if tty else ""
            try:
                line = input(prompt) if tty else stdin.readline()
            except KeyboardInterrupt:
                out("")
                lines = []
                continue
            except EOFError:
                break
            if not tty and line == "":
                break
            line = line.rstrip("\n")
            if not lines and line.strip() in ("\\q", "quit", "exit"):
                break
            if not lines and not line.strip():
                continue
            lines.append(line)
            if not line.rstrip().endswith(";"):
                continue
            if readline is not None:  # one line per entry: the history file is line-based
                readline.add_history(" ".join(part.strip() for part in lines))
            sql, lines = "\n".join(lines), []
            try:
                out(run_statement(opened, sql, fmt=fmt))
            except TouchpointError as exc:
                failed += 1
                err(f"error: {exc}")
            except KeyboardInterrupt:  # Ctrl-C while a statement runs: back to the prompt
                failed += 1
                err("cancelled")
        if lines:
            err("error: the last statement has no closing ; (not run)")
            failed += 1
    finally:
        if readline is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass
    if tty:
        out("")
    return failed
