"""The journey fold and drop-off judgement, through the processor with an in-memory sink."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from schemas.enums import DeadLetterReason, ExitKind, Stage
from schemas.rows import DropoffRow, JourneyStateRow, StageTransitionRow
from tests.factories import T0, event, final_rows

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def processor(lateness: timedelta = 2 * HOUR) -> JourneyProcessor:
    return JourneyProcessor(default_rules(), allowed_lateness=lateness, dedup_window=7 * DAY)


def feed(proc: JourneyProcessor, *records: dict[str, Any]) -> dict[str, list[Any]]:
    for index, record in enumerate(records):
        proc.process_raw(json.dumps(record), source="test", position=str(index))
    output = proc.flush()
    return {table: list(rows) for table, rows in output.tables().items()}


def state(tables: dict[str, list[Any]], buyer: str = "b1") -> JourneyStateRow:
    return final_rows(tables)["journey_state"][(buyer,)]  # type: ignore[no-any-return]


def clock(at: timedelta, buyer: str = "clock") -> dict[str, Any]:
    """An unrelated buyer's event that moves the watermark to ``at - lateness``."""
    return event("email_sent", at=at, buyer=buyer)


def test_a_journey_in_order() -> None:
    tables = feed(
        processor(),
        event("email_sent", at=0 * DAY, campaign="spring"),
        event("email_open", at=1 * DAY),
        event("product_view", at=2 * DAY),
        event(
            "purchase", at=3 * DAY, revenue="120.50", currency="USD", properties={"order_number": 1}
        ),
    )
    row = state(tables)
    assert row.furthest_stage == Stage.PURCHASE
    assert row.current_stage == Stage.PURCHASE
    assert row.purchases == 1
    assert str(row.revenue) == "120.50"
    assert row.first_touch_channel == "email"
    assert row.first_touch_campaign == "spring"
    assert row.touches_by_channel == {"email": 2, "web": 2}
    assert row.stage_entered_at[Stage.AWARENESS] == T0 + DAY
    moves = [(t.from_stage, t.to_stage) for t in tables["stage_transitions"]]
    assert moves == [
        (None, Stage.PRE_AWARENESS),
        (Stage.PRE_AWARENESS, Stage.AWARENESS),
        (Stage.AWARENESS, Stage.CONSIDERATION),
        (Stage.CONSIDERATION, Stage.PURCHASE),
    ]
    assert tables["dropoffs"] == []


def test_a_skipped_stage_is_reached_but_is_not_a_move() -> None:
    tables = feed(processor(), event("ad_impression", at=0 * DAY), event("purchase", at=DAY))
    row = state(tables)
    assert Stage.CONSIDERATION in row.stage_entered_at
    moves = [(t.from_stage, t.to_stage) for t in tables["stage_transitions"]]
    assert moves == [(None, Stage.AWARENESS), (Stage.AWARENESS, Stage.PURCHASE)]


def test_a_stall_is_a_drop_off_only_once_the_watermark_passes_the_deadline() -> None:
    proc = processor()
    feed(
        proc,
        event("email_sent", at=0 * DAY),
        event("email_open", at=1 * DAY),
        event("email_delivered", at=5 * DAY),
    )
    # awareness timeout is 21 days: deadline = day 22. Watermark = newest - 2h.
    tables = feed(proc, clock(22 * DAY + HOUR))
    assert tables["dropoffs"] == []
    tables = feed(proc, clock(22 * DAY + 2 * HOUR))
    [dropoff] = tables["dropoffs"]
    assert isinstance(dropoff, DropoffRow)
    assert dropoff.stage == Stage.AWARENESS
    assert dropoff.deadline == T0 + 22 * DAY
    assert dropoff.last_touch_channel == "email"
    assert dropoff.last_touch_event_type == "email_delivered"
    assert dropoff.recovered_at is None
    assert state(tables).dropoff_stage == Stage.AWARENESS


def test_the_last_touch_before_the_drop_ignores_touches_after_the_deadline() -> None:
    proc = processor()
    tables = feed(
        proc,
        event("email_open", at=0 * DAY),
        event("ticket_opened", at=3 * DAY),
        event("email_sent", at=30 * DAY),  # after the awareness deadline (day 21)
    )
    [dropoff] = tables["dropoffs"]
    assert dropoff.last_touch_channel == "support"


def test_progress_after_the_deadline_is_a_recovered_drop_off() -> None:
    proc = processor()
    feed(proc, event("email_open", at=0 * DAY), clock(25 * DAY))
    tables = feed(proc, event("email_click", at=26 * DAY))
    [dropoff] = tables["dropoffs"]
    assert dropoff.stage == Stage.AWARENESS
    assert dropoff.recovered_at == T0 + 26 * DAY
    row = state(tables)
    assert row.furthest_stage == Stage.CONSIDERATION
    assert row.dropoff_stage is None


def test_progress_exactly_at_the_deadline_is_in_time() -> None:
    tables = feed(
        processor(),
        event("email_open", at=0 * DAY),
        event("email_click", at=21 * DAY),
        clock(60 * DAY),
    )
    assert [d.stage for d in tables["dropoffs"]] == [Stage.CONSIDERATION]


def test_stages_without_a_timeout_never_drop() -> None:
    tables = feed(
        processor(), event("purchase", at=0 * DAY, properties={"order_number": 2}), clock(400 * DAY)
    )
    assert state(tables).furthest_stage == Stage.RETENTION
    assert tables["dropoffs"] == []


def test_exits_carry_the_stage_the_buyer_had_reached_even_when_an_earlier_event_arrives_late() -> (
    None
):
    proc = processor()
    feed(proc, event("email_open", at=0 * DAY), event("email_unsubscribe", at=2 * DAY))
    tables = feed(proc, event("product_view", at=2 * DAY - HOUR))  # late, inside the bound
    row = state(tables)
    assert row.exits == [(ExitKind.UNSUBSCRIBE, Stage.CONSIDERATION, "email", T0 + 2 * DAY)]


def test_a_duplicate_event_changes_nothing() -> None:
    proc = processor()
    purchase = event("purchase", at=DAY, revenue="10.00", currency="USD")
    first = feed(proc, event("page_view", at=0 * DAY), purchase)
    again = feed(proc, purchase)
    assert proc.counters.duplicates == 1
    assert again["touchpoints"] == []
    assert again["journey_state"] == []
    assert state(first).purchases == 1


def test_unclassified_events_are_kept_and_counted() -> None:
    proc = processor()
    tables = feed(proc, event("page_view", at=0 * DAY), event("wishlist_add", at=HOUR))
    assert proc.counters.unclassified == 1
    assert [row.rule_id for row in tables["touchpoints"]] == ["web.page_view", None]
    row = state(tables)
    assert (row.events, row.unclassified) == (2, 1)
    assert row.last_touch_at == T0 + HOUR


def test_an_event_beyond_the_dedup_window_is_dead_lettered_as_too_late() -> None:
    proc = processor()
    tables = feed(proc, event("page_view", at=30 * DAY), event("page_view", at=0 * DAY, buyer="b2"))
    [letter] = tables["dead_letters"]
    assert letter.reason == DeadLetterReason.TOO_LATE
    assert "b2" in letter.raw
    assert proc.counters.late == 0


def test_a_late_event_inside_the_dedup_window_is_folded_and_counted() -> None:
    proc = processor()
    tables = feed(proc, event("page_view", at=3 * DAY), event("email_sent", at=2 * DAY))
    assert proc.counters.late == 1
    assert state(tables).first_touch_channel == "email"


def test_transitions_are_reissued_when_a_late_event_changes_them() -> None:
    proc = processor()
    feed(proc, event("page_view", at=0 * DAY), event("purchase", at=DAY))
    tables = feed(proc, event("product_view", at=DAY - HOUR))
    changed = {(t.from_stage, t.to_stage) for t in tables["stage_transitions"]}
    assert changed == {
        (Stage.AWARENESS, Stage.CONSIDERATION),
        (Stage.CONSIDERATION, Stage.PURCHASE),
    }
    assert all(isinstance(t, StageTransitionRow) for t in tables["stage_transitions"])


def test_restore_rearms_drop_off_timers_from_the_state_store() -> None:
    first = processor()
    feed(first, event("email_open", at=0 * DAY))
    second = JourneyProcessor(
        default_rules(), allowed_lateness=2 * HOUR, dedup_window=7 * DAY, states=first.states
    )
    second.restore()
    tables = feed(second, clock(30 * DAY))
    assert [d.stage for d in tables["dropoffs"]] == [Stage.AWARENESS]


def test_restore_resumes_at_the_stored_event_time_not_at_the_newest_touch() -> None:
    first = processor()
    feed(first, event("email_open", at=0 * DAY))
    first.advance_watermark(0, T0 + 3 * DAY)  # a source watermark: no buyer has a touch there
    second = JourneyProcessor(
        default_rules(), allowed_lateness=2 * HOUR, dedup_window=7 * DAY, states=first.states
    )
    second.restore({0}, {0: first.max_event_times[0], 1: T0 + 90 * DAY})
    assert second.watermark(0) == first.watermark(0) == T0 + 3 * DAY - 2 * HOUR
    assert second.watermark(1) is None  # only the restored partitions take a stored time


def test_restore_without_a_stored_event_time_starts_at_the_newest_touch() -> None:
    first = processor()
    feed(first, event("email_open", at=0 * DAY), event("page_view", at=DAY))
    second = JourneyProcessor(
        default_rules(), allowed_lateness=2 * HOUR, dedup_window=7 * DAY, states=first.states
    )
    second.restore({0})
    assert second.watermark(0) == T0 + DAY - 2 * HOUR


def test_each_partition_keeps_its_own_event_time() -> None:
    proc = processor()
    proc.process_raw(
        json.dumps(event("email_open", at=0 * DAY, buyer="p0")),
        source="k",
        position="0:0",
        partition=0,
    )
    # Partition 1 is far ahead; partition 0's buyer must not be judged by it.
    proc.process_raw(
        json.dumps(event("page_view", at=60 * DAY, buyer="p1")),
        source="k",
        position="1:0",
        partition=1,
    )
    assert proc.flush().dropoffs == []
    assert proc.watermark(1) == T0 + 60 * DAY - 2 * HOUR
    proc.process_raw(
        json.dumps(event("email_sent", at=1 * DAY, buyer="p0b")),
        source="k",
        position="0:1",
        partition=0,
    )
    assert proc.counters.late == 0


def test_a_source_watermark_judges_what_is_due() -> None:
    proc = processor()
    feed(proc, event("email_open", at=0 * DAY))
    proc.advance_watermark(0, T0 + 21 * DAY + 2 * HOUR)
    [dropoff] = proc.flush().dropoffs
    assert dropoff.stage == Stage.AWARENESS


def test_journey_state_survives_an_encoding_round_trip() -> None:
    from schemas.journey import decode_state, encode_state

    proc = processor()
    feed(
        proc,
        event("email_open", at=0 * DAY, properties={"persona": "smb_owner"}),
        event("purchase", at=DAY, revenue="10.50", currency="USD"),
        event("refund", at=2 * DAY),
        clock(90 * DAY),
    )
    state = proc.state("b1")
    assert state is not None
    assert state.dropoffs and state.exits and state.pruned_last and state.pruned_first
    assert proc.states["b1"] == encode_state(state)
    assert decode_state(encode_state(state)) == state


def test_a_redelivery_with_a_later_receive_time_is_still_a_duplicate() -> None:
    proc = processor()
    first = event("sms_delivered", at=HOUR, event_id="twilio-SM1-delivered")
    again = dict(first, occurred_at=(T0 + 2 * HOUR).isoformat())
    feed(proc, first, again)
    assert proc.counters.duplicates == 1
