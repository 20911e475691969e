"""What every webhook adapter shares: results, rejections, PII hashing, small converters.

An adapter is a pure function from a vendor's request body to canonical
:class:`~schemas.touchpoint.Touchpoint` objects plus the items it could not use,
each with a dead-letter reason. It never talks to Kafka or checks signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.enums import DeadLetterReason
from schemas.errors import SchemaValidationError
from schemas.touchpoint import Touchpoint, touchpoint_from_dict

__all__ = [
    "Parsed",
    "PayloadError",
    "Pii",
    "Rejection",
    "as_object",
    "decode_json",
    "from_unix",
    "raw_item",
    "scalar_properties",
    "snake_case",
    "validate_all",
    "validate_items",
]


class PayloadError(SchemaValidationError):
    """The request body as a whole is unusable (not JSON, wrong shape): answer 400."""


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
    touchpoints: list[Touchpoint] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def validate_all(candidates: Iterable[tuple[int, dict[str, Any] | Rejection, bytes]]) -> Parsed:
    """Validate adapter output: each candidate becomes a touchpoint or a rejection."""
    parsed = Parsed()
    for index, candidate, raw in candidates:
        if isinstance(candidate, Rejection):
            parsed.rejected.append(candidate)
            continue
        try:
            parsed.touchpoints.append(touchpoint_from_dict(candidate))
        except SchemaValidationError as exc:
            parsed.rejected.append(Rejection(index, exc.reason, exc.detail, raw))
    return parsed


def validate_items(
    items: Sequence[Any],
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


def as_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (vendor fields are optional)."""
    return value if isinstance(value, dict) else {}


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise PayloadError(DeadLetterReason.INVALID_ENCODING, str(exc)) from None
    except ValueError as exc:
        raise PayloadError(DeadLetterReason.INVALID_JSON, f"body is not JSON: {exc}") from None


def raw_item(item: Any) -> bytes:
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


def from_unix(value: Any) -> str | None:
    """ISO-8601 UTC time from a Unix timestamp (seconds, int/float/str), or None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """``"Video Played"`` → ``"video_played"`` (a valid event type, or ``"event"``)."""
    text = _NOT_WORD.sub("_", name.strip().lower()).strip("_")[:64]
    if not text or not text[0].isalpha():
        text = f"event_{text}"[:64].rstrip("_") or "event"
    return text


def scalar_properties(
    values: Mapping[str, Any], keep: Iterable[str] | None = None
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
