"""Identity in the store: touchpoints read per person, and who is whom.

The workers fold the journeys of linked ids into one person's (:mod:`processors.identity`):
``journey_state``, ``stage_transitions`` and ``dropoffs`` are kept under the person id
(the merged ids' rows retracted), and ``identity_links`` says which person each other id
belongs to. ``touchpoints`` keeps the id each event came with — what the source said — so
every query that reads touchpoints per buyer reads them through :func:`person_touchpoints`.
"""

from __future__ import annotations

from sinks.clickhouse import identifier

__all__ = ["person_touchpoints"]


def person_touchpoints(database: str) -> str:
    """A ``FROM`` source: ``touchpoints`` (deduplicated) with ``buyer_id`` the person id."""
    db = identifier(database)
    return (
        "(SELECT t.* REPLACE (if(empty(l.person_id), t.buyer_id, l.person_id) AS buyer_id) "
        f"FROM {db}.touchpoints AS t FINAL "
        f"LEFT ANY JOIN (SELECT alias_id, person_id FROM {db}.identity_links FINAL) AS l "
        "ON l.alias_id = t.buyer_id)"
    )
