"""The local runner: batches, deterministic tokens, dead letters for framing errors."""

from __future__ import annotations

import json
from datetime import timedelta

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.local import run_local
from schemas.enums import DeadLetterReason
from schemas.raw import RawRecord
from sinks.testing import MemorySink
from tests.factories import event


def records() -> list[RawRecord]:
    good = [
        RawRecord(
            "f.jsonl",
            f"line {i + 1}",
            json.dumps(event("page_view", at=timedelta(hours=i), buyer=f"b{i % 3}")).encode(),
        )
        for i in range(10)
    ]
    framing = RawRecord("f.csv", "line 12", b"a,b", (DeadLetterReason.MALFORMED_ROW, "2 fields"))
    return [*good[:5], framing, *good[5:]]


def processor() -> JourneyProcessor:
    return JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=timedelta(days=1)
    )


def test_records_are_processed_in_batches_with_deterministic_tokens() -> None:
    sink = MemorySink()
    progress: list[int] = []
    summary = run_local(
        records(), processor(), sink, batch_size=4, run_id="run1", on_progress=progress.append
    )
    assert summary.records == 11
    assert [batch.token for batch in sink.batches] == ["run1:0", "run1:1", "run1:2"]
    assert sum(progress) == 11
    assert len(sink.rows("touchpoints")) == 10
    [letter] = sink.rows("dead_letters")
    assert (letter.reason, letter.position) == ("malformed_row", "line 12")  # type: ignore[attr-defined]
    assert summary.counters.dead_letters == {"malformed_row": 1}
    assert sink.flushes == 1


def test_running_the_same_input_again_writes_the_same_batches() -> None:
    first, second = MemorySink(), MemorySink()
    run_local(records(), processor(), first, batch_size=4, run_id="run1")
    run_local(records(), processor(), second, batch_size=4, run_id="run1")
    assert [b.token for b in first.batches] == [b.token for b in second.batches]
    assert first.rows("journey_state") == second.rows("journey_state")
