"""Serving the collector: bounded connections, slow-sender timeouts, a prompt shutdown.

aiohttp gives no bound on open connections and no deadline for a request's
headers (its keep-alive timer, 75 s under ``run_app``, is all a slow sender
meets), so the collector serves its app through :class:`ConnectionGuard`:

* at most ``max_connections`` open; one more is answered ``503`` (with
  ``Retry-After``) and closed at once, so a crowd of slow senders cannot starve
  the vendors;
* each connection must deliver a request's line and headers within
  ``header_timeout`` of opening, or of the previous response (which also closes
  idle keep-alive connections); a body must then arrive within ``read_timeout``
  (``app.read_body``: 408).

On SIGTERM/SIGINT it stops accepting, lets requests in flight finish for up to
``shutdown_timeout`` (then answers those still waiting for Kafka 503: never 2xx,
so their senders retry), and gives Kafka at most a second more for what is queued.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ingest.collector.app import Collector, create_app
from ingest.collector.metrics import CollectorMetrics
from ingest.collector.publisher import Publisher
from schemas.errors import TouchpointError
from schemas.settings import CollectorSettings

__all__ = ["ConnectionGuard", "serve"]

logger = logging.getLogger(__name__)

_BUSY_BODY: Final = json.dumps(
    {"error": "too_many_connections", "detail": "the collector is at its connection limit"}
).encode()
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
_CLOSE_KAFKA_SECONDS: Final = 1.0
_RUNNER_SHUTDOWN_SECONDS: Final = 0.5
_SWEEP_SECONDS: Final = 0.25
_GC_YOUNG_THRESHOLD: Final = 20_000


class _Refused(asyncio.Protocol):
    """A connection over the limit: answered 503 and closed before any request is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):  # a TCP connection always is
            transport.write(_BUSY)
        transport.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's handler for one connection, seen by the guard when it opens and closes."""

    __slots__ = ("_guard", "_handler")

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self._guard = guard
        self._handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> None:
        self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self._handler)
        self._handler.connection_lost(exc)


class ConnectionGuard:
    """Counts connections, refuses those over the limit, and times out slow headers.

    A connection's header deadline is a number kept beside it (None while a request is
    being answered), checked by one sweep every :data:`_SWEEP_SECONDS` — not a timer
    armed and cancelled per request — so a slow sender is cut off at most that much
    after its deadline.
    """

    def __init__(
        self, server: web.Server, settings: CollectorSettings, metrics: CollectorMetrics
    ) -> None:
        self._server = server
        self._limit = settings.max_connections
        self._header_timeout = settings.header_timeout.total_seconds()
        self._sweep_every = min(_SWEEP_SECONDS, self._header_timeout / 4)
        self._metrics = metrics
        self._open: dict[RequestHandler, float | None] = {}
        self._in_flight: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        metrics.open_connections.set_function(lambda: len(self._open))

    def __len__(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        if len(self._open) >= self._limit:
            self._metrics.connections_refused.inc()
            return _Refused()
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep(), name="collector-header-deadlines")
        handler = self._server()
        self._open[handler] = loop.time() + self._header_timeout
        return _Guarded(self, handler)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._sweep_every)
            now = loop.time()
            late = [
                handler
                for handler, deadline in self._open.items()
                if deadline is not None and deadline <= now
            ]
            for handler in late:
                self._open[handler] = None
                self._metrics.header_timeouts.inc()
                handler.force_close()

    def closed(self, handler: RequestHandler) -> None:
        self._open.pop(handler, None)

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """A request's headers are in: no header deadline until it is answered."""
        connection = request.protocol
        guarded = connection in self._open
        if guarded:
            self._open[connection] = None
        task = request.task
        self._in_flight.add(task)
        try:
            return await handler(request)
        finally:
            self._in_flight.discard(task)
            if guarded and connection in self._open:
                self._open[connection] = asyncio.get_running_loop().time() + self._header_timeout

    def stop(self) -> None:
        """Stop sweeping (the server is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def drain(self, timeout: float, publisher: Publisher) -> int:
        """Let requests in flight finish for ``timeout`` seconds; then those still waiting
        for Kafka are answered 503, and any others cancelled (none was answered 2xx: their
        senders retry). Returns how many did not finish in time."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        late = set(self._in_flight)
        if late:
            publisher.abandon()
            await asyncio.wait(late, timeout=0.5)
            for task in self._in_flight:
                task.cancel()
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=0.5)
        return len(late)


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections: what exists at start (modules, the app) moves to
    the permanent generation, and the youngest generation is collected every 20,000
    allocations instead of 700 — a request allocates thousands of short-lived objects,
    almost none of them in reference cycles. Under batches of 100 a tenth of the
    collector's time went to garbage collection before (py-spy --native; see
    docs/benchmarks.md)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)


async def serve(collector: Collector, stop: asyncio.Event | None = None) -> None:
    """Serve ``collector`` until SIGTERM/SIGINT (or ``stop``), then shut down promptly."""
    settings = collector.settings
    app = create_app(collector)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=settings.header_timeout.total_seconds(),
        lingering_time=1.0,
        shutdown_timeout=_RUNNER_SHUTDOWN_SECONDS,  # requests were drained before
    )
    guard: ConnectionGuard | None = None

    @web.middleware
    async def guarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if guard is None:
            return await handler(request)
        return await guard.middleware(request, handler)

    app.middlewares.insert(0, guarded)
    await runner.setup()
    _tune_gc()
    if runner.server is None:  # AppRunner.setup() always makes one
        raise TouchpointError("the collector's HTTP runner was set up without a server")
    guard = ConnectionGuard(runner.server, settings, collector.metrics)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        guard.protocol, settings.host, settings.port, backlog=1024, reuse_address=True
    )
    stopping = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        logger.info("stopping: %d connections open", len(guard))
        server.close()
        late = await guard.drain(settings.shutdown_timeout.total_seconds(), collector.publisher)
        if late:
            logger.warning("%d requests were still waiting at shutdown: answered 503", late)
        await runner.cleanup()
        guard.stop()
        await asyncio.to_thread(collector.publisher.close, _CLOSE_KAFKA_SECONDS)


def run(collector: Collector) -> None:
    """Block serving ``collector`` (the ``touchpoint collector`` command)."""
    asyncio.run(serve(collector))
