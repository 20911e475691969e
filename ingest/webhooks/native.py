"""Our own API, ``POST /v1/touchpoints``: one Touchpoint object, a JSON array, or NDJSON.

The fast path, for well-formed bodies (strict UTF-8 JSON, an object or an array of
them, or NDJSON lines that are each strict JSON): msgspec splits an array into
its items' bytes without parsing them, and each item is validated on its own
bytes by :func:`schemas.events.decode_event` — exactly the verdict of the pydantic
contract, the one the workers apply to raw records — into an
:class:`~schemas.events.Event`. One decode per item, no dict, no model.

Everything else takes the careful path it always took (:func:`decode_json`: other
Unicode encodings, escaped lone surrogates turned into U+FFFD, ``Infinity``/``NaN``
and numbers no float holds kept as the text they were sent as, a body that only
parses line by line), and so does an item the fast path accepted with a
non-finite number in its properties (canonical JSON cannot carry one). Bodies
nested deeper than :data:`~ingest.webhooks.base.MAX_JSON_DEPTH` are refused
before either path parses them.

An accepted item without ``received_at`` gets the receive time (an explicit
``"received_at": null`` counts as missing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Final

import msgspec

from ingest.webhooks.base import (
    MAX_JSON_DEPTH,
    Parsed,
    Rejection,
    decode_json,
    json_too_deep,
    raw_item,
    validate_all,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError, SchemaValidationError
from schemas.events import Event, decode_event, event_from_touchpoint
from schemas.journey import to_micros

__all__ = ["parse_native"]

_SPLIT: Final = msgspec.json.Decoder(list[msgspec.Raw])
_CHECK: Final = msgspec.json.Decoder(msgspec.Raw)
"""Checks that a value is strict JSON (escapes included) without building it."""
_replace: Final = msgspec.structs.replace


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _strict_items(body: bytes) -> list[bytes] | None:
    """The items of a strict UTF-8 JSON object or array body (its depth checked before);
    None: take the careful path."""
    start = body.lstrip()[:1]
    if start not in (b"[", b"{") or not _utf8(body):
        return None
    try:
        if start == b"{":
            _CHECK.decode(body)
            return [body]
        return [bytes(item) for item in _SPLIT.decode(body)]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _strict(line: bytes) -> bool:
    if json_too_deep(line) or not _utf8(line):
        return False
    try:
        _CHECK.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return False
    return True


def _finite(event: Event) -> bool:
    for value in event.properties.values():
        if type(value) is float and not math.isfinite(value):
            return False
    return True


class _Native:
    """One request's items → events and rejections, in order."""

    def __init__(self, received_at: datetime) -> None:
        self.received_at = received_at
        self.received = to_micros(received_at)
        self.parsed = Parsed()

    def fast(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Strict JSON items: decode_event's verdict (or the careful path, see above)."""
        events = self.parsed.events
        received = self.received
        for index, raw in items:
            try:
                event = decode_event(raw)
            except SchemaValidationError as exc:
                self.refused(index, raw, exc)
                continue
            if event.properties and not _finite(event):
                self.careful_raw(index, raw)
                continue
            if event.received_at is None:
                event = _replace(event, received_at=received)
            events.append(event)

    def refused(self, index: int, raw: bytes, exc: SchemaValidationError) -> None:
        if exc.reason is DeadLetterReason.INVALID_JSON:  # strict JSON after all: a number
            self.careful_raw(index, raw)  # Python's int() refuses, kept as text there
        else:
            self.parsed.rejected.append(Rejection(index, exc.reason, exc.detail, raw))

    def careful(self, index: int, item: object, raw: bytes) -> None:
        """An item decoded by :func:`decode_json`, validated as a dict by pydantic."""
        candidate: dict[str, Any] | Rejection
        if isinstance(item, dict):
            candidate = {"received_at": self.received_at.isoformat(), **item}
        else:
            candidate = Rejection(
                index, DeadLetterReason.NOT_AN_OBJECT, "expected a JSON object", raw
            )
        checked = validate_all([(index, candidate, raw)])
        self.parsed.rejected.extend(checked.rejected)
        self.parsed.events.extend(event_from_touchpoint(tp) for tp in checked.touchpoints)

    def careful_raw(self, index: int, raw: bytes) -> None:
        try:
            item = decode_json(raw)
        except PayloadError as exc:
            self.parsed.rejected.append(Rejection(index, exc.reason, exc.detail, raw))
            return
        self.careful(index, item, raw)

    def line(self, index: int, line: bytes) -> None:
        if _strict(line):
            self.fast(((index, line),))
        else:
            self.careful_raw(index, line)


def _lines(body: bytes) -> Iterator[bytes]:
    return (line for line in body.splitlines() if line.strip())


def parse_native(body: bytes, content_type: str, received_at: datetime) -> Parsed:
    """A ``/v1/touchpoints`` body → validated events and per-item rejections.

    PayloadError (→ 400) when the body as a whole is unusable: nested too deep, not
    UTF-8 (or UTF-16/32) JSON, not an object, an array or NDJSON lines.
    """
    native = _Native(received_at)
    if "ndjson" in content_type:
        for index, line in enumerate(_lines(body)):
            native.line(index, line)
        return native.parsed
    if json_too_deep(body):  # before anything parses it
        decode_json(body)  # raises the PayloadError that says why (encoding or depth)
        raise PayloadError(
            DeadLetterReason.INVALID_JSON,
            f"the body nests arrays or objects more than {MAX_JSON_DEPTH} deep",
        )
    items = _strict_items(body)
    if items is not None:
        native.fast(enumerate(items))
        return native.parsed
    try:
        decoded = decode_json(body)
    except PayloadError as exc:
        lines = b"\n" in body.strip()
        if exc.reason is not DeadLetterReason.INVALID_JSON or not lines or json_too_deep(body):
            raise
        for index, line in enumerate(_lines(body)):  # a JSON body that parses line by line
            native.line(index, line)
        return native.parsed
    if isinstance(decoded, list):
        for index, item in enumerate(decoded):
            native.careful(index, item, raw_item(item))
    else:
        native.careful(0, decoded, body)
    return native.parsed
