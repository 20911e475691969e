"""The HTTP collector on a real broker: every endpoint, signatures, durability, fuzzing."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests import vendor_payloads as vendor
from tests.collector_server import (
    ADS_KEY,
    MAILGUN_KEY,
    TWILIO_TOKEN,
    WEB_KEY,
    WRITE_KEY,
    ZENDESK_SECRET,
    Server,
    send_request,
    start_collector,
)
from tests.kafka_pipeline import Pipeline, stop
from tests.signing import mailgun_signature, twilio_signature, zendesk_signature

pytestmark = pytest.mark.integration


@pytest.fixture
def server(pipeline: Pipeline, tmp_path: Path) -> Iterator[Server]:
    process, url, keys = start_collector(pipeline, tmp_path)
    try:
        served = Server(url, keys, pipeline)
        deadline = time.monotonic() + 60
        while served.get("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield served
    finally:
        stop(process)


def now_stamp() -> str:
    return str(int(datetime.now(UTC).timestamp()))


def signed_sendgrid(server: Server, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    stamp = now_stamp()
    return body, {
        "X-Twilio-Email-Event-Webhook-Signature": server.sendgrid.sign(stamp, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def signed_mailgun() -> bytes:
    stamp = now_stamp()
    token = vendor.MAILGUN_EVENT["signature"]["token"]
    payload = {
        **vendor.MAILGUN_EVENT,
        "signature": {
            "timestamp": stamp,
            "token": token,
            "signature": mailgun_signature(MAILGUN_KEY, stamp, token),
        },
    }
    return json.dumps(payload).encode()


def signed_twilio(server: Server, form: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    url = server.url + "/v1/webhooks/twilio"
    return urllib.parse.urlencode(form).encode(), {
        "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, form)
    }


def signed_zendesk(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return body, {
        "X-Zendesk-Webhook-Signature": zendesk_signature(ZENDESK_SECRET, stamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
    }


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send_every_vendor_once(server: Server) -> int:
    """Each endpoint, realistic payloads; returns how many touchpoints were accepted."""
    accepted = 0
    native = [
        {
            "event_id": "n-1",
            "buyer_id": "crm-ana",
            "channel": "web",
            "event_type": "page_view",
            "occurred_at": "2026-03-02T09:00:00Z",
        }
    ]
    calls: list[tuple[str, bytes, dict[str, str], str]] = [
        (
            "/v1/touchpoints",
            json.dumps(native).encode(),
            {"Authorization": f"Bearer {WEB_KEY}"},
            "application/json",
        ),
        (
            "/v1/track",
            json.dumps(vendor.SEGMENT_TRACK).encode(),
            basic(WRITE_KEY),
            "application/json",
        ),
        (
            "/v1/page",
            json.dumps(vendor.SEGMENT_PAGE).encode(),
            basic(WRITE_KEY),
            "application/json",
        ),
        (
            "/v1/identify",
            json.dumps(vendor.SEGMENT_IDENTIFY).encode(),
            basic(WRITE_KEY),
            "application/json",
        ),
        (
            "/v1/batch",
            json.dumps(
                {"batch": [{**vendor.SEGMENT_TRACK, "messageId": "b-1", "event": "Product Viewed"}]}
            ).encode(),
            basic(WRITE_KEY),
            "application/json",
        ),
        (
            "/v1/webhooks/sendgrid",
            *signed_sendgrid(server, vendor.SENDGRID_EVENTS),
            "application/json",
        ),
        ("/v1/webhooks/mailgun", signed_mailgun(), {}, "application/json"),
        (
            "/v1/webhooks/twilio",
            *signed_twilio(server, vendor.TWILIO_STATUS),
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/twilio",
            *signed_twilio(server, vendor.TWILIO_STOP),
            "application/x-www-form-urlencoded",
        ),
        ("/v1/webhooks/zendesk", *signed_zendesk(vendor.ZENDESK_CREATED), "application/json"),
        ("/v1/webhooks/zendesk", *signed_zendesk(vendor.ZENDESK_SOLVED), "application/json"),
        (
            "/v1/webhooks/ads",
            json.dumps(vendor.ADS_EVENTS).encode(),
            {"Authorization": f"Bearer {ADS_KEY}"},
            "application/json",
        ),
    ]
    for path, body, headers, content_type in calls:
        status, answer = server.post(path, body, headers, content_type)
        assert status == 200, (path, status, answer)
        if isinstance(answer, dict):
            assert answer["rejected"] == [], (path, answer)
            accepted += answer["accepted"]
        else:
            accepted += 1  # Twilio is answered with TwiML
    return accepted


@pytest.mark.slow
def test_every_endpoint_puts_canonical_touchpoints_on_the_raw_topic(server: Server) -> None:
    accepted = send_every_vendor_once(server)
    assert accepted == 1 + 4 + len(vendor.SENDGRID_EVENTS) + 1 + 2 + 2 + len(
        vendor.ADS_EVENTS["events"]
    )
    found = server.raw_touchpoints(accepted)
    assert len(found) == accepted
    kinds = {(tp.channel.value, tp.event_type) for tp in found}
    assert {
        ("web", "page_view"),
        ("web", "purchase"),
        ("web", "identify"),
        ("web", "product_view"),
        ("email", "email_click"),
        ("email", "email_bounce"),
        ("sms", "sms_delivered"),
        ("sms", "sms_opt_out"),
        ("support", "ticket_opened"),
        ("support", "ticket_solved"),
        ("ads", "ad_conversion"),
    } <= kinds
    assert all(tp.received_at is not None for tp in found)


@pytest.mark.slow
def test_the_same_vendor_delivery_sent_twice_is_one_row_after_the_pipeline(
    server: Server, clickhouse_client: Any, database: str
) -> None:
    accepted = send_every_vendor_once(server)
    assert send_every_vendor_once(server) == accepted  # the vendors retry everything
    assert len(server.raw_touchpoints(2 * accepted)) == 2 * accepted
    worker = server.pipeline.start_worker("worker")
    try:
        server.pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)
    server.pipeline.sink_into(clickhouse_client, database)
    rows = clickhouse_client.query(f"SELECT count() FROM {database}.touchpoints FINAL").result_rows
    repeated = clickhouse_client.query(
        "SELECT event_id, channel, event_type, groupArray(occurred_at) "
        f"FROM {database}.touchpoints GROUP BY event_id, channel, event_type HAVING count() > 1"
    ).result_rows
    assert rows[0][0] == accepted, repeated
    raw_rows = clickhouse_client.query(f"SELECT count() FROM {database}.touchpoints").result_rows
    assert raw_rows[0][0] == accepted  # dropped by the worker's dedup, not just by FINAL


def test_bad_signatures_and_keys_get_401_and_produce_nothing(server: Server) -> None:
    body, headers = signed_sendgrid(server, vendor.SENDGRID_EVENTS)
    old = str(int(datetime.now(UTC).timestamp()) - 3600)
    twilio_body, twilio_headers = signed_twilio(server, vendor.TWILIO_STATUS)
    zendesk_body, zendesk_headers = signed_zendesk(vendor.ZENDESK_CREATED)
    mailgun_body = json.loads(signed_mailgun())
    attempts: list[tuple[str, bytes, dict[str, str], str]] = [
        ("/v1/webhooks/sendgrid", body + b" ", headers, "application/json"),  # tampered
        (
            "/v1/webhooks/sendgrid",
            body,
            {
                **headers,
                "X-Twilio-Email-Event-Webhook-Timestamp": old,
                "X-Twilio-Email-Event-Webhook-Signature": server.sendgrid.sign(old, body),
            },
            "application/json",
        ),
        ("/v1/webhooks/sendgrid", body, {}, "application/json"),  # missing header
        (
            "/v1/webhooks/twilio",
            twilio_body.replace(b"delivered", b"failed"),
            twilio_headers,
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/twilio",
            twilio_body,
            {
                "X-Twilio-Signature": twilio_signature(
                    "wrong-token", server.url + "/v1/webhooks/twilio", vendor.TWILIO_STATUS
                )
            },
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/zendesk",
            zendesk_body,
            {
                **zendesk_headers,
                "X-Zendesk-Webhook-Signature": zendesk_signature("wrong", "x", zendesk_body),
            },
            "application/json",
        ),
        (
            "/v1/webhooks/mailgun",
            json.dumps(
                {**mailgun_body, "signature": {**mailgun_body["signature"], "signature": "0" * 64}}
            ).encode(),
            {},
            "application/json",
        ),
        ("/v1/touchpoints", b"{}", {"Authorization": "Bearer not-a-key"}, "application/json"),
        (
            "/v1/track",
            json.dumps(vendor.SEGMENT_TRACK).encode(),
            basic("wrong"),
            "application/json",
        ),
        ("/v1/webhooks/ads", json.dumps(vendor.ADS_EVENTS).encode(), {}, "application/json"),
    ]
    for path, attempt_body, attempt_headers, content_type in attempts:
        status, answer = server.post(path, attempt_body, attempt_headers, content_type)
        assert status == 401, (path, status, answer)
        assert answer["error"] == "unauthorized" and answer["detail"]
    assert server.raw_touchpoints(1, timeout=4) == []


def test_malformed_json_is_400_and_an_oversized_body_is_413(server: Server) -> None:
    auth = {"Authorization": f"Bearer {WEB_KEY}"}
    assert server.post("/v1/touchpoints", b"{not json", auth)[0] == 400
    status, _ = server.post("/v1/touchpoints", b"[" + b"1," * 150_000 + b"1]", auth)
    assert status == 413
    status, answer = server.post("/v1/touchpoints", b'[{"event_id": "x"}]', auth)
    assert status == 200 and answer["rejected"][0]["reason"] == "missing_field"


def test_with_kafka_unreachable_the_collector_is_alive_but_answers_503(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    process, url, _ = start_collector(pipeline, tmp_path, bootstrap="127.0.0.1:1")
    try:
        assert send_request(urllib.request.Request(url + "/healthz"))[0] == 200
        assert send_request(urllib.request.Request(url + "/readyz"))[0] == 503
        body = json.dumps(
            {
                "event_id": "e",
                "buyer_id": "b",
                "channel": "web",
                "event_type": "page_view",
                "occurred_at": "2026-03-02T09:00:00Z",
            }
        ).encode()
        request = urllib.request.Request(
            url + "/v1/touchpoints",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {WEB_KEY}", "Content-Type": "application/json"},
        )
        status, answer = send_request(request)
        assert status == 503 and answer["error"] == "kafka_unavailable"
    finally:
        stop(process)


@pytest.mark.slow
def test_fuzzing_the_openapi_spec_finds_no_server_error(server: Server) -> None:
    """Schemathesis generates requests for every operation in /openapi.json; none may 5xx.

    (Driven by hand rather than through schemathesis' lazy pytest fixture, which does
    not run on pytest 9.)
    """
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checked: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def fuzz(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {WEB_KEY}"})
            assert response.status_code < 500, (
                case.method,
                case.path,
                response.status_code,
                response.text[:300],
            )

        fuzz()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 13
