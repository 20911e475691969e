"""Who is whom: ``touchpoint identity split`` (the person's journeys folded again without an id)."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import closing

from processors.journey_processor import JourneyProcessor
from processors.local import RunSummary
from schemas.errors import InputError
from schemas.raw import RawRecord
from schemas.settings import Settings
from sinks import identity
from sinks.clickhouse import Client
from touchpoint.config import rules_for
from touchpoint.embedded import resume

__all__ = ["split_identity"]


def _then_judge(
    records: Generator[RawRecord, None, None], processor: JourneyProcessor
) -> Generator[RawRecord, None, None]:
    """``records``, then the deadlines their late events armed that are already due."""
    with closing(records):
        yield from records
    processor.judge_due()


def split_identity(settings: Settings, client: Client, buyer_id: str) -> tuple[str, RunSummary]:
    """Take ``buyer_id`` out of its person for good (``touchpoint identity split``).

    A run like any other (resumable, its batches deduplicated): the person's journeys start
    over and their stored touchpoints are folded again, linking the other ids once more but
    never ``buyer_id``. Returns the person id it was split from and the run's summary.
    """
    rules = rules_for(settings)
    resumed = resume(settings, client, rules)
    processor = resumed.processor
    stub = processor.state(buyer_id)
    person_id = buyer_id if stub is None or stub.merged_into is None else stub.merged_into
    person = processor.state(person_id)
    ids = [person_id, *(person.aliases if person is not None else [])]
    if len(ids) < 2:
        raise InputError(f"{buyer_id!r} is not linked to any other id in {resumed.database}")
    identity.block(client, resumed.database, buyer_id)
    processor.split(buyer_id, ids)
    processor.emit_touchpoints = False
    processor.accept_late = True
    records = _then_judge(identity.stored_events(client, resumed.database, ids), processor)
    summary = resumed.run(
        records,
        identity=["identity-split", buyer_id, *ids],
        described=f"identity split {buyer_id}",
        input_sha256=[],
    )
    return person_id, summary
