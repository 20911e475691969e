"""In-memory sink for unit tests of the code that drives sinks. Never a stand-in for ClickHouse."""

from __future__ import annotations

from schemas.rows import ROW_ADAPTERS, Row
from sinks.base import RowBatch, Sink

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keeps every batch; replays of a token are ignored like ClickHouse insert dedup does."""

    def __init__(self) -> None:
        self.batches: list[RowBatch] = []
        self.flushes = 0
        self.closed = False
        self._tokens: set[str] = set()

    def write(self, batch: RowBatch) -> None:
        if batch.token in self._tokens:
            return
        self._tokens.add(batch.token)
        self.batches.append(batch)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.flush()
        self.closed = True

    def rows(self, table: str) -> list[Row]:
        """Every row written to ``table``, typed (encoded rows are decoded)."""
        adapter = ROW_ADAPTERS[table]
        return [
            adapter.validate_json(row) if isinstance(row, bytes) else row
            for batch in self.batches
            for row in batch.tables.get(table, ())
        ]
