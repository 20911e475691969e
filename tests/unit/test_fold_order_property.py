"""Property: delivering events in any order within the lateness bound changes no final journey."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from tests.factories import event, final_rows

LATENESS = timedelta(hours=6)
RULES = default_rules()

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("email_sent", {}),
    ("email_open", {}),
    ("email_click", {}),
    ("ad_impression", {}),
    ("ad_click", {}),
    ("page_view", {}),
    ("product_view", {}),
    ("purchase", {"revenue": "25.00", "currency": "USD", "properties": {"order_number": 1}}),
    ("purchase", {"revenue": "30.00", "currency": "USD", "properties": {"order_number": 2}}),
    ("review", {"properties": {"rating": 5}}),
    ("email_unsubscribe", {}),
    ("refund", {}),
    ("ticket_opened", {}),
    ("wishlist_add", {}),
]

touch = st.tuples(
    st.sampled_from(["b1", "b2", "b3"]),
    st.integers(min_value=0, max_value=len(EVENTS) - 1),
    st.integers(min_value=0, max_value=120 * 24),  # hour of occurrence, ~4 months
    st.floats(min_value=0.0, max_value=0.999),  # delivery delay, as a share of the lateness bound
    st.booleans(),  # delivered twice?
)


def run(deliveries: list[dict[str, Any]]) -> tuple[dict[str, Any], int, int]:
    processor = JourneyProcessor(RULES, allowed_lateness=LATENESS, dedup_window=timedelta(days=7))
    tables: dict[str, list[Any]] = {}
    for index, record in enumerate(deliveries):
        processor.process_raw(json.dumps(record), source="prop", position=str(index))
        if index % 7 == 6:  # batch boundaries must not matter either
            for table, rows in processor.flush().tables().items():
                tables.setdefault(table, []).extend(rows)
    for table, rows in processor.flush().tables().items():
        tables.setdefault(table, []).extend(rows)
    return final_rows(tables), processor.counters.accepted, processor.counters.dropoffs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(touch, min_size=1, max_size=40))
def test_shuffling_within_the_lateness_bound_changes_no_final_state(
    touches: list[tuple[str, int, int, float, bool]],
) -> None:
    records = []
    for index, (buyer, kind, hour, delay, twice) in enumerate(touches):
        event_type, fields = EVENTS[kind]
        record = event(
            event_type, at=timedelta(hours=hour), buyer=buyer, event_id=f"e{index}", **fields
        )
        arrival = timedelta(hours=hour) + LATENESS * delay
        records.append((timedelta(hours=hour), arrival, index, record))
        if twice:
            records.append(
                (timedelta(hours=hour), arrival + LATENESS * (1 - delay) * 0.5, index, record)
            )

    in_order = [record for _, _, _, record in sorted(records, key=lambda r: (r[0], r[2]))]
    shuffled = [record for _, _, _, record in sorted(records, key=lambda r: (r[1], r[2]))]

    expected = run(in_order)
    actual = run(shuffled)
    assert actual == expected
