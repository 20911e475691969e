"""The fast decoder gives exactly the pydantic contract's verdict, and the same values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.enums import Channel
from schemas.errors import SchemaValidationError
from schemas.events import PROPERTY_CHECKS, Event, decode_event, event_from_touchpoint
from schemas.touchpoint import _PROPERTY_MODELS, parse_touchpoint

TIMES = st.sampled_from(
    [
        "2026-03-02T09:14:07Z",
        "2026-03-02T09:14:07.5Z",
        "2026-03-02T09:14:07.123456+00:00",
        "2026-03-02T09:14:07.1234567+00:00",
        "2026-03-02T09:14:07.689+05:30",
        "2026-03-02T09:14:07-23:59",
        "2026-03-02T09:14:07+24:00",
        "2026-03-02 09:14:07Z",
        "2026-03-02t09:14:07z",
        "2026-03-02T09:14:07",
        "2026-03-02",
        "2026-W10-1T09:14:07Z",
        "20260302T091407Z",
        "2026-03-02T24:00:00Z",
        "2026-02-30T09:14:07Z",
        "1899-12-31T23:59:59Z",
        "1900-01-01T00:00:00Z",
        "2299-12-31T23:59:59.999999Z",
        "2300-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",
        "1970-01-01T00:30:00+01:00",
        "1970-01-01T00:00:00Z",
        "2026-03-02T09:14:07,5Z",
        "2026-03-02T09:14:07+05",
        "2026-03-02T09:14:07+05:30:00",
        "",
    ]
)
TEXT = st.one_of(
    st.text(min_size=0, max_size=3),
    st.sampled_from(["b-1", "x" * 200, "x" * 201, "ü" * 200, "spring\n", " "]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(["2.35", "0", "-1", "1e3", "12.1234567", "007", "hard", "soft", "5"]),
)
EVENT_TYPES = st.sampled_from(
    [
        "page_view",
        "purchase",
        "review",
        "ad_click",
        "email_bounce",
        "csat",
        "nps",
        "ticket_opened",
        "sms_sent",
        "webinar_joined",
        "Page_View",
        "page_view\n",
        "x" * 65,
        "",
    ]
)
PROPERTY_NAMES = st.sampled_from(
    sorted({name for checks in PROPERTY_CHECKS.values() for name in checks} | {"color", "utm"})
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": draw(st.one_of(TEXT, st.just("e-1"))),
        "buyer_id": draw(st.one_of(TEXT, st.just("b-1"))),
        "channel": draw(st.sampled_from([*(c.value for c in Channel), "fax", "ADS"])),
        "event_type": draw(EVENT_TYPES),
        "occurred_at": draw(TIMES),
    }
    for name in ("event_id", "buyer_id", "channel", "event_type", "occurred_at"):
        if draw(st.integers(0, 30)) == 0:
            del record[name]
    optional = {
        "schema_version": st.sampled_from([1, 2, "1", 1.0, True, None]),
        "anonymous_id": st.one_of(st.none(), TEXT),
        "account_id": st.one_of(st.none(), TEXT),
        "received_at": st.one_of(st.none(), TIMES),
        "campaign": st.one_of(st.none(), TEXT),
        "promo": st.one_of(st.none(), TEXT),
        "revenue": st.one_of(
            st.none(),
            st.sampled_from(["120.50", "0", "-10.00", "1.12345", "99999999999999", "1e3"]),
            st.integers(-5, 10**15),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        "currency": st.one_of(st.none(), st.sampled_from(["USD", "usd", "EURO", "EUR"])),
        "properties": st.one_of(
            st.dictionaries(PROPERTY_NAMES, SCALARS, max_size=4),
            st.sampled_from([[], "x", None, {"nested": {"a": 1}}]),
        ),
        "surprise": SCALARS,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            record[name] = draw(strategy)
    return record


def verdict(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", decode(data))
    except SchemaValidationError as exc:
        return ("rejected", exc.reason)


def slow(data: bytes) -> Event:
    return event_from_touchpoint(parse_touchpoint(data))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_fast_decoder_agrees_with_the_pydantic_contract(record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    assert verdict(decode_event, data) == verdict(slow, data)


def test_a_plain_record_takes_the_fast_path_and_keeps_every_field() -> None:
    data = (
        b'{"event_id":"e1","buyer_id":"b1","channel":"web","event_type":"purchase",'
        b'"occurred_at":"2026-03-02T10:14:07.5+01:00","revenue":"120.50","currency":"USD",'
        b'"campaign":"spring","properties":{"persona":"smb_owner","order_number":2}}'
    )
    event = decode_event(data)
    assert event == slow(data)
    assert str(event.revenue) == "120.50" and event.persona == "smb_owner"
    assert event.at == 1_772_442_847_500_000  # 2026-03-02T09:14:07.5Z in microseconds


def test_the_fast_property_checks_name_exactly_the_typed_property_fields() -> None:
    for channel, model in _PROPERTY_MODELS.items():
        assert set(PROPERTY_CHECKS[channel.value]) == set(model.model_fields), channel
