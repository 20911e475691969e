"""``touchpoint demo``'s data: synthetic journeys ending now, in a database of their own."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingest.generator import GeneratorConfig, write_dataset
from schemas.errors import ConfigError
from schemas.settings import Settings
from sinks import journey_store, queries
from sinks.clickhouse import describe_target
from touchpoint.config import clickhouse, rules_for
from touchpoint.embedded import inspect_inputs

__all__ = ["DemoData", "demo_data"]


@dataclass(frozen=True)
class DemoData:
    events: Path
    truth: Path
    now: datetime
    """Where the synthetic timeline ends."""
    generated: bool
    """False when the files of an earlier demo were reused."""


def demo_data(
    settings: Settings,
    *,
    buyers: int,
    seed: int,
    now: datetime | None = None,
    fresh: bool = False,
    on_buyer: Callable[[int], None] | None = None,
) -> DemoData:
    """The demo's synthetic journeys and ground truth in ``<data dir>/demo``, ending at
    ``now`` (default: the clock) — or the files an earlier demo left there, if ``now``
    is not given or is where they end, and not ``fresh``. Buyers arrive until "now" and
    every journey is cut there, so the newest buyers are mid-journey.

    The demo's database must hold nothing but this dataset (a rerun loads nothing new):
    a run folds its events into the journeys stored there, and another dataset's buyers
    are the same ids on another timeline. Anything else there is a ConfigError that asks
    for ``fresh``, which drops the database first. A ``now`` ahead of the clock is one
    too (checked before anything is dropped): future events do not move the watermark.
    """
    clock = datetime.now(UTC)
    if now is not None and now > clock:
        raise ConfigError(
            f"--now {now.isoformat()} is in the future: the demo's timeline ends at the "
            "latest now (events ahead of the clock do not move the event time)"
        )
    if fresh:
        with clickhouse(settings, migrate=False) as client:
            client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse.database} SYNC")
    folder = settings.data_dir / "demo"
    events = folder / f"events-seed{seed}-buyers{buyers}.jsonl"
    truth = folder / f"truth-seed{seed}-buyers{buyers}.json"
    existing = None if fresh else _demo_end(events, truth)
    reuse = existing is not None and (now is None or now == existing)
    _check_demo_database(settings, events if reuse else None)
    if reuse and existing is not None:
        return DemoData(events, truth, existing, generated=False)
    now = now if now is not None else clock.replace(microsecond=0)
    rules = rules_for(settings)
    config = GeneratorConfig.ending_at(
        now,
        buyers=buyers,
        seed=seed,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    write_dataset(config, events, truth, on_buyer=on_buyer)
    return DemoData(events, truth, now, generated=True)


def _demo_end(events: Path, truth: Path) -> datetime | None:
    """Where an earlier demo's files end, or None (absent, unreadable, or from a version
    whose timeline did not end at a "now")."""
    if not events.is_file():
        return None
    try:
        end = json.loads(truth.read_text(encoding="utf-8"))["totals"]["timeline_end"]
        return datetime.fromisoformat(end)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_demo_database(settings: Settings, events: Path | None) -> None:
    """The database is empty or holds only ``events`` (the file an earlier demo loaded)."""
    database = settings.clickhouse.database
    with clickhouse(settings) as client:
        loaded = journey_store.loaded_inputs(client, database)
        wanted = {inspect_inputs([events])[0].sha256} if events is not None else set()
        other = bool(set(loaded) - wanted) or (
            not loaded and any(queries.table_counts(client, database).values())
        )
    if other:
        raise ConfigError(
            f"database {database} in {describe_target(settings.clickhouse_url())} holds "
            "other data than this demo's: a run folds into the journeys stored there, so "
            "the demo needs it to itself: add --fresh to drop it, or give the demo another "
            "--database or --data-dir"
        )
