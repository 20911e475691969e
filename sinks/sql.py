"""Ad-hoc SQL over the store, for ``touchpoint sql``: read-only unless asked.

Embedded (``chdb:``): a session of the engine in this process, with ClickHouse's own
``readonly = 1`` (writes, DDL, ``SET`` and the file/url table functions are refused with
error 164). A server (``http(s)://``): clickhouse-connect's HTTP client, ``readonly = 1``
sent with each query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import SinkFatalError
from schemas.settings import ClickHouseSettings
from sinks.clickhouse import chdb_path, connect, identifier, translate_error
from sinks.http_front import ChdbEngine, ServeError, open_engine

__all__ = ["ResultTable", "SqlConsole", "open_console", "parse_table"]

_FORMAT: Final = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)
_NUMERIC: Final = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal.*|BFloat16)\)?$")
TABLE_FORMAT: Final = "TabSeparatedWithNamesAndTypes"


@dataclass(frozen=True)
class ResultTable:
    """A result as text cells (ClickHouse's TSV rendering), with its column types."""

    names: list[str]
    types: list[str]
    rows: list[list[str]]
    truncated: bool

    @property
    def numeric(self) -> list[bool]:
        return [bool(_NUMERIC.match(kind)) for kind in self.types]


def _unescape(cell: str) -> str:
    if cell == "\\N":
        return "NULL"
    return re.sub(
        r"\\(.)",
        lambda m: {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "\\": "\\"}.get(
            m.group(1), m.group(1)
        ),
        cell,
    )


def parse_table(data: bytes, max_rows: int) -> ResultTable:
    """A ``TabSeparatedWithNamesAndTypes`` answer as a table of at most ``max_rows`` rows."""
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        return ResultTable([], [], [], truncated=False)
    names = [_unescape(cell) for cell in lines[0].split("\t")]
    types = [_unescape(cell) for cell in lines[1].split("\t")]
    body = lines[2:]
    rows = [[_unescape(cell) for cell in line.split("\t")] for line in body[:max_rows]]
    return ResultTable(names, types, rows, truncated=len(body) > max_rows)


def has_format(sql: str) -> bool:
    """Whether the statement names its own output format (``... FORMAT X``)."""
    return bool(_FORMAT.search(sql))


class SqlConsole(Protocol):
    """Runs one statement at a time; :class:`SinkFatalError` for a statement that fails."""

    def run(self, sql: str, fmt: str, *, max_rows: int | None = None) -> bytes: ...

    def close(self) -> None: ...


class _Embedded:
    def __init__(self, engine: ChdbEngine) -> None:
        self._engine = engine

    def run(self, sql: str, fmt: str, *, max_rows: int | None = None) -> bytes:
        # A cap the engine stops at (in blocks), so a big table does not all load to print.
        settings = (
            {"max_result_rows": str(max_rows), "result_overflow_mode": "break"}
            if max_rows is not None
            else {}
        )
        try:
            with self._engine.execute(
                sql, None, None, settings, {}, default_format=fmt, stream=False
            ) as (chunks, _, _summary):
                return b"".join(chunks)
        except ServeError as exc:
            raise SinkFatalError(f"query failed: {exc.message}") from exc

    def close(self) -> None:
        self._engine.close(timeout=5)


class _Server:
    def __init__(self, url: str, settings: ClickHouseSettings, database: str, readonly: bool):
        self._client = connect(url, settings)
        self._client.database = database
        self._readonly = readonly

    def run(self, sql: str, fmt: str, *, max_rows: int | None = None) -> bytes:
        settings = {"readonly": "1"} if self._readonly else {}
        try:
            data = self._client.raw_query(
                sql.rstrip().rstrip(";"),
                settings=settings,
                fmt=None if has_format(sql) else fmt,
            )
        except ClickHouseError as exc:
            raise translate_error(exc, "query") from exc
        return bytes(data)

    def close(self) -> None:
        self._client.close()


def open_console(
    url: str, settings: ClickHouseSettings, database: str, *, read_write: bool
) -> SqlConsole:
    """A console on the store at ``url`` (``chdb:DIR`` or a server), database ``database``."""
    path: Path | None = chdb_path(url)
    if path is None:
        return _Server(url, settings, identifier(database), readonly=not read_write)
    engine = open_engine(path, readonly=0 if read_write else 1, database=identifier(database))
    return _Embedded(engine)
