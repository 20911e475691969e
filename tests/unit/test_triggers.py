"""Real-time triggers, through the processor with in-memory state (as in test_journey.py)."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from importlib import resources
from typing import Any

import msgspec
import pytest

from processors.journey_processor import JourneyProcessor
from processors.triggers import trigger_event_id
from schemas.errors import RulesError
from schemas.journey import JourneyState, decode_state, encode_state, to_micros
from schemas.rows import TriggerRow
from schemas.rules import JourneyRules
from tests.factories import T0, event

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
DEFAULT_RULES = resources.files("processors").joinpath("default_rules.toml").read_text("utf-8")


def rules(triggers: str) -> JourneyRules:
    return JourneyRules.model_validate(tomllib.loads(DEFAULT_RULES + "\n" + triggers))


def processor(triggers: str, states: dict[str, bytes] | None = None) -> JourneyProcessor:
    return JourneyProcessor(
        rules(triggers), allowed_lateness=2 * HOUR, dedup_window=7 * DAY, states=states
    )


def feed(proc: JourneyProcessor, *records: dict[str, Any]) -> list[TriggerRow]:
    for index, record in enumerate(records):
        proc.process_raw(json.dumps(record), source="test", position=str(index))
    return proc.flush().triggers


def clock(at: timedelta) -> dict[str, Any]:
    """An unrelated buyer's event that moves the watermark to ``at - lateness``."""
    return event("email_sent", at=at, buyer="clock")


MOVE = """
[[trigger]]
id = "considering"
on = "stage_move"
stage = "consideration"
"""


def test_a_stage_move_fires_once_with_the_event_that_caused_it() -> None:
    proc = processor(MOVE)
    click = event("email_click", at=DAY, campaign="spring", properties={"persona": "smb_owner"})
    [row] = feed(proc, event("email_open", at=0 * DAY), click)
    assert row.trigger_id == "considering"
    assert row.kind == "stage_move"
    assert (row.buyer_id, row.stage, row.fired_at) == ("b1", "consideration", T0 + DAY)
    assert (row.event_id, row.channel, row.campaign) == (click["event_id"], "email", "spring")
    assert row.persona == "smb_owner"
    assert row.is_retraction == 0
    occurrence = f"consideration:{click['event_id']}"
    assert row.trigger_event_id == trigger_event_id("considering", "b1", occurrence)
    assert json.loads(row.payload) == {
        "from_stage": "awareness",
        "to_stage": "consideration",
        "event_type": "email_click",
    }
    # A later consideration touch is no move; an earlier one arriving late moves the
    # stage's entry, but the buyer moved into consideration once: nothing fires again.
    assert feed(proc, event("product_view", at=2 * DAY)) == []
    assert feed(proc, event("product_view", at=DAY - HOUR)) == []


def test_a_stage_move_from_another_stage_or_skipped_past_does_not_fire() -> None:
    proc = processor(
        MOVE.replace('stage = "consideration"', 'stage = "purchase"\nfrom_stage = "consideration"')
    )
    assert feed(proc, event("email_open", at=0 * DAY), event("purchase", at=DAY)) == []
    other = feed(
        proc,
        event("email_open", at=0 * DAY, buyer="b2"),
        event("email_click", at=DAY, buyer="b2"),
        event("purchase", at=2 * DAY, buyer="b2"),
    )
    assert [(row.buyer_id, row.stage) for row in other] == [("b2", "purchase")]
    # Skipped past: an impression (awareness), then a purchase, then a late consideration
    # touch after the purchase. Consideration is no move, so "considering" never fires.
    proc = processor(MOVE)
    assert feed(proc, event("ad_impression", at=0 * DAY), event("purchase", at=DAY)) == []
    assert feed(proc, event("email_click", at=2 * DAY)) == []


DROPOFF = """
[[trigger]]
id = "stalled"
on = "dropoff"
stage = "awareness"
"""


def test_a_drop_off_fires_when_judged_at_its_deadline_and_a_late_disproof_retracts_it() -> None:
    proc = processor(DROPOFF)
    assert feed(proc, event("email_open", at=0 * DAY), event("ticket_opened", at=3 * DAY)) == []
    assert feed(proc, clock(21 * DAY + HOUR)) == []  # watermark before the deadline (day 21)
    [fired] = feed(proc, clock(21 * DAY + 3 * HOUR))
    assert (fired.kind, fired.stage, fired.fired_at) == ("dropoff", "awareness", T0 + 21 * DAY)
    assert (fired.channel, fired.event_id) == (
        "support",
        "b1-ticket_opened-" + (T0 + 3 * DAY).isoformat(),
    )
    deadline = to_micros(T0 + 21 * DAY)
    assert fired.trigger_event_id == trigger_event_id("stalled", "b1", f"awareness:{deadline}")
    # Progress at the deadline arriving after the judgement: the drop-off never happened.
    [retraction] = feed(proc, event("email_click", at=21 * DAY))
    assert retraction.is_retraction == 1
    assert retraction.trigger_event_id == fired.trigger_event_id
    assert retraction.version > fired.version
    assert json.loads(retraction.payload)["disproved_by_progress_at"] == (T0 + 21 * DAY).timestamp()
    # Retracted once: more progress changes nothing.
    assert feed(proc, event("purchase", at=21 * DAY + HOUR)) == []


def test_progress_after_the_deadline_is_a_recovery_not_a_retraction() -> None:
    proc = processor(DROPOFF)
    feed(proc, event("email_open", at=0 * DAY))
    [fired] = feed(proc, clock(25 * DAY))
    assert fired.is_retraction == 0
    assert feed(proc, event("email_click", at=26 * DAY)) == []


def test_exits_fire_by_kind_and_channel_filter() -> None:
    proc = processor(
        """
[[trigger]]
id = "lost-email"
on = "exit"
kinds = ["unsubscribe", "spam_complaint"]
channel = "email"
"""
    )
    rows = feed(
        proc,
        event("email_open", at=0 * DAY),
        event("email_unsubscribe", at=DAY),
        event("sms_opt_out", at=DAY, buyer="b2", channel="sms"),
        event("refund", at=DAY, buyer="b3"),
    )
    [row] = rows
    assert (row.buyer_id, row.kind, row.stage, row.channel) == ("b1", "exit", "awareness", "email")
    assert json.loads(row.payload)["exit_kind"] == "unsubscribe"


def test_a_cooldown_holds_back_firings_of_the_same_trigger_for_the_same_buyer() -> None:
    proc = processor(
        """
[[trigger]]
id = "lost"
on = "exit"
cooldown = "7d"
"""
    )

    def unsubscribe(at: timedelta, buyer: str = "b1") -> dict[str, Any]:
        return event("email_unsubscribe", at=at, buyer=buyer, event_id=f"{buyer}-u-{at}")

    first = feed(proc, unsubscribe(0 * DAY), unsubscribe(3 * DAY), unsubscribe(DAY, "b2"))
    assert [(row.buyer_id, row.fired_at) for row in first] == [("b1", T0), ("b2", T0 + DAY)]
    assert feed(proc, unsubscribe(6 * DAY)) == []
    assert [row.fired_at for row in feed(proc, unsubscribe(7 * DAY))] == [T0 + 7 * DAY]


def test_persona_and_campaign_filters() -> None:
    proc = processor(MOVE + 'persona = ["smb_owner"]\ncampaign = "spring"\n')
    rows = feed(
        proc,
        event(
            "email_click",
            at=0 * DAY,
            buyer="a",
            campaign="spring",
            properties={"persona": "smb_owner"},
        ),
        event(
            "email_click", at=0 * DAY, buyer="b", campaign="spring", properties={"persona": "cfo"}
        ),
        event(
            "email_click",
            at=0 * DAY,
            buyer="c",
            campaign="autumn",
            properties={"persona": "smb_owner"},
        ),
        event("email_click", at=0 * DAY, buyer="d", campaign="spring"),
    )
    assert [row.buyer_id for row in rows] == ["a"]


HOT = """
[[trigger]]
id = "hot"
on = "high_intent"
threshold = 3
window = "2d"
"""


def test_high_intent_fires_when_the_score_crosses_the_threshold_in_the_stage() -> None:
    proc = processor(HOT)
    # Three touches within two days while in consideration (the stage below purchase).
    touches = [
        event("email_click", at=0 * DAY),
        event("product_view", at=HOUR),
        event("ticket_opened", at=2 * HOUR),
        event("product_view", at=3 * HOUR),  # still above the threshold: no new crossing
    ]
    [row] = feed(proc, event("page_view", at=-DAY), *touches)
    assert (row.kind, row.stage, row.fired_at, row.event_id) == (
        "high_intent",
        "consideration",
        T0 + 2 * HOUR,
        touches[2]["event_id"],
    )
    assert json.loads(row.payload)["score"] == 3
    # The score falls back below the threshold, then crosses again: a new occurrence.
    again = feed(
        proc,
        event("product_view", at=5 * DAY),
        event("product_view", at=5 * DAY + HOUR),
        event("product_view", at=5 * DAY + 2 * HOUR),
    )
    assert [r.fired_at for r in again] == [T0 + 5 * DAY + 2 * HOUR]
    # Touches in another stage do not score: a buyer who purchased is past it.
    assert (
        feed(
            proc,
            event("purchase", at=0 * DAY, buyer="b2"),
            event("product_view", at=HOUR, buyer="b2"),
            event("product_view", at=2 * HOUR, buyer="b2"),
        )
        == []
    )


def test_a_high_intent_window_beyond_the_dedup_window_is_refused() -> None:
    with pytest.raises(RulesError, match="longer than the dedup window"):
        processor(HOT.replace('"2d"', '"8d"'))


def test_replaying_the_same_events_after_a_restart_fires_nothing_new() -> None:
    triggers = MOVE + DROPOFF + HOT + '\n[[trigger]]\nid = "lost"\non = "exit"\n'
    journey = [
        event("email_open", at=0 * DAY, buyer="x"),
        event("email_click", at=DAY, buyer="x"),
        event("product_view", at=DAY + HOUR, buyer="x"),
        event("product_view", at=DAY + 2 * HOUR, buyer="x"),
        event("email_unsubscribe", at=2 * DAY, buyer="x"),
        event("email_open", at=0 * DAY, buyer="y"),
        clock(40 * DAY),
    ]
    first = processor(triggers)
    fired = feed(first, *journey)
    assert sorted((row.buyer_id, row.trigger_id) for row in fired) == [
        ("x", "considering"),
        ("x", "hot"),
        ("x", "lost"),
        ("y", "stalled"),
    ]
    assert feed(first, *journey) == []  # delivered again: duplicates
    # A new processor over the stored states (a restarted worker), timers re-armed.
    second = processor(triggers, states=dict(first.states))
    second.restore()
    assert feed(second, clock(41 * DAY), *journey[-2:]) == []
    state = second.state("y")
    assert state is not None and [f.trigger for f in state.fired] == ["stalled"]


def test_a_state_stored_before_triggers_existed_still_decodes() -> None:
    proc = processor(MOVE)
    feed(proc, event("email_open", at=0 * DAY), event("email_click", at=DAY))
    stored = msgspec.msgpack.decode(proc.states["b1"])
    format_index = list(JourneyState.__struct_fields__).index("format")
    # the array as format 1 first wrote it: nothing after `format` (no `fired`, no identity)
    old = msgspec.msgpack.encode(stored[: format_index + 1])
    state = decode_state(old)
    assert state.fired == []
    assert (state.aliases, state.merged_into, state.identified) == ([], None, [])
    assert decode_state(encode_state(state)) == state


def test_fired_exits_leave_the_state_once_their_events_cannot_come_again() -> None:
    proc = processor('[[trigger]]\nid = "lost"\non = "exit"\n' + DROPOFF)

    def unsubscribe(at: timedelta) -> dict[str, Any]:
        return event("email_unsubscribe", at=at, event_id=f"u-{at}")

    feed(proc, event("email_open", at=0 * DAY), unsubscribe(DAY), unsubscribe(2 * DAY))
    feed(proc, unsubscribe(3 * DAY), clock(30 * DAY))
    state = proc.state("b1")
    assert state is not None
    # Day 1 and 2 are far behind the dedup window; day 3 is the trigger's latest firing
    # (the cooldown counts from it); the drop-off's entry stays for a retraction.
    assert sorted((f.trigger, f.key) for f in state.fired) == [
        ("lost", "u-3 days, 0:00:00"),
        ("stalled", "awareness"),
    ]


def test_the_same_input_fires_the_same_triggers_in_any_batch_size() -> None:
    from ingest.generator import GeneratorConfig, generate

    config = GeneratorConfig(buyers=300, seed=5, duplicate_rate=0.03, out_of_order_rate=0.1)
    lines, _ = generate(config)
    triggers = MOVE + DROPOFF + HOT + '\n[[trigger]]\nid = "lost"\non = "exit"\ncooldown = "10d"\n'

    def firings(batch: int) -> set[tuple[Any, ...]]:
        proc = processor(triggers)
        rows: list[TriggerRow] = []
        for number, line in enumerate(lines):
            proc.process_raw(line, source="gen", position=str(number))
            if number % batch == batch - 1:
                rows.extend(proc.flush().triggers)
        rows.extend(proc.flush().triggers)
        ids = [row.trigger_event_id for row in rows if not row.is_retraction]
        assert len(ids) == len(set(ids)), "a firing was sent twice"
        return {
            (r.trigger_event_id, r.trigger_id, r.buyer_id, r.fired_at, r.channel, r.persona)
            for r in rows
        }

    one_by_one = firings(1)
    assert {trigger for _, trigger, *_ in one_by_one} == {"considering", "stalled", "hot", "lost"}
    assert firings(37) == one_by_one
    assert firings(len(lines)) == one_by_one


def test_a_stage_move_that_a_late_event_shows_never_happened_is_retracted() -> None:
    proc = processor(MOVE)
    feed(proc, event("email_open", at=0 * DAY))
    [fired] = feed(proc, event("email_click", at=2 * DAY))
    # Late: the buyer had purchased before the click, so consideration was skipped past.
    tables = proc.process_raw(json.dumps(event("purchase", at=DAY)), source="t", position="9")
    assert tables is not None
    output = proc.flush()
    [retraction] = output.triggers
    assert (retraction.trigger_event_id, retraction.is_retraction) == (fired.trigger_event_id, 1)
    assert (retraction.fired_at, retraction.event_id) == (fired.fired_at, fired.event_id)
    assert retraction.version > fired.version
    assert any(t.is_deleted and t.to_stage == "consideration" for t in output.transitions)
    # Later still: a consideration touch before the purchase. Now it is a move again, with
    # another event: a new occurrence.
    [again] = feed(proc, event("product_view", at=DAY - HOUR))
    assert (again.is_retraction, again.fired_at) == (0, T0 + DAY - HOUR)
    assert again.trigger_event_id != fired.trigger_event_id
