"""The batched, column-oriented, idempotent ClickHouse writer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import SinkFatalError, SinkRetryableError
from schemas.rows import Row, TouchpointRow
from sinks.base import RowBatch, Sink
from sinks.clickhouse import Client, identifier, translate_error
from sinks.metrics import SinkMetrics

__all__ = ["ClickHouseWriter"]

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
            columns = _columns(rows)
            try:
                self.client.insert(
                    table,
                    columns,
                    column_names=list(type(rows[0]).columns()),
                    database=self.database,
                    column_oriented=True,
                    settings={
                        "insert_deduplication_token": f"{batch.token}:{table}",
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                    },
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
        now = self._clock()
        for table, rows in batch.tables.items():
            if rows:
                metrics.rows.labels(table).inc(len(rows))
            if table != TouchpointRow.table:
                continue
            for row in rows:
                assert isinstance(row, TouchpointRow)
                metrics.event_to_written.observe((now - row.occurred_at).total_seconds())
                if row.received_at is not None:
                    metrics.received_to_written.observe((now - row.received_at).total_seconds())

    def flush(self) -> None:
        """Nothing is buffered: every batch is written inside :meth:`write`."""

    def close(self) -> None:
        self.client.close()


def _columns(rows: Sequence[Row]) -> list[list[object]]:
    names = type(rows[0]).columns()
    return [[getattr(row, name) for row in rows] for name in names]
