"""Builders for test records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def event(
    event_type: str,
    *,
    at: timedelta | datetime,
    buyer: str = "b1",
    channel: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A valid touchpoint record (as a dict) for tests; channel guessed from the event type."""
    guessed = channel or next(
        (
            name
            for prefix, name in (
                ("ad_", "ads"),
                ("email_", "email"),
                ("sms_", "sms"),
                ("ticket_", "support"),
            )
            if event_type.startswith(prefix)
        ),
        "support" if event_type in ("csat", "nps") else "web",
    )
    when = at if isinstance(at, datetime) else T0 + at
    record: dict[str, Any] = {
        "event_id": event_id or f"{buyer}-{event_type}-{when.isoformat()}",
        "buyer_id": buyer,
        "channel": guessed,
        "event_type": event_type,
        "occurred_at": when.isoformat(),
    }
    record.update(fields)
    return record


def final_rows(batches_rows: dict[str, list[Any]]) -> dict[str, dict[tuple[str, ...], Any]]:
    """The latest row per natural key — what ClickHouse shows after FINAL — with versions zeroed."""
    from dataclasses import replace

    keys = {
        "journey_state": ("buyer_id",),
        "stage_transitions": ("buyer_id", "to_stage"),
        "dropoffs": ("buyer_id", "stage"),
        "identity_links": ("alias_id",),
    }
    result: dict[str, dict[tuple[str, ...], Any]] = {}
    for table, key in keys.items():
        latest: dict[tuple[str, ...], Any] = {}
        for row in batches_rows.get(table, []):
            row_key = tuple(str(getattr(row, name)) for name in key)
            if getattr(row, "is_deleted", 0):
                latest.pop(row_key, None)
            else:
                latest[row_key] = replace(row, version=0)
        result[table] = latest
    return result


SAMPLE_TRIGGERS = """
[[trigger]]
id = "considering"
on = "stage_move"
stage = "consideration"

[[trigger]]
id = "stalled"
on = "dropoff"
stage = "awareness"

[[trigger]]
id = "lost"
on = "exit"
cooldown = "30d"
"""
"""Triggers of every kind but high_intent (whose crossings depend on delivery order)."""


def rules_with_triggers(triggers: str = SAMPLE_TRIGGERS) -> Any:
    """The shipped journey rules plus ``triggers`` (``[[trigger]]`` TOML)."""
    import tomllib
    from importlib import resources

    from schemas.rules import JourneyRules

    shipped = resources.files("processors").joinpath("default_rules.toml").read_text("utf-8")
    return JourneyRules.model_validate(tomllib.loads(shipped + "\n" + triggers))


def transition_json(buyer: str) -> bytes:
    """A valid ``stage_transitions`` row (awareness, from an ad click) as a topic carries it."""
    from schemas.enums import Channel, Stage
    from schemas.rows import ROW_ADAPTERS, StageTransitionRow

    row = StageTransitionRow(
        buyer_id=buyer,
        to_stage=Stage.AWARENESS,
        from_stage=Stage.PRE_AWARENESS,
        transitioned_at=T0,
        event_id=f"e-{buyer}",
        channel=Channel.ADS,
        event_type="ad_click",
        campaign="spring",
        persona=None,
        version=1,
    )
    data: bytes = ROW_ADAPTERS[StageTransitionRow.table].dump_json(row)
    return data


class Partitioned:
    """Journey processors over several partitions, as the Kafka workers run them: one per
    partition (or one for all, ``shared``), each id's records on its ``homes`` partition, and
    the identity control records they send each other delivered — in batches, the partition
    drawn by ``draw`` — until none is left (:mod:`processors.stitching`)."""

    def __init__(
        self,
        homes: dict[str, int],
        partitions: int,
        *,
        shared: bool = False,
        draw: Any = None,
        **options: Any,
    ) -> None:
        import random

        from processors.journey_processor import JourneyProcessor

        self.homes = homes
        self.draw = draw if draw is not None else random.Random(0)
        options.setdefault("stitch_identities", True)

        def make() -> JourneyProcessor:
            return JourneyProcessor(home=homes.__getitem__, **options)

        one = make()
        self.workers = {p: one if shared else make() for p in range(partitions)}
        self.controls: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        self.tables: dict[str, list[Any]] = {}
        self.delivered = 0

    def flush(self, processor: Any) -> None:
        output = processor.flush()
        for table, rows in output.tables().items():
            self.tables.setdefault(table, []).extend(rows)
        for sent in output.controls.values():
            for target, value in sent:
                self.controls[target].append(value)

    def feed(self, records: list[dict[str, Any]], *, start: int = 0) -> None:
        """One batch of raw records, each on its buyer's home partition; then deliver."""
        import json

        for index, record in enumerate(records, start):
            partition = self.homes[record["buyer_id"]]
            self.workers[partition].process_raw(
                json.dumps(record), source="raw", position=str(index), partition=partition
            )
        for processor in {id(p): p for p in self.workers.values()}.values():
            self.flush(processor)
        self.deliver()

    def deliver(self) -> None:
        from schemas.topics import CONTROL_HEADER, CONTROL_IDENTITY

        for _ in range(1000):
            waiting = [p for p, pending in self.controls.items() if pending]
            if not waiting:
                return
            partition = self.draw.choice(waiting)
            pending, self.controls[partition] = self.controls[partition], []
            processor = self.workers[partition]
            for value in pending:
                self.delivered += 1
                processor.process_record(
                    value,
                    source="ctl",
                    position=f"{partition}:{self.delivered}",
                    partition=partition,
                    headers=[(CONTROL_HEADER, CONTROL_IDENTITY)],
                )
            self.flush(processor)
        raise AssertionError("the control messages between partitions never settle")

    def finish(self, newest: datetime) -> dict[str, dict[tuple[str, ...], Any]]:
        """Every partition's watermark to ``newest``; the rows as FINAL shows them."""
        for partition, processor in self.workers.items():
            processor.advance_watermark(partition, newest)
            self.flush(processor)
        self.deliver()
        return final_rows(self.tables)
