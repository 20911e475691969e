"""A raw record as read from a source, before validation."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.enums import DeadLetterReason

__all__ = ["RawRecord"]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record and where it came from (``source`` + ``position``, e.g. file + line).

    A reader that cannot even frame the record (a CSV row with the wrong number
    of fields) sets ``error``; the processor turns it into a dead letter.
    """

    source: str
    position: str
    data: bytes
    error: tuple[DeadLetterReason, str] | None = None
