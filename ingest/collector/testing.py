"""An in-memory :class:`~ingest.collector.publisher.Publisher`, for unit tests of the HTTP
layer only (httpx's ``MockTransport`` idea). Collector tests with Kafka use the real broker."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.collector.publisher import PublishResult
from schemas.rows import DeadLetterRow
from schemas.touchpoint import Touchpoint

__all__ = ["MemoryPublisher"]


class MemoryPublisher:
    """Keeps what it is given; or raises ``fail_with`` on every publish (fault injection)."""

    def __init__(self, *, fail_with: BaseException | None = None, ready: bool = True) -> None:
        self.fail_with = fail_with
        self.is_ready = ready
        self.touchpoints: list[Touchpoint] = []
        self.dead_letters: list[DeadLetterRow] = []
        self.closed = False

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetterRow]
    ) -> PublishResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.touchpoints.extend(touchpoints)
        self.dead_letters.extend(dead_letters)
        return PublishResult(len(touchpoints) + len(dead_letters), 0.0)

    async def ready(self) -> bool:
        return self.is_ready

    def abandon(self) -> int:
        return 0

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True
