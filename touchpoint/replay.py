"""Dead letters → back through the pipeline: ``touchpoint dead-letters replay``."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.ordering import sort_by_event_time
from processors.local import RunSummary
from schemas.enums import DeadLetterReason
from schemas.errors import BrokerError, SchemaValidationError
from schemas.events import decode_event
from schemas.raw import RawRecord
from schemas.settings import Settings
from sinks import dead_letters
from sinks.clickhouse import Client
from touchpoint.config import rules_for
from touchpoint.embedded import resume
from touchpoint.kafka import produce

__all__ = ["ReplayResult", "replay_dead_letters"]


@dataclass
class ReplayResult:
    """What ``touchpoint dead-letters replay`` did with the matching dead letters."""

    matched: int = 0
    already_done: int = 0
    """Replayed before (or their event was already there): not sent again."""
    unreplayable: int = 0
    """Their raw payload was cut when stored, or is a CSV row (run the fixed file again)."""
    duplicates: int = 0
    """Their event id is in ``touchpoints`` already: marked, not sent."""
    replayed: int = 0
    still_failing: Counter[str] = field(default_factory=Counter)
    """Reason → letters that fail validation again (fix, then replay again)."""
    target: str = "embedded"
    summary: RunSummary | None = None


def replay_dead_letters(
    settings: Settings,
    client: Client,
    where: dead_letters.DeadLetterFilter,
    *,
    to_kafka: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Send matching dead letters back through the pipeline, each at most once.

    Embedded (default): folded into the stored journeys of this database like one more
    ``touchpoint run`` — however far behind the event time reached, since each event id
    is first looked up in ``touchpoints`` (an event already there is a duplicate and is
    only marked). ``to_kafka``: produced to the raw topic for the workers instead.
    Every letter's outcome goes to ``dead_letter_replays``; a letter replayed before,
    or whose event was there, is skipped next time, one that failed again is retried.
    """
    database = settings.clickhouse.database
    letters = dead_letters.find(client, database, where)
    result = ReplayResult(matched=len(letters))
    outcomes: list[tuple[str, str, str]] = []
    candidates: list[tuple[dead_letters.StoredDeadLetter, bytes, str]] = []
    for letter in letters:
        if letter.done:
            result.already_done += 1
        elif letter.raw_truncated or letter.reason == DeadLetterReason.MALFORMED_ROW.value:
            result.unreplayable += 1
        else:
            data = letter.raw.encode("utf-8", "surrogatepass")
            try:
                event = decode_event(data)
            except SchemaValidationError as exc:
                result.still_failing[exc.reason.value] += 1
                outcomes.append(
                    (letter.dead_letter_id, "failed", f"{exc.reason.value}: {exc.detail}")
                )
                continue
            candidates.append((letter, data, event.event_id))
    known = dead_letters.known_event_ids(
        client, database, [event_id for *_, event_id in candidates]
    )
    fresh = []
    for letter, data, event_id in candidates:
        if event_id in known:
            result.duplicates += 1
            outcomes.append((letter.dead_letter_id, "duplicate", ""))
        else:
            fresh.append((letter, data))
    run_seq = 0
    if fresh and to_kafka:
        result.target, sent, _ = produce(
            settings, iter([data for _, data in fresh]), watermark=False, on_progress=on_progress
        )
        if sent != len(fresh):
            raise BrokerError(
                f"{len(fresh) - sent} of {len(fresh)} replayed records were not acknowledged"
            )
        outcomes.extend((letter.dead_letter_id, "sent", "") for letter, _ in fresh)
        result.replayed = len(fresh)
    elif fresh:
        resumed = resume(settings, client, rules_for(settings))
        resumed.processor.accept_late = True
        ids = sorted(letter.dead_letter_id for letter, _ in fresh)
        records = sort_by_event_time(
            RawRecord(letter.source, letter.position, data) for letter, data in fresh
        )
        result.summary = resumed.run(
            records,
            identity=["replay", hashlib.sha256("\x1f".join(ids).encode()).hexdigest()],
            described=f"replay of {len(fresh)} dead letters",
            input_sha256=[],
            on_progress=on_progress,
        )
        run_seq = result.summary.run_seq or 0
        outcomes.extend((letter.dead_letter_id, "replayed", "") for letter, _ in fresh)
        result.replayed = len(fresh)
    dead_letters.record_outcomes(client, database, outcomes, target=result.target, run_seq=run_seq)
    return result
