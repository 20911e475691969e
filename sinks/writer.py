"""The batched, idempotent ClickHouse writer.

Rows arrive either already encoded — one JSON object per row, as the processors and the
internal Kafka topics carry them — and go to ClickHouse as one ``JSONEachRow`` block per
table (ClickHouse parses and converts them in C++, with the GIL released), or as typed
:class:`~schemas.rows.Row` objects (the small imports), inserted column-oriented.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import SinkFatalError, SinkRetryableError
from schemas.rows import Row, TouchpointRow
from sinks.base import RowBatch, Sink
from sinks.clickhouse import Client, identifier, translate_error
from sinks.metrics import SinkMetrics

__all__ = ["JSON_INPUT_SETTINGS", "ClickHouseWriter"]

JSON_INPUT_SETTINGS: Final = {
    # Rows carry times as float seconds (the processors) or ISO-8601 strings (rows
    # serialized by pydantic, e.g. the collector's dead letters): read both.
    "date_time_input_format": "best_effort",
    # ExitTuple values are JSON arrays, as pydantic and the processors write them.
    "input_format_json_named_tuples_as_objects": 0,
    # A row with a field the table does not have is an error, not silently cut.
    "input_format_skip_unknown_fields": 0,
    # One parsing thread: the blocks are a few MB, and the other core is busy folding
    # the next batch; parallel parsing buys nothing here and holds ~100 MB of buffers.
    "input_format_parallel_parsing": 0,
}

logger = logging.getLogger(__name__)


class ClickHouseWriter(Sink):
    """Writes each batch as one insert per table, tagged with an ``insert_deduplication_token``.

    A batch is written before :meth:`write` returns; if an insert fails in a
    retryable way the whole batch is retried (tables already written drop the
    replay by token) after ``backoff``, doubling up to ``backoff_max``, at most
    ``retries`` times; then the ``SinkRetryableError`` is raised and the caller keeps
    the batch (the Kafka sink tries it again, for as long as it takes). With ``metrics``,
    ``touchpoint_sink_clickhouse_up`` is 0 from a failed attempt until an insert
    succeeds and ``touchpoint_sink_last_insert_timestamp_seconds`` marks each success.
    """

    def __init__(
        self,
        client: Client,
        database: str,
        *,
        retries: int = 5,
        backoff: timedelta = timedelta(milliseconds=200),
        backoff_max: timedelta = timedelta(seconds=30),
        sleep: Callable[[float], None] = time.sleep,
        metrics: SinkMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        self.client = client
        self.database = identifier(database)
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = max(backoff, backoff_max)
        self._sleep = sleep
        self.rows_written: dict[str, int] = {}

    def write(self, batch: RowBatch) -> None:
        attempt = 0
        started = time.perf_counter()
        metrics = self.metrics
        while True:
            try:
                self._insert(batch)
                self._observe(batch, time.perf_counter() - started)
                if metrics is not None:
                    metrics.clickhouse_up.set(1)
                    metrics.last_insert.set_to_current_time()
                return
            except SinkFatalError:
                if metrics is not None:
                    metrics.failures.inc()
                raise
            except SinkRetryableError as exc:
                if metrics is not None:
                    metrics.clickhouse_up.set(0)
                attempt += 1
                if attempt > self.retries:
                    if metrics is not None:
                        metrics.failures.inc()
                    raise SinkRetryableError(
                        f"{exc} (gave up after {self.retries} retries)"
                    ) from exc
                if metrics is not None:
                    metrics.retries.inc()
                delay = min(
                    self.backoff.total_seconds() * 2 ** (attempt - 1),
                    self.backoff_max.total_seconds(),
                )
                logger.warning(
                    "insert of batch %s failed (%s); retry %d/%d in %.2fs",
                    batch.token,
                    exc,
                    attempt,
                    self.retries,
                    delay,
                )
                self._sleep(delay)

    def _insert(self, batch: RowBatch) -> None:
        for table, rows in batch.tables.items():
            if not rows:
                continue
            settings = {
                "insert_deduplication_token": f"{batch.token}:{table}",
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            }
            try:
                if isinstance(rows[0], bytes):
                    self.client.raw_insert(
                        f"{self.database}.{table}",
                        None,
                        b"\n".join(cast(Sequence[bytes], rows)),
                        fmt="JSONEachRow",
                        settings={**settings, **JSON_INPUT_SETTINGS},
                    )
                else:
                    self.client.insert(
                        table,
                        _columns(cast(Sequence[Row], rows)),
                        column_names=list(type(rows[0]).columns()),
                        database=self.database,
                        column_oriented=True,
                        settings=settings,
                    )
            except ClickHouseError as exc:
                raise translate_error(exc, f"insert into {self.database}.{table}") from exc
            except (OSError, ValueError, TypeError) as exc:
                raise SinkFatalError(f"insert into {self.database}.{table} failed: {exc}") from exc
        for table, rows in batch.tables.items():
            self.rows_written[table] = self.rows_written.get(table, 0) + len(rows)

    def _observe(self, batch: RowBatch, seconds: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.insert_seconds.observe(seconds)
        metrics.batch_rows.observe(len(batch))
        now = self._clock().timestamp()
        for table, rows in batch.tables.items():
            if rows:
                metrics.rows.labels(table).inc(len(rows))
            if table != TouchpointRow.table or not rows:
                continue
            if isinstance(rows[0], bytes):
                occurred, received = event_times(cast(Sequence[bytes], rows))
            else:
                typed = [row for row in rows if isinstance(row, TouchpointRow)]
                occurred = [row.occurred_at.timestamp() for row in typed]
                received = [
                    row.received_at.timestamp() for row in typed if row.received_at is not None
                ]
            event_seconds = metrics.event_to_written.observe
            for at in occurred:
                event_seconds(now - at)
            received_seconds = metrics.received_to_written.observe
            for at in received:
                received_seconds(now - at)

    def flush(self) -> None:
        """Nothing is buffered: every batch is written inside :meth:`write`."""

    def close(self) -> None:
        self.client.close()


_OCCURRED: Final = re.compile(rb'"occurred_at":(-?[0-9][0-9.eE+-]*|"[^"]*")')
_RECEIVED: Final = re.compile(rb'"received_at":(-?[0-9][0-9.eE+-]*|"[^"]*")')


def _seconds(value: bytes) -> float | None:
    if value[:1] != b'"':
        return float(value)
    try:
        return datetime.fromisoformat(value[1:-1].decode()).timestamp()
    except ValueError:
        return None


def event_times(rows: Sequence[bytes]) -> tuple[list[float], list[float]]:
    """``occurred_at`` and ``received_at`` (Unix seconds) of encoded touchpoint rows.

    Read with a regular expression over the whole block (C speed), not by decoding rows.
    """
    block = b"\n".join(rows)
    occurred = [at for at in map(_seconds, _OCCURRED.findall(block)) if at is not None]
    received = [at for at in map(_seconds, _RECEIVED.findall(block)) if at is not None]
    return occurred, received


def _columns(rows: Sequence[Row]) -> list[list[object]]:
    names = type(rows[0]).columns()
    return [[getattr(row, name) for row in rows] for name in names]
