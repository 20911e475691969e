"""Dead letters: records that could not become touchpoints, kept with their reason."""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from schemas.enums import DeadLetterReason

__all__ = ["MAX_STORED_RAW_BYTES", "DeadLetter"]

MAX_STORED_RAW_BYTES = 1_000_000
"""Raw payloads are stored whole up to this size; larger ones keep a prefix plus size and hash."""


class DeadLetter(BaseModel):
    """One rejected record: why, what it was, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dead_letter_id: str
    reason: DeadLetterReason
    detail: str
    raw: str
    raw_bytes: int
    raw_sha256: str
    raw_truncated: bool
    source: str
    position: str
    recorded_at: datetime

    @classmethod
    def build(
        cls,
        *,
        reason: DeadLetterReason,
        detail: str,
        raw: bytes | str,
        source: str,
        position: str,
        recorded_at: datetime,
    ) -> DeadLetter:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        truncated = len(data) > MAX_STORED_RAW_BYTES
        kept = data[:MAX_STORED_RAW_BYTES] if truncated else data
        raw_sha256 = hashlib.sha256(data).hexdigest()
        identity = f"{source}\x1f{position}\x1f{raw_sha256}".encode()
        return cls(
            dead_letter_id=hashlib.sha256(identity).hexdigest()[:32],
            reason=reason,
            detail=detail[:2000],
            raw=kept.decode("utf-8", "replace"),
            raw_bytes=len(data),
            raw_sha256=raw_sha256,
            raw_truncated=truncated,
            source=source,
            position=position,
            recorded_at=recorded_at,
        )
