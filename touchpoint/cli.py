"""The ``touchpoint`` command line. Each subcommand parses its options and calls into a room."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.local import RunSummary
from schemas.errors import TouchpointError
from schemas.export import json_schemas
from schemas.settings import Settings
from sinks import dead_letters, identity, report, triggers
from sinks.cluster import cluster_schema
from sinks.html_report import render_html
from sinks.migrate import apply_migrations, migration_script
from touchpoint.collector import run_collector
from touchpoint.config import clickhouse, load_settings, rules_for, target_description
from touchpoint.console import (
    Phases,
    collector_epilog,
    command_name,
    dead_letter_tables,
    print_summary,
    progress,
    trigger_tables,
)
from touchpoint.demo import demo_data
from touchpoint.embedded import inspect_inputs, run_files
from touchpoint.identity import split_identity
from touchpoint.imports import import_ads_csv, import_crm_csv
from touchpoint.kafka import file_payloads, generated_payloads, produce, run_sink, run_worker
from touchpoint.options import (
    DATES,
    ENV,
    dead_letter_filters,
    kafka_options,
    metrics_option,
    option,
    rules_option,
    sort_dir_option,
    utc,
)
from touchpoint.replay import replay_dead_letters
from touchpoint.report import brief_report, full_report, load_report_config
from touchpoint.serve import open_server, serve_until_signalled
from touchpoint.sql import FORMATS as SQL_FORMATS
from touchpoint.sql import console as sql_console
from touchpoint.sql import interactive, run_statement
from touchpoint.webhooks import run_webhooks

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@option(
    "--data-dir",
    env="DATA_DIR",
    type=click.Path(path_type=Path),
    help="Where embedded data lives (chDB, demo files).  [default: touchpoint-data]",
)
@option(
    "--clickhouse-url",
    env="CLICKHOUSE_URL",
    help="chdb:DIRECTORY (embedded) or http(s)://host:port.  [default: chdb:<data-dir>/clickhouse]",
)
@option("--database", env="CLICKHOUSE_DATABASE", help="ClickHouse database.  [default: touchpoint]")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(
    ctx: click.Context,
    data_dir: Path | None,
    clickhouse_url: str | None,
    database: str | None,
    verbose: int,
) -> None:
    """Touchpoint: marketing touchpoints → journey stages, drop-offs and ClickHouse aggregates."""
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = {
        "data_dir": data_dir,
        "clickhouse_url": clickhouse_url,
        "clickhouse_database": database,
    }


def _settings(ctx: click.Context, **more: Any) -> Settings:
    return load_settings(**ctx.obj, **more)


def _report_config_path() -> Path | None:
    """The report config `touchpoint report` would use (TOUCHPOINT_REPORT_CONFIG), for the
    brief report printed after a run."""
    value = os.environ.get(ENV + "REPORT_CONFIG")
    return Path(value) if value else None


def _run(settings: Settings, paths: Sequence[Path], sort_dir: Path | None = None) -> RunSummary:
    rules = rules_for(settings)
    inputs = inspect_inputs(paths)
    # Checked now, not after the run: a bad path would fail a run that went well.
    load_report_config(_report_config_path())
    with clickhouse(settings) as client:
        total = sum(item.lines for item in inputs)
        with Phases("Sorting", "Processing", total=total) as progress:
            summary = run_files(
                settings,
                inputs,
                client,
                rules=rules,
                on_progress=progress.step(1),
                on_sort_progress=progress.step(0),
                sort_dir=sort_dir,
            )
        print_summary(summary)
        click.echo()
        brief = brief_report(
            settings, client, config_path=_report_config_path(), start=None, end=None, by=None
        )
        click.echo(report.render_brief(brief))
    return summary


@cli.command()
@option(
    "--buyers",
    env="DEMO_BUYERS",
    type=click.IntRange(1, 5_000_000),
    default=2000,
    show_default=True,
    help="Synthetic buyers to simulate.",
)
@option("--seed", env="DEMO_SEED", type=int, default=7, show_default=True, help="Random seed.")
@option(
    "--now",
    env="DEMO_NOW",
    type=DATES,
    help="Where the synthetic timeline ends (UTC, not in the future), for a reproducible "
    "demo.  [default: now, or where the data of the demo before ends when it is reused]",
)
@click.option("--fresh", is_flag=True, help="Drop the demo database first and generate data anew.")
@click.pass_context
def demo(ctx: click.Context, buyers: int, seed: int, now: datetime | None, fresh: bool) -> None:
    """Generate synthetic journeys up to now, run them, print the report — all embedded.

    Buyers arrive over the 120 days before "now" and every journey is cut there, so
    the newest buyers are mid-journey (the report's "High intent now"). A rerun reuses
    the data and changes no number; --fresh makes data ending now. The database holds
    one demo: another size, seed or --now needs --fresh.
    """
    settings = _settings(ctx)
    with Phases("Generating", total=buyers) as progress:
        data = demo_data(
            settings,
            buyers=buyers,
            seed=seed,
            now=utc(now),
            fresh=fresh,
            on_buyer=progress.step(0),
        )
    _run(settings, [data.events])
    click.echo()
    ends = f"{data.now:%Y-%m-%d %H:%M:%S} UTC"
    click.echo(
        f"Timeline:     ends {ends}"
        + ("" if data.generated else " (data of an earlier run; --fresh for data ending now)")
    )
    click.echo(f"Events:       {data.events}")
    click.echo(f"Ground truth: {data.truth}")
    click.echo(f"ClickHouse:   {target_description(settings)}")
    click.echo(
        f"Query it:     {command_name()} report --by persona   (or any SQL over the tables "
        "touchpoints, journey_state, stage_transitions, dropoffs, dead_letters)"
    )


@cli.command()
@option(
    "--buyers",
    env="GENERATE_BUYERS",
    type=click.IntRange(1, 5_000_000),
    default=1000,
    show_default=True,
    help="Synthetic buyers to simulate.",
)
@option("--seed", env="GENERATE_SEED", type=int, default=7, show_default=True, help="Random seed.")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Events file to write (JSON Lines).",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground-truth file to write (JSON).",
)
@option(
    "--duplicate-rate",
    env="GENERATE_DUPLICATE_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.02,
    show_default=True,
    help="Share of events delivered twice.",
)
@option(
    "--out-of-order-rate",
    env="GENERATE_OUT_OF_ORDER_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.05,
    show_default=True,
    help="Share delivered late (within the lateness bound).",
)
@option(
    "--malformed-rate",
    env="GENERATE_MALFORMED_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.002,
    show_default=True,
    help="Malformed records per event.",
)
@option(
    "--several-ids-rate",
    env="GENERATE_SEVERAL_IDS_RATE",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of buyers known by several ids (a cookie, an address), linked on sign-in.",
)
@click.pass_context
def generate(
    ctx: click.Context,
    buyers: int,
    seed: int,
    out: Path,
    truth: Path | None,
    duplicate_rate: float,
    out_of_order_rate: float,
    malformed_rate: float,
    several_ids_rate: float,
) -> None:
    """Write a synthetic touchpoint file (and its ground truth)."""
    settings = _settings(ctx)
    rules = rules_for(settings)
    config = GeneratorConfig(
        buyers=buyers,
        seed=seed,
        duplicate_rate=duplicate_rate,
        out_of_order_rate=out_of_order_rate,
        malformed_rate=malformed_rate,
        several_ids_rate=several_ids_rate,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    with progress(buyers, "Generating") as advance:
        result: GroundTruth = write_dataset(config, out, truth, on_buyer=advance)
    click.echo(
        f"Wrote {result.events_unique + result.duplicates + sum(result.malformed.values()):,} "
        f"records for {buyers:,} buyers to {out}" + (f"; ground truth in {truth}" if truth else "")
    )


@cli.command()
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="JSONL or CSV file (.gz ok); repeat for more. All of them are one input.",
)
@rules_option()
@option(
    "--batch-size",
    env="BATCH_SIZE",
    type=click.IntRange(1, 1_000_000),
    help="Records per batch (one insert per table).  [default: 5000]",
)
@option(
    "--allowed-lateness",
    env="ALLOWED_LATENESS",
    help="e.g. 2h. Drop-offs are judged up to the newest event time minus this (streams: "
    "how late an event may arrive).  [default: 2h]",
)
@option(
    "--dedup-window",
    env="DEDUP_WINDOW",
    help="e.g. 7d. How long (event time) event ids are remembered.  [default: 7d]",
)
@sort_dir_option
@click.pass_context
def run(
    ctx: click.Context,
    inputs: tuple[Path, ...],
    rules: Path | None,
    batch_size: int | None,
    allowed_lateness: str | None,
    dedup_window: str | None,
    sort_dir: Path | None,
) -> None:
    """Process touchpoint files into ClickHouse.

    The files are one bounded input, processed in event-time order whatever the order
    of their lines (or of the files): the same records give the same result. Allowed
    lateness and the dedup window govern streams (Kafka, the collector).

    A run resumes from the journeys (and the dedup memory) the runs before it left in
    the same database: load day 1, then day 2, and get what loading both at once gives.
    Load the days in time order: events more than the dedup window behind the event
    time reached before become too_late dead letters.
    """
    settings = _settings(
        ctx,
        rules_file=rules,
        batch_size=batch_size,
        allowed_lateness=allowed_lateness,
        dedup_window=dedup_window,
    )
    _run(settings, inputs, sort_dir)
    click.echo(f"\nWritten to {target_description(settings)}.")


@cli.command("produce")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="JSONL or CSV file (.gz ok) to send, in event-time order; repeat for more.",
)
@click.option(
    "--generate",
    type=click.IntRange(1, 5_000_000),
    metavar="BUYERS",
    help="Send synthetic journeys for this many buyers instead of a file.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed for --generate.")
@click.option(
    "--watermark/--no-watermark",
    default=True,
    show_default=True,
    help="At the end, tell every partition the input is complete up to its newest "
    "event time, so drop-offs are judged as a file run would. Turn off when "
    "other live sources write the same topic.",
)
@option(
    "--pack-events",
    env="KAFKA_PACK_EVENTS",
    type=click.IntRange(1, 10_000),
    help="Touchpoints per Kafka record (a pack of one buyer partition); 1 = one record "
    "per touchpoint, keyed by buyer id.  [default: 64]",
)
@kafka_options
@sort_dir_option
@click.pass_context
def produce_command(
    ctx: click.Context,
    inputs: tuple[Path, ...],
    generate: int | None,
    seed: int,
    watermark: bool,
    pack_events: int | None,
    bootstrap: str | None,
    partitions: int | None,
    sort_dir: Path | None,
) -> None:
    """Send touchpoints to Kafka (touchpoints.raw, packed per buyer partition, acks=all).

    Files are one bounded input, sent in event-time order whatever the order of their
    lines, so the workers judge them as `touchpoint run` does.
    """
    if bool(inputs) == bool(generate):
        raise click.UsageError("give either --input FILE or --generate BUYERS")
    settings = _settings(
        ctx,
        kafka_bootstrap=bootstrap,
        kafka_partitions=partitions,
        kafka_pack_events=pack_events,
    )
    with Phases("Sorting", "Producing") as progress:
        if generate:
            payloads, progress.total = generated_payloads(settings, generate, seed)
        else:
            payloads, progress.total = file_payloads(
                inputs,
                sort_dir=sort_dir,
                on_sort_progress=progress.step(0),
                lateness=settings.processing.allowed_lateness,
            )
        topic, sent, told = produce(
            settings, payloads, watermark=watermark, on_progress=progress.step(1)
        )
    told_text = f"; end-of-input watermark sent to {told} partitions" if told else ""
    click.echo(
        f"Sent {sent:,} records to {topic} on {settings.kafka.bootstrap}, "
        f"all acknowledged{told_text}."
    )


@cli.command()
@kafka_options
@metrics_option
@rules_option()
@click.pass_context
def worker(
    ctx: click.Context,
    bootstrap: str | None,
    partitions: int | None,
    metrics_port: int | None,
    rules: Path | None,
) -> None:
    """Run a Faust journey worker (touchpoints.raw → journey topics) until stopped."""
    settings = _settings(
        ctx,
        kafka_bootstrap=bootstrap,
        kafka_partitions=partitions,
        rules_file=rules,
        metrics_port=metrics_port,
    )
    verbosity = ctx.find_root().params.get("verbose", 0)
    run_worker(settings, loglevel=("warning", "info", "debug")[min(verbosity, 2)])


@cli.command()
@kafka_options
@metrics_option
@click.pass_context
def sink(
    ctx: click.Context, bootstrap: str | None, partitions: int | None, metrics_port: int | None
) -> None:
    """Write the journey topics into ClickHouse until stopped (SIGTERM/SIGINT flush first)."""
    settings = _settings(
        ctx, kafka_bootstrap=bootstrap, kafka_partitions=partitions, metrics_port=metrics_port
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"Sink: Kafka {settings.kafka.bootstrap} → {target_description(settings)}")
    stats = run_sink(settings, stop)
    click.echo(f"Sink stopped after {stats.messages:,} messages in {stats.batches:,} batches.")


@cli.command()
@option(
    "--file",
    "webhooks_file",
    env="WEBHOOKS_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Webhook destinations (TOML: [[webhook]] name, url, secret_env, triggers, "
    "rate_per_second, max_attempts, backoff, timeout).",
)
@kafka_options
@metrics_option
@click.pass_context
def webhooks(
    ctx: click.Context,
    webhooks_file: Path | None,
    bootstrap: str | None,
    partitions: int | None,
    metrics_port: int | None,
) -> None:
    """POST fired triggers (journey.triggers) to webhooks until stopped: signed with
    HMAC-SHA256, retried with backoff, rate limited per destination, dead-lettered to
    journey.triggers.dlq after the last try. See docs/journeys.md#webhooks."""
    settings = _settings(
        ctx,
        webhooks_file=webhooks_file,
        kafka_bootstrap=bootstrap,
        kafka_partitions=partitions,
        metrics_port=metrics_port,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"Webhooks: Kafka {settings.kafka.bootstrap}, destinations {settings.webhooks_file}")
    stats = run_webhooks(settings, stop)
    click.echo(
        f"Webhooks stopped: {stats.delivered:,} delivered, {stats.dead_lettered:,} "
        f"dead-lettered, from {stats.records:,} records."
    )


@cli.command(epilog=collector_epilog())
@option("--host", env="COLLECTOR_HOST", help="Interface to listen on.  [default: 127.0.0.1]")
@option(
    "--port",
    env="COLLECTOR_PORT",
    type=click.IntRange(0, 65535),
    help="Port to listen on.  [default: 8080]",
)
@kafka_options
@click.pass_context
def collector(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    bootstrap: str | None,
    partitions: int | None,
) -> None:
    """Serve the HTTP collector: our API, Segment-style tracking, vendor webhooks."""
    settings = _settings(
        ctx,
        collector_host=host,
        collector_port=port,
        kafka_bootstrap=bootstrap,
        kafka_partitions=partitions,
    )
    click.echo(
        f"Collector on http://{settings.collector.host}:{settings.collector.port} "
        f"→ Kafka {settings.kafka.bootstrap} (API spec at /openapi.json)"
    )
    run_collector(settings)


@cli.command("report")
@click.option(
    "--by",
    type=click.Choice(["channel", "campaign", "persona", "tier"]),
    help="Also split the funnel by first-touch channel, campaign, persona or tier.",
)
@click.option("--from", "start", type=DATES, help="Event time from (UTC), e.g. 2026-03-01.")
@click.option("--to", "end", type=DATES, help="Event time up to, excluding (UTC).")
@click.option("--compare-from", type=DATES, help="Compare with another period (from).")
@click.option("--compare-to", type=DATES, help="Compare with another period (to).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML file with charts.",
)
@option(
    "--config",
    env="REPORT_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Personas and KPI targets (TOML).  [default: the shipped report config]",
)
@rules_option(
    "The journey rules (TOML) the data was run with: their stages, in their order.  "
    "[default: the shipped rules]"
)
@click.option(
    "--brief",
    is_flag=True,
    help="Only the funnel (and --by split), drop-offs and exits, for the same period.",
)
@click.pass_context
def report_command(
    ctx: click.Context,
    by: Any,
    start: datetime | None,
    end: datetime | None,
    compare_from: datetime | None,
    compare_to: datetime | None,
    html_path: Path | None,
    config: Path | None,
    rules: Path | None,
    brief: bool,
) -> None:
    """Answer the journey questions from ClickHouse: funnel, drop-offs, exits, timing,
    channels, promos, attribution, high intent, personas, buyer tracker, targets."""
    settings = _settings(ctx, rules_file=rules)
    if brief:
        if html_path is not None or compare_from or compare_to:
            raise click.UsageError("--brief cannot be combined with --html or --compare-from/to")
        with clickhouse(settings) as client:
            summary = brief_report(
                settings, client, config_path=config, start=utc(start), end=utc(end), by=by
            )
        click.echo(report.render_brief(summary))
        return
    compare = (utc(compare_from), utc(compare_to)) if compare_from or compare_to else None
    answers = full_report(
        settings, config_path=config, start=utc(start), end=utc(end), by=by, compare=compare
    )
    click.echo(report.render_answers(answers))
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(answers), encoding="utf-8")
        click.echo(f"\nHTML report: {html_path}")


@cli.command()
@option(
    "--cluster",
    env="CLICKHOUSE_CLUSTER",
    default=None,
    help="A ClickHouse cluster: Replicated engines, ON CLUSTER, Distributed tables by buyer.",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the DDL instead of applying it (nothing connects).",
)
@click.pass_context
def migrate(ctx: click.Context, cluster: str | None, print_only: bool) -> None:
    """Create the database and apply pending schema migrations."""
    settings = _settings(ctx)
    database = settings.clickhouse.database
    schema = cluster_schema(database, cluster) if cluster else None
    if print_only:
        click.echo(migration_script(database, schema), nl=False)
        return
    with clickhouse(settings, migrate=False) as client:
        applied = apply_migrations(client, database, schema=schema)
    names = ", ".join(f"{item.version:04d}_{item.name}" for item in applied) or "none (up to date)"
    where = f" (cluster {cluster})" if cluster else ""
    click.echo(f"Migrations applied to {target_description(settings)}{where}: {names}")


@cli.group("import")
def import_group() -> None:
    """Load other exports."""


@import_group.command("ads-csv")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--platform",
    default="ads",
    show_default=True,
    help="Ad platform name when the export has no platform column.",
)
@click.pass_context
def import_ads_csv_command(ctx: click.Context, file: Path, platform: str) -> None:
    """Load an ad-platform export (impressions, clicks, cost per campaign and day)."""
    settings = _settings(ctx)
    rows, rejected = import_ads_csv(settings, file, platform)
    click.echo(
        f"Loaded {rows:,} ad-spend rows from {file} into ad_spend"
        + (f"; {rejected} unreadable rows dead-lettered (table dead_letters)" if rejected else "")
        + "."
    )


@import_group.command("crm")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def import_crm(ctx: click.Context, file: Path) -> None:
    """Load a CRM export (client name, type, region, persona, decision maker, terms, SLA)."""
    rows, rejected = import_crm_csv(_settings(ctx), file)
    click.echo(
        f"Loaded {rows:,} clients from {file} into crm_clients"
        + (f"; {rejected} rows without a key dead-lettered" if rejected else "")
        + "."
    )


@cli.group("dead-letters")
def dead_letters_group() -> None:
    """Find dead letters, and send them back through the pipeline after a fix."""


def _filter(
    reasons: tuple[str, ...], source: str | None, start: datetime | None, end: datetime | None
) -> dead_letters.DeadLetterFilter:
    return dead_letters.DeadLetterFilter(reasons, source, utc(start), utc(end))


@dead_letters_group.command("list")
@dead_letter_filters
@click.option(
    "--limit",
    type=click.IntRange(0, 100_000),
    default=30,
    show_default=True,
    help="Dead letters to show one by one (the oldest first); the counts cover all.",
)
@click.pass_context
def dead_letters_list(
    ctx: click.Context,
    reasons: tuple[str, ...],
    source: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> None:
    """Count the dead letters by reason and replay outcome, and show the oldest."""
    settings = _settings(ctx)
    with clickhouse(settings) as client:
        found = dead_letters.find(
            client, settings.clickhouse.database, _filter(reasons, source, start, end)
        )
    click.echo("\n\n".join(dead_letter_tables(found, limit)))


@cli.command("triggers")
@click.option(
    "--trigger",
    "trigger_ids",
    multiple=True,
    help="Only this trigger id (of the rules' [[trigger]]); repeat for more.",
)
@click.option("--from", "start", type=DATES, help="Fired at or after (event time, UTC).")
@click.option("--to", "end", type=DATES, help="Fired before (event time, UTC).")
@click.option(
    "--retractions", is_flag=True, help="List only retractions (firings a late event disproved)."
)
@click.option(
    "--limit",
    type=click.IntRange(0, 100_000),
    default=20,
    show_default=True,
    help="Latest firings to show one by one; the counts cover all.",
)
@click.pass_context
def triggers_command(
    ctx: click.Context,
    trigger_ids: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    retractions: bool,
    limit: int,
) -> None:
    """What the real-time triggers fired: counts per trigger, then the latest firings."""
    settings = _settings(ctx)
    where = triggers.TriggerFilter(trigger_ids, utc(start), utc(end))
    with clickhouse(settings) as client:
        database = settings.clickhouse.database
        counted = triggers.counts(client, database, where)
        shown = triggers.latest(
            client, database, replace(where, retractions=True if retractions else None), limit
        )
    click.echo("\n\n".join(trigger_tables(counted, shown, limit=limit, retractions=retractions)))


@dead_letters_group.command("replay")
@dead_letter_filters
@click.option(
    "--kafka",
    "to_kafka",
    is_flag=True,
    help="Produce them to the raw topic for the workers, instead of folding them into "
    "this database's journeys here.",
)
@kafka_options
@click.pass_context
def dead_letters_replay(
    ctx: click.Context,
    reasons: tuple[str, ...],
    source: str | None,
    start: datetime | None,
    end: datetime | None,
    to_kafka: bool,
    bootstrap: str | None,
    partitions: int | None,
) -> None:
    """Send matching dead letters back through the pipeline, e.g. after a rules or schema
    fix. Idempotent: each is replayed at most once, and an event whose id is already in
    touchpoints is only marked a duplicate, so a replayed event counts once."""
    settings = _settings(ctx, kafka_bootstrap=bootstrap, kafka_partitions=partitions)
    with clickhouse(settings) as client:
        result = replay_dead_letters(
            settings, client, _filter(reasons, source, start, end), to_kafka=to_kafka
        )
    click.echo(
        f"{result.matched:,} dead letters matched: {result.replayed:,} replayed "
        f"({result.target}), {result.duplicates:,} already in touchpoints, "
        f"{result.already_done:,} replayed before, {result.unreplayable:,} not replayable "
        "(payload cut when stored, or a CSV row: run the fixed file again)."
    )
    if result.still_failing:
        reasons_text = ", ".join(f"{r} {n}" for r, n in sorted(result.still_failing.items()))
        click.echo(f"Still failing: {reasons_text} (fix, then replay again).")
    if result.summary is not None:
        print_summary(result.summary)


@cli.command("sql")
@click.argument("query", required=False)
@click.option(
    "--read-write", is_flag=True, help="Allow writes (INSERT, DDL, SET); read-only without it."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(SQL_FORMATS)),
    help="Write the result in this format (CSV and TSV with a header row) instead of a table.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file --format writes (required for Parquet).  [default: stdout]",
)
@click.pass_context
def sql_command(
    ctx: click.Context, query: str | None, read_write: bool, fmt: str | None, output: Path | None
) -> None:
    """Run SQL over the database `touchpoint report` reads: QUERY (- = stdin), or, with no
    QUERY, an interactive prompt (history in ~/.cache/touchpoint). Read-only by default
    (ClickHouse's readonly = 1). Tables: touchpoints, journey_state, stage_transitions,
    dropoffs, dead_letters, … (SHOW TABLES). See docs/analysis.md#reach-the-data."""
    if output is not None and fmt is None:
        raise click.UsageError("--output needs --format")
    if fmt == "Parquet" and output is None:
        raise click.UsageError("--format Parquet needs --output FILE (it is binary)")
    settings = _settings(ctx)
    with sql_console(settings, read_write=read_write) as opened:
        if query is None:
            failed = interactive(
                opened,
                stdin=sys.stdin,
                out=click.echo,
                err=lambda text: click.echo(text, err=True),
                fmt=fmt,
            )
            if failed:
                ctx.exit(1)
            return
        text = sys.stdin.read() if query == "-" else query
        click.echo(run_statement(opened, text, fmt=fmt, output=output))


@cli.command("serve")
@option(
    "--host",
    env="SERVE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on.",
)
@option(
    "--port",
    env="SERVE_PORT",
    type=click.IntRange(0, 65535),
    default=8123,
    show_default=True,
    help="Port to listen on (0 = any free port).",
)
@option("--user", env="SERVE_USER", default="default", show_default=True, help="The one user name.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from stdin (a prompt on a terminal) instead of "
    "TOUCHPOINT_SERVE_PASSWORD. Required (one way or the other) unless --host is loopback.",
)
@option(
    "--read-write",
    env="SERVE_READ_WRITE",
    is_flag=True,
    help="Allow writes (INSERT, DDL, SET). Without it every query runs with ClickHouse's "
    "readonly = 1.",
)
@option(
    "--allow-settings",
    env="SERVE_ALLOW_SETTINGS",
    is_flag=True,
    help="Read-only, but clients may change settings (ClickHouse's readonly = 2; Grafana and "
    "clickhouse-connect send some). In ClickHouse that also runs the file() and url() table "
    "functions: the server's files and network, for whoever has the password.",
)
@option(
    "--max-body",
    env="SERVE_MAX_BODY",
    type=click.IntRange(1, 1 << 40),
    default=64 << 20,
    show_default=True,
    help="Largest request body in bytes, compressed or not (413 beyond).",
)
@option(
    "--max-connections",
    env="SERVE_MAX_CONNECTIONS",
    type=click.IntRange(1, 10_000),
    default=64,
    show_default=True,
    help="Connections served at once; more are answered 503 at once.",
)
@option(
    "--timeout",
    env="SERVE_TIMEOUT",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds a client may stall while sending a request or reading an answer.",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    host: str,
    port: int,
    user: str,
    password_stdin: bool,
    read_write: bool,
    allow_settings: bool,
    max_body: int,
    max_connections: int,
    timeout: float,
) -> None:
    """Serve the embedded store over ClickHouse's HTTP interface, for clickhouse-connect,
    Grafana's ClickHouse datasource (HTTP), BI tools and curl. Stops on Ctrl-C or SIGTERM.
    See docs/analysis.md#reach-the-data."""
    if read_write and allow_settings:
        raise click.UsageError("--read-write already allows settings: give one of them")
    settings = _settings(ctx)
    password = _serve_password(password_stdin)
    server = open_server(
        settings,
        host=host,
        port=port,
        user=user,
        password=password,
        readonly=0 if read_write else 2 if allow_settings else 1,
        max_body_bytes=max_body,
        max_connections=max_connections,
        timeout=timeout,
    )
    mode = (
        "read-write"
        if read_write
        else "read-only" + (", settings allowed" if allow_settings else "")
    )
    auth = f"user {user}" + ("" if password else ", no password")
    click.echo(
        f"Serving {target_description(settings)} ({mode}, {auth}) on {server.url}",
    )
    click.echo("ClickHouse HTTP interface; Ctrl-C stops.")
    sys.stdout.flush()
    serve_until_signalled(server, on_stop=lambda: click.echo("Stopping.", err=True))
    click.echo("Stopped.")


def _serve_password(from_stdin: bool) -> str:
    """The password of ``touchpoint serve``: stdin (a hidden prompt on a terminal) or
    TOUCHPOINT_SERVE_PASSWORD; never an argument (``ps`` would show it)."""
    if from_stdin:
        if sys.stdin.isatty():
            return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
        return sys.stdin.readline().rstrip("\r\n")
    return os.environ.get(ENV + "SERVE_PASSWORD", "")


@cli.group()
def schema() -> None:
    """Data contracts."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write JSON Schema files for producers in other languages."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = json_schemas()
    for name, document in documents.items():
        (directory / name).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    click.echo(f"Wrote {len(documents)} JSON Schema files to {directory}")


@cli.group("identity")
def identity_group() -> None:
    """Who is whom: the ids linked into one person (see docs/journeys.md, Identity)."""


@identity_group.command("show")
@click.argument("buyer_id")
@click.pass_context
def identity_show(ctx: click.Context, buyer_id: str) -> None:
    """Print the person BUYER_ID belongs to and every id of theirs."""
    settings = _settings(ctx)
    with clickhouse(settings) as client:
        person = identity.person_of(client, settings.clickhouse.database, buyer_id)
    click.echo(f"person {person.person_id}")
    for other in person.ids[1:]:
        click.echo(f"  {other}")


@identity_group.command("split")
@click.argument("buyer_id")
@click.pass_context
def identity_split(ctx: click.Context, buyer_id: str) -> None:
    """Take BUYER_ID out of its person for good (a wrong link, a shared device).

    The person's journeys are folded again from their stored touchpoints without it, and
    BUYER_ID is never linked again (embedded store; see docs/journeys.md, Identity).
    """
    settings = _settings(ctx)
    with clickhouse(settings) as client:
        person_id, summary = split_identity(settings, client, buyer_id)
    click.echo(
        f"Split {buyer_id} off person {person_id}: {summary.counters.accepted} touchpoints "
        f"folded again; {buyer_id} will not be linked again"
    )


@cli.command("forget")
@click.argument("buyer_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, buyer_id: str, yes: bool) -> None:
    """Erase the person BUYER_ID belongs to, with all their ids, from the database (GDPR).

    Removes their touchpoints, journey, transitions, drop-offs, triggers, links, CRM rows,
    stored journey and the dead letters naming them, and recomputes the aggregates. Input
    files and Kafka topics are not touched (see docs/journeys.md, Erasure).
    """
    settings = _settings(ctx)
    database = settings.clickhouse.database
    with clickhouse(settings) as client:
        person = identity.person_of(client, database, buyer_id)
        ids = ", ".join(person.ids)
        if not yes:
            click.confirm(f"Erase person {person.person_id} ({ids}) from {database}?", abort=True)
        erasure = identity.forget(client, database, person)
    removed = ", ".join(f"{table} {count}" for table, count in erasure.removed.items() if count)
    click.echo(f"Erased person {person.person_id} ({ids}): {removed or 'no rows'}")
    if erasure.rebuilt:
        click.echo(f"Recomputed aggregates: {', '.join(erasure.rebuilt)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: our own errors are one line on stderr and exit code 1, never a traceback."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="touchpoint",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"touchpoint: error: {exc.format_message()}", err=True)
        return 1
    except (click.Abort, KeyboardInterrupt):
        click.echo("touchpoint: aborted", err=True)
        return 130
    except TouchpointError as exc:
        click.echo(f"touchpoint: error: {exc}", err=True)
        return 1
    return code if isinstance(code, int) else 0  # ctx.exit(code) in a command


if __name__ == "__main__":
    sys.exit(main())
