"""Latency of the report's queries on ~10M touchpoints in chDB, beside raw-table answers.

What is measured
----------------
Every public query function the report uses (:mod:`sinks.analysis`, :mod:`sinks.queries`)
and the whole report (:func:`sinks.answers.gather`), each run ``--repeat`` times after one
warm-up on one chDB database; median and p95 (linear interpolation between the two nearest
samples) of the wall time of the Python call, result rows converted and all. Parameters
are the report's own (the shipped report config: conversion window, attribution
look-back and half-life, lapse period; ``limit=25`` like the report).

Beside them, *the same question answered from the raw table without the aggregates*.
Every answer the report summaries serve (migration 0011: ``purchases``,
``support_touches``, ``buyer_last_touch``, ``buyer_channels``) is timed
beside its raw twin, the same library call with ``source="raw"`` (the SQL it had over
``touchpoints``):
promo effectiveness, weekly sales, retention cohorts, buyer tracker, persona stats,
why-not, channel effectiveness and every attribution; so is the whole report
(``answers.gather(source="raw")``). For the other precomputed sources, SQL written here
against ``touchpoints`` alone (``FINAL``, as the library reads it):

``hour of week``
    ``interactions_hour_of_week`` (``analysis.hour_of_week(period=None)``, what the report
    runs) vs ``touchpoints`` grouped by channel × kind × weekday × hour.
``daily funnel`` / ``funnel stage × channel``
    ``funnel_daily`` (``sum`` / ``uniqExactMerge``) vs ``touchpoints``: touches, purchases,
    revenue and distinct buyers per day × stage × channel × campaign × persona, and the
    same rolled up to stage × channel (distinct buyers over the whole range).
``stage funnel``
    ``journey_state`` (``analysis.funnel``) vs each buyer's highest stage in
    ``touchpoints``: reached and moved on per stage (*dropped* needs the timeouts and the
    watermark, so it has no raw twin and is not compared).
``exits``
    ``journey_state.exits`` (``queries.exits_by_stage_channel``) vs exit touches, each with
    the highest stage its buyer had shown by then (a running max over ``(occurred_at,
    event_id)``).
``transitions``
    ``stage_transitions`` (``analysis.transition_flow``) vs moves recomputed from
    ``touchpoints``: a stage is a move when its first event precedes the first event of
    every higher stage, and comes from the previous move (see docs/journeys.md).

Both sides of a pair run alternately (after one warm-up each) and must return the same
rows (floats to 9 significant digits); a mismatch is reported (and makes the exit code 1).
The ratio is raw / aggregate of the medians.

``--growth`` builds the same generated records again with one copy (beside the dataset,
in ``one-copy/``), times everything there too, and prints each answer's growth from 1 to
``--scale`` copies (the ratio of medians: ``--scale`` times is linear), summary and raw
side by side.

The dataset
-----------
Running 10M events through the processor takes about half an hour on 2 cores, so
``--events`` (default 1M) generated records go through the real pipeline
(:func:`touchpoint.wiring.run_files` into a fresh chDB database, as ``touchpoint run``
does), then every table the report reads is copied ``--scale - 1`` more times inside
ClickHouse (``INSERT … SELECT … ARRAY JOIN range(1, scale)``) with buyer, event, account
and anonymous ids suffixed ``-r<n>``: ten times the buyers over the same dates. The copies
of ``touchpoints`` feed the materialized views (``funnel_daily``,
``interactions_hour_of_week``) as any insert does; the build checks that they hold every
touch. ``dead_letters`` is not copied (no report question reads it). Background merges are
let settle before timing (``--optimize`` merges every table fully instead). The build runs
in a spawned subprocess, the timing in another one, on the same chDB directory (chDB
hosts one data directory per process). ``--reuse DIR`` keeps the built database in DIR
and uses it again when the size, scale and seed match.

CPU: the machine's busy time (``/proc/stat``) minus this process's own during the timing
phase is reported as other cores in use; above a quarter of a core the run is flagged.

Run from the repository root::

    .venv/bin/python -m bench.queries --events 20000 --scale 2     # quick check, ~1 minute
    .venv/bin/python -m bench.queries                               # ~10M touchpoints
    .venv/bin/python -m bench.queries --reuse /tmp/tp-queries-10m   # build once, time often
    .venv/bin/python -m bench.queries --events 250000 --scale 4 --growth   # 1 vs 4 copies

Results are printed and written as JSON to ``bench/results/queries-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench import common
from bench.common import (
    EVENTS_PER_BUYER,
    OTHER_CPU_LIMIT,
    REPO,
    CpuSince,
    Progress,
    QuietMachine,
    add_dataset_options,
    add_quiet_options,
    add_run_options,
    buyers_for,
    changed_during_run,
    chdb_environment,
    chdb_settings,
    count_lines,
    generate,
    in_child,
    positive,
    ratio,
)
from ingest.generator import GeneratorConfig
from schemas.report_config import ReportConfig
from schemas.rules import DEFAULT_ORDER
from sinks import analysis, answers, queries
from sinks.analysis import Period
from sinks.clickhouse import Client, identifier
from touchpoint import wiring

__all__ = ["PairResult", "Timing", "main"]

logger = logging.getLogger("bench.queries")

DATABASE: Final = "bench_queries"
REPORT_LIMIT: Final = 25
"""``limit`` of high_intent and buyer_tracker, as the report passes it."""
_DATASET_FILE: Final = "dataset.json"
_CODE_UNDER_TEST: Final = ("schemas", "ingest", "processors", "sinks", "touchpoint")
_SUFFIX: Final = "concat({column}, '-r', toString(_replica))"
_REPLICATED: Final[dict[str, tuple[str, ...]]] = {
    "touchpoints": ("event_id", "buyer_id", "anonymous_id", "account_id"),
    "journey_state": ("buyer_id", "anonymous_id", "account_id"),
    "stage_transitions": ("event_id", "buyer_id"),
    "dropoffs": ("buyer_id",),
}
"""Tables copied ``scale - 1`` times, and their id columns made unique per copy."""
_REPLACING: Final = (
    "touchpoints",
    "stage_transitions",
    "journey_state",
    "dropoffs",
    "dead_letters",
)
_AGGREGATES: Final = (
    "funnel_daily",
    "interactions_hour_of_week",
    "buyer_last_touch",
)
_SUMMARIES: Final = {
    "purchases": "is_purchase",
    "support_touches": "channel = 'support' OR event_type = 'ticket_opened'",
}
"""Migration 0011's filtered copies of touchpoints, and the rows they hold (under FINAL)."""
_STAGE_NAMES: Final = DEFAULT_ORDER.sql_array()
_KIND: Final = (
    "multiIf("
    + ", ".join(
        f"event_type IN ({', '.join(repr(event) for event in events)}), '{kind}'"
        for kind, events in analysis.ACTION_KINDS.items()
    )
    + ", 'interact')"
)

# -------------------------------------------------------------- raw vs aggregate SQL
# ``{db}`` is the database (checked by identifier()), ``{stages}`` the stage names in
# order, ``{kind}`` the hour-of-week action kind; nothing else is spliced in.

_HOUR_OF_WEEK_RAW: Final = """
    SELECT channel, {kind} AS kind, toDayOfWeek(occurred_at) AS day_of_week,
           toHour(occurred_at) AS hour, count() AS touches
    FROM {db}.touchpoints FINAL
    GROUP BY channel, kind, day_of_week, hour
    ORDER BY channel, kind, day_of_week, hour
"""

_DAILY_FUNNEL_AGGREGATE: Final = """
    SELECT day, toString(stage) AS stage_name, channel, campaign, persona,
           sum(touches) AS touch_count, sum(purchases) AS purchase_count,
           sum(revenue) AS revenue_sum, uniqExactMerge(buyers) AS buyer_count
    FROM {db}.funnel_daily
    GROUP BY day, stage, channel, campaign, persona
    ORDER BY day, stage, channel, campaign, persona
"""

_DAILY_FUNNEL_RAW: Final = """
    SELECT toDate(occurred_at) AS day, toString(assumeNotNull(stage)) AS stage_name, channel,
           ifNull(campaign, '') AS campaign_key, ifNull(persona, '') AS persona_key,
           count() AS touch_count, countIf(is_purchase) AS purchase_count,
           sumIf(toDecimal128(ifNull(revenue, 0), 4), is_purchase) AS revenue_sum,
           uniqExact(buyer_id) AS buyer_count
    FROM {db}.touchpoints FINAL
    WHERE stage IS NOT NULL
    GROUP BY day, stage, channel, campaign_key, persona_key
    ORDER BY day, stage, channel, campaign_key, persona_key
"""

_STAGE_CHANNEL_AGGREGATE: Final = """
    SELECT toString(stage) AS stage_name, channel,
           sum(touches) AS touch_count, sum(purchases) AS purchase_count,
           sum(revenue) AS revenue_sum, uniqExactMerge(buyers) AS buyer_count
    FROM {db}.funnel_daily
    GROUP BY stage, channel
    ORDER BY stage, channel
"""

_STAGE_CHANNEL_RAW: Final = """
    SELECT toString(assumeNotNull(stage)) AS stage_name, channel,
           count() AS touch_count, countIf(is_purchase) AS purchase_count,
           sumIf(toDecimal128(ifNull(revenue, 0), 4), is_purchase) AS revenue_sum,
           uniqExact(buyer_id) AS buyer_count
    FROM {db}.touchpoints FINAL
    WHERE stage IS NOT NULL
    GROUP BY stage, channel
    ORDER BY stage, channel
"""

_STAGE_FUNNEL_RAW: Final = """
    SELECT {stages}[rank] AS stage_name,
           countIf(furthest >= rank) AS reached,
           countIf(furthest > rank) AS moved_on
    FROM (
        SELECT buyer_id, max(indexOf({stages}, assumeNotNull(stage))) AS furthest
        FROM {db}.touchpoints FINAL
        WHERE stage IS NOT NULL
        GROUP BY buyer_id
    )
    ARRAY JOIN range(1, length({stages}) + 1) AS rank
    GROUP BY rank
    ORDER BY rank
"""

_EXITS_RAW: Final = """
    SELECT if(reached = 0, '(none)', {stages}[reached]) AS stage_name, kind, channel,
           count() AS exit_count
    FROM (
        SELECT exit_kind AS kind, channel,
               ifNull(max(indexOf({stages}, stage)) OVER (
                   PARTITION BY buyer_id ORDER BY occurred_at, event_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), 0) AS reached
        FROM {db}.touchpoints FINAL
        WHERE buyer_id IN (SELECT buyer_id FROM {db}.touchpoints WHERE exit_kind IS NOT NULL)
    )
    WHERE kind IS NOT NULL
    GROUP BY stage_name, kind, channel
    ORDER BY stage_name, kind, channel
"""

_TRANSITIONS_RAW: Final = """
    SELECT if(previous = 0, '(entry)', {stages}[previous]) AS source,
           {stages}[rank] AS target, count() AS moves
    FROM (
        SELECT rank, max(rank) OVER (
                   PARTITION BY buyer_id ORDER BY first_event
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS previous
        FROM (
            SELECT buyer_id, indexOf({stages}, assumeNotNull(stage)) AS rank,
                   min((occurred_at, event_id)) AS first_event
            FROM {db}.touchpoints FINAL
            WHERE stage IS NOT NULL
            GROUP BY buyer_id, rank
        )
    )
    WHERE rank > previous
    GROUP BY source, target
    ORDER BY target, source
"""


def _sql(template: str, database: str) -> str:
    return template.format(db=identifier(database), stages=_STAGE_NAMES, kind=_KIND)


# ---------------------------------------------------------------------------- results


@dataclass
class Timing:
    """``repeat`` timed calls of one query (after a warm-up)."""

    name: str
    group: str
    seconds: list[float]
    rows: int
    other_cores: float | None = None
    """Cores other processes used while this was timed (above OTHER_CPU_LIMIT: distorted)."""
    attempts: int = 1

    @property
    def median_ms(self) -> float:
        return 1000.0 * statistics.median(self.seconds)

    @property
    def p95_ms(self) -> float:
        return 1000.0 * _quantile(self.seconds, 0.95)

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median_ms": self.median_ms,
            "p95_ms": self.p95_ms,
            "min_ms": 1000.0 * min(self.seconds),
            "max_ms": 1000.0 * max(self.seconds),
        }


@dataclass
class PairResult:
    """One question answered from its aggregate and from the raw table."""

    question: str
    aggregate_source: str
    aggregate: Timing
    raw: Timing
    rows_match: bool
    mismatches: list[str] = field(default_factory=list)
    other_cores: float | None = None
    attempts: int = 1

    @property
    def ratio(self) -> float:
        return self.raw.median_ms / self.aggregate.median_ms if self.aggregate.median_ms else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "aggregate_source": self.aggregate_source,
            "aggregate": self.aggregate.summary(),
            "raw": self.raw.summary(),
            "raw_to_aggregate": self.ratio,
            "rows_match": self.rows_match,
            "mismatches": self.mismatches,
            "other_cores": self.other_cores,
            "attempts": self.attempts,
        }


def _quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ---------------------------------------------------------------------------- helpers


def _scalar(client: Client, sql: str) -> int:
    value = client.command(sql)
    assert isinstance(value, int | str), value
    return int(value)


def _columns(client: Client, table: str) -> list[str]:
    rows = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {table:String} "
        "ORDER BY position",
        parameters={"db": DATABASE, "table": table},
    ).result_rows
    return [str(row[0]) for row in rows]


def _settle(client: Client, limit: float = 600.0, quiet: int = 5) -> float:
    """Wait until no merge has run for ``quiet`` consecutive seconds (or ``limit`` passes)."""
    started = time.perf_counter()
    calm = 0
    while time.perf_counter() - started < limit and calm < quiet:
        running = _scalar(client, "SELECT count() FROM system.merges")
        calm = calm + 1 if running == 0 else 0
        time.sleep(1.0)
    return time.perf_counter() - started


def _active_parts(client: Client) -> dict[str, int]:
    rows = client.query(
        "SELECT table, count() FROM system.parts WHERE database = {db:String} AND active "
        "GROUP BY table ORDER BY table",
        parameters={"db": DATABASE},
    ).result_rows
    return {str(table): int(count) for table, count in rows}


def _table_counts(client: Client) -> dict[str, int]:
    """Rows per table (deduplicated for the replacing tables; rows stored for aggregates)."""
    db = identifier(DATABASE)
    counts = {
        table: _scalar(client, f"SELECT count() FROM {db}.{table} FINAL") for table in _REPLACING
    }
    for table in (*_SUMMARIES, "buyer_channels"):
        counts[table] = _scalar(client, f"SELECT count() FROM {db}.{table} FINAL")
    for table in _AGGREGATES:
        counts[table] = _scalar(client, f"SELECT count() FROM {db}.{table}")
    return counts


def _aggregate_checks(client: Client) -> dict[str, Any]:
    """Whether the materialized views hold every touch of ``touchpoints`` (stored rows)."""
    db = identifier(DATABASE)
    touches = _scalar(client, f"SELECT count() FROM {db}.touchpoints")
    staged = _scalar(client, f"SELECT count() FROM {db}.touchpoints WHERE stage IS NOT NULL")
    hourly = _scalar(client, f"SELECT sum(touches) FROM {db}.interactions_hour_of_week")
    daily = _scalar(client, f"SELECT sum(touches) FROM {db}.funnel_daily")
    summaries = {
        table: (
            _scalar(client, f"SELECT count() FROM {db}.{table} FINAL"),
            _scalar(client, f"SELECT count() FROM {db}.touchpoints FINAL WHERE {condition}"),
        )
        for table, condition in _SUMMARIES.items()
    }
    last_touch = _scalar(
        client,
        f"SELECT count() FROM (SELECT buyer_id FROM {db}.buyer_last_touch GROUP BY buyer_id)",
    )
    buyers = _scalar(client, f"SELECT uniqExact(buyer_id) FROM {db}.touchpoints")
    summaries["buyer_channels"] = (
        _scalar(client, f"SELECT count() FROM {db}.buyer_channels FINAL"),
        _scalar(
            client,
            f"SELECT uniqExact(buyer_id, channel) FROM {db}.touchpoints WHERE NOT is_purchase",
        ),
    )
    return {
        "touchpoints_stored": touches,
        "interactions_hour_of_week_touches": hourly,
        "touchpoints_staged": staged,
        "funnel_daily_touches": daily,
        "summaries_and_touchpoints_final": summaries,
        "buyer_last_touch_buyers": last_touch,
        "touchpoint_buyers": buyers,
        "views_complete": hourly == touches
        and daily == staged
        and all(held == wanted for held, wanted in summaries.values())
        and last_touch == buyers,
    }


# -------------------------------------------------------------------- build (a child)


def _replicate(client: Client, table: str, scale: int) -> float:
    """Add ``scale - 1`` copies of ``table``'s rows with their ids suffixed ``-r<n>``."""
    db = identifier(DATABASE)
    columns = _columns(client, table)
    renamed = set(_REPLICATED[table])
    expressions = [
        f"{_SUFFIX.format(column=column)} AS {column}" if column in renamed else column
        for column in columns
    ]
    started = time.perf_counter()
    client.command(
        f"INSERT INTO {db}.{table} ({', '.join(columns)}) "
        f"SELECT {', '.join(expressions)} FROM {db}.{table} "
        f"ARRAY JOIN range(1, {int(scale)}) AS _replica",
        settings={"insert_deduplicate": 0, "max_partitions_per_insert_block": 1000},
    )
    return time.perf_counter() - started


def build_dataset(
    chdb_dir: Path, events: Path, buyers: int, seed: int, scale: int, optimize: bool
) -> dict[str, Any]:
    """Generate, run through the pipeline, copy ``scale`` times, settle; counts and timings."""
    started = time.perf_counter()
    truth = generate(events, GeneratorConfig(buyers=buyers, seed=seed))
    generated = time.perf_counter()
    records = count_lines(events)
    settings = chdb_settings(chdb_dir, DATABASE, batch_size=5000)
    with wiring.clickhouse(settings) as client:
        inputs = wiring.inspect_inputs([events])
        summary = wiring.run_files(
            settings, inputs, client, on_progress=Progress("pipeline", inputs[0].lines)
        )
        processed = time.perf_counter()
        events.unlink()
        logger.info("pipeline done; waiting for merges before copying")
        _settle(client)
        before = _table_counts(client)
        logger.info("before scaling: %s", before)
        copies: dict[str, float] = {}
        if scale > 1:
            for table in _REPLICATED:
                logger.info("copying %s %d more times", table, scale - 1)
                copies[table] = _replicate(client, table, scale)
                logger.info("copied %s in %.1f s", table, copies[table])
        scaled = time.perf_counter()
        if optimize:
            for table in (*_REPLACING, *_AGGREGATES):
                logger.info("OPTIMIZE TABLE %s FINAL", table)
                client.command(f"OPTIMIZE TABLE {identifier(DATABASE)}.{table} FINAL")
        settled = _settle(client)
        checks = _aggregate_checks(client)
        after = _table_counts(client)
        parts = _active_parts(client)
        finished = time.perf_counter()
    logger.info("after scaling: %s; parts %s; checks %s", after, parts, checks)
    return {
        "buyers_generated": buyers,
        "seed": seed,
        "scale": scale,
        "records": records,
        "events_unique": truth["events_unique"],
        "pipeline_records": summary.records,
        "pipeline_rows_written": dict(summary.rows_written),
        "rows_before_scaling": before,
        "rows": after,
        "active_parts": parts,
        "aggregate_checks": checks,
        "optimized": optimize,
        "seconds": {
            "generate": generated - started,
            "pipeline": processed - generated,
            "copies": copies,
            "scale_total": scaled - processed,
            "settle": settled,
            "total": finished - started,
        },
    }


# ------------------------------------------------------------------ timing (a child)


def _time(call: Callable[[], Sequence[Any]], repeat: int, warm_up: bool = True) -> Timing:
    if warm_up:
        call()
    cpu = CpuSince()
    seconds = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        rows = len(result)
    return Timing("", "", seconds, rows, cpu.cores()["other"])


def _timed(
    call: Callable[[], Sequence[Any]], repeat: int, warm_ups: int = 1
) -> Callable[[int], Timing]:
    """An attempt for :meth:`QuietMachine.run`: warm up (first attempt only), then time."""
    return lambda number: _time(call, repeat, warm_up=warm_ups > 0 and number == 1)


def _cases(client: Client, config: ReportConfig) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, group, call) of every query the report runs, with the report's parameters."""
    db = DATABASE
    window = config.conversion_window
    lookback = config.attribution_lookback
    half_life = config.attribution_half_life
    cases: list[tuple[str, str, Callable[[], Any]]] = [
        # Peers of the whole report: a query's fixed cost, and one pass over the raw table.
        ("peer: SELECT 1", "peer", lambda: client.query("SELECT 1").result_rows),
        (
            "peer: count() FROM touchpoints FINAL",
            "peer",
            lambda: (
                client.query(f"SELECT count() FROM {identifier(db)}.touchpoints FINAL").result_rows
            ),
        ),
        ("funnel", "analysis", lambda: analysis.funnel(client, db)),
        ("funnel window", "analysis", lambda: analysis.funnel(client, db, window=window)),
        (
            "funnel by persona, window",
            "analysis",
            lambda: analysis.funnel(client, db, by="persona", window=window),
        ),
        ("dropoff_diagnosis", "analysis", lambda: analysis.dropoff_diagnosis(client, db)),
        ("hour_of_week (aggregate)", "analysis", lambda: analysis.hour_of_week(client, db)),
        (
            "hour_of_week (period: raw)",
            "analysis",
            lambda: analysis.hour_of_week(client, db, period=Period()),
        ),
        (
            "channel_effectiveness",
            "analysis",
            lambda: analysis.channel_effectiveness(client, db, lookback=lookback),
        ),
        ("promo_effectiveness", "analysis", lambda: analysis.promo_effectiveness(client, db)),
    ]
    for model in analysis.ATTRIBUTION_MODELS:
        cases.append(
            (
                f"attribution {model}",
                "analysis",
                partial(
                    analysis.attribution,
                    client,
                    db,
                    model=model,
                    lookback=lookback,
                    half_life=half_life,
                ),
            )
        )
    cases += [
        (
            "attribution_all (report: 5 models x 2 keys)",
            "analysis",
            lambda: list(
                analysis.attribution_all(client, db, lookback=lookback, half_life=half_life)
            ),
        ),
        (
            "attribution linear by campaign",
            "analysis",
            lambda: analysis.attribution(
                client, db, model="linear", by="campaign", lookback=lookback
            ),
        ),
        (
            "spend_returns by campaign",
            "analysis",
            lambda: analysis.spend_returns(client, db, by="campaign", lookback=lookback),
        ),
        (
            "spend_returns by channel",
            "analysis",
            lambda: analysis.spend_returns(client, db, by="channel", lookback=lookback),
        ),
        ("high_intent", "analysis", lambda: analysis.high_intent(client, db, limit=REPORT_LIMIT)),
        ("why_not_buy_or_stay", "analysis", lambda: analysis.why_not_buy_or_stay(client, db)),
        ("retention_cohorts", "analysis", lambda: analysis.retention_cohorts(client, db)),
        (
            "buyer_tracker",
            "analysis",
            lambda: analysis.buyer_tracker(
                client, db, lapsed_after=config.lapsed_after, limit=REPORT_LIMIT
            ),
        ),
        ("weekly_sales", "analysis", lambda: analysis.weekly_sales(client, db)),
        ("persona_stats", "analysis", lambda: analysis.persona_stats(client, db)),
        ("transition_flow", "analysis", lambda: analysis.transition_flow(client, db)),
        (
            "dropoffs_by_stage_channel",
            "queries",
            lambda: queries.dropoffs_by_stage_channel(client, db),
        ),
        ("exits_by_stage_channel", "queries", lambda: queries.exits_by_stage_channel(client, db)),
    ]
    return cases


Rows = list[tuple[Any, ...]]


def _raw_rows(client: Client, template: str) -> Rows:
    return [tuple(row) for row in client.query(_sql(template, DATABASE)).result_rows]


def _row(item: Any) -> tuple[Any, ...]:
    """An answer's row as a tuple; floats to 9 significant digits (float sums of parallel
    threads differ in the last bits run by run)."""
    return tuple(
        float(f"{value:.9g}") if isinstance(value, float) else value for value in astuple(item)
    )


def _normalize(rows: Rows) -> Rows:
    """Comparable rows: strings, ints and Decimals as they are; dates and times as text."""
    return sorted(
        tuple(
            value if isinstance(value, int | str | Decimal | float) else str(value) for value in row
        )
        for row in rows
    )


def _pairs(
    client: Client,
) -> list[tuple[str, str, Callable[[], Rows], Callable[[], Rows]]]:
    """(question, aggregate source, aggregate answer, raw answer) as comparable rows."""
    db = DATABASE

    def hour_of_week() -> Rows:
        return [
            (cell.channel, cell.kind, cell.day_of_week, cell.hour, cell.touches)
            for cell in analysis.hour_of_week(client, db)
        ]

    def stage_funnel() -> Rows:
        return [(step.stage, step.reached, step.moved_on) for step in analysis.funnel(client, db)]

    def exits() -> Rows:
        return [
            (item.stage, item.kind, item.channel, item.exits)
            for item in queries.exits_by_stage_channel(client, db)
        ]

    def transitions() -> Rows:
        return [
            (flow.from_stage, flow.to_stage, flow.buyers)
            for flow in analysis.transition_flow(client, db)
        ]

    def answer(call: Callable[..., Sequence[Any]], **keywords: Any) -> Callable[[], Rows]:
        return lambda: [_row(item) for item in call(client, db, **keywords)]

    config: ReportConfig = wiring.load_report_config(None)
    lapsed = {"lapsed_after": config.lapsed_after, "limit": REPORT_LIMIT}

    def attribution(source: analysis.Source) -> Callable[[], Rows]:
        def call() -> Rows:
            every = analysis.attribution_all(
                client,
                db,
                lookback=config.attribution_lookback,
                half_life=config.attribution_half_life,
                source=source,
            )
            return [_row(share) for shares in every.values() for share in shares]

        return call

    # Every answer served from the report summaries (migration 0011), beside its raw twin:
    # the same library call with source="raw" (the SQL it had over touchpoints).
    summaries: list[tuple[str, str, Callable[[], Rows], Callable[[], Rows]]] = [
        (
            f"{name} (the report's call)",
            table,
            answer(call, **keywords),
            answer(call, **keywords, source="raw"),
        )
        for name, table, call, keywords in (
            ("promo_effectiveness", "purchases", analysis.promo_effectiveness, {}),
            ("weekly_sales", "purchases", analysis.weekly_sales, {}),
            ("retention_cohorts", "purchases", analysis.retention_cohorts, {}),
            ("buyer_tracker", "purchases", analysis.buyer_tracker, lapsed),
            ("persona_stats", "support_touches", analysis.persona_stats, {}),
            ("why_not_buy_or_stay", "buyer_last_touch", analysis.why_not_buy_or_stay, {}),
            (
                "channel_effectiveness",
                "buyer_channels",
                analysis.channel_effectiveness,
                {"lookback": config.attribution_lookback},
            ),
        )
    ]
    summaries.append(
        (
            "attribution_all (5 models x 2 keys)",
            "purchases",
            attribution("summary"),
            attribution("raw"),
        )
    )
    return [
        *summaries,
        (
            "hour of week",
            "interactions_hour_of_week",
            hour_of_week,
            lambda: _raw_rows(client, _HOUR_OF_WEEK_RAW),
        ),
        (
            "daily funnel (day×stage×channel×campaign×persona)",
            "funnel_daily",
            lambda: _raw_rows(client, _DAILY_FUNNEL_AGGREGATE),
            lambda: _raw_rows(client, _DAILY_FUNNEL_RAW),
        ),
        (
            "funnel stage × channel (all days)",
            "funnel_daily",
            lambda: _raw_rows(client, _STAGE_CHANNEL_AGGREGATE),
            lambda: _raw_rows(client, _STAGE_CHANNEL_RAW),
        ),
        (
            "stage funnel (reached, moved on)",
            "journey_state",
            stage_funnel,
            lambda: _raw_rows(client, _STAGE_FUNNEL_RAW),
        ),
        ("exits by stage × channel", "journey_state", exits, lambda: _raw_rows(client, _EXITS_RAW)),
        (
            "stage transitions (from → to)",
            "stage_transitions",
            transitions,
            lambda: _raw_rows(client, _TRANSITIONS_RAW),
        ),
    ]


def _compare(aggregate: Rows, raw: Rows, limit: int = 5) -> list[str]:
    left, right = _normalize(aggregate), _normalize(raw)
    if left == right:
        return []
    only_left = [row for row in left if row not in set(right)]
    only_right = [row for row in right if row not in set(left)]
    notes = [f"{len(left)} aggregate rows, {len(right)} raw rows"]
    notes += [f"aggregate only: {row}" for row in only_left[:limit]]
    notes += [f"raw only: {row}" for row in only_right[:limit]]
    return notes


def _time_pair(
    name: str,
    source: str,
    aggregate: Callable[[], Rows],
    raw: Callable[[], Rows],
    repeat: int,
    attempt: int = 1,
) -> PairResult:
    """Warm both, compare their answers, then time them alternately (``attempt``: unused)."""
    first_aggregate, first_raw = aggregate(), raw()
    mismatches = _compare(first_aggregate, first_raw)
    cpu = CpuSince()
    times: dict[str, list[float]] = {"aggregate": [], "raw": []}
    for _ in range(repeat):
        for side, call in (("aggregate", aggregate), ("raw", raw)):
            started = time.perf_counter()
            call()
            times[side].append(time.perf_counter() - started)
    return PairResult(
        question=name,
        aggregate_source=source,
        aggregate=Timing(name, "aggregate", times["aggregate"], len(first_aggregate)),
        raw=Timing(name, "raw", times["raw"], len(first_raw)),
        rows_match=not mismatches,
        mismatches=mismatches,
        other_cores=cpu.cores()["other"],
    )


def measure(
    chdb_dir: Path, repeat: int, gather_repeat: int, max_wait: float, retries: int
) -> dict[str, Any]:
    """Time every report query, the raw-vs-aggregate pairs and the whole report."""
    settings = chdb_settings(chdb_dir, DATABASE, batch_size=5000)
    config: ReportConfig = wiring.load_report_config(None)
    quiet = QuietMachine(max_wait, retries)
    with wiring.clickhouse(settings) as client:
        waited = _settle(client, limit=300.0, quiet=3)
        counts = _table_counts(client)
        parts = _active_parts(client)
        # again here: a reused dataset built before a migration got it now (backfilled)
        checks = _aggregate_checks(client)
        cpu = CpuSince()
        timings: list[Timing] = []
        for name, group, call in _cases(client, config):
            timing = quiet.run(name, _timed(call, repeat))
            timing.name, timing.group = name, group
            logger.info(
                "%-34s median %9.1f ms  p95 %9.1f ms  (%d rows)",
                name,
                timing.median_ms,
                timing.p95_ms,
                timing.rows,
            )
            timings.append(timing)
        pairs = []
        for name, source, aggregate, raw in _pairs(client):
            pair = quiet.run(name, partial(_time_pair, name, source, aggregate, raw, repeat))
            logger.info(
                "%s: aggregate %.1f ms, raw %.1f ms (%.1fx)%s",
                name,
                pair.aggregate.median_ms,
                pair.raw.median_ms,
                pair.ratio,
                "" if pair.rows_match else f"; MISMATCH {pair.mismatches}",
            )
            pairs.append(pair)
        now = datetime.now(UTC)
        report = quiet.run(
            "whole report",
            _timed(lambda: [answers.gather(client, DATABASE, config, now=now)], gather_repeat, 0),
        )
        report.name, report.group = "answers.gather (whole report)", "report"
        logger.info("whole report: median %.1f ms", report.median_ms)
        report_raw = quiet.run(
            "whole report, raw twins",
            _timed(
                lambda: [answers.gather(client, DATABASE, config, now=now, source="raw")],
                gather_repeat,
                0,
            ),
        )
        report_raw.name, report_raw.group = "answers.gather, raw twins (no summaries)", "report"
        logger.info("whole report from the raw twins: median %.1f ms", report_raw.median_ms)
        cores = cpu.cores()
    return {
        "waited_for_merges_seconds": waited,
        "waited_for_quiet_seconds": quiet.waited,
        "rows": counts,
        "active_parts": parts,
        "aggregate_checks": checks,
        "timings": [timing.summary() for timing in timings],
        "pairs": [pair.summary() for pair in pairs],
        "report": report.summary(),
        "report_raw": report_raw.summary(),
        "cpu_cores": cores,
        "report_parameters": {
            "conversion_window_seconds": config.conversion_window.total_seconds(),
            "attribution_lookback_seconds": config.attribution_lookback.total_seconds(),
            "attribution_half_life_seconds": config.attribution_half_life.total_seconds(),
            "lapsed_after_seconds": config.lapsed_after.total_seconds(),
            "limit": REPORT_LIMIT,
        },
    }


# ----------------------------------------------------------------------- orchestration


def _dataset_key(args: argparse.Namespace, buyers: int) -> dict[str, Any]:
    return {
        "buyers": buyers,
        "seed": args.seed,
        "scale": args.scale,
        "optimized": args.optimize,
    }


def _prepare(args: argparse.Namespace, data_dir: Path) -> tuple[dict[str, Any], bool]:
    """The built dataset in ``data_dir`` (reused if it matches, else built); and whether reused."""
    buyers = buyers_for(args)
    key = _dataset_key(args, buyers)
    chdb_dir = data_dir / "chdb"
    marker = data_dir / _DATASET_FILE
    if marker.is_file():
        stored = json.loads(marker.read_text(encoding="utf-8"))
        if stored.get("key") == key and chdb_dir.is_dir():
            logger.info("reusing the dataset in %s (%s)", data_dir, key)
            return stored["built"], True
        logger.info(
            "the dataset in %s is %s, not %s: rebuilding it", data_dir, stored.get("key"), key
        )
        marker.unlink()
    if chdb_dir.exists():
        shutil.rmtree(chdb_dir)
    built = in_child(
        build_dataset,
        chdb_dir,
        data_dir / f"events-seed{args.seed}-buyers{buyers}.jsonl",
        buyers,
        args.seed,
        args.scale,
        args.optimize,
    )
    marker.write_text(json.dumps({"key": key, "built": built}, indent=2) + "\n", encoding="utf-8")
    return built, False


def _code_fingerprint() -> str:
    """A hash of the code under test (the packages and this bench, edits and new files too).

    Narrower than the whole repository's ``git diff``: other benchmarks and docs may be
    edited meanwhile without making these figures mix versions.
    """
    digest = hashlib.sha256()
    paths = [Path(__file__).resolve(), REPO / "bench" / "common.py"]
    for package in _CODE_UNDER_TEST:
        paths += sorted(
            path
            for path in (REPO / package).rglob("*")
            if path.suffix in {".py", ".sql", ".toml"} and "__pycache__" not in path.parts
        )
    for path in paths:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def benchmark(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Build (or reuse) the dataset in ``data_dir``, time everything there (and on one copy
    with ``--growth``), and compare."""
    machine = chdb_environment()
    code = _code_fingerprint()
    built, reused = _prepare(args, data_dir)
    logger.info("timing every query %d times after one warm-up", args.repeat)
    measured = in_child(
        measure, data_dir / "chdb", args.repeat, args.gather_repeat, args.max_wait, args.retries
    )
    growth = None
    if args.growth and args.scale > 1:
        # the same generated records, one copy: how each answer's cost grows with the data
        small_args = argparse.Namespace(**{**vars(args), "scale": 1})
        small_dir = data_dir / "one-copy"
        small_dir.mkdir(exist_ok=True)
        small_built, _ = _prepare(small_args, small_dir)
        logger.info("one copy: %s touchpoints", f"{small_built['rows']['touchpoints']:,}")
        logger.info("timing every query again on one copy (--growth)")
        small = in_child(
            measure,
            small_dir / "chdb",
            args.repeat,
            args.gather_repeat,
            args.max_wait,
            args.retries,
        )
        growth = _growth(measured, small, args.scale)
        growth["one_copy_rows"] = small["rows"]
        growth["one_copy_other_cores"] = small["cpu_cores"]["other"]
    code_changed = changed_during_run(code, _code_fingerprint())
    other = measured["cpu_cores"]["other"]
    busy = other is not None and other > OTHER_CPU_LIMIT
    if busy:
        logger.warning("other processes used %.2f cores while timing: figures are distorted", other)
    return {
        "benchmark": "queries",
        "started_at": args.started_at,
        "config": {
            "events_target": args.events,
            "scale": args.scale,
            "repeat": args.repeat,
            "gather_repeat": args.gather_repeat,
            "seed": args.seed,
            "optimize": args.optimize,
            "reuse": str(args.reuse) if args.reuse else None,
            "max_wait": args.max_wait,
            "retries": args.retries,
        },
        "environment": machine,
        "code_fingerprint": code,
        "code_changed_during_run": code_changed,
        "machine_busy": busy,
        "dataset": {**built, "reused": reused},
        **measured,
        "growth": growth,
        "all_rows_match": all(pair["rows_match"] for pair in measured["pairs"]),
    }


def _growth(big: dict[str, Any], small: dict[str, Any], scale: int) -> dict[str, Any]:
    """Median at ``scale`` copies / median at one copy, per answer (``scale``: linear)."""
    answers = {
        timing["name"]: ratio(timing["median_ms"], other["median_ms"])
        for timing, other in zip(big["timings"], small["timings"], strict=True)
    }
    pairs = {
        pair["question"]: {
            "summary": ratio(pair["aggregate"]["median_ms"], other["aggregate"]["median_ms"]),
            "raw": ratio(pair["raw"]["median_ms"], other["raw"]["median_ms"]),
        }
        for pair, other in zip(big["pairs"], small["pairs"], strict=True)
    }
    report = {
        "summary": ratio(big["report"]["median_ms"], small["report"]["median_ms"]),
        "raw": ratio(big["report_raw"]["median_ms"], small["report_raw"]["median_ms"]),
    }
    return {"copies": scale, "answers": answers, "pairs": pairs, "report": report}


def _render(result: dict[str, Any]) -> str:
    dataset = result["dataset"]
    rows = result["rows"]
    seconds = dataset["seconds"]
    lines = [
        f"dataset: {dataset['records']:,} generated records → pipeline → ×{dataset['scale']} "
        f"copies in ClickHouse"
        + (" (reused)" if dataset["reused"] else "")
        + f"; built in {seconds['total']:.0f} s (generate {seconds['generate']:.0f}, "
        f"pipeline {seconds['pipeline']:.0f}, copies {seconds['scale_total']:.0f}, "
        f"settle {seconds['settle']:.0f})",
        "rows: " + ", ".join(f"{table} {count:,}" for table, count in rows.items()),
        "",
    ]
    header = f"{'query':<38} {'rows':>7} {'median ms':>10} {'p95 ms':>10}"
    lines += [header, "-" * len(header)]
    for timing in [*result["timings"], result["report"], result["report_raw"]]:
        lines.append(
            f"{timing['name']:<38} {timing['rows']:>7,} {timing['median_ms']:>10.1f} "
            f"{timing['p95_ms']:>10.1f}{_busy_mark(timing['other_cores'])}"
        )
    peer = next(
        (t for t in result["timings"] if t["name"] == "peer: count() FROM touchpoints FINAL"), None
    )
    if peer and peer["median_ms"]:
        lines.append(
            f"whole report / one touchpoints FINAL scan (peer, same run): "
            f"{result['report']['median_ms'] / peer['median_ms']:.1f}x; "
            f"raw twins / summaries: "
            f"{result['report_raw']['median_ms'] / result['report']['median_ms']:.2f}x"
        )
    lines.append("")
    header = (
        f"{'same question':<52} {'aggregate':<26} {'agg ms':>8} {'p95':>8} "
        f"{'raw ms':>8} {'p95':>8} {'raw/agg':>8}  match"
    )
    lines += [header, "-" * len(header)]
    for pair in result["pairs"]:
        lines.append(
            f"{pair['question']:<52} {pair['aggregate_source']:<26} "
            f"{pair['aggregate']['median_ms']:>8.1f} {pair['aggregate']['p95_ms']:>8.1f} "
            f"{pair['raw']['median_ms']:>8.1f} {pair['raw']['p95_ms']:>8.1f} "
            f"{pair['raw_to_aggregate']:>7.1f}x  {'yes' if pair['rows_match'] else 'NO '}"
            f"{_busy_mark(pair['other_cores'])}"
        )
    lines.append("")
    growth = result.get("growth")
    if growth:
        copies = growth["copies"]
        title = f"growth: 1 → {copies} copies (median ratio; {copies}.0x = linear)"
        header = f"{title:<60} {'summary':>9} {'raw':>9}"
        lines += [header, "-" * len(header)]
        for question, sides in growth["pairs"].items():
            lines.append(f"{question:<60} {_times(sides['summary']):>9} {_times(sides['raw']):>9}")
        lines.append(
            f"{'whole report':<60} {_times(growth['report']['summary']):>9} "
            f"{_times(growth['report']['raw']):>9}"
        )
        lines.append("")
    cpu = result["cpu_cores"]
    other = cpu["other"]
    lines.append(
        f"{result['config']['repeat']} timed runs per query after one warm-up "
        f"(the whole report: {result['config']['gather_repeat']}, no warm-up); "
        "p95 interpolated; raw/agg = ratio of medians; "
        f"other processes used {'?' if other is None else f'{other:.2f}'} cores while timing "
        f"(* marks a line during which they used more than {OTHER_CPU_LIMIT})"
        + ("; WARNING: the machine was busy" if result["machine_busy"] else "")
        + (
            "; WARNING: the code changed during the run"
            if result["code_changed_during_run"]
            else ""
        )
        + ("" if result["all_rows_match"] else "; WARNING: raw and aggregate answers differ")
        + ("" if result["aggregate_checks"]["views_complete"] else "; WARNING: views incomplete")
        + "."
    )
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _busy_mark(other: float | None) -> str:
    return f"  * other {other:.2f} cores" if other is not None and other > OTHER_CPU_LIMIT else ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.queries",
        description=(
            "Median and p95 latency of every report query on ~10M touchpoints in chDB, beside "
            "the same questions answered from the raw touchpoints table without the "
            "aggregates, in the same run. Progress goes to stderr, the table to stdout, and "
            "JSON to bench/results/."
        ),
    )
    add_dataset_options(
        parser,
        "records to generate and run through the pipeline, before scaling "
        f"(buyers = events / {EVENTS_PER_BUYER}) [default: 1000000]",
    )
    parser.add_argument(
        "--scale",
        type=positive,
        default=10,
        help="copies of the processed data (the original included) [default: 10]",
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=7,
        help="timed runs per query, after one warm-up [default: 7]",
    )
    parser.add_argument(
        "--gather-repeat",
        type=positive,
        default=3,
        help="timed runs of the whole report (sinks.answers.gather) [default: 3]",
    )
    add_quiet_options(parser)
    parser.add_argument(
        "--growth",
        action="store_true",
        help="also build and time the same records with one copy, and print how each "
        "answer's median grows from 1 to --scale copies",
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="OPTIMIZE TABLE … FINAL every table after building (default: let merges settle)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="keep the built dataset in this directory and reuse it on later runs with the "
        "same size, scale, seed and --optimize (never deleted)",
    )
    add_run_options(parser, "chDB data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return common.run(
        "queries",
        args,
        benchmark,
        _render,
        scratch_prefix="touchpoint-bench-queries-",
        keep_on_failure=False,
        run_dir=args.reuse,
        succeeded=lambda result: bool(
            result["all_rows_match"] and result["aggregate_checks"]["views_complete"]
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
