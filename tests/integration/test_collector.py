"""The HTTP collector on a real broker: every endpoint, signatures, durability, fuzzing."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
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

from ingest.kafka import partition_for
from schemas.rows import ROW_ADAPTERS, DeadLetterRow
from schemas.topics import PACK_HEADER, PACK_NDJSON
from schemas.touchpoint import parse_touchpoint
from tests import vendor_payloads as vendor
from tests.collector_server import (
    ADS_KEY,
    MAILGUN_KEY,
    TWILIO_TOKEN,
    WEB_KEY,
    WRITE_KEY,
    ZENDESK_SECRET,
    Server,
    running_collector,
    send_request,
    start_collector,
    unpack,
)
from tests.kafka_pipeline import REPO, Pipeline, stop
from tests.signing import (
    mailgun_signature,
    mailgun_token,
    twilio_signature,
    twilio_signature_of_pairs,
    zendesk_signature,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def server(pipeline: Pipeline, tmp_path: Path) -> Iterator[Server]:
    with running_collector(pipeline, tmp_path) as served:
        yield served


def now_stamp() -> str:
    return str(int(datetime.now(UTC).timestamp()))


def signed_sendgrid(server: Server, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    stamp = now_stamp()
    return body, {
        "X-Twilio-Email-Event-Webhook-Signature": server.sendgrid.sign(stamp, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def signed_mailgun(event: dict[str, Any] | None = None) -> bytes:
    """A Mailgun delivery as Mailgun signs it: a fresh token and timestamp in the body."""
    stamp = now_stamp()
    token = mailgun_token()
    payload = {
        **(event or vendor.MAILGUN_EVENT),
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


def signed_sendgrid_raw(server: Server, body: bytes) -> tuple[bytes, dict[str, str]]:
    stamp = now_stamp()
    return body, {
        "X-Twilio-Email-Event-Webhook-Signature": server.sendgrid.sign(stamp, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def signed_zendesk_raw(body: bytes) -> tuple[bytes, dict[str, str]]:
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return body, {
        "X-Zendesk-Webhook-Signature": zendesk_signature(ZENDESK_SECRET, stamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
    }


def signed_twilio_raw(server: Server, body: bytes) -> tuple[bytes, dict[str, str]]:
    """Sign a form body as Twilio would (over its decoded fields), whatever it holds."""
    pairs = [
        (
            urllib.parse.unquote_to_bytes(key.replace(b"+", b" ")),
            urllib.parse.unquote_to_bytes(value.replace(b"+", b" ")),
        )
        for key, _, value in (field.partition(b"=") for field in body.split(b"&") if field)
    ]
    url = server.url + "/v1/webhooks/twilio"
    return body, {"X-Twilio-Signature": twilio_signature_of_pairs(TWILIO_TOKEN, url, pairs)}


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
    """Schemathesis generates requests for every operation in /openapi.json, each with the
    key of its endpoint (so they reach the parsers); none may 5xx.

    (Driven by hand rather than through schemathesis' lazy pytest fixture, which does
    not run on pytest 9.)
    """
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checked: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ("/v1/track", "/v1/page", "/v1/identify", "/v1/batch"):
            auth = basic(WRITE_KEY)
        else:
            auth = bearer(ADS_KEY if operation.path == "/v1/webhooks/ads" else WEB_KEY)
        fuzz_operation(operation, auth)()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 13


def fuzz_operation(operation: Any, auth: dict[str, str]) -> Any:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: Any) -> None:
        response = case.call(headers=auth)
        assert response.status_code < 500, (
            case.method,
            case.path,
            response.status_code,
            response.text[:300],
        )

    return fuzz


# -- issue 11: hostile and sloppy senders ----------------------------------------------------

NATIVE_EVENT = {
    "event_id": "n-forged",
    "buyer_id": "crm-ana",
    "channel": "web",
    "event_type": "purchase",
    "occurred_at": "2026-03-02T09:00:00Z",
    "revenue": "99999.00",
    "currency": "USD",
}
DEEP = b"[" * 100_000
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_each_key_opens_only_the_endpoints_of_its_source(server: Server) -> None:
    """The Segment write key is public (it ships in web pages): it may only send Segment
    calls. The ads key only ad events; an API key only /v1/touchpoints."""
    native = json.dumps(NATIVE_EVENT).encode()
    ads = json.dumps(vendor.ADS_EVENTS).encode()
    track = json.dumps(vendor.SEGMENT_TRACK).encode()
    refused = [
        ("/v1/touchpoints", native, bearer(WRITE_KEY)),
        ("/v1/touchpoints", native, {"X-Touchpoint-Key": WRITE_KEY}),
        ("/v1/webhooks/ads", ads, bearer(WRITE_KEY)),
        ("/v1/touchpoints", native, bearer(ADS_KEY)),
        ("/v1/track", track, basic(ADS_KEY)),
        ("/v1/track", track, basic(WEB_KEY)),
        ("/v1/webhooks/ads", ads, bearer(WEB_KEY)),
    ]
    for path, body, headers in refused:
        status, answer = server.post(path, body, headers)
        assert status == 401, (path, headers, status, answer)
    assert server.raw_touchpoints(1, timeout=4) == []
    assert server.post("/v1/touchpoints", native, bearer(WEB_KEY))[0] == 200
    assert server.post("/v1/webhooks/ads", ads, bearer(ADS_KEY))[0] == 200
    assert server.post("/v1/track", track, basic(WRITE_KEY))[0] == 200


def test_what_the_segment_write_key_sends_is_marked_as_from_the_browser(server: Server) -> None:
    status, answer = server.post(
        "/v1/track", json.dumps(vendor.SEGMENT_TRACK).encode(), basic(WRITE_KEY)
    )
    assert status == 200 and answer["accepted"] == 1, answer
    [order] = server.raw_touchpoints(1)
    assert order.event_type == "purchase"
    assert order.properties["origin"] == "browser"
    assert order.revenue is None  # browser revenue is untrusted unless the operator says so
    assert order.properties["claimed_revenue"] == "25.0"


def test_malformed_bodies_get_a_4xx_with_a_reason_never_a_500(server: Server) -> None:
    """Before authentication (Mailgun's signature is in its body, Twilio's covers the form)
    and behind a valid key or signature: every malformed body is a 4xx with a reason."""
    sendgrid_deep = signed_sendgrid_raw(server, DEEP)
    zendesk_deep = signed_zendesk_raw(DEEP)
    twilio_bad_utf8 = b"MessageSid=SM1&To=%2B1555&Body=\xff"
    twilio_signed_bad_utf8 = signed_twilio_raw(server, b"MessageSid=SM1&To=%2B1555&Body=%FF")
    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("/v1/webhooks/mailgun", DEEP, {}, "application/json"),
        ("/v1/webhooks/mailgun", b'{"signature": ' + DEEP, {}, "application/json"),
        ("/v1/webhooks/twilio", b"a=\xff", {}, "application/x-www-form-urlencoded"),
        ("/v1/webhooks/twilio", twilio_bad_utf8, {}, "application/x-www-form-urlencoded"),
        ("/v1/webhooks/twilio", b"--x\r\n", {}, "multipart/form-data; boundary=x"),
        ("/v1/webhooks/twilio", b"--x", {}, "multipart/form-data; boundary=x"),
        ("/v1/webhooks/twilio", b"a=1", {}, "multipart/form-data"),
        (
            "/v1/webhooks/twilio",
            twilio_signed_bad_utf8[0],
            twilio_signed_bad_utf8[1],
            "application/x-www-form-urlencoded",
        ),
        ("/v1/touchpoints", DEEP, bearer(WEB_KEY), "application/json"),
        ("/v1/track", DEEP, basic(WRITE_KEY), "application/json"),
        ("/v1/batch", b'{"batch": ' + DEEP, basic(WRITE_KEY), "application/json"),
        ("/v1/webhooks/ads", b'{"events": ' + DEEP, bearer(ADS_KEY), "application/json"),
        ("/v1/webhooks/sendgrid", sendgrid_deep[0], sendgrid_deep[1], "application/json"),
        ("/v1/webhooks/zendesk", zendesk_deep[0], zendesk_deep[1], "application/json"),
        ("/v1/touchpoints", b'[{"event_id": "x"', bearer(WEB_KEY), "application/json"),
        ("/v1/touchpoints", b'{"a": "\xff"}', bearer(WEB_KEY), "application/json"),
    ]
    for path, body, headers, content_type in cases:
        status, answer = server.post(path, body, headers, content_type)
        assert 400 <= status < 500, (path, body[:40], content_type, status, answer)
        assert isinstance(answer, dict) and answer.get("error") and answer.get("detail"), answer
    status, answer = server.post("/v1/touchpoints", DEEP, bearer(WEB_KEY), "application/x-ndjson")
    assert status == 200 and [item["reason"] for item in answer["rejected"]] == ["invalid_json"]
    assert server.get("/healthz")[0] == 200
    assert not [key for key in server.request_counts() if key[1].startswith("5")]
    assert server.raw_touchpoints(1, timeout=3) == []


def test_out_of_range_vendor_times_are_dead_letters_and_the_rest_goes_through(
    server: Server,
) -> None:
    bad_times: list[Any] = [1e20, 1e12, "Infinity", "NaN", -1e12, 10**30]
    events = [
        {**vendor.SENDGRID_EVENTS[0], "sg_event_id": f"bad-time-{index}", "timestamp": stamp}
        for index, stamp in enumerate(bad_times)
    ]
    body = json.dumps([*events, vendor.SENDGRID_EVENTS[1]]).encode()
    body = body.replace(b'"Infinity"', b"Infinity", 1)  # the bare token too, as Python writes it
    status, answer = server.post("/v1/webhooks/sendgrid", *signed_sendgrid_raw(server, body))
    assert status == 200, answer
    assert answer["accepted"] == 1
    assert [item["index"] for item in answer["rejected"]] == list(range(len(bad_times)))
    assert {item["reason"] for item in answer["rejected"]} == {"timestamp_out_of_range"}

    mailgun = {
        **vendor.MAILGUN_EVENT,
        "event-data": {**vendor.MAILGUN_EVENT["event-data"], "timestamp": 1e20},
    }
    status, answer = server.post("/v1/webhooks/mailgun", signed_mailgun(mailgun))
    assert status == 200, answer
    assert [item["reason"] for item in answer["rejected"]] == ["timestamp_out_of_range"]
    assert len(server.raw_touchpoints(1)) == 1


def test_a_native_time_outside_what_the_pipeline_stores_is_a_dead_letter(server: Server) -> None:
    items = [
        {**NATIVE_EVENT, "event_id": "far", "occurred_at": "9999-12-31T23:59:59-01:00"},
        {**NATIVE_EVENT, "event_id": "early", "occurred_at": "0001-01-01T00:00:00+01:00"},
        {**NATIVE_EVENT, "event_id": "ok"},
    ]
    status, answer = server.post("/v1/touchpoints", json.dumps(items).encode(), bearer(WEB_KEY))
    assert status == 200, answer
    assert answer["accepted"] == 1
    assert [(item["index"], item["reason"]) for item in answer["rejected"]] == [
        (0, "timestamp_out_of_range"),
        (1, "timestamp_out_of_range"),
    ]


def test_a_replayed_mailgun_delivery_is_refused(server: Server) -> None:
    body = signed_mailgun()
    assert server.post("/v1/webhooks/mailgun", body)[0] == 200
    status, answer = server.post("/v1/webhooks/mailgun", body)
    assert status == 401 and "replay" in answer["detail"], answer
    assert server.post("/v1/webhooks/mailgun", signed_mailgun())[0] == 200  # a new delivery
    assert len(server.raw_touchpoints(2)) == 2


def test_twilio_signatures_follow_twilios_url_rules(pipeline: Pipeline, tmp_path: Path) -> None:
    """Twilio signs the URL it called: behind a trusted proxy that is X-Forwarded-Proto/Host/
    Prefix + the path; an explicit default port may or may not be in what it signed."""
    public = "https://collect.example.com/tp"
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "collect.example.com",
        "X-Forwarded-Prefix": "/tp",
    }
    with running_collector(
        pipeline, tmp_path, {"TOUCHPOINT_COLLECTOR_TRUSTED_PROXIES": "127.0.0.1"}
    ) as proxied:
        for signed_url in (f"{public}/v1/webhooks/twilio", f"{public}/v1/webhooks/twilio?a=1"):
            query = signed_url.partition("?")[2]
            body = urllib.parse.urlencode(vendor.TWILIO_STATUS).encode()
            signature = twilio_signature(TWILIO_TOKEN, signed_url, vendor.TWILIO_STATUS)
            status, answer = proxied.post(
                "/v1/webhooks/twilio" + (f"?{query}" if query else ""),
                body,
                {**forwarded, "X-Twilio-Signature": signature},
                "application/x-www-form-urlencoded",
            )
            assert status == 200, (signed_url, answer)
        with_port = "https://collect.example.com:443/tp/v1/webhooks/twilio"
        status, answer = proxied.post(
            "/v1/webhooks/twilio",
            urllib.parse.urlencode(vendor.TWILIO_STATUS).encode(),
            {
                **forwarded,
                "X-Twilio-Signature": twilio_signature(
                    TWILIO_TOKEN, with_port, vendor.TWILIO_STATUS
                ),
            },
            "application/x-www-form-urlencoded",
        )
        assert status == 200, answer

    with running_collector(
        pipeline, tmp_path, {"TOUCHPOINT_COLLECTOR_PUBLIC_URL": public}
    ) as behind_public_url:
        for signed_url in (
            f"{public}/v1/webhooks/twilio",
            "https://collect.example.com:443/tp/v1/webhooks/twilio",
        ):
            signature = twilio_signature(TWILIO_TOKEN, signed_url, vendor.TWILIO_STATUS)
            status, answer = behind_public_url.post(
                "/v1/webhooks/twilio",
                urllib.parse.urlencode(vendor.TWILIO_STATUS).encode(),
                {"X-Twilio-Signature": signature},
                "application/x-www-form-urlencoded",
            )
            assert status == 200, (signed_url, answer)
        # forwarded headers from a peer that is not a trusted proxy are ignored
        other = "https://evil.example.net/v1/webhooks/twilio"
        status, _ = behind_public_url.post(
            "/v1/webhooks/twilio",
            urllib.parse.urlencode(vendor.TWILIO_STATUS).encode(),
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example.net",
                "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, other, vendor.TWILIO_STATUS),
            },
            "application/x-www-form-urlencoded",
        )
        assert status == 401


def test_a_zendesk_trigger_body_is_mapped_and_an_unknown_shape_is_refused(
    server: Server,
) -> None:
    status, answer = server.post("/v1/webhooks/zendesk", *signed_zendesk(vendor.ZENDESK_TRIGGER))
    assert status == 200 and answer["accepted"] == 1 and answer["rejected"] == [], answer
    [solved] = server.raw_touchpoints(1)
    assert (solved.channel.value, solved.event_type) == ("support", "ticket_solved")
    assert solved.buyer_id == "zendesk:8193592318236"
    assert solved.properties["ticket_id"] == "5158"
    for unusable in ({"message": "hello"}, {"ticket": {"id": "{{ticket.id}}"}}):
        status, answer = server.post("/v1/webhooks/zendesk", *signed_zendesk(unusable))
        assert status in (400, 422), (unusable, status, answer)
        assert answer["detail"], answer


def open_slow_connection(url: str, head: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds`` (and what it said first)."""
    sock.settimeout(seconds)
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionError:
        return True, received
    return False, received


@pytest.mark.slow
def test_slow_senders_are_cut_off_and_connections_are_bounded(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    settings_env = {
        "TOUCHPOINT_COLLECTOR_HEADER_TIMEOUT": "2s",
        "TOUCHPOINT_COLLECTOR_READ_TIMEOUT": "3s",
        "TOUCHPOINT_COLLECTOR_MAX_CONNECTIONS": "20",
    }
    with running_collector(pipeline, tmp_path, settings_env) as served:
        # headers that never finish
        dribbling = open_slow_connection(
            served.url, b"POST /v1/touchpoints HTTP/1.1\r\nHost: x\r\n"
        )
        closed, _ = closed_within(dribbling, 6)
        assert closed, "a sender that never finishes its headers keeps the connection"
        dribbling.close()
        # a body that never finishes
        head = (
            b"POST /v1/touchpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + WEB_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"
        )
        slow_body = open_slow_connection(served.url, head)
        closed, said = closed_within(slow_body, 8)
        assert closed and said.startswith(b"HTTP/1.1 408"), said[:80]
        slow_body.close()
        # 50 slow senders: at most 20 are let in, the rest are refused at once, all go soon
        started = time.monotonic()
        crowd = [
            open_slow_connection(served.url, b"POST /v1/touchpoints HTTP/1.1\r\n")
            for _ in range(50)
        ]
        outcomes = [closed_within(sock, 8) for sock in crowd]
        assert time.monotonic() - started < 12
        assert all(closed for closed, _ in outcomes)
        refused = [said for _, said in outcomes if said.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 30
        for sock in crowd:
            sock.close()
        native = json.dumps(NATIVE_EVENT).encode()
        assert served.post("/v1/touchpoints", native, bearer(WEB_KEY))[0] == 200


@pytest.fixture
def stoppable_broker(tmp_path: Path) -> Iterator[str]:
    """A broker of this test's own (the session's is shared), two ports above it."""
    port = int(os.environ.get("TOUCHPOINT_TEST_KAFKA_PORT", "39092")) + 2
    env = {**os.environ, "TOUCHPOINT_KAFKA_PORT": str(port)}
    started = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--fresh"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if started.returncode != 0:
        pytest.fail(f"Kafka did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120
        )


def stop_broker(bootstrap: str) -> None:
    port = bootstrap.rsplit(":", 1)[1]
    subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "stop"],
        env={**os.environ, "TOUCHPOINT_KAFKA_PORT": port},
        capture_output=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_readiness_follows_the_broker_and_sigterm_is_prompt_with_kafka_down(
    stoppable_broker: str, tmp_path: Path
) -> None:
    from tests.kafka_pipeline import new_pipeline

    pipeline = new_pipeline(stoppable_broker, tmp_path)
    native = json.dumps(NATIVE_EVENT).encode()
    patient = {  # a request stuck on Kafka outlasts the shutdown grace
        "TOUCHPOINT_COLLECTOR_PRODUCE_TIMEOUT": "20s",
        "TOUCHPOINT_COLLECTOR_SHUTDOWN_TIMEOUT": "2s",
    }
    with running_collector(pipeline, tmp_path, patient) as served:
        assert served.get("/readyz")[0] == 200
        assert served.post("/v1/touchpoints", native, bearer(WEB_KEY))[0] == 200
        stop_broker(stoppable_broker)
        stopped = time.monotonic()
        while served.get("/readyz")[0] == 200 and time.monotonic() - stopped < 15:
            time.sleep(0.2)
        not_ready_after = time.monotonic() - stopped
        assert not_ready_after < 5, f"/readyz stayed 200 for {not_ready_after:.1f} s"

        assert served.process is not None
        answers: list[int] = []
        in_flight = threading.Thread(
            target=lambda: answers.append(
                served.post("/v1/touchpoints", native, bearer(WEB_KEY))[0]
            ),
            daemon=True,
        )
        in_flight.start()
        time.sleep(1.0)
        asked = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=60)
        exited_after = time.monotonic() - asked
        in_flight.join(timeout=10)
        assert exited_after < 2 + 3, f"SIGTERM took {exited_after:.1f} s with Kafka down"
        assert answers == [503]  # answered, and not 2xx: the sender retries


# -- issue 10: one record per partition, each request waiting for its own -------------------


def test_a_batch_is_one_record_per_partition_and_its_dead_letters_share_one(
    server: Server,
) -> None:
    buyers = [f"pack-buyer-{number}" for number in range(30)]
    items: list[Any] = [
        {**NATIVE_EVENT, "event_id": f"pack-{number}", "buyer_id": buyers[number % 30]}
        for number in range(100)
    ]
    items[10:10] = [{"event_id": "no-buyer"}, 42, {**NATIVE_EVENT, "channel": "fax"}]
    status, answer = server.post("/v1/touchpoints", json.dumps(items).encode(), bearer(WEB_KEY))
    assert status == 200, answer
    assert answer["accepted"] == 100
    assert [(item["index"], item["reason"]) for item in answer["rejected"]] == [
        (10, "missing_field"),
        (11, "not_an_object"),
        (12, "unknown_channel"),
    ]
    raw_topic = server.pipeline.topics.raw
    partitions = server.partitions(raw_topic)
    used = {partition_for(buyer.encode(), partitions) for buyer in buyers}
    records = server.records(raw_topic, len(used))
    assert sorted(record.partition for record in records) == sorted(used)  # one each
    sent = {item["event_id"]: item for item in items if isinstance(item, dict)}
    received = []
    for record in records:
        assert (PACK_HEADER, PACK_NDJSON) in list(record.headers)
        for line in unpack(record):
            touchpoint = parse_touchpoint(line)
            assert partition_for(touchpoint.buyer_id.encode(), partitions) == record.partition
            assert touchpoint == parse_touchpoint(
                json.dumps(
                    {**sent[touchpoint.event_id], "received_at": touchpoint.received_at.isoformat()}
                )
            )
            received.append(touchpoint.event_id)
    assert sorted(received) == sorted(f"pack-{number}" for number in range(100))
    dead_letter_topic = server.pipeline.topics.for_table(DeadLetterRow.table)
    [letters] = server.records(dead_letter_topic, 1)
    rows = [
        ROW_ADAPTERS[DeadLetterRow.table].validate_json(row) for row in letters.value.split(b"\n")
    ]
    assert [row.reason for row in rows] == ["missing_field", "not_an_object", "unknown_channel"]
    assert [row.raw for row in rows][:2] == ['{"event_id": "no-buyer"}', "42"]


def test_concurrent_requests_are_all_acknowledged_and_all_on_the_topic(server: Server) -> None:
    """Requests in flight together each wait for their own records (no shared flush): all
    are answered 200 and every touchpoint is on the raw topic once."""
    answers: list[tuple[int, Any]] = []

    def send(batch: int) -> None:
        items = [
            {**NATIVE_EVENT, "event_id": f"c-{batch}-{n}", "buyer_id": f"cb-{n}"} for n in range(20)
        ]
        answers.append(server.post("/v1/touchpoints", json.dumps(items).encode(), bearer(WEB_KEY)))

    threads = [threading.Thread(target=send, args=(batch,)) for batch in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [status for status, _ in answers] == [200] * 16
    assert all(answer["accepted"] == 20 for _, answer in answers)
    found = server.raw_touchpoints(16 * 20)
    assert sorted(tp.event_id for tp in found) == sorted(
        f"c-{batch}-{n}" for batch in range(16) for n in range(20)
    )
