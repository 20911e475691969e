"""The collector's HTTP layer in-process, with the in-memory publisher (no Kafka here:
the Kafka path is tests/integration/test_collector.py). For what needs a fault the real
broker cannot be made to produce: an unexpected error inside a handler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest.collector import Collector, create_app, new_metrics
from ingest.collector.testing import MemoryPublisher
from schemas.settings import CollectorSettings

EVENT = {
    "event_id": "e1",
    "buyer_id": "b1",
    "channel": "web",
    "event_type": "page_view",
    "occurred_at": "2026-03-02T09:00:00Z",
}


def run(
    publisher: MemoryPublisher, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]
) -> None:
    settings = CollectorSettings(api_keys={"web": SecretStr("k-web")})
    collector = Collector(settings, publisher, new_metrics())

    async def main() -> None:
        async with TestClient(TestServer(create_app(collector))) as client:
            await scenario(client)

    asyncio.run(main())


def request_counts(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["endpoint"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "touchpoint_collector_requests_total"
    }


def test_an_unexpected_error_is_a_500_with_no_detail_and_is_counted() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.post(
            "/v1/touchpoints",
            data=json.dumps(EVENT),
            headers={"Authorization": "Bearer k-web", "Content-Type": "application/json"},
        )
        assert response.status == 500
        assert await response.json() == {
            "error": "internal_error",
            "detail": "the collector failed on this request; retry later",
        }
        metrics = await (await client.get("/metrics")).text()
        assert request_counts(metrics)[("/v1/touchpoints", "500")] == 1

    run(MemoryPublisher(fail_with=RuntimeError("boom")), scenario)


def test_the_memory_publisher_keeps_what_was_accepted() -> None:
    publisher = MemoryPublisher()

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.post(
            "/v1/touchpoints",
            data=json.dumps([EVENT, {"event_id": "x"}]),
            headers={"Authorization": "Bearer k-web", "Content-Type": "application/json"},
        )
        assert response.status == 200, await response.text()

    run(publisher, scenario)
    assert [tp.event_id for tp in publisher.touchpoints] == ["e1"]
    assert [row.reason for row in publisher.dead_letters] == ["missing_field"]
