"""The hot-path form of a touchpoint (:class:`Event`) and its fast validator (:func:`decode_event`).

:func:`decode_event` gives *exactly* the verdict of the pydantic contract
(:func:`schemas.touchpoint.parse_touchpoint`) in a fraction of its time: a strict
msgspec decode plus a few checks accept the common, plainly valid record; anything
they are not sure of (a revenue, a lax-mode coercion, an unusual time format, any
error at all) goes to pydantic, which decides and names the reason. So the fast
path may only ever accept what pydantic accepts, with the same values — a property
test (``tests/unit/test_event_decoding.py``) holds it to that.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final

import msgspec

from schemas.enums import EVENT_TYPES, Channel
from schemas.journey import EPOCH, US, to_micros
from schemas.touchpoint import (
    MAX_RECORD_BYTES,
    MAX_TIME_MICROS,
    MIN_TIME_MICROS,
    PropertyValue,
    Touchpoint,
    parse_touchpoint,
)

__all__ = ["PROPERTY_CHECKS", "Event", "decode_event", "event_from_touchpoint"]

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Wire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Touchpoint v1 as msgspec decodes it strictly (the fast path's first check)."""

    event_id: _Text
    buyer_id: _Text
    channel: str
    event_type: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}\Z")]
    occurred_at: str
    schema_version: int = 1
    anonymous_id: _Text | None = None
    account_id: _Text | None = None
    received_at: str | None = None
    campaign: _Text | None = None
    promo: _Text | None = None
    revenue: str | None = None
    """Money in JSON numbers (floats) is left to pydantic; plain decimal strings are not."""
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")] | None = None
    properties: dict[str, PropertyValue] = msgspec.field(default_factory=dict)


class Event(msgspec.Struct, frozen=True, gc=False):
    """A validated touchpoint, as the processors use it: plain fields, times in microseconds."""

    event_id: str
    buyer_id: str
    channel: str
    event_type: str
    at: int
    """``occurred_at``, microseconds since the epoch (UTC)."""
    received_at: int | None
    anonymous_id: str | None
    account_id: str | None
    campaign: str | None
    promo: str | None
    revenue: Decimal | None
    currency: str | None
    properties: dict[str, PropertyValue]
    schema_version: int = 1

    @property
    def persona(self) -> str | None:
        value = self.properties.get("persona")
        return value if isinstance(value, str) else None

    @property
    def tier(self) -> str | None:
        value = self.properties.get("tier")
        return value if isinstance(value, str) else None


_DECODER: Final = msgspec.json.Decoder(_Wire)
_CHANNELS: Final = frozenset(channel.value for channel in Channel)
_from_iso: Final = datetime.fromisoformat


def _text(value: object) -> bool:
    return value is None or (type(value) is str and 0 < len(value) <= 200)


def _any_text(value: object) -> bool:
    return value is None or type(value) is str


def _int_in(low: int, high: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return value is None or (type(value) is int and low <= value <= high)

    return check


_COST: Final = re.compile(r"(?:0|[1-9][0-9]{0,11})(?:\.[0-9]{1,6})?")
"""A plain decimal string Decimal(ge=0, max_digits=18, decimal_places=6) certainly accepts."""
_REVENUE: Final = re.compile(r"(?:0|[1-9][0-9]{0,13})(?:\.[0-9]{1,4})?")
"""The same for revenue: Decimal(ge=0, max_digits=18, decimal_places=4)."""


def _cost(value: object) -> bool:
    if value is None:
        return True
    if type(value) is int:
        return 0 <= value < 10**12
    return type(value) is str and _COST.fullmatch(value) is not None


def _bounce(value: object) -> bool:
    return value is None or value in ("hard", "soft")


_BIG: Final = 10**30
# What the typed property models of schemas.touchpoint accept for certain, per channel
# (a strict subset: anything else is left to pydantic). tests/unit/test_event_decoding.py
# checks that these name exactly the models' fields.
PROPERTY_CHECKS: Final[dict[str, dict[str, Callable[[object], bool]]]] = {
    Channel.ADS.value: {
        "platform": _text,
        "ad_id": _text,
        "creative_id": _text,
        "placement": _text,
        "cost": _cost,
    },
    Channel.EMAIL.value: {
        "message_id": _text,
        "subject": _any_text,
        "url": _any_text,
        "bounce_type": _bounce,
    },
    Channel.SMS.value: {"message_sid": _text, "url": _any_text},
    Channel.WEB.value: {
        "url": _any_text,
        "product_id": _text,
        "order_id": _text,
        "order_number": _int_in(1, _BIG),
        "quantity": _int_in(1, _BIG),
        "rating": _int_in(1, 5),
    },
    Channel.SUPPORT.value: {"ticket_id": _text, "priority": _text, "score": _int_in(0, 10)},
}
for _checks in PROPERTY_CHECKS.values():
    _checks.update(persona=_text, tier=_text)
_TYPED: Final = {
    channel.value: frozenset(event_types) for channel, event_types in EVENT_TYPES.items()
}
_SCORES: Final = {"csat": (1, 5), "nps": (0, 10)}


def _time(text: str) -> int | None:
    """Microseconds of a plain RFC 3339 time with an offset; None: leave it to pydantic.

    Only ``YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)``: every form both
    ``datetime.fromisoformat`` and pydantic read the same way.
    """
    size = len(text)
    if (
        size < 20
        or size > 32
        or text[4] != "-"
        or text[7] != "-"
        or text[10] != "T"
        or text[13] != ":"
        or text[16] != ":"
    ):
        return None
    if text[-1] == "Z":
        zone = size - 1
    elif text[-6] in "+-" and text[-3] == ":":
        zone = size - 6
    else:
        return None
    if zone != 19 and (text[19] != "." or not 21 <= zone <= 26):
        return None
    try:
        micros = (_from_iso(text) - EPOCH) // US
    except (ValueError, TypeError, OverflowError):
        return None
    return micros if MIN_TIME_MICROS <= micros <= MAX_TIME_MICROS else None


def _fast(wire: _Wire) -> Event | None:
    """The event, if the strict decode's result is plainly valid; None: ask pydantic."""
    if wire.schema_version != 1 or wire.channel not in _CHANNELS:
        return None
    at = _time(wire.occurred_at)
    if at is None:
        return None
    received: int | None = None
    if wire.received_at is not None:
        received = _time(wire.received_at)
        if received is None:
            return None
    revenue: Decimal | None = None
    if wire.revenue is not None:
        if wire.currency is None or _REVENUE.fullmatch(wire.revenue) is None:
            return None
        revenue = Decimal(wire.revenue)
    properties = wire.properties
    if wire.event_type in _TYPED[wire.channel]:
        if properties:
            checks = PROPERTY_CHECKS[wire.channel]
            for name, value in properties.items():
                check = checks.get(name)
                if check is not None and not check(value):
                    return None
        score_range = _SCORES.get(wire.event_type)
        if score_range is not None:
            score = properties.get("score")
            if type(score) is not int or not score_range[0] <= score <= score_range[1]:
                return None
    return Event(
        wire.event_id,
        wire.buyer_id,
        wire.channel,
        wire.event_type,
        at,
        received,
        wire.anonymous_id,
        wire.account_id,
        wire.campaign,
        wire.promo,
        revenue,
        wire.currency,
        properties,
    )


def event_from_touchpoint(touchpoint: Touchpoint) -> Event:
    """The :class:`Event` of a touchpoint validated by pydantic."""
    received = touchpoint.received_at
    return Event(
        event_id=touchpoint.event_id,
        buyer_id=touchpoint.buyer_id,
        channel=touchpoint.channel.value,
        event_type=touchpoint.event_type,
        at=to_micros(touchpoint.occurred_at),
        received_at=None if received is None else to_micros(received),
        anonymous_id=touchpoint.anonymous_id,
        account_id=touchpoint.account_id,
        campaign=touchpoint.campaign,
        promo=touchpoint.promo,
        revenue=touchpoint.revenue,
        currency=touchpoint.currency,
        properties=dict(touchpoint.properties),
        schema_version=touchpoint.schema_version,
    )


def decode_event(data: bytes | str) -> Event:
    """Validate one raw record, as :func:`~schemas.touchpoint.parse_touchpoint` would.

    Raises :class:`~schemas.errors.SchemaValidationError` (with the reason pydantic
    gives) for a bad record; never any other exception for bad input.
    """
    if len(data) <= MAX_RECORD_BYTES // 4:  # larger ones: pydantic measures them exactly
        try:
            wire = _DECODER.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            event = _fast(wire)
            if event is not None:
                return event
    return event_from_touchpoint(parse_touchpoint(data))
