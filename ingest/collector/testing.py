"""An in-memory :class:`~ingest.collector.publisher.Publisher`, for unit tests of the HTTP
layer only (httpx's ``MockTransport`` idea). Collector tests with Kafka use the real broker."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.collector.publisher import PublishResult
from schemas.rows import DeadLetterRow, row_adapter
from schemas.touchpoint import Touchpoint, parse_touchpoint

__all__ = ["MemoryPublisher"]


class MemoryPublisher:
    """Keeps what it is given (read back as the workers and the sink would read it); or
    raises ``fail_with`` on every publish (fault injection)."""

    def __init__(self, *, fail_with: BaseException | None = None, ready: bool = True) -> None:
        self.fail_with = fail_with
        self.is_ready = ready
        self.records: list[tuple[bytes, bytes]] = []
        self.touchpoints: list[Touchpoint] = []
        self.dead_letters: list[DeadLetterRow] = []
        self.closed = False

    async def publish(
        self, touchpoints: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[bytes]
    ) -> PublishResult:
        if self.fail_with is not None:
            raise self.fail_with
        adapter = row_adapter(DeadLetterRow)
        self.records.extend(touchpoints)
        self.touchpoints.extend(parse_touchpoint(value) for _, value in touchpoints)
        self.dead_letters.extend(adapter.validate_json(row) for row in dead_letters)
        return PublishResult(len(touchpoints) + len(dead_letters), 0.0)

    async def ready(self) -> bool:
        return self.is_ready

    def abandon(self) -> int:
        return 0

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True
