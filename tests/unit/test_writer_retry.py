"""The ClickHouse writer's retry policy, against a client double that fails on purpose.

Only the retry logic is exercised here; real inserts are covered by the integration tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas.errors import SinkFatalError, SinkRetryableError
from schemas.rows import DeadLetterRow
from sinks.base import RowBatch
from sinks.writer import ClickHouseWriter


class FlakyClient:
    """Fails the first ``failures`` inserts with ``error``, then records the rest."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.inserts: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.inserts.append((table, kwargs["settings"]))

    def close(self) -> None:
        self.closed = True


def batch() -> RowBatch:
    row = DeadLetterRow(
        "id",
        "invalid_json",
        "x",
        "{",
        1,
        "h",
        False,
        "f",
        "line 1",
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    return RowBatch(token="run:7", tables={"dead_letters": [row], "touchpoints": []})


def writer(client: FlakyClient, sleeps: list[float], retries: int = 3) -> ClickHouseWriter:
    return ClickHouseWriter(
        client,
        "db",
        retries=retries,  # type: ignore[arg-type]
        backoff=timedelta(milliseconds=100),
        sleep=sleeps.append,
    )


def test_a_retryable_failure_is_retried_with_backoff_and_the_same_token() -> None:
    client, sleeps = FlakyClient(2, OperationalError("connection reset")), []
    writer(client, sleeps).write(batch())
    assert sleeps == [0.1, 0.2]
    assert client.inserts == [
        (
            "dead_letters",
            {
                "insert_deduplication_token": "run:7:dead_letters",
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            },
        )
    ]


def test_the_writer_gives_up_after_its_retries() -> None:
    client, sleeps = FlakyClient(10, OperationalError("down")), []
    with pytest.raises(SinkRetryableError, match="gave up after 3 retries"):
        writer(client, sleeps).write(batch())
    assert len(sleeps) == 3
    assert client.inserts == []


def test_a_fatal_failure_is_not_retried() -> None:
    client, sleeps = FlakyClient(1, DatabaseError("Code: 60. Unknown table")), []
    with pytest.raises(SinkFatalError, match="Unknown table"):
        writer(client, sleeps).write(batch())
    assert sleeps == []


def test_closing_the_writer_closes_the_client() -> None:
    client = FlakyClient(0, OperationalError("unused"))
    with writer(client, []):
        pass
    assert client.closed


def test_the_backoff_doubles_up_to_its_cap() -> None:
    client, sleeps = FlakyClient(6, OperationalError("down")), []
    ClickHouseWriter(
        client,  # type: ignore[arg-type]
        "db",
        retries=6,
        backoff=timedelta(milliseconds=100),
        backoff_max=timedelta(milliseconds=500),
        sleep=sleeps.append,
    ).write(batch())
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert len(client.inserts) == 1


def test_storage_refusing_writes_is_retryable_and_sql_errors_are_not() -> None:
    from sinks.clickhouse import translate_error

    immutable = DatabaseError(
        "Code: 1001. DB::Exception: std::__1::filesystem::filesystem_error: filesystem error: "
        'in create_directories: Operation not permitted ["/x/tmp_insert_all_2_2_0"]. '
        "(STD_EXCEPTION)"
    )
    immutable.code = 1001  # type: ignore[attr-defined]
    full = DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space")
    full.code = 243  # type: ignore[attr-defined]
    other = DatabaseError("Code: 1001. DB::Exception: std::bad_alloc")
    other.code = 1001  # type: ignore[attr-defined]
    assert isinstance(translate_error(immutable, "insert"), SinkRetryableError)
    assert isinstance(translate_error(full, "insert"), SinkRetryableError)
    assert isinstance(translate_error(other, "insert"), SinkFatalError)
