"""Identity stitching across partitions: how the Kafka workers fold one person's ids together.

On the local runner every journey is in one store, and :meth:`JourneyProcessor._link
<processors.journey_processor.JourneyProcessor>` folds two ids' journeys in place. On Kafka a
buyer's journey lives on the partition its id hashes to (its *home*, Kafka's murmur2 as for
a keyed record), and one worker cannot touch another partition's state inside its own
transaction. So the workers send each other :class:`~schemas.journey.IdentityMessage` control
records on ``touchpoints.raw``, to the home partition of the id they name, inside the
transaction of the input that caused them: a crash aborts them with the rest.

Every id's home holds nothing, the person's journey (the id is the person's *root*), or a
stub that points to the id the journey was folded into. Ids are ranked as the person id is
chosen (:func:`rank`: an id that was the buyer of a linking event first, then string
order); a person's root is always its best-ranked id, and a journey only ever moves to a
better-ranked id, so stubs lead to the root and no two journeys can cross on their way to
each other.

- An event whose id has a stub is forwarded (``event``) to the stub's id, hop by hop, to
  the root, where it is folded. Forwarded events are not judged ``too_late`` again.
- An event that links ids (:func:`processors.identity.linked_ids`), folded at its person's
  root R, sends ``union(alias, R)`` to each new alias' home. There the alias resolves to its
  root A (forwarding along stubs; an unknown id is an empty root). Whichever of A and R
  ranks lower ships its whole journey (``absorb``) to the other, or, if that is A, A asks R
  to ship by a ``union`` back; the shipper becomes a stub. The root that absorbs a journey
  merges it (:func:`processors.journey.merge`), judges the drop-offs of the union again and
  writes the person's ``identity_links``.
- When a better-ranked id joins a person (a sign-in makes a cookie's user id the person id),
  the root ships the journey to it with ``adopt``: it lives under that id from then on.

Bounded: a union that would give the person more than ``max_person_ids`` ids is refused
(dead letter ``identity_cap``); two unions of the same person in flight at once are checked
against its size before either lands, so a person can end up to one merge past the cap.
Superseded rows (the shipped journey's states, moves and drop-offs) are retracted on the
shipper's partition in the same transaction, the merged rows written on the root's.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["rank"]


def rank(buyer_id: str, named: Collection[str]) -> tuple[bool, str]:
    """Where ``buyer_id`` stands as a person id (lower is better; see
    :func:`processors.identity.person_id`): ids in ``named`` first, then string order."""
    return (buyer_id not in named, buyer_id)
