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
