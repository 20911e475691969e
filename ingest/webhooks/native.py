"""Our own API, ``POST /v1/touchpoints``: one Touchpoint object, a JSON array, or NDJSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ingest.webhooks.base import Parsed, PayloadError, Rejection, raw_item, validate_all
from schemas.enums import DeadLetterReason

__all__ = ["parse_native"]


def _items(body: bytes, content_type: str) -> list[tuple[Any, bytes, str | None]]:
    """(decoded item or None, raw bytes, decode error) per item."""
    if "ndjson" not in content_type:
        try:
            decoded = json.loads(body)
        except UnicodeDecodeError as exc:
            raise PayloadError(DeadLetterReason.INVALID_ENCODING, str(exc)) from None
        except ValueError:
            if b"\n" not in body.strip():
                raise PayloadError(DeadLetterReason.INVALID_JSON, "body is not JSON") from None
        else:
            if isinstance(decoded, list):
                return [(item, raw_item(item), None) for item in decoded]
            return [(decoded, body, None)]
    items: list[tuple[Any, bytes, str | None]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            items.append((json.loads(line), line, None))
        except ValueError as exc:
            items.append((None, line, str(exc)))
    return items


def parse_native(body: bytes, content_type: str, received_at: datetime) -> Parsed:
    def candidates() -> Any:
        for index, (item, raw, error) in enumerate(_items(body, content_type)):
            if error is not None:
                yield index, Rejection(index, DeadLetterReason.INVALID_JSON, error, raw), raw
            elif not isinstance(item, dict):
                yield (
                    index,
                    Rejection(index, DeadLetterReason.NOT_AN_OBJECT, "expected a JSON object", raw),
                    raw,
                )
            else:
                yield index, {"received_at": received_at.isoformat(), **item}, raw

    return validate_all(candidates())
