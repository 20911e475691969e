"""Outbound webhooks for fired triggers: signed, retried with backoff, rate limited,
dead-lettered after the last try.

Every fired trigger row (one JSON object, as on the ``journey.triggers`` topic) is POSTed
as the request body, unchanged, to each destination that wants its trigger id, with:

``X-Touchpoint-Timestamp``
    Unix seconds when the request was signed.
``X-Touchpoint-Signature``
    ``v1=`` + hex HMAC-SHA256, keyed with the destination's secret, over
    ``<timestamp>.<body>`` (the timestamp header, a dot, the raw body bytes). A receiver
    recomputes it over the bytes it received (before parsing them), compares in constant
    time, and refuses a timestamp more than a few minutes old (replays): :func:`verify`.
``X-Touchpoint-Event-Id``
    The trigger's ``trigger_event_id`` (``:retracted`` appended for a retraction): the
    same for every retry and redelivery of one firing, so a receiver that remembers it
    processes each firing, and each retraction, once.

Delivery is at least once: a 2xx ends it; a 5xx, 408, 429, timeout or connection error is
retried after ``backoff``, doubling up to ``backoff_max``, ``max_attempts`` times in all;
any other 4xx is final at once. What never succeeded becomes a dead-letter record (the
trigger, the destination, the attempts, the last error) on ``journey.triggers.dlq``.
Each destination has its own token bucket (``rate_per_second``, ``burst``) and its own
queue, so a slow or failing receiver never holds back the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.webhooks import WebhookDestination

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Delivery",
    "DeliveryOutcome",
    "TokenBucket",
    "WebhookDeliverer",
    "WebhookMetrics",
    "WebhookStats",
    "backoff_delays",
    "run_webhooks",
    "sign",
    "verify",
    "worst_case_seconds",
]

SIGNATURE_HEADER: Final = "X-Touchpoint-Signature"
TIMESTAMP_HEADER: Final = "X-Touchpoint-Timestamp"
EVENT_ID_HEADER: Final = "X-Touchpoint-Event-Id"
_RETRIED_STATUSES: Final = frozenset({408, 429})


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Touchpoint-Signature`` value of ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify(
    secret: bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = 300,
) -> bool:
    """What a receiver checks: the signature over the raw body, and a fresh timestamp."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def backoff_delays(destination: WebhookDestination) -> list[float]:
    """Seconds to wait before each retry (``max_attempts - 1`` of them)."""
    first = destination.backoff.total_seconds()
    ceiling = destination.backoff_max.total_seconds()
    return [min(first * 2**retry, ceiling) for retry in range(destination.max_attempts - 1)]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` says how long to
    wait for the next one (0: go now) and spends it."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(frozen=True, slots=True)
class Delivery:
    """One fired trigger to send: its row (the body), ids, and when it was written."""

    body: bytes
    trigger_id: str
    event_id: str
    written_at: float | None = None
    """Unix seconds the trigger reached Kafka (the record timestamp), for the latency."""

    @classmethod
    def of_row(cls, row: bytes, written_at: float | None = None) -> Delivery:
        """From one trigger row; ValueError if it is not one."""
        record = json.loads(row)
        if not isinstance(record, dict):
            raise ValueError("a trigger row is a JSON object")
        trigger_id, event_id = record.get("trigger_id"), record.get("trigger_event_id")
        if not isinstance(trigger_id, str) or not isinstance(event_id, str):
            raise ValueError("a trigger row needs string trigger_id and trigger_event_id")
        if record.get("is_retraction"):
            event_id += ":retracted"  # its own delivery: a receiver must not drop it as seen
        return cls(row, trigger_id, event_id, written_at)


@dataclass
class DeliveryOutcome:
    delivery: Delivery
    destination: str
    delivered: bool
    attempts: int
    last_error: str = ""
    statuses: list[int] = field(default_factory=list)

    def dead_letter(self, now: datetime | None = None) -> bytes:
        """The ``journey.triggers.dlq`` record of a delivery that never succeeded."""
        return json.dumps(
            {
                "destination": self.destination,
                "trigger_id": self.delivery.trigger_id,
                "trigger_event_id": self.delivery.event_id,
                "attempts": self.attempts,
                "last_error": self.last_error,
                "failed_at": (now or datetime.now(UTC)).isoformat(),
                "trigger": json.loads(self.delivery.body),
            },
            separators=(",", ":"),
        ).encode()


Observer = Callable[[DeliveryOutcome, float | None], None]
"""Told of every finished delivery, with the latency (s) from written to delivered."""


class WebhookDeliverer:
    """Sends deliveries to their destinations, each destination in order on its own queue."""

    def __init__(
        self,
        destinations: Sequence[WebhookDestination],
        *,
        observe: Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.destinations = tuple(destinations)
        self._secrets = {destination.name: destination.secret() for destination in destinations}
        self._buckets = {
            destination.name: TokenBucket(destination.rate_per_second, destination.burst)
            for destination in destinations
        }
        self._observe = observe
        self._sleep = sleep
        self._clock = clock

    async def deliver(
        self, deliveries: Sequence[Delivery], session: aiohttp.ClientSession
    ) -> list[DeliveryOutcome]:
        """Deliver every delivery to every destination that wants it; all outcomes."""
        queues = [
            (destination, [item for item in deliveries if destination.wants(item.trigger_id)])
            for destination in self.destinations
        ]
        results = await asyncio.gather(
            *(self._drain(destination, items, session) for destination, items in queues if items)
        )
        return [outcome for outcomes in results for outcome in outcomes]

    async def _drain(
        self,
        destination: WebhookDestination,
        items: list[Delivery],
        session: aiohttp.ClientSession,
    ) -> list[DeliveryOutcome]:
        """In order; once one delivery failed after all its tries, the destination is taken
        as down for the rest of the batch: the others are dead-lettered without a try, so a
        black-holed receiver costs one retry sequence per batch, not one per trigger."""
        outcomes: list[DeliveryOutcome] = []
        down: DeliveryOutcome | None = None
        for item in items:
            if down is not None:
                outcome = DeliveryOutcome(
                    item,
                    destination.name,
                    delivered=False,
                    attempts=0,
                    last_error=f"not tried: {destination.name} was down in this batch "
                    f"({down.last_error} after {down.attempts} attempts)",
                )
                if self._observe is not None:
                    self._observe(outcome, None)
                outcomes.append(outcome)
                continue
            outcome = await self._send(destination, item, session)
            if not outcome.delivered and outcome.attempts >= destination.max_attempts:
                down = outcome
            outcomes.append(outcome)
        return outcomes

    async def _send(
        self, destination: WebhookDestination, item: Delivery, session: aiohttp.ClientSession
    ) -> DeliveryOutcome:
        outcome = DeliveryOutcome(item, destination.name, delivered=False, attempts=0)
        delays = backoff_delays(destination)
        secret = self._secrets[destination.name]
        timeout = aiohttp.ClientTimeout(total=destination.timeout.total_seconds())
        bucket = self._buckets[destination.name]
        while True:
            wait = bucket.take()
            if wait:
                await self._sleep(wait)
            outcome.attempts += 1
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(secret, timestamp, item.body),
                EVENT_ID_HEADER: item.event_id,
            }
            retry = True
            try:
                async with session.post(
                    destination.url, data=item.body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    outcome.statuses.append(response.status)
                    if 200 <= response.status < 300:
                        outcome.delivered = True
                        break
                    outcome.last_error = f"HTTP {response.status}"
                    retry = response.status >= 500 or response.status in _RETRIED_STATUSES
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome.last_error = f"{type(exc).__name__}: {exc}"
            if not retry or outcome.attempts > len(delays):
                break
            await self._sleep(delays[outcome.attempts - 1])
        if self._observe is not None:
            latency = (
                self._clock() - item.written_at
                if outcome.delivered and item.written_at is not None
                else None
            )
            self._observe(outcome, latency)
        return outcome


def worst_case_seconds(destination: WebhookDestination) -> float:
    """The longest one delivery can take: every try timing out, every backoff waited."""
    return sum(backoff_delays(destination)) + (
        destination.max_attempts * destination.timeout.total_seconds()
    )


class WebhookMetrics:
    """Delivery metrics, by trigger id and destination (children bound once per pair)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "touchpoint_webhook_deliveries_total",
            "Fired triggers sent to a webhook, by outcome: delivered (a 2xx) or failed "
            "(dead-lettered to journey.triggers.dlq after the last try, or not tried while "
            "the destination was down).",
            ["trigger", "destination", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "touchpoint_webhook_attempts_total",
            "HTTP attempts, by destination and result (2xx, 4xx, 5xx, error).",
            ["destination", "result"],
            registry=registry,
        )
        self.latency = Histogram(
            "touchpoint_webhook_delivery_seconds",
            "From the trigger reaching Kafka to its webhook answering 2xx.",
            ["destination"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, outcome: DeliveryOutcome, latency: float | None) -> None:
        verdict = "delivered" if outcome.delivered else "failed"
        trigger, destination = outcome.delivery.trigger_id, outcome.destination
        self._child(self.deliveries, trigger, destination, verdict).inc()
        for status in outcome.statuses:
            self._child(self.attempts, destination, f"{status // 100}xx").inc()
        errors = outcome.attempts - len(outcome.statuses)
        if errors > 0:
            self._child(self.attempts, destination, "error").inc(errors)
        if latency is not None:
            self._child(self.latency, destination).observe(max(latency, 0.0))


@dataclass
class WebhookStats:
    records: int = 0
    deliveries: int = 0
    delivered: int = 0
    dead_lettered: int = 0


def run_webhooks(
    bootstrap: str,
    *,
    topic: str,
    dlq_topic: str,
    group: str,
    deliverer: WebhookDeliverer,
    stop: threading.Event,
    idle_timeout: float | None = None,
    max_records: int = 100,
) -> WebhookStats:
    """Consume fired triggers and deliver them until ``stop`` (or ``idle_timeout`` s idle).

    At least once: a batch's offsets are committed only after every delivery of it ended
    (delivered, or its dead letter acknowledged by Kafka); a crash before that delivers
    the batch again, and receivers drop what they saw by ``X-Touchpoint-Event-Id``.
    """
    worst = max((worst_case_seconds(d) for d in deliverer.destinations), default=0.0)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        # A batch is delivered between two polls: the group must wait that long for it.
        max_poll_interval_ms=int(max(300.0, worst * 2 + 60) * 1000),
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")
    stats = WebhookStats()
    loop = asyncio.new_event_loop()
    session = loop.run_until_complete(_session())
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=500)
            if not polled:
                if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    break
                continue
            idle_since = time.monotonic()
            deliveries: list[Delivery] = []
            for messages in polled.values():
                for message in messages:
                    stats.records += 1
                    for row in bytes(message.value or b"").split(b"\n"):
                        if not row.strip():
                            continue
                        try:
                            deliveries.append(Delivery.of_row(row, message.timestamp / 1000))
                        except ValueError as exc:
                            producer.send(dlq_topic, value=_unreadable(row, str(exc)))
                            stats.dead_lettered += 1
            outcomes = loop.run_until_complete(deliverer.deliver(deliveries, session))
            stats.deliveries += len(outcomes)
            for outcome in outcomes:
                if outcome.delivered:
                    stats.delivered += 1
                else:
                    key = outcome.delivery.event_id.encode()
                    producer.send(dlq_topic, key=key, value=outcome.dead_letter())
                    stats.dead_lettered += 1
            producer.flush()
            consumer.commit()
    finally:
        loop.run_until_complete(session.close())
        loop.close()
        producer.close()
        consumer.close()
    return stats


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def _unreadable(row: bytes, reason: str) -> bytes:
    return json.dumps(
        {
            "destination": "",
            "last_error": f"not a trigger row: {reason}",
            "failed_at": datetime.now(UTC).isoformat(),
            "raw": row.decode("utf-8", "replace"),
        },
        separators=(",", ":"),
    ).encode()
