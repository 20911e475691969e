"""A sink that writes in a background thread, so producing the next batch overlaps the insert.

ClickHouse does its part of an insert (parsing, sorting, writing parts, materialized
views) in C++ with the GIL released, so on a machine with two cores the processors
can fold the next batch while the engine writes this one. :class:`BackgroundSink`
keeps at most ``depth`` batches in flight, in order; a failed write is raised from
the next :meth:`write` or :meth:`flush`, and nothing after a failed batch is written
(the batch stays the caller's responsibility: a run that fails is re-run, and the
deterministic tokens drop what was already written).
"""

from __future__ import annotations

import queue
import threading
from typing import Final

from schemas.errors import SinkError, SinkFatalError
from sinks.base import RowBatch, Sink

__all__ = ["BackgroundSink"]

_STOP: Final = None
"""Put on the queue by :meth:`BackgroundSink.close`: the writer thread ends there."""


class BackgroundSink(Sink):
    """Wraps ``inner``: :meth:`write` hands the batch to a writer thread and returns."""

    def __init__(self, inner: Sink, *, depth: int = 1, close_inner: bool = True) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.inner = inner
        self._close_inner = close_inner
        self._queue: queue.Queue[RowBatch | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="clickhouse-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self.inner.write(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, SinkError):
            raise error
        raise SinkFatalError(f"the background writer failed: {error}") from error

    def write(self, batch: RowBatch) -> None:
        if self._closed:
            raise SinkFatalError("write() after close()")
        self._raise_error()
        self._queue.put(batch)

    def flush(self) -> None:
        """Wait until every batch handed over is written; raise the first failure."""
        self._queue.join()
        self._raise_error()
        self.inner.flush()

    def abandon(self) -> None:
        """Stop after what is being written now; drop the rest (the run failed anyway)."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or SinkFatalError("abandoned")
        self._queue.put(_STOP)
        self._thread.join()
        if self._close_inner:
            self.inner.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            if self._close_inner:
                self.inner.close()
