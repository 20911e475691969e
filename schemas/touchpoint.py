"""The canonical `Touchpoint` v1 envelope and its per-channel payload models.

A touchpoint is validated once, at the edge (:func:`parse_touchpoint`); internal
topics and tables carry it as trusted JSON afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from schemas.enums import EVENT_TYPES, Channel, DeadLetterReason
from schemas.errors import SchemaValidationError

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_TIME",
    "MAX_TIME_MICROS",
    "MIN_TIME",
    "MIN_TIME_MICROS",
    "SCHEMA_VERSION",
    "AdsProperties",
    "EmailProperties",
    "PropertyValue",
    "SmsProperties",
    "SupportProperties",
    "Touchpoint",
    "WebProperties",
    "deterministic_event_id",
    "parse_touchpoint",
    "touchpoint_from_dict",
]

SCHEMA_VERSION: Final = 1
MAX_RECORD_BYTES: Final = 1_000_000
"""Records larger than this (1 MB, in UTF-8 bytes) are dead-lettered unread."""
MIN_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME: Final = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
"""Event times outside [MIN_TIME, MAX_TIME] (UTC) are refused as ``timestamp_out_of_range``:
ClickHouse's DateTime64 would silently clamp them, and nothing real happened before 1970."""
MIN_TIME_MICROS: Final = (MIN_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
MAX_TIME_MICROS: Final = (MAX_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

_EVENT_ID_NAMESPACE: Final = uuid.UUID("6f1c2a52-8d0e-4c55-9a7e-1b2f3d4c5e6f")

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=200)]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PropertyValue = str | int | float | bool | None


def deterministic_event_id(source: str, *source_ids: str) -> str:
    """A stable event id from a source name and the source's own id(s).

    The same vendor delivery sent twice gets the same id, so retries collapse downstream.
    """
    key = "\x1f".join((source, *source_ids))
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, key))


class _Properties(BaseModel):
    """Vendor-side fields: typed where we know them, unknown ones tolerated."""

    model_config = ConfigDict(extra="allow", frozen=True)

    persona: Label | None = None
    tier: Label | None = None


class AdsProperties(_Properties):
    platform: Label | None = None
    ad_id: Identifier | None = None
    creative_id: Identifier | None = None
    placement: Label | None = None
    cost: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)] | None = None


class EmailProperties(_Properties):
    message_id: Identifier | None = None
    subject: str | None = None
    url: str | None = None
    bounce_type: Literal["hard", "soft"] | None = None


class SmsProperties(_Properties):
    message_sid: Identifier | None = None
    url: str | None = None


class WebProperties(_Properties):
    url: str | None = None
    product_id: Identifier | None = None
    order_id: Identifier | None = None
    order_number: Annotated[int, Field(ge=1)] | None = None
    quantity: Annotated[int, Field(ge=1)] | None = None
    rating: Annotated[int, Field(ge=1, le=5)] | None = None


class SupportProperties(_Properties):
    ticket_id: Identifier | None = None
    priority: Label | None = None
    score: Annotated[int, Field(ge=0, le=10)] | None = None


_PROPERTY_MODELS: Final[dict[Channel, type[_Properties]]] = {
    Channel.ADS: AdsProperties,
    Channel.EMAIL: EmailProperties,
    Channel.SMS: SmsProperties,
    Channel.WEB: WebProperties,
    Channel.SUPPORT: SupportProperties,
}

# Per-event-type requirements beyond the channel's property types.
_SCORE_RANGE: Final[dict[str, tuple[int, int]]] = {"csat": (1, 5), "nps": (0, 10)}


class Touchpoint(BaseModel):
    """One marketing touchpoint, schema version 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Identifier
    buyer_id: Identifier
    anonymous_id: Identifier | None = None
    account_id: Identifier | None = None
    channel: Channel
    event_type: EventType
    occurred_at: AwareDatetime
    received_at: AwareDatetime | None = None
    campaign: Label | None = None
    promo: Label | None = None
    revenue: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    properties: dict[str, PropertyValue] = Field(default_factory=dict)

    @field_validator("occurred_at", "received_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        outside = SchemaValidationError(
            DeadLetterReason.TIMESTAMP_OUT_OF_RANGE,
            f"must lie within {MIN_TIME:%Y-%m-%d} and {MAX_TIME:%Y-%m-%d} (UTC), "
            "the times ClickHouse stores",
        )
        if not MIN_TIME.year - 1 <= value.year <= MAX_TIME.year + 1:
            raise outside
        utc = value.astimezone(UTC)
        if not MIN_TIME <= utc <= MAX_TIME:
            raise outside
        return utc

    @model_validator(mode="after")
    def _check_payload(self) -> Touchpoint:
        if self.revenue is not None and self.currency is None:
            raise SchemaValidationError(
                DeadLetterReason.INVALID_PAYLOAD, "revenue needs a currency"
            )
        if self.event_type in EVENT_TYPES[self.channel]:
            model = _PROPERTY_MODELS[self.channel]
            try:
                model.model_validate(self.properties)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise SchemaValidationError(
                    DeadLetterReason.INVALID_PAYLOAD, f"properties.{where}: {first['msg']}"
                ) from None
            score_range = _SCORE_RANGE.get(self.event_type)
            if score_range is not None:
                score = self.properties.get("score")
                low, high = score_range
                if (
                    not isinstance(score, int)
                    or isinstance(score, bool)
                    or not low <= score <= high
                ):
                    raise SchemaValidationError(
                        DeadLetterReason.INVALID_PAYLOAD,
                        f"{self.event_type} needs an integer properties.score in {low}..{high}",
                    )
        return self

    @property
    def persona(self) -> str | None:
        value = self.properties.get("persona")
        return value if isinstance(value, str) else None

    @property
    def tier(self) -> str | None:
        """The account tier (B2B), e.g. ``smb``, ``mid_market``, ``enterprise``."""
        value = self.properties.get("tier")
        return value if isinstance(value, str) else None


def parse_touchpoint(data: bytes | str) -> Touchpoint:
    """Validate one raw record into a Touchpoint.

    Raises :class:`SchemaValidationError` whose ``reason`` says what was wrong;
    never any other exception for bad input.
    """
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_RECORD_BYTES:
        raise SchemaValidationError(
            DeadLetterReason.RECORD_TOO_LARGE,
            f"record is {size} bytes, the limit is {MAX_RECORD_BYTES}",
        )
    try:
        return Touchpoint.model_validate_json(data)
    except ValidationError:
        pass  # diagnose below, on the slow path: bad records are rare
    try:
        decoded: object = json.loads(data)
    except UnicodeDecodeError as exc:
        raise SchemaValidationError(DeadLetterReason.INVALID_ENCODING, str(exc)) from None
    except ValueError as exc:
        raise SchemaValidationError(DeadLetterReason.INVALID_JSON, str(exc)) from None
    if not isinstance(decoded, dict):
        raise SchemaValidationError(
            DeadLetterReason.NOT_AN_OBJECT,
            f"expected a JSON object, got {_json_kind(decoded)}",
        )
    try:
        return Touchpoint.model_validate(decoded)
    except ValidationError as exc:
        raise _translate(exc) from None


def touchpoint_from_dict(record: Mapping[str, object]) -> Touchpoint:
    """Validate an already-decoded record (e.g. built by a webhook adapter).

    Raises :class:`SchemaValidationError` with the same reasons as :func:`parse_touchpoint`.
    """
    try:
        return Touchpoint.model_validate(record)
    except ValidationError as exc:
        raise _translate(exc) from None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _raised(error: ErrorDetails) -> SchemaValidationError | None:
    """The SchemaValidationError one of the model's own validators raised, if it was one."""
    raised = error.get("ctx", {}).get("error")
    return raised if isinstance(raised, SchemaValidationError) else None


def _message(error: ErrorDetails) -> str:
    """pydantic's message, with our validators' detail rather than ``reason: detail``."""
    raised = _raised(error)
    return error["msg"] if raised is None else f"Value error, {raised.detail}"


def _translate(exc: ValidationError) -> SchemaValidationError:
    errors = exc.errors(include_url=False)
    described = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {_message(error)}"
        for error in errors[:5]
    )
    for error in errors:
        loc = error["loc"]
        kind = error["type"]
        raised = _raised(error)
        if loc[:1] == ("channel",) and kind == "enum":
            return SchemaValidationError(DeadLetterReason.UNKNOWN_CHANNEL, described)
        if kind == "timezone_aware":
            return SchemaValidationError(DeadLetterReason.NAIVE_TIMESTAMP, described)
        if loc[:1] == ("schema_version",):
            return SchemaValidationError(DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION, described)
        if kind == "missing":
            return SchemaValidationError(DeadLetterReason.MISSING_FIELD, described)
        if raised is not None and raised.reason is DeadLetterReason.TIMESTAMP_OUT_OF_RANGE:
            return SchemaValidationError(raised.reason, described)
        if raised is not None and not loc:  # the model validator: the payload as a whole
            return SchemaValidationError(raised.reason, raised.detail)
    return SchemaValidationError(DeadLetterReason.INVALID_FIELD, described)
