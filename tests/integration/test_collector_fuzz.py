"""Fuzzing every collector endpoint with hostile and sloppy bodies, on a real broker.

Each request is authenticated the way its endpoint wants (API key, Segment write key,
or the vendor's signature computed over the fuzzed bytes), so it reaches the parsers
instead of stopping at 401; unauthenticated ones are sent too. The bodies are the
vendors' documented shapes with fields swapped for absurd values (times of 1e20, 1e12,
Infinity, NaN; year 9999 with a negative offset; 40-digit integers; lone surrogates;
placeholders left unrendered), deep nesting, invalid UTF-8, truncated JSON, and
multipart bodies with bare or missing boundaries.

Whatever arrives, the collector answers below 500, keeps running, and its request
metrics count no 5xx.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from tests.kafka_pipeline import new_pipeline
from tests.signing import (
    mailgun_signature,
    mailgun_token,
    twilio_signature_of_pairs,
    zendesk_signature,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("TOUCHPOINT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values a sloppy or hostile sender puts in a field --------------------------------------

ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "\ud800", "\udfff", "\u202e", "é" * 300, "{{ticket.id}}", "null", "1e20"]
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e20, 1e12, -1e12, 0, -1, 2**63, 1e308, 5e-324]),
)
UNIX_TIMES = NUMBERS | st.sampled_from(["Infinity", "NaN", "-Infinity", "1e20", "", "soon"])
ISO_TIMES = st.sampled_from(
    [
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
        "2026-03-02T09:00:00",
        "2026-13-01T00:00:00Z",
        "2026-03-02T09:00:00Z",
        "2026-03-02T09:00:00+23:59",
        "1969-12-31T23:59:59Z",
        "2300-01-01T00:00:00Z",
        "",
    ]
) | st.text(max_size=30)
TEXT = st.text(max_size=30) | ODD_TEXT
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
DEEP = st.integers(min_value=60, max_value=100_000).map(lambda depth: b"[" * depth)
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    DEEP,
    DEEP.map(lambda deep: b'{"batch": ' + deep),
    DEEP.map(lambda deep: b'{"events": ' + deep),
    st.sampled_from(
        [
            b"",
            b"\xff\xfe",
            b"\xef\xbb\xbf{}",
            b'{"a": "\xff"}',
            b'{"a": 1e999999}',
            b'{"a": ' + b"9" * 5000 + b"}",
            b'[{"event_id": "x"',
            b"a=\xff",
            b"--x\r\n",
            b"--x",
            b"null",
            b"[]",
            b"{}",
        ]
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-ndjson",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "text/plain; charset=bogus",
        "application/json; charset=latin-1",
    ]
)


def with_fields(base: dict[str, Any], values: dict[str, st.SearchStrategy[Any]]) -> Any:
    """``base`` with any subset of ``values``' fields replaced (or removed)."""
    return st.fixed_dictionaries(
        {}, optional={key: strategy | st.just(_REMOVE) for key, strategy in values.items()}
    ).map(
        lambda changes: {
            key: value for key, value in {**base, **changes}.items() if value is not _REMOVE
        }
    )


_REMOVE = object()


def to_json(value: Any) -> bytes:
    """JSON as Python writes it: Infinity and NaN as bare tokens."""
    return json.dumps(value).encode()


def maybe_list(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return item | st.lists(item | JSON_VALUES, max_size=5)


# -- per-endpoint bodies ---------------------------------------------------------------------

NATIVE = with_fields(
    {
        "event_id": "fz-1",
        "buyer_id": "b-1",
        "channel": "web",
        "event_type": "purchase",
        "occurred_at": "2026-03-02T09:00:00Z",
        "revenue": "10.00",
        "currency": "USD",
    },
    {
        "event_id": TEXT | NUMBERS,
        "buyer_id": TEXT | JSON_VALUES,
        "channel": TEXT,
        "event_type": TEXT,
        "occurred_at": ISO_TIMES | NUMBERS,
        "received_at": ISO_TIMES,
        "revenue": NUMBERS | TEXT,
        "currency": TEXT,
        "properties": JSON_VALUES,
        "schema_version": NUMBERS,
    },
)
SEGMENT_ITEM = with_fields(
    vendor.SEGMENT_TRACK,
    {
        "type": st.sampled_from(["track", "page", "identify", "group"]) | TEXT,
        "userId": TEXT | JSON_VALUES,
        "anonymousId": TEXT | NUMBERS,
        "event": TEXT | JSON_VALUES,
        "timestamp": ISO_TIMES | NUMBERS,
        "messageId": TEXT,
        "properties": st.fixed_dictionaries(
            {}, optional={"revenue": NUMBERS | TEXT, "total": NUMBERS, "currency": TEXT}
        )
        | JSON_VALUES,
        "context": JSON_VALUES,
        "traits": JSON_VALUES,
    },
)
SENDGRID_ITEM = with_fields(
    vendor.SENDGRID_EVENTS[3],
    {
        "timestamp": UNIX_TIMES,
        "email": TEXT | JSON_VALUES,
        "event": TEXT | st.sampled_from(["open", "click", "bounce"]),
        "sg_event_id": TEXT | NUMBERS,
        "category": JSON_VALUES,
        "url": TEXT | NUMBERS,
        "buyer_id": TEXT | NUMBERS,
    },
)
MAILGUN_DATA = with_fields(
    vendor.MAILGUN_EVENT["event-data"],
    {
        "timestamp": UNIX_TIMES,
        "event": TEXT | JSON_VALUES,
        "id": TEXT | NUMBERS,
        "recipient": TEXT | NUMBERS,
        "user-variables": JSON_VALUES,
        "tags": JSON_VALUES,
        "campaigns": JSON_VALUES,
        "message": JSON_VALUES,
    },
)
ZENDESK_EVENT = with_fields(
    vendor.ZENDESK_CREATED,
    {
        "type": TEXT | st.just("zen:event-type:ticket.status_changed"),
        "time": ISO_TIMES | NUMBERS,
        "id": TEXT | NUMBERS,
        "account_id": JSON_VALUES,
        "detail": JSON_VALUES
        | with_fields(
            vendor.ZENDESK_CREATED["detail"],
            {"id": TEXT | NUMBERS, "requester_id": TEXT | JSON_VALUES, "priority": JSON_VALUES},
        ),
        "event": JSON_VALUES,
    },
)
ZENDESK_TRIGGER = st.fixed_dictionaries(
    {
        "ticket": with_fields(
            vendor.ZENDESK_TRIGGER["ticket"],
            {
                "id": TEXT | NUMBERS,
                "status": TEXT,
                "requester_id": TEXT | NUMBERS,
                "requester_email": TEXT,
                "updated_at": ISO_TIMES,
                "priority": TEXT | JSON_VALUES,
                "satisfaction": TEXT,
            },
        )
        | JSON_VALUES
    },
    optional={"event": TEXT},
)
AD_EVENT = with_fields(
    vendor.ADS_EVENTS["events"][2],
    {
        "id": TEXT | NUMBERS | JSON_VALUES,
        "type": st.sampled_from(["impression", "click", "conversion"]) | TEXT,
        "occurred_at": ISO_TIMES | NUMBERS,
        "cost": NUMBERS | TEXT,
        "revenue": NUMBERS | TEXT,
        "currency": TEXT,
        "platform": TEXT | NUMBERS,
    },
)
TWILIO_FIELDS = st.dictionaries(
    st.sampled_from(["MessageSid", "MessageStatus", "To", "From", "Body", "OptOutType", "x"])
    | st.text(max_size=8),
    st.text(max_size=20),
    max_size=8,
).map(lambda extra: {**vendor.TWILIO_STATUS, **extra})


@pytest.fixture(scope="module")
def server(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs: Path = tmp_path_factory.mktemp("collector-fuzz")
    with running_collector(new_pipeline(kafka_bootstrap, logs), logs) as served:
        yield served


def assert_below_500(
    server: Server, path: str, body: bytes, headers: dict[str, str], kind: str
) -> int:
    status, answer = server.post(path, body, headers, kind)
    assert status < 500, (path, kind, body[:120], status, answer)
    return status


def answered(server: Server) -> float:
    return sum(server.request_counts().values())


def assert_still_up(server: Server, before: float) -> None:
    """The process runs, answers, counted no 5xx, and the fuzz really sent its requests."""
    assert server.process is not None and server.process.poll() is None
    assert server.get("/healthz")[0] == 200
    counts = server.request_counts()
    assert {key: n for key, n in counts.items() if key[1][0] == "5"} == {}
    assert sum(counts.values()) - before >= EXAMPLES


def stamp_now() -> str:
    return str(int(datetime.now(UTC).timestamp()))


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_our_api_and_the_ads_webhook(server: Server) -> None:
    @FUZZ
    @given(
        body=maybe_list(NATIVE).map(to_json) | RAW_BODIES,
        kind=CONTENT_TYPES,
        ads=st.fixed_dictionaries({"events": maybe_list(AD_EVENT)}).map(to_json) | RAW_BODIES,
    )
    def fuzz(body: bytes, kind: str, ads: bytes) -> None:
        assert_below_500(
            server, "/v1/touchpoints", body, {"Authorization": f"Bearer {WEB_KEY}"}, kind
        )
        assert_below_500(
            server, "/v1/webhooks/ads", ads, {"Authorization": f"Bearer {ADS_KEY}"}, kind
        )

    before = answered(server)
    fuzz()
    assert_still_up(server, before)


def test_segment_calls(server: Server) -> None:
    @FUZZ
    @given(
        call=st.sampled_from(["track", "page", "identify", "batch"]),
        item=SEGMENT_ITEM,
        batch=st.lists(SEGMENT_ITEM | JSON_VALUES, max_size=5),
        raw=RAW_BODIES,
        use_raw=st.booleans(),
        kind=CONTENT_TYPES,
    )
    def fuzz(call: str, item: Any, batch: list[Any], raw: bytes, use_raw: bool, kind: str) -> None:
        body = raw if use_raw else to_json({"batch": batch} if call == "batch" else item)
        assert_below_500(server, f"/v1/{call}", body, basic(WRITE_KEY), kind)

    before = answered(server)
    fuzz()
    assert_still_up(server, before)


def test_signed_email_webhooks(server: Server) -> None:
    @FUZZ
    @given(
        sendgrid=st.lists(SENDGRID_ITEM | JSON_VALUES, max_size=6).map(to_json) | RAW_BODIES,
        mailgun=MAILGUN_DATA,
        signature_time=st.just("now") | UNIX_TIMES.map(str),
        raw=RAW_BODIES,
        kind=CONTENT_TYPES,
    )
    def fuzz(sendgrid: bytes, mailgun: Any, signature_time: str, raw: bytes, kind: str) -> None:
        stamp = stamp_now()
        headers = {
            "X-Twilio-Email-Event-Webhook-Signature": server.sendgrid.sign(stamp, sendgrid),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }
        assert_below_500(server, "/v1/webhooks/sendgrid", sendgrid, headers, kind)
        signed_at = stamp_now() if signature_time == "now" else signature_time
        token = mailgun_token()
        delivery = {
            "signature": {
                "timestamp": signed_at,
                "token": token,
                "signature": mailgun_signature(MAILGUN_KEY, signed_at, token),
            },
            "event-data": mailgun,
        }
        assert_below_500(server, "/v1/webhooks/mailgun", to_json(delivery), {}, kind)
        assert_below_500(server, "/v1/webhooks/mailgun", raw, {}, kind)  # unauthenticated

    before = answered(server)
    fuzz()
    assert_still_up(server, before)


def form_pairs(body: bytes) -> list[tuple[bytes, bytes]]:
    def unquote(part: bytes) -> bytes:
        return urllib.parse.unquote_to_bytes(part.replace(b"+", b" "))

    return [
        (unquote(key), unquote(value))
        for key, _, value in (field.partition(b"=") for field in body.split(b"&") if field)
    ]


def test_twilio(server: Server) -> None:
    url = server.url + "/v1/webhooks/twilio"

    @FUZZ
    @given(
        fields=TWILIO_FIELDS,
        raw=RAW_BODIES | st.binary(max_size=100).map(lambda junk: b"MessageSid=SM1&Body=" + junk),
        use_raw=st.booleans(),
        kind=st.just("application/x-www-form-urlencoded") | CONTENT_TYPES,
        signed=st.booleans(),
    )
    def fuzz(fields: dict[str, str], raw: bytes, use_raw: bool, kind: str, signed: bool) -> None:
        body = raw if use_raw else urllib.parse.urlencode(fields).encode()
        headers = (
            {"X-Twilio-Signature": twilio_signature_of_pairs(TWILIO_TOKEN, url, form_pairs(body))}
            if signed
            else {}
        )
        assert_below_500(server, "/v1/webhooks/twilio", body, headers, kind)

    before = answered(server)
    fuzz()
    assert_still_up(server, before)


def test_zendesk(server: Server) -> None:
    @FUZZ
    @given(
        payload=ZENDESK_EVENT | ZENDESK_TRIGGER | JSON_VALUES,
        raw=RAW_BODIES,
        use_raw=st.booleans(),
        kind=CONTENT_TYPES,
    )
    def fuzz(payload: Any, raw: bytes, use_raw: bool, kind: str) -> None:
        body = raw if use_raw else to_json(payload)
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        headers = {
            "X-Zendesk-Webhook-Signature": zendesk_signature(ZENDESK_SECRET, stamp, body),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        }
        assert_below_500(server, "/v1/webhooks/zendesk", body, headers, kind)

    before = answered(server)
    fuzz()
    assert_still_up(server, before)


ENDPOINTS = [
    "/v1/touchpoints",
    "/v1/track",
    "/v1/page",
    "/v1/identify",
    "/v1/batch",
    "/v1/webhooks/sendgrid",
    "/v1/webhooks/mailgun",
    "/v1/webhooks/twilio",
    "/v1/webhooks/zendesk",
    "/v1/webhooks/ads",
]
HEADER_NOISE: list[Callable[[], dict[str, str]]] = [
    dict,
    lambda: {"Authorization": "Bearer"},
    lambda: {"Authorization": "Basic !!!"},
    lambda: {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:").decode()},
    lambda: {"X-Twilio-Signature": "", "X-Zendesk-Webhook-Signature-Timestamp": "9999-99-99"},
    lambda: {"X-Twilio-Email-Event-Webhook-Timestamp": "NaN"},
    lambda: {"X-Zendesk-Webhook-Signature-Timestamp": "9999-12-31T23:59:59-01:00"},
]


def test_unauthenticated_hostile_requests(server: Server) -> None:
    @FUZZ
    @given(
        path=st.sampled_from(ENDPOINTS),
        body=RAW_BODIES | JSON_VALUES.map(to_json),
        kind=CONTENT_TYPES,
        noise=st.sampled_from(HEADER_NOISE),
    )
    def fuzz(path: str, body: bytes, kind: str, noise: Callable[[], dict[str, str]]) -> None:
        status = assert_below_500(server, path, body, noise(), kind)
        assert status >= 400, (path, body[:80], status)

    before = answered(server)
    fuzz()
    assert_still_up(server, before)
