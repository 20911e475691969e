"""A real HTTP server that receives trigger webhooks, for tests.

It checks every request's signature the way a receiver documented in docs/journeys.md
would — recomputing HMAC-SHA256 over ``<timestamp>.<raw body>`` itself with :mod:`hmac`,
not with the code under test — and records what came in. It can be told to answer
some requests with an error first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    event_id: str
    body: bytes
    signature_ok: bool
    at: float


@dataclass
class Receiver:
    """Serves on 127.0.0.1 (a free port) in a thread; ``url`` is where to POST."""

    secret: bytes
    fail_first: int = 0
    """Answer this many requests with ``fail_status`` before succeeding."""
    fail_status: int = 500
    always_status: int | None = None
    """Answer every request with this status (a receiver that refuses everything)."""
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _answered: int = 0

    def start(self) -> Receiver:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the receiver did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Touchpoint-Timestamp", "")
        signature = request.headers.get("X-Touchpoint-Signature", "")
        expected = (
            "v1="
            + hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        ok = fresh and hmac.compare_digest(expected, signature)
        with self._lock:
            self._answered += 1
            answered = self._answered
            self.received.append(
                Received(request.headers.get("X-Touchpoint-Event-Id", ""), body, ok, time.time())
            )
        if not ok:
            return web.Response(status=401, text="bad signature")
        if self.always_status is not None:
            return web.Response(status=self.always_status)
        if answered <= self.fail_first:
            return web.Response(status=self.fail_status)
        return web.Response(status=204)

    def delivered_ids(self) -> Counter[str]:
        """Event ids of the requests answered 2xx (what the receiver processed)."""
        with self._lock:
            seen = list(self.received)
        ok = Counter[str]()
        for number, item in enumerate(seen, 1):
            if item.signature_ok and self.always_status is None and number > self.fail_first:
                ok[item.event_id] += 1
        return ok
