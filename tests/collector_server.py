"""Run the real HTTP collector as a subprocess for tests, with every vendor secret set."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from schemas.topics import PACK_HEADER, PACK_NDJSON
from schemas.touchpoint import Touchpoint, parse_touchpoint
from tests.kafka_pipeline import REPO, Pipeline, stop
from tests.signing import SendGridKeys

WEB_KEY, ADS_KEY, WRITE_KEY = "key-web-1", "key-ads-1", "segment-write-key"
MAILGUN_KEY, TWILIO_TOKEN, ZENDESK_SECRET = "mg-signing-key", "twilio-token", "zd-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    url: str
    sendgrid: SendGridKeys
    pipeline: Pipeline
    process: subprocess.Popen[bytes] | None = None

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method="POST",
            headers={"Content-Type": content_type, **(headers or {})},
        )
        return send_request(request)

    def get(self, path: str) -> tuple[int, Any]:
        return send_request(urllib.request.Request(self.url + path))

    def request_counts(self) -> dict[tuple[str, str], float]:
        """touchpoint_collector_requests_total by (endpoint, status), from /metrics."""
        _, text = self.get("/metrics")
        counts: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "touchpoint_collector_requests_total":
                    key = (sample.labels["endpoint"], sample.labels["status"])
                    counts[key] = sample.value
        return counts

    def raw_touchpoints(self, expected: int, timeout: float = 20.0) -> list[Touchpoint]:
        consumer = KafkaConsumer(
            self.pipeline.topics.raw,
            bootstrap_servers=self.pipeline.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
        )
        found: list[Touchpoint] = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer:
                found.extend(parse_touchpoint(value) for value in unpack(message))
        consumer.close()
        return found

    def partitions(self, topic: str) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.pipeline.bootstrap)
        try:
            return len(consumer.partitions_for_topic(topic) or ())
        finally:
            consumer.close()

    def records(self, topic: str, expected: int, timeout: float = 20.0) -> list[Any]:
        """The first ``expected`` records of ``topic`` (fewer if they do not come in time)."""
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=self.pipeline.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
        )
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            found.extend(consumer)
        consumer.close()
        return found


def unpack(message: Any) -> list[bytes]:
    """The touchpoints of a raw record: the lines of a pack, or the record itself."""
    if (PACK_HEADER, PACK_NDJSON) in list(message.headers or ()):
        return [line for line in message.value.split(b"\n") if line]
    return [message.value]


def send_request(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


def start_collector(
    pipeline: Pipeline,
    logs: Path,
    bootstrap: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str, SendGridKeys]:
    """Start ``touchpoint collector`` with every vendor secret set; ``env`` adds or overrides."""
    port = free_port()
    keys = SendGridKeys()
    settings = dict(
        pipeline.env,
        TOUCHPOINT_COLLECTOR_PORT=str(port),
        TOUCHPOINT_COLLECTOR_API_KEYS=json.dumps(
            {"web": WEB_KEY, "ads": ADS_KEY, "segment": WRITE_KEY}
        ),
        TOUCHPOINT_COLLECTOR_SENDGRID_PUBLIC_KEY=keys.public_key,
        TOUCHPOINT_COLLECTOR_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
        TOUCHPOINT_COLLECTOR_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TOUCHPOINT_COLLECTOR_ZENDESK_SIGNING_SECRET=ZENDESK_SECRET,
        TOUCHPOINT_COLLECTOR_PUBLIC_URL=f"http://127.0.0.1:{port}",
        TOUCHPOINT_COLLECTOR_MAX_BODY_BYTES="200000",
        TOUCHPOINT_COLLECTOR_PRODUCE_TIMEOUT="3s",
    )
    if bootstrap is not None:
        settings["TOUCHPOINT_KAFKA_BOOTSTRAP"] = bootstrap
    settings.update(env or {})
    with (logs / f"collector-{port}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "touchpoint", "collector"],
            env=settings,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _ = send_request(urllib.request.Request(url + "/healthz"))
            if status == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    return process, url, keys


@contextmanager
def running_collector(
    pipeline: Pipeline, logs: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A collector on ``pipeline``'s broker, ready (Kafka answered), stopped afterwards."""
    process, url, keys = start_collector(pipeline, logs, env=env)
    try:
        served = Server(url, keys, pipeline, process)
        deadline = time.monotonic() + 60
        while served.get("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield served
    finally:
        stop(process)
