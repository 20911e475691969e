"""Which ids an event links, who the person is, and the cap — the rules of processors.identity."""

from __future__ import annotations

import json
from datetime import timedelta

from processors import identity
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from schemas.events import decode_event
from schemas.journey import IdentityMessage, encode_identity_message
from schemas.topics import CONTROL_HEADER, CONTROL_IDENTITY
from tests.factories import T0, Partitioned, event


def links(**fields: object) -> list[str]:
    return identity.linked_ids(
        decode_event(json.dumps(event("page_view", at=timedelta(0), **fields)))
    )


def test_an_anonymous_id_links_the_history_filed_under_the_cookie() -> None:
    assert links(buyer="u1", anonymous_id="c1") == ["anonymous:c1"]
    assert links(buyer="anonymous:c1", anonymous_id="c1") == []  # the anonymous call itself
    assert links(buyer="u1") == []


def test_aliases_are_comma_separated_and_never_the_buyer_itself() -> None:
    properties = {"aliases": " mail:a@x.example , u1,,tel:+1555 "}
    assert links(buyer="u1", properties=properties) == ["mail:a@x.example", "tel:+1555"]
    assert links(buyer="u1", properties={"aliases": 7}) == []


def test_the_person_id_is_the_smallest_identified_id_else_the_smallest() -> None:
    assert identity.person_id(["anonymous:c1", "u2", "u1"], ["u2", "u1"]) == "u1"
    assert identity.person_id(["anonymous:c1", "zed"], ["zed"]) == "zed"
    assert identity.person_id(["b", "a"], []) == "a"


def test_a_link_past_the_cap_is_a_dead_letter_and_the_journeys_stay_apart() -> None:
    processor = JourneyProcessor(
        default_rules(),
        allowed_lateness=timedelta(hours=1),
        dedup_window=timedelta(days=7),
        stitch_identities=True,
        max_person_ids=3,
    )
    for number in range(5):
        record = event(
            "ticket_opened",
            at=timedelta(minutes=number),
            buyer=f"c{number}",
            properties={"aliases": "mail:help@shop.example"},
        )
        processor.process_raw(json.dumps(record), source="t", position=str(number))
    output = processor.flush()
    people = {row.buyer_id for row in output.states if not row.is_deleted}
    assert people == {"c0", "c2", "c3", "c4"}  # c0, c1 and the mailbox are one: three ids
    assert [row.reason for row in output.dead_letters] == ["identity_cap"] * 3
    assert processor.counters.merges == 1
    assert sum(row.events for row in output.states if not row.is_deleted) == 5


# -- across partitions (processors.stitching) ---------------------------------------------


def across(homes: dict[str, int], **options: object) -> Partitioned:
    return Partitioned(
        homes,
        3,
        rules=default_rules(),
        allowed_lateness=timedelta(hours=1),
        dedup_window=timedelta(days=7),
        **options,
    )


def test_a_later_event_of_a_merged_id_is_forwarded_to_its_person_and_keeps_where_it_came_from() -> (
    None
):
    partitions = across({"u1": 0, "anonymous:c1": 1})
    partitions.feed([event("page_view", at=timedelta(0), buyer="anonymous:c1", event_id="v1")])
    sign_in = event("page_view", at=timedelta(hours=1), buyer="u1", event_id="s1")
    partitions.feed([{**sign_in, "anonymous_id": "c1"}], start=1)
    partitions.feed(
        [event("add_to_cart", at=timedelta(hours=2), buyer="anonymous:c1", event_id="v2")], start=2
    )
    rows = partitions.finish(T0 + timedelta(hours=3))
    assert set(rows["journey_state"]) == {("u1",)}
    assert rows["journey_state"][("u1",)].events == 3
    assert {key[0]: row.person_id for key, row in rows["identity_links"].items()} == {
        "anonymous:c1": "u1"
    }
    touches = {row.event_id: row for row in partitions.tables["touchpoints"]}
    assert touches["v2"].buyer_id == "anonymous:c1" and touches["v2"].source_position == "2"
    assert len(partitions.tables["touchpoints"]) == 3


def test_a_union_past_the_cap_across_partitions_is_a_dead_letter_and_the_journeys_stay_apart() -> (
    None
):
    homes = {"c0": 0, "c1": 1, "c2": 2, "mail:help@shop.example": 1}
    partitions = across(homes, max_person_ids=3)
    for number in range(3):
        record = event(
            "ticket_opened",
            at=timedelta(minutes=number),
            buyer=f"c{number}",
            event_id=f"t{number}",
            properties={"aliases": "mail:help@shop.example"},
        )
        partitions.feed([record], start=number)
    rows = partitions.finish(T0 + timedelta(hours=1))
    assert set(rows["journey_state"]) == {("c0",), ("c2",)}  # c0, c1, the mailbox: three ids
    letters = partitions.tables["dead_letters"]
    assert [row.reason for row in letters] == ["identity_cap"]
    assert json.loads(letters[0].raw)["event_id"] == "t2"  # the event that carried the link


def test_a_control_record_that_is_not_an_identity_message_is_a_dead_letter() -> None:
    processor = JourneyProcessor(
        default_rules(),
        allowed_lateness=timedelta(hours=1),
        dedup_window=timedelta(days=7),
        stitch_identities=True,
        home=lambda _: 0,
    )
    unknown_op = encode_identity_message(IdentityMessage("split", "u1"))
    for position, value in (("0:1", unknown_op), ("0:2", b"not msgpack at all \xff")):
        processor.process_record(
            value,
            source="raw",
            position=position,
            headers=[(CONTROL_HEADER, CONTROL_IDENTITY)],
        )
    letters = processor.flush().dead_letters
    assert [(row.reason, row.position) for row in letters] == [
        ("invalid_field", "0:1"),
        ("invalid_payload", "0:2"),
    ]
