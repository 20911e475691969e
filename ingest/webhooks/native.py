"""Our own API, ``POST /v1/touchpoints``: one Touchpoint object, a JSON array, or NDJSON."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ingest.webhooks.base import (
    Parsed,
    PayloadError,
    Rejection,
    decode_json,
    json_too_deep,
    raw_item,
    validate_all,
)
from schemas.enums import DeadLetterReason

__all__ = ["parse_native"]


def _items(body: bytes, content_type: str) -> list[tuple[Any, bytes, PayloadError | None]]:
    """(decoded item or None, raw bytes, why it could not be decoded) per item.

    A JSON body is one object or an array of them; NDJSON (or a JSON body that only
    parses line by line) is one item per line, and a line that is not JSON is that
    item's dead letter.
    """
    if "ndjson" not in content_type:
        try:
            decoded = decode_json(body)
        except PayloadError as exc:
            lines = b"\n" in body.strip()
            if exc.reason is not DeadLetterReason.INVALID_JSON or not lines or json_too_deep(body):
                raise
        else:
            if isinstance(decoded, list):
                return [(item, raw_item(item), None) for item in decoded]
            return [(decoded, body, None)]
    items: list[tuple[Any, bytes, PayloadError | None]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            items.append((decode_json(line), line, None))
        except PayloadError as exc:
            items.append((None, line, exc))
    return items


def parse_native(body: bytes, content_type: str, received_at: datetime) -> Parsed:
    def candidates() -> Iterator[tuple[int, dict[str, Any] | Rejection, bytes]]:
        for index, (item, raw, error) in enumerate(_items(body, content_type)):
            if error is not None:
                yield index, Rejection(index, error.reason, error.detail, raw), raw
            elif not isinstance(item, dict):
                yield (
                    index,
                    Rejection(index, DeadLetterReason.NOT_AN_OBJECT, "expected a JSON object", raw),
                    raw,
                )
            else:
                yield index, {"received_at": received_at.isoformat(), **item}, raw

    return validate_all(candidates())
