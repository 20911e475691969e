"""The background writer: batches in order, failures raised to the caller, nothing after one."""

from __future__ import annotations

import threading

import pytest

from schemas.errors import SinkFatalError, SinkRetryableError
from sinks.background import BackgroundSink
from sinks.base import RowBatch
from sinks.testing import MemorySink


def batch(token: str) -> RowBatch:
    return RowBatch(token, {"touchpoints": [b'{"event_id": "%s"}' % token.encode()]})


class Failing(MemorySink):
    def __init__(self, fail_on: str) -> None:
        super().__init__()
        self.fail_on = fail_on

    def write(self, batch: RowBatch) -> None:
        if batch.token == self.fail_on:
            raise SinkRetryableError("gave up after 5 retries")
        super().write(batch)


class Gated(MemorySink):
    """Writes only when let through, to show the caller does not wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, batch: RowBatch) -> None:
        self.gate.wait(5)
        super().write(batch)


def test_batches_are_written_in_order_and_flush_waits_for_them() -> None:
    inner = MemorySink()
    sink = BackgroundSink(inner, depth=2)
    for token in ("a", "b", "c"):
        sink.write(batch(token))
    sink.flush()
    assert [b.token for b in inner.batches] == ["a", "b", "c"]
    assert inner.flushes == 1
    sink.close()
    assert inner.closed


def test_write_returns_while_the_previous_batch_is_still_being_written() -> None:
    inner = Gated()
    sink = BackgroundSink(inner, depth=1)
    sink.write(batch("a"))  # taken by the writer thread, which waits at the gate
    sink.write(batch("b"))  # queued: returns at once
    assert inner.batches == []
    inner.gate.set()
    sink.close()
    assert [b.token for b in inner.batches] == ["a", "b"]


def test_a_failed_write_is_raised_to_the_caller_and_nothing_after_it_is_written() -> None:
    inner = Failing(fail_on="b")
    sink = BackgroundSink(inner, depth=1)
    for token in ("a", "b", "c"):
        try:
            sink.write(batch(token))
        except SinkRetryableError:
            break
    with pytest.raises(SinkRetryableError, match="gave up"):
        sink.flush()
    assert [b.token for b in inner.batches] == ["a"]
    sink.abandon()


def test_abandon_stops_the_writer_and_a_later_write_is_refused() -> None:
    inner = MemorySink()
    sink = BackgroundSink(inner, close_inner=False)
    sink.write(batch("a"))
    sink.abandon()
    assert not inner.closed
    with pytest.raises(SinkFatalError):
        sink.write(batch("b"))
