"""Identity stitching: which ids an event says are one person, and who that person is.

A buyer is known by many ids — a cookie before they sign in, an email address to the ESP,
a phone number to the SMS gateway, a CRM id. An event that carries two of them links them:

- ``anonymous_id`` X on an event of buyer U: the visitor's anonymous history, filed under
  ``anonymous:X`` (how the Segment adapter and the generator file an anonymous-only call,
  :func:`anonymous_buyer_id`), is U's;
- ``properties.aliases``: other ids of the same buyer, comma-separated (an email address or a
  phone number a CRM export or a support ticket gives beside the buyer id; properties are
  scalars in the Touchpoint contract, hence one string).

Linked ids form a *person* (a connected component: links are undirected and transitive).
Its journey lives under one id, the **person id**: the smallest, in string order, of the ids
that were the ``buyer_id`` of a linking event (an identified id beats one only ever seen as
an alias: the person is named after the user id, not the cookie), or of all its ids when
none was. It is a function of the set of links, so a bounded input gives the same persons
and person ids in any order; on a stream a person id can change when a new link arrives
(the journey moves to the new id and the old one is retracted).

A person has at most :data:`MAX_IDS` ids by default: a link that would make it bigger — a
shared device, a support mailbox every ticket names — is refused (a dead letter with reason
``identity_cap``), and the two journeys stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from schemas.events import Event

__all__ = ["ANONYMOUS_PREFIX", "MAX_IDS", "anonymous_buyer_id", "linked_ids", "person_id"]

ANONYMOUS_PREFIX: Final = "anonymous:"
MAX_IDS: Final = 50
"""Default cap on the ids of one person (``TOUCHPOINT_IDENTITY_MAX_IDS``)."""


def anonymous_buyer_id(anonymous_id: str) -> str:
    """The buyer id an anonymous-only event of this anonymous id is filed under."""
    return (
        anonymous_id
        if anonymous_id.startswith(ANONYMOUS_PREFIX)
        else ANONYMOUS_PREFIX + anonymous_id
    )


def linked_ids(event: Event) -> list[str]:
    """The other ids this event says are its buyer's (empty for almost every event)."""
    found: list[str] = []
    if event.anonymous_id is not None:
        alias = anonymous_buyer_id(event.anonymous_id)
        if alias != event.buyer_id:
            found.append(alias)
    properties = event.properties
    if properties:
        aliases = properties.get("aliases")
        if type(aliases) is str:
            for part in aliases.split(","):
                alias = part.strip()
                if alias and alias != event.buyer_id and alias not in found:
                    found.append(alias)
    return found


def person_id(ids: Iterable[str], identified: Iterable[str]) -> str:
    """The id a person's journey lives under (see the module docstring)."""
    named = set(identified)
    return min(ids, key=lambda candidate: (candidate not in named, candidate))
