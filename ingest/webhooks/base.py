"""What every webhook adapter shares: results, rejections, PII hashing, small converters.

An adapter is a pure function from a vendor's request body to canonical
:class:`~schemas.touchpoint.Touchpoint` objects plus the items it could not use,
each with a dead-letter reason. It never talks to Kafka or checks signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError, SchemaValidationError
from schemas.events import Event
from schemas.touchpoint import Touchpoint, touchpoint_from_dict

__all__ = [
    "EARLIEST_EVENT_TIME",
    "LATEST_EVENT_TIME",
    "MAX_JSON_DEPTH",
    "Parsed",
    "Pii",
    "Rejection",
    "as_object",
    "decode_json",
    "from_unix",
    "json_too_deep",
    "raw_item",
    "scalar_properties",
    "snake_case",
    "validate_all",
    "validate_items",
]


MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of arrays and objects a body may have (vendor payloads need about 6)."""
EARLIEST_EVENT_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME: Final = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
"""Event times the pipeline stores: the Unix epoch up to the end of ClickHouse DateTime64."""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: DeadLetterReason
    detail: str
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason.value, "detail": self.detail}


@dataclass
class Parsed:
    """What an adapter made of a body: touchpoints validated by pydantic (the vendor
    adapters), events validated by :func:`schemas.events.decode_event` (our own API's
    fast path), and the items it could not use."""

    touchpoints: list[Touchpoint] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.touchpoints) + len(self.events)


def validate_all(candidates: Iterable[tuple[int, dict[str, Any] | Rejection, bytes]]) -> Parsed:
    """Validate adapter output: each candidate becomes a touchpoint or a rejection."""
    parsed = Parsed()
    for index, candidate, raw in candidates:
        if isinstance(candidate, Rejection):
            parsed.rejected.append(candidate)
            continue
        try:
            touchpoint = touchpoint_from_dict(candidate)
        except SchemaValidationError as exc:
            parsed.rejected.append(Rejection(index, exc.reason, exc.detail, raw))
            continue
        except OverflowError:  # a time whose UTC conversion leaves what a datetime holds
            touchpoint = None
        times = (touchpoint.occurred_at, touchpoint.received_at) if touchpoint else ()
        if touchpoint is None or not all(_storable(when) for when in times):
            detail = (
                f"event times must lie within {EARLIEST_EVENT_TIME:%Y-%m-%d} and "
                f"{LATEST_EVENT_TIME:%Y-%m-%d} (UTC)"
            )
            parsed.rejected.append(
                Rejection(index, DeadLetterReason.TIMESTAMP_OUT_OF_RANGE, detail, raw)
            )
            continue
        parsed.touchpoints.append(touchpoint)
    return parsed


def _storable(when: datetime | None) -> bool:
    return when is None or EARLIEST_EVENT_TIME <= when <= LATEST_EVENT_TIME


def validate_items(
    items: Sequence[object],
    convert: Callable[[dict[str, Any]], dict[str, Any] | Rejection],
    not_an_object: str,
) -> Parsed:
    """Convert each item of a vendor's JSON array, then validate: see :func:`validate_all`.

    An item that is not a JSON object is rejected with ``not_an_object``; a rejection
    ``convert`` returns is given the item's index.
    """

    def candidates() -> Iterable[tuple[int, dict[str, Any] | Rejection, bytes]]:
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                rejection = Rejection(
                    index, DeadLetterReason.NOT_AN_OBJECT, not_an_object, raw_item(item)
                )
                yield index, rejection, b""
                continue
            converted = convert(item)
            if isinstance(converted, Rejection):
                converted = Rejection(index, converted.reason, converted.detail, converted.raw)
            yield index, converted, raw_item(item)

    return validate_all(candidates())


def as_object(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (vendor fields are optional)."""
    return value if isinstance(value, dict) else {}


_MARKS = b'"[]{}'
_NOT_MARKS = bytes(sorted(set(range(256)) - set(_MARKS)))
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_QUOTED = re.compile(rb'"[^"]*"')


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether UTF-8 JSON ``data`` nests arrays/objects deeper than ``limit``, read unparsed.

    Brackets inside strings do not count. Every step is a C-level bytes operation:
    escapes are dropped, then everything but quotes and brackets; quote pairs holding
    no bracket go at once, the rare strings that hold some by a regex; then each pass
    removes the innermost ``[]`` pairs, one nesting level per pass, at most ``limit + 1``
    passes, stopping early at a run of opens that is already too deep. Malformed JSON
    can only over-count.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(None, _NOT_MARKS).replace(b'""', b"")
    if b'"' in marks:
        marks = _QUOTED.sub(b"", marks)
    brackets = marks.translate(_ONE_KIND)
    levels = 0
    while levels <= limit:
        if b"[" * (limit + 1 - levels) in brackets:  # a run of opens this long is too deep
            return True
        inner_removed = brackets.replace(b"[]", b"")
        if len(inner_removed) == len(brackets):
            break
        brackets = inner_removed
        levels += 1
    return levels + brackets.count(b"[") > limit


def _finite_float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _integer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return text


_DECODER: Final = json.JSONDecoder(
    parse_float=_finite_float, parse_int=_integer, parse_constant=str
)
"""Numbers a float or int cannot hold (1e999, Infinity, NaN, 5000 digits) stay the text
they were sent as, so the field holding one is rejected with its item, not the body."""


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _well_formed(value: object) -> object:
    """``value`` with every unpaired UTF-16 surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_well_formed(item) for item in value]
    if isinstance(value, dict):
        return {_well_formed(key): _well_formed(item) for key, item in value.items()}
    return value


def decode_json(body: bytes) -> Any:
    """Decode a request body; PayloadError (→ 400) if it is not JSON or nests too deep.

    Bytes that are not UTF-8 (or UTF-16/32) are refused. A ``\\uD800``-style escape of
    an unpaired surrogate (a browser's truncated emoji) decodes to U+FFFD, as Go's
    encoding/json does: such a string is not text, and nothing downstream can encode it.
    """
    try:
        encoding = json.detect_encoding(body)
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        raise PayloadError(DeadLetterReason.INVALID_ENCODING, str(exc)) from None
    utf8 = body if encoding.startswith("utf-8") else text.encode()
    if json_too_deep(utf8):
        raise PayloadError(
            DeadLetterReason.INVALID_JSON,
            f"the body nests arrays or objects more than {MAX_JSON_DEPTH} deep",
        )
    try:
        decoded = _DECODER.decode(text.removeprefix("\ufeff"))
    except ValueError as exc:
        raise PayloadError(DeadLetterReason.INVALID_JSON, f"body is not JSON: {exc}") from None
    return _well_formed(decoded) if _SURROGATE_ESCAPE.search(text) else decoded


def raw_item(item: object) -> bytes:
    return json.dumps(item, separators=(",", ":"), default=str).encode()


class Pii:
    """Hashes email addresses and phone numbers when asked to (salted SHA-256)."""

    def __init__(self, enabled: bool = False, salt: str = "") -> None:
        self.enabled = enabled
        self._salt = salt.encode()

    def _hash(self, value: str) -> str:
        digest = hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()
        return f"sha256:{digest[:32]}"

    def email(self, address: str) -> str:
        normalized = address.strip().lower()
        return self._hash(normalized) if self.enabled else normalized

    def phone(self, number: str) -> str:
        normalized = re.sub(r"[^\d+]", "", number)
        return self._hash(normalized) if self.enabled else normalized


def from_unix(value: object) -> str | None:
    """ISO-8601 UTC time from a Unix timestamp (seconds, int/float/numeric str).

    None when ``value`` is not a number at all (the caller falls back to the receive
    time); SchemaValidationError(``timestamp_out_of_range``) for a number that is not
    finite or lies outside the times the pipeline stores (1970 to 2299).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(seconds) or not (
        EARLIEST_EVENT_TIME.timestamp() <= seconds <= LATEST_EVENT_TIME.timestamp()
    ):
        raise SchemaValidationError(
            DeadLetterReason.TIMESTAMP_OUT_OF_RANGE,
            f"timestamp {str(value)[:40]} is not a Unix time between "
            f"{EARLIEST_EVENT_TIME:%Y-%m-%d} and {LATEST_EVENT_TIME:%Y-%m-%d}",
        )
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """``"Video Played"`` → ``"video_played"`` (a valid event type, or ``"event"``)."""
    text = _NOT_WORD.sub("_", name.strip().lower()).strip("_")[:64]
    if not text or not text[0].isalpha():
        text = f"event_{text}"[:64].rstrip("_") or "event"
    return text


def scalar_properties(
    values: Mapping[str, object], keep: Iterable[str] | None = None
) -> dict[str, Any]:
    """Properties a Touchpoint can carry: scalars as they are, anything nested as JSON text."""
    wanted = set(keep) if keep is not None else None
    result: dict[str, Any] = {}
    for key, value in values.items():
        if wanted is not None and key not in wanted:
            continue
        if value is None or isinstance(value, str | int | float | bool):
            result[str(key)] = value
        else:
            result[str(key)] = json.dumps(value, separators=(",", ":"), default=str)
    return result
