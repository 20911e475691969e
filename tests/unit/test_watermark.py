"""No single event can poison a partition's watermark.

A Twilio status callback has no event time: the adapter stamps it with the time it
was received. Among a backfill of ordinary history one such event used to move the
watermark to "now", and every later event of the history was dead-lettered
``too_late``. The same for a sender's clock gone wrong (an event from 2099).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from tests.factories import T0, event

NOW = T0 + timedelta(days=120)
LATENESS = timedelta(hours=2)


def processor() -> JourneyProcessor:
    return JourneyProcessor(
        default_rules(),
        allowed_lateness=LATENESS,
        dedup_window=timedelta(days=7),
        max_future_skew=timedelta(hours=1),
        clock=lambda: NOW,
    )


def history(buyers: int = 20, days: int = 30) -> list[dict[str, object]]:
    """Ordinary events a day apart per buyer, in time order."""
    records = []
    for day in range(days):
        for number in range(buyers):
            at = timedelta(days=day, minutes=number)
            records.append(event("page_view", at=at, buyer=f"b{number}"))
    return records


def feed(processor: JourneyProcessor, records: list[dict[str, object]]) -> None:
    for number, record in enumerate(records):
        processor.process_raw(json.dumps(record), source="test", position=str(number))
    processor.flush()


def sms_received_now(buyer: str = "b0") -> dict[str, object]:
    stamp = NOW.isoformat()
    return event(
        "sms_delivered", at=NOW, buyer=buyer, event_id="SM-1", received_at=stamp, channel="sms"
    )


@pytest.mark.parametrize("where", [0, 1, 300, -1])
def test_an_event_stamped_with_its_receive_time_does_not_move_the_watermark(where: int) -> None:
    records = history()
    records.insert(where if where >= 0 else len(records), sms_received_now())
    engine = processor()
    feed(engine, records)
    assert engine.counters.dead_letters == {}
    assert engine.counters.accepted == len(records)  # the callback itself counts too
    assert engine.counters.held_back == {"receive_time": 1}
    newest = max(datetime.fromisoformat(str(record["occurred_at"])) for record in history())
    assert engine.watermark() == newest - LATENESS


def test_an_ordinary_event_received_later_still_moves_the_watermark() -> None:
    engine = processor()
    later = T0 + timedelta(days=40)
    received = (later + timedelta(minutes=3)).isoformat()
    feed(engine, [*history(), event("page_view", at=later, received_at=received)])
    assert engine.counters.held_back == {}
    assert engine.watermark() == later - LATENESS


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (event("page_view", at=datetime(2099, 1, 1, tzinfo=UTC), event_id="y2099"), "future"),
        (
            event(
                "page_view",
                at=NOW + timedelta(days=2),
                event_id="skewed",
                received_at=(T0 + timedelta(days=10)).isoformat(),
            ),
            "ahead_of_receipt",
        ),
    ],
)
def test_an_event_far_ahead_is_folded_but_does_not_drag_the_history_behind_it(
    record: dict[str, object], reason: str
) -> None:
    records = history()
    records.insert(5, record)
    engine = processor()
    feed(engine, records)
    assert engine.counters.dead_letters == {}
    assert engine.counters.held_back == {reason: 1}
    assert engine.counters.accepted == len(records)


def test_had_it_moved_the_watermark_the_history_behind_it_would_be_too_late() -> None:
    """The control: an event that does carry the time "now" (no receipt stamp) moves it."""
    records = history()
    records.insert(1, event("page_view", at=NOW, event_id="direct-now"))
    engine = processor()
    feed(engine, records)
    assert engine.counters.held_back == {}
    assert engine.counters.dead_letters["too_late"] > len(records) // 2
