"""The ``touchpoint`` command line. Each subcommand parses its options and calls into a room."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.local import RunSummary
from schemas.errors import TouchpointError
from schemas.export import json_schemas
from schemas.settings import Settings
from sinks import dead_letters, identity, report, triggers
from touchpoint import wiring

ENV = "TOUCHPOINT_"


F = TypeVar("F", bound=Callable[..., Any])


def _option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=ENV + env, show_envvar=True, **kwargs)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    with click.progressbar(length=max(total, 1), label=label, file=sys.stderr, width=30) as bar:
        yield bar.update


class _Phases:
    """One progress bar per phase (e.g. sorting, then processing), each from its first step.

    ``total`` (the bars' length) may be set after entering, before the first step.
    """

    def __init__(self, *labels: str, total: int = 0) -> None:
        width = max(len(label) for label in labels)
        self.labels = [label.ljust(width) for label in labels]
        self.total = total
        self._shown = ExitStack()
        self._bars: dict[int, Any] = {}

    def __enter__(self) -> _Phases:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shown.close()

    def step(self, phase: int) -> Callable[[int], None]:
        def advance(steps: int) -> None:
            if phase not in self._bars:
                self._shown.close()  # the previous phase is done
                self._bars[phase] = self._shown.enter_context(
                    click.progressbar(
                        length=max(self.total, 1),
                        label=self.labels[phase],
                        file=sys.stderr,
                        width=30,
                    )
                )
            self._bars[phase].update(steps)

        return advance


def _sort_dir_option(command: F) -> F:
    return _option(
        "--sort-dir",
        env="SORT_DIR",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Where an input too big for memory is sorted by event time (temporary "
        "files, removed after).  [default: the system temp dir]",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_option(
    "--data-dir",
    env="DATA_DIR",
    type=click.Path(path_type=Path),
    help="Where embedded data lives (chDB, demo files).  [default: touchpoint-data]",
)
@_option(
    "--clickhouse-url",
    env="CLICKHOUSE_URL",
    help="chdb:DIRECTORY (embedded) or http(s)://host:port.  [default: chdb:<data-dir>/clickhouse]",
)
@_option(
    "--database", env="CLICKHOUSE_DATABASE", help="ClickHouse database.  [default: touchpoint]"
)
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


def _command_name() -> str:
    """How the user can call this command again (the venv's script if it is not on PATH)."""
    script = Path(sys.executable).parent / "touchpoint"
    found = shutil.which("touchpoint")
    if found is not None and Path(found).resolve() == script.resolve():
        return "touchpoint"
    if script.exists():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return "touchpoint"


def _settings(ctx: click.Context, **more: Any) -> Settings:
    return wiring.load_settings(**ctx.obj, **more)


def _print_summary(summary: RunSummary) -> None:
    counters = summary.counters
    if summary.resumed_from is not None:
        click.echo(
            f"Resumed {summary.resumed_journeys:,} journeys from run {summary.resumed_from} "
            "in this database."
        )
    for path, seq in summary.skipped:
        click.echo(f"Skipped {path}: run {seq} loaded the same content before.")
    click.echo(
        f"Read {summary.records:,} records: {counters.accepted:,} touchpoints, "
        f"{counters.duplicates:,} duplicates skipped, {counters.unclassified:,} unclassified, "
        f"{counters.late:,} late, {counters.dead_lettered:,} dead-lettered."
    )
    if counters.dead_letters:
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(counters.dead_letters.items())
        )
        click.echo(f"Dead letters by reason: {reasons} (table dead_letters).")
    if counters.held_back:
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(counters.held_back.items())
        )
        click.echo(
            f"Events that did not move the event time: {reasons} (stamped when received, "
            "or more than TOUCHPOINT_MAX_FUTURE_SKEW ahead)."
        )
    watermark = summary.watermark.isoformat() if summary.watermark else "none"
    click.echo(f"Drop-offs judged: {counters.dropoffs:,}; event-time watermark {watermark}.")
    if counters.triggers or counters.retractions:
        click.echo(
            f"Triggers fired: {counters.triggers:,}, retracted: {counters.retractions:,} "
            "(table journey_triggers; `touchpoint triggers` lists them)."
        )
    if counters.merges:
        click.echo(
            f"Journeys merged into another id's person: {counters.merges:,} "
            "(table identity_links; `touchpoint identity show ID`)."
        )


def _report_config_path() -> Path | None:
    """The report config `touchpoint report` would use (TOUCHPOINT_REPORT_CONFIG), for the
    brief report printed after a run."""
    value = os.environ.get(ENV + "REPORT_CONFIG")
    return Path(value) if value else None


def _run(settings: Settings, paths: Sequence[Path], sort_dir: Path | None = None) -> RunSummary:
    rules = wiring.rules_for(settings)
    inputs = wiring.inspect_inputs(paths)
    # Checked now, not after the run: a bad path would fail a run that went well.
    wiring.load_report_config(_report_config_path())
    with wiring.clickhouse(settings) as client:
        total = sum(item.lines for item in inputs)
        with _Phases("Sorting", "Processing", total=total) as progress:
            summary = wiring.run_files(
                settings,
                inputs,
                client,
                rules=rules,
                on_progress=progress.step(1),
                on_sort_progress=progress.step(0),
                sort_dir=sort_dir,
            )
        _print_summary(summary)
        click.echo()
        brief = wiring.brief_report(
            settings, client, config_path=_report_config_path(), start=None, end=None, by=None
        )
        click.echo(report.render_brief(brief))
    return summary


_DATES = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"])


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


@cli.command()
@_option(
    "--buyers",
    env="DEMO_BUYERS",
    type=click.IntRange(1, 5_000_000),
    default=2000,
    show_default=True,
    help="Synthetic buyers to simulate.",
)
@_option("--seed", env="DEMO_SEED", type=int, default=7, show_default=True, help="Random seed.")
@_option(
    "--now",
    env="DEMO_NOW",
    type=_DATES,
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
    with _Phases("Generating", total=buyers) as progress:
        data = wiring.demo_data(
            settings,
            buyers=buyers,
            seed=seed,
            now=_utc(now),
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
    click.echo(f"ClickHouse:   {wiring.target_description(settings)}")
    click.echo(
        f"Query it:     {_command_name()} report --by persona   (or any SQL over the tables "
        "touchpoints, journey_state, stage_transitions, dropoffs, dead_letters)"
    )


@cli.command()
@_option(
    "--buyers",
    env="GENERATE_BUYERS",
    type=click.IntRange(1, 5_000_000),
    default=1000,
    show_default=True,
    help="Synthetic buyers to simulate.",
)
@_option("--seed", env="GENERATE_SEED", type=int, default=7, show_default=True, help="Random seed.")
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
@_option(
    "--duplicate-rate",
    env="GENERATE_DUPLICATE_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.02,
    show_default=True,
    help="Share of events delivered twice.",
)
@_option(
    "--out-of-order-rate",
    env="GENERATE_OUT_OF_ORDER_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.05,
    show_default=True,
    help="Share delivered late (within the lateness bound).",
)
@_option(
    "--malformed-rate",
    env="GENERATE_MALFORMED_RATE",
    type=click.FloatRange(0, 0.5),
    default=0.002,
    show_default=True,
    help="Malformed records per event.",
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
) -> None:
    """Write a synthetic touchpoint file (and its ground truth)."""
    settings = _settings(ctx)
    rules = wiring.rules_for(settings)
    config = GeneratorConfig(
        buyers=buyers,
        seed=seed,
        duplicate_rate=duplicate_rate,
        out_of_order_rate=out_of_order_rate,
        malformed_rate=malformed_rate,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    with _progress(buyers, "Generating") as advance:
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
@_option(
    "--rules",
    env="RULES_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Journey rules (TOML).  [default: the shipped rules]",
)
@_option(
    "--batch-size",
    env="BATCH_SIZE",
    type=click.IntRange(1, 1_000_000),
    help="Records per batch (one insert per table).  [default: 5000]",
)
@_option(
    "--allowed-lateness",
    env="ALLOWED_LATENESS",
    help="e.g. 2h. Drop-offs are judged up to the newest event time minus this (streams: "
    "how late an event may arrive).  [default: 2h]",
)
@_option(
    "--dedup-window",
    env="DEDUP_WINDOW",
    help="e.g. 7d. How long (event time) event ids are remembered.  [default: 7d]",
)
@_sort_dir_option
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
    click.echo(f"\nWritten to {wiring.target_description(settings)}.")


def _metrics_option(command: F) -> F:
    return _option(
        "--metrics-port",
        env="METRICS_PORT",
        type=click.IntRange(0, 65535),
        help="Serve Prometheus /metrics on this port (0 = off).  [default: 0]",
    )(command)


def _kafka_options(command: F) -> F:
    command = _option(
        "--partitions",
        env="KAFKA_PARTITIONS",
        type=click.IntRange(1, 10_000),
        help="Partitions of every pipeline topic.  [default: 6]",
    )(command)
    return _option(
        "--bootstrap",
        env="KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers.  [default: 127.0.0.1:9092]",
    )(command)


@cli.command()
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
@_option(
    "--pack-events",
    env="KAFKA_PACK_EVENTS",
    type=click.IntRange(1, 10_000),
    help="Touchpoints per Kafka record (a pack of one buyer partition); 1 = one record "
    "per touchpoint, keyed by buyer id.  [default: 64]",
)
@_kafka_options
@_sort_dir_option
@click.pass_context
def produce(
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
    with _Phases("Sorting", "Producing") as progress:
        if generate:
            payloads, progress.total = wiring.generated_payloads(settings, generate, seed)
        else:
            payloads, progress.total = wiring.file_payloads(
                inputs,
                sort_dir=sort_dir,
                on_sort_progress=progress.step(0),
                lateness=settings.processing.allowed_lateness,
            )
        topic, sent, told = wiring.produce(
            settings, payloads, watermark=watermark, on_progress=progress.step(1)
        )
    told_text = f"; end-of-input watermark sent to {told} partitions" if told else ""
    click.echo(
        f"Sent {sent:,} records to {topic} on {settings.kafka.bootstrap}, "
        f"all acknowledged{told_text}."
    )


@cli.command()
@_kafka_options
@_metrics_option
@_option(
    "--rules",
    env="RULES_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Journey rules (TOML).  [default: the shipped rules]",
)
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
    wiring.run_worker(settings, loglevel=("warning", "info", "debug")[min(verbosity, 2)])


@cli.command()
@_kafka_options
@_metrics_option
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
    click.echo(f"Sink: Kafka {settings.kafka.bootstrap} → {wiring.target_description(settings)}")
    stats = wiring.run_sink(settings, stop)
    click.echo(f"Sink stopped after {stats.messages:,} messages in {stats.batches:,} batches.")


@cli.command()
@_option(
    "--file",
    "webhooks_file",
    env="WEBHOOKS_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Webhook destinations (TOML: [[webhook]] name, url, secret_env, triggers, "
    "rate_per_second, max_attempts, backoff, timeout).",
)
@_kafka_options
@_metrics_option
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
    stats = wiring.run_webhooks(settings, stop)
    click.echo(
        f"Webhooks stopped: {stats.delivered:,} delivered, {stats.dead_lettered:,} "
        f"dead-lettered, from {stats.records:,} records."
    )


def _collector_epilog() -> str:
    """Every other collector setting with its env var and default, read from the model."""
    from datetime import timedelta

    from pydantic import SecretStr

    from schemas.duration import format_duration
    from schemas.settings import CollectorSettings

    lines = ["\b", "Settings (environment only; meanings in docs/collector.md):"]
    for name, field in CollectorSettings.model_fields.items():
        if name in ("host", "port"):
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, timedelta):
            shown = format_duration(default)
        elif isinstance(default, SecretStr) or default is None:
            shown = "unset"
        else:
            shown = json.dumps(default)
        lines.append(f"  {ENV}COLLECTOR_{name.upper():<23} {shown}")
    return "\n".join(lines)


@cli.command(epilog=_collector_epilog())
@_option("--host", env="COLLECTOR_HOST", help="Interface to listen on.  [default: 127.0.0.1]")
@_option(
    "--port",
    env="COLLECTOR_PORT",
    type=click.IntRange(0, 65535),
    help="Port to listen on.  [default: 8080]",
)
@_kafka_options
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
    wiring.run_collector(settings)


@cli.command("report")
@click.option(
    "--by",
    type=click.Choice(["channel", "campaign", "persona", "tier"]),
    help="Also split the funnel by first-touch channel, campaign, persona or tier.",
)
@click.option("--from", "start", type=_DATES, help="Event time from (UTC), e.g. 2026-03-01.")
@click.option("--to", "end", type=_DATES, help="Event time up to, excluding (UTC).")
@click.option("--compare-from", type=_DATES, help="Compare with another period (from).")
@click.option("--compare-to", type=_DATES, help="Compare with another period (to).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML file with charts.",
)
@_option(
    "--config",
    env="REPORT_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Personas and KPI targets (TOML).  [default: the shipped report config]",
)
@_option(
    "--rules",
    env="RULES_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The journey rules (TOML) the data was run with: their stages, in their order.  "
    "[default: the shipped rules]",
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
        with wiring.clickhouse(settings) as client:
            summary = wiring.brief_report(
                settings, client, config_path=config, start=_utc(start), end=_utc(end), by=by
            )
        click.echo(report.render_brief(summary))
        return
    compare = (_utc(compare_from), _utc(compare_to)) if compare_from or compare_to else None
    answers = wiring.full_report(
        settings, config_path=config, start=_utc(start), end=_utc(end), by=by, compare=compare
    )
    click.echo(report.render_answers(answers))
    if html_path is not None:
        from sinks.html_report import render_html

        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(answers), encoding="utf-8")
        click.echo(f"\nHTML report: {html_path}")


@cli.command()
@_option(
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
    from sinks.cluster import cluster_schema
    from sinks.migrate import apply_migrations, migration_script

    database = settings.clickhouse.database
    schema = cluster_schema(database, cluster) if cluster else None
    if print_only:
        click.echo(migration_script(database, schema), nl=False)
        return
    with wiring.clickhouse(settings, migrate=False) as client:
        applied = apply_migrations(client, database, schema=schema)
    names = ", ".join(f"{item.version:04d}_{item.name}" for item in applied) or "none (up to date)"
    where = f" (cluster {cluster})" if cluster else ""
    click.echo(f"Migrations applied to {wiring.target_description(settings)}{where}: {names}")


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
def import_ads_csv(ctx: click.Context, file: Path, platform: str) -> None:
    """Load an ad-platform export (impressions, clicks, cost per campaign and day)."""
    settings = _settings(ctx)
    rows, rejected = wiring.import_ads_csv(settings, file, platform)
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
    rows, rejected = wiring.import_crm_csv(_settings(ctx), file)
    click.echo(
        f"Loaded {rows:,} clients from {file} into crm_clients"
        + (f"; {rejected} rows without a key dead-lettered" if rejected else "")
        + "."
    )


@cli.group("dead-letters")
def dead_letters_group() -> None:
    """Find dead letters, and send them back through the pipeline after a fix."""


def _dead_letter_filters(command: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--reason",
                "reasons",
                multiple=True,
                help="Only this reason (e.g. unknown_channel); repeat for more.",
            ),
            click.option(
                "--source",
                help="Only sources matching this SQL LIKE pattern (e.g. 'day-3%', "
                "'touchpoints.raw%').",
            ),
            click.option("--from", "start", type=_DATES, help="Recorded at or after (UTC)."),
            click.option("--to", "end", type=_DATES, help="Recorded before (UTC)."),
        ]
    ):
        command = decorator(command)
    return command


def _filter(
    reasons: tuple[str, ...], source: str | None, start: datetime | None, end: datetime | None
) -> dead_letters.DeadLetterFilter:
    return dead_letters.DeadLetterFilter(reasons, source, _utc(start), _utc(end))


@dead_letters_group.command("list")
@_dead_letter_filters
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
    with wiring.clickhouse(settings) as client:
        found = dead_letters.find(
            client, settings.clickhouse.database, _filter(reasons, source, start, end)
        )
    counts = Counter((letter.reason, letter.last_outcome or "not replayed") for letter in found)
    click.echo(
        report.render_table(
            ("reason", "replay", "dead letters"),
            [(reason, outcome, count) for (reason, outcome), count in sorted(counts.items())],
            title=f"{len(found):,} dead letters",
        )
    )
    if limit and found:
        click.echo()
        click.echo(
            report.render_table(
                ("recorded at", "reason", "source", "position", "replay", "detail"),
                [
                    (
                        letter.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
                        letter.reason,
                        letter.source,
                        letter.position,
                        letter.last_outcome or "-",
                        letter.detail[:80],
                    )
                    for letter in found[:limit]
                ],
                title=f"The oldest {min(limit, len(found)):,}",
            )
        )


@cli.command("triggers")
@click.option(
    "--trigger",
    "trigger_ids",
    multiple=True,
    help="Only this trigger id (of the rules' [[trigger]]); repeat for more.",
)
@click.option("--from", "start", type=_DATES, help="Fired at or after (event time, UTC).")
@click.option("--to", "end", type=_DATES, help="Fired before (event time, UTC).")
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
    where = triggers.TriggerFilter(trigger_ids, _utc(start), _utc(end))
    with wiring.clickhouse(settings) as client:
        database = settings.clickhouse.database
        counted = triggers.counts(client, database, where)
        shown = triggers.latest(
            client, database, replace(where, retractions=True if retractions else None), limit
        )
    click.echo(
        report.render_table(
            ("trigger", "on", "fired", "retracted", "buyers", "latest"),
            [
                (
                    count.trigger_id,
                    count.kind,
                    count.fired,
                    count.retracted,
                    count.buyers,
                    "-" if count.last_fired_at is None else f"{count.last_fired_at:%Y-%m-%d %H:%M}",
                )
                for count in counted
            ],
            title=f"{sum(count.fired for count in counted):,} firings",
        )
    )
    if limit and shown:
        click.echo()
        click.echo(
            report.render_table(
                ("fired at", "trigger", "buyer", "cause", "channel", "campaign", "retracted"),
                [
                    (
                        f"{row.fired_at:%Y-%m-%d %H:%M:%S}",
                        row.trigger_id,
                        row.buyer_id,
                        _cause(row),
                        row.channel or "-",
                        row.campaign or "-",
                        "yes" if row.is_retraction else "",
                    )
                    for row in shown
                ],
                title=f"The latest {len(shown):,}" + (" retractions" if retractions else ""),
            )
        )


def _cause(row: triggers.StoredTrigger) -> str:
    payload = json.loads(row.payload)
    match row.kind:
        case "stage_move":
            return (
                f"{payload.get('from_stage') or 'entry'} -> {row.stage} ({payload['event_type']})"
            )
        case "dropoff":
            return f"no progress past {row.stage} (last: {payload['last_touch_event_type'] or '-'})"
        case "exit":
            return f"{payload['exit_kind']} at {payload['stage'] or '-'}"
        case "high_intent":
            return f"{payload['score']} touches in {row.stage} ({payload['event_type']})"
    return row.kind


@dead_letters_group.command("replay")
@_dead_letter_filters
@click.option(
    "--kafka",
    "to_kafka",
    is_flag=True,
    help="Produce them to the raw topic for the workers, instead of folding them into "
    "this database's journeys here.",
)
@_kafka_options
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
    with wiring.clickhouse(settings) as client:
        result = wiring.replay_dead_letters(
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
        _print_summary(result.summary)


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
    with wiring.clickhouse(settings) as client:
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
    with wiring.clickhouse(settings) as client:
        person_id, summary = wiring.split_identity(settings, client, buyer_id)
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
    with wiring.clickhouse(settings) as client:
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
        cli.main(
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
