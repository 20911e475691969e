"""Which ids an event links, who the person is, and the cap — the rules of processors.identity."""

from __future__ import annotations

import json
from datetime import timedelta

from processors import identity
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from schemas.events import decode_event
from tests.factories import event


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
