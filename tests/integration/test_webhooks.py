"""Trigger webhooks against a real local HTTP receiver, and through real Kafka.

The receiver (tests/webhook_receiver.py) checks each signature itself with hmac and
counts what it processed. Deliveries must arrive signed, be retried through 5xx until
they succeed, stop at a 4xx, dead-letter after the last try — and through Kafka, a
`touchpoint webhooks` killed with SIGKILL half-way and started again loses no trigger;
every redelivery carries the same event id, so the receiver processes each once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kafka import KafkaConsumer, KafkaProducer

from ingest.topics import ensure_topics
from schemas.webhooks import WebhookDestination
from sinks.webhooks import Delivery, DeliveryOutcome, WebhookDeliverer
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration]
SECRET = "receiver-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(SECRET.encode()).start()
    yield server
    server.stop()


def trigger_row(number: int, trigger: str = "cart-abandoned") -> bytes:
    return json.dumps(
        {
            "trigger_id": trigger,
            "trigger_event_id": f"{trigger}:buyer-{number}",
            "buyer_id": f"buyer-{number}",
            "fired_at": "2026-03-02T09:00:00+00:00",
        },
        separators=(",", ":"),
    ).encode()


def hook(url: str, **fields: object) -> WebhookDestination:
    return WebhookDestination.model_validate(
        {
            "name": "crm",
            "url": url,
            "secret_env": "TEST_WEBHOOK_SECRET",
            "backoff": "0.01s",
            "backoff_max": "0.04s",
            "timeout": "5s",
            "rate_per_second": 1000,
            **fields,
        }
    )


def deliver(destination: WebhookDestination, rows: list[bytes]) -> list[DeliveryOutcome]:
    async def run() -> list[DeliveryOutcome]:
        async with aiohttp.ClientSession() as session:
            deliverer = WebhookDeliverer([destination])
            return await deliverer.deliver([Delivery.of_row(row) for row in rows], session)

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


def test_deliveries_arrive_signed_once_each(receiver: Receiver) -> None:
    outcomes = deliver(hook(receiver.url), [trigger_row(n) for n in range(5)])
    assert [outcome.delivered for outcome in outcomes] == [True] * 5
    assert all(item.signature_ok for item in receiver.received)
    assert receiver.delivered_ids() == {f"cart-abandoned:buyer-{n}": 1 for n in range(5)}
    assert [item.body for item in receiver.received] == [trigger_row(n) for n in range(5)]


def test_a_wrong_secret_is_refused_by_the_receiver(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "not-the-receivers")
    (outcome,) = deliver(hook(receiver.url), [trigger_row(1)])
    assert not outcome.delivered
    assert outcome.statuses == [401] and outcome.attempts == 1  # a 4xx is final
    assert not receiver.received[0].signature_ok


def test_server_errors_are_retried_until_the_receiver_takes_it(receiver: Receiver) -> None:
    receiver.fail_first = 3
    (outcome,) = deliver(hook(receiver.url, max_attempts=5), [trigger_row(1)])
    assert outcome.delivered
    assert outcome.statuses == [500, 500, 500, 204]
    assert {item.event_id for item in receiver.received} == {"cart-abandoned:buyer-1"}


def test_after_the_last_try_the_destination_is_down_for_the_rest_of_the_batch(
    receiver: Receiver,
) -> None:
    receiver.always_status = 503
    outcomes = deliver(hook(receiver.url, max_attempts=3), [trigger_row(n) for n in range(4)])
    assert [outcome.attempts for outcome in outcomes] == [3, 0, 0, 0]
    assert not any(outcome.delivered for outcome in outcomes)
    assert "was down in this batch" in outcomes[1].last_error
    letter = json.loads(outcomes[0].dead_letter())
    assert (letter["destination"], letter["attempts"], letter["last_error"]) == (
        "crm",
        3,
        "HTTP 503",
    )
    assert letter["trigger"]["trigger_event_id"] == "cart-abandoned:buyer-0"


def test_an_unreachable_receiver_is_an_error_not_a_crash() -> None:
    (outcome,) = deliver(hook("http://127.0.0.1:9/hook", max_attempts=2), [trigger_row(1)])
    assert not outcome.delivered and outcome.attempts == 2
    assert "Connect" in outcome.last_error


@pytest.mark.slow
def test_a_webhooks_process_killed_half_way_loses_no_trigger(
    pipeline: Any, receiver: Receiver, tmp_path: Path
) -> None:
    topics = pipeline.topics
    ensure_topics(pipeline.bootstrap, {topics.triggers: 6, topics.triggers_dlq: 6})
    rows = [trigger_row(n) for n in range(120)] + [trigger_row(n, "vip") for n in range(5)]
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all")
    for number, row in enumerate(rows):
        producer.send(topics.triggers, value=row, partition=number % 6)
    producer.flush()
    producer.close()
    config = tmp_path / "webhooks.toml"
    config.write_text(
        f"""
[[webhook]]
name = "crm"
url = "{receiver.url}"
secret_env = "TEST_WEBHOOK_SECRET"
triggers = ["cart-abandoned"]
rate_per_second = 40
burst = 5

[[webhook]]
name = "gone"
url = "http://127.0.0.1:9/hook"
secret_env = "TEST_WEBHOOK_SECRET"
triggers = ["vip"]
max_attempts = 2
backoff = "0.01s"
""",
        encoding="utf-8",
    )
    env = {**pipeline.env, "TEST_WEBHOOK_SECRET": SECRET, "TOUCHPOINT_WEBHOOKS_FILE": str(config)}

    log = tmp_path / "webhooks.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "touchpoint", "webhooks"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    first = start()
    deadline = time.monotonic() + 120
    while len(receiver.delivered_ids()) < 30:  # some delivered, most not yet (40/s)
        assert first.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no deliveries"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    halfway = len(receiver.delivered_ids())
    assert halfway < 120

    second = start()
    deadline = time.monotonic() + 180
    while len(receiver.delivered_ids()) < 120:
        assert second.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{len(receiver.delivered_ids())} of 120"
        time.sleep(0.1)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, log.read_text()
    assert "Webhooks stopped:" in log.read_text()

    delivered = receiver.delivered_ids()
    assert set(delivered) == {f"cart-abandoned:buyer-{n}" for n in range(120)}  # none lost
    assert all(item.signature_ok for item in receiver.received)

    consumer = KafkaConsumer(
        topics.triggers_dlq,
        bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    letters = [json.loads(message.value) for message in consumer]
    consumer.close()
    assert {letter["trigger_event_id"] for letter in letters} == {
        f"vip:buyer-{n}" for n in range(5)
    }
    assert {letter["destination"] for letter in letters} == {"gone"}
