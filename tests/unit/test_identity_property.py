"""Property: a person known by several ids has the journey one id would have had.

Whatever the order the events and the links between the ids arrive in (links before, between
and after the events they join, within the lateness bound), stitching gives — after FINAL —
exactly the rows of a run where every event already carried the person id.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from tests.factories import Partitioned, event, final_rows

LATENESS = timedelta(hours=6)
DEDUP = timedelta(days=30)
RULES = default_rules()

# person P: a user id, the cookie it browsed with before signing in, the address the ESP knows
PERSON = ("u1", "anonymous:c1", "mail:p@example.com")
PERSON_ID = "mail:p@example.com"  # identified ids name the person; the smallest wins
OTHER = "u2"
IDS = (*PERSON, OTHER)

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("email_sent", {}),
    ("email_open", {}),
    ("email_click", {}),
    ("ad_click", {}),
    ("page_view", {}),
    ("product_view", {}),
    ("add_to_cart", {}),
    ("purchase", {"revenue": "25.00", "currency": "USD", "properties": {"order_number": 1}}),
    ("review", {"properties": {"rating": 5}}),
    ("email_unsubscribe", {}),
    ("ticket_opened", {}),
]

touch = st.tuples(
    st.sampled_from(IDS),
    st.integers(min_value=0, max_value=len(EVENTS) - 1),
    st.integers(min_value=0, max_value=20 * 24),  # hour of occurrence: inside the dedup window
    st.floats(min_value=0.0, max_value=0.999),  # delivery delay, share of the lateness bound
    st.booleans(),  # delivered twice?
)
link_hours = st.tuples(
    st.integers(min_value=0, max_value=20 * 24), st.integers(min_value=0, max_value=20 * 24)
)


def run(deliveries: list[dict[str, Any]], *, stitch: bool) -> dict[str, Any]:
    processor = JourneyProcessor(
        RULES, allowed_lateness=LATENESS, dedup_window=DEDUP, stitch_identities=stitch
    )
    tables: dict[str, list[Any]] = {}
    for index, record in enumerate(deliveries):
        processor.process_raw(json.dumps(record), source="prop", position=str(index))
        if index % 5 == 4:  # batch boundaries must not matter
            for table, rows in processor.flush().tables().items():
                tables.setdefault(table, []).extend(rows)
    for table, rows in processor.flush().tables().items():
        tables.setdefault(table, []).extend(rows)
    return final_rows(tables)


def as_person(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a source that already knew who is whom would have sent it."""
    if record["buyer_id"] in PERSON:
        return {**record, "buyer_id": PERSON_ID}
    return record


def deliveries(
    touches: list[tuple[str, int, int, float, bool]], links: tuple[int, int]
) -> list[dict[str, Any]]:
    """The touches and the two linking events, in the order they arrive."""
    records = []
    for index, (buyer, kind, hour, delay, twice) in enumerate(touches):
        event_type, fields = EVENTS[kind]
        record = event(
            event_type, at=timedelta(hours=hour), buyer=buyer, event_id=f"e{index}", **fields
        )
        arrival = timedelta(hours=hour) + LATENESS * delay
        records.append((timedelta(hours=hour), arrival, index, record))
        if twice:
            records.append((timedelta(hours=hour), arrival + LATENESS * 0.4, index, record))
    # the sign-in (user id + the cookie) and a support ticket naming the user's address
    sign_in = event("page_view", at=timedelta(hours=links[0]), buyer="u1", event_id="link-1")
    sign_in["anonymous_id"] = "c1"
    ticket = event(
        "ticket_opened",
        at=timedelta(hours=links[1]),
        buyer="mail:p@example.com",
        event_id="link-2",
        properties={"aliases": "u1"},
    )
    for index, record in ((1000, sign_in), (1001, ticket)):
        at = timedelta(hours=links[index - 1000])
        records.append((at, at + LATENESS * 0.5, index, record))
    return [record for _, _, _, record in sorted(records, key=lambda r: (r[1], r[2]))]


def without_links(rows: dict[str, Any]) -> dict[str, Any]:
    """The rows but ``identity_links``, after checking the links name the person."""
    links = {alias: row.person_id for (alias,), row in rows.pop("identity_links").items()}
    assert links == {alias: PERSON_ID for alias in PERSON if alias != PERSON_ID}
    return rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(touch, min_size=1, max_size=30), link_hours)
def test_stitched_ids_have_the_journey_of_one_id_whatever_the_order(
    touches: list[tuple[str, int, int, float, bool]], links: tuple[int, int]
) -> None:
    shuffled = deliveries(touches, links)
    expected = run([as_person(record) for record in shuffled], stitch=False)
    actual = run(shuffled, stitch=True)
    assert expected.pop("identity_links") == {}
    assert without_links(actual) == expected


# -- across partitions (the Kafka workers: processors.stitching) -------------------------

PARTITIONS = 3


def run_partitioned(
    records: list[dict[str, Any]], homes: dict[str, int], shared: bool, draw: random.Random
) -> dict[str, Any]:
    """The records through one processor per partition (or one for all, ``shared``), each id's
    events arriving on its home partition, the control messages between partitions delivered
    before the next input (well inside the lateness bound), in batches of random sizes."""
    partitions = Partitioned(
        homes,
        PARTITIONS,
        shared=shared,
        draw=draw,
        rules=RULES,
        allowed_lateness=LATENESS,
        dedup_window=DEDUP,
    )
    start = 0
    while start < len(records):
        size = draw.randint(1, 5)
        partitions.feed(records[start : start + size], start=start)
        start += size
    return partitions.finish(
        max(datetime.fromisoformat(record["occurred_at"]) for record in records)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(touch, min_size=1, max_size=30),
    link_hours,
    st.lists(st.integers(0, PARTITIONS - 1), min_size=len(IDS), max_size=len(IDS)),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_stitching_across_partitions_gives_the_journey_of_one_id(
    touches: list[tuple[str, int, int, float, bool]],
    links: tuple[int, int],
    placement: list[int],
    shared: bool,
    draw: random.Random,
) -> None:
    homes = dict(zip(IDS, placement, strict=True))
    shuffled = deliveries(touches, links)
    expected = run([as_person(record) for record in shuffled], stitch=False)
    actual = run_partitioned(shuffled, homes, shared, draw)
    assert expected.pop("identity_links") == {}
    assert without_links(actual) == expected
