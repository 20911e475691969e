"""Settings → objects: the glue the CLI (and tests) use to assemble a run."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ingest.ordering import in_order_within, sort_by_event_time
from ingest.reader import read_records
from processors.engine import JourneyProcessor
from processors.local import RunSummary, run_local
from processors.rules import load_rules
from schemas.dead_letter import DeadLetter
from schemas.duration import format_duration
from schemas.errors import BrokerError, ConfigError, InputError
from schemas.raw import RawRecord
from schemas.rows import Row
from schemas.rules import JourneyRules
from schemas.settings import (
    ClickHouseSettings,
    CollectorSettings,
    KafkaSettings,
    ProcessingSettings,
    Settings,
)
from sinks.background import BackgroundSink
from sinks.base import RowBatch
from sinks.clickhouse import Client, connect, describe_target
from sinks.migrate import apply_migrations
from sinks.writer import ClickHouseWriter

__all__ = [
    "InputFile",
    "brief_report",
    "build_processor",
    "clickhouse",
    "full_report",
    "import_ads_csv",
    "import_crm_csv",
    "inspect_inputs",
    "load_report_config",
    "load_settings",
    "rules_for",
    "run_collector",
    "run_files",
    "run_sink",
    "run_worker",
    "target_description",
]


logger = logging.getLogger(__name__)

_PROCESSING_KEYS = frozenset({"rules_file", "allowed_lateness", "dedup_window", "batch_size"})


def load_settings(**overrides: Any) -> Settings:
    """Settings from ``TOUCHPOINT_*`` env vars, with explicit (flag) values on top.

    ``clickhouse_<name>`` keys go to :class:`ClickHouseSettings`, processing keys to
    :class:`ProcessingSettings`, ``kafka_<name>`` to :class:`KafkaSettings`, ``collector_<name>``
    to :class:`CollectorSettings`, ``data_dir`` to :class:`Settings`; None means "not given".
    """
    given = {key: value for key, value in overrides.items() if value is not None}

    def section(prefix: str) -> dict[str, Any]:
        return {
            key.removeprefix(prefix): value
            for key, value in given.items()
            if key.startswith(prefix)
        }

    clickhouse, kafka, collector = section("clickhouse_"), section("kafka_"), section("collector_")
    processing = {key: value for key, value in given.items() if key in _PROCESSING_KEYS}
    top = {
        key: value
        for key, value in given.items()
        if key in ("data_dir", "metrics_port", "metrics_host")
    }
    try:
        return Settings(
            **top,
            clickhouse=ClickHouseSettings(**clickhouse),
            kafka=KafkaSettings(**kafka),
            collector=CollectorSettings(**collector),
            processing=ProcessingSettings(**processing),
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc


def rules_for(settings: Settings) -> JourneyRules:
    return load_rules(settings.processing.rules_file)


def build_processor(settings: Settings, rules: JourneyRules) -> JourneyProcessor:
    processing = settings.processing
    if processing.dedup_window < processing.allowed_lateness:
        raise ConfigError("TOUCHPOINT_DEDUP_WINDOW must be at least TOUCHPOINT_ALLOWED_LATENESS")
    return JourneyProcessor(
        rules,
        allowed_lateness=processing.allowed_lateness,
        dedup_window=processing.dedup_window,
    )


@contextmanager
def clickhouse(settings: Settings, *, migrate: bool = True) -> Iterator[Client]:
    """A connected (and migrated) ClickHouse client, closed on exit."""
    client = connect(settings.clickhouse_url(), settings.clickhouse)
    try:
        if migrate:
            apply_migrations(client, settings.clickhouse.database)
        yield client
    finally:
        client.close()


def target_description(settings: Settings) -> str:
    return f"{describe_target(settings.clickhouse_url())}, database {settings.clickhouse.database}"


@dataclass(frozen=True)
class InputFile:
    path: Path
    lines: int
    sha256: str


def inspect_inputs(paths: Sequence[Path]) -> list[InputFile]:
    """Line count and content hash of each input: they size the progress bar and name the run."""
    found = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"no such input file: {path}")
        digest = hashlib.sha256()
        lines = 0
        try:
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    lines += chunk.count(b"\n")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        found.append(InputFile(path, lines, digest.hexdigest()))
    return found


def run_files(
    settings: Settings,
    inputs: Sequence[InputFile],
    client: Client,
    *,
    rules: JourneyRules | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_sort_progress: Callable[[int], None] | None = None,
    sort_dir: Path | None = None,
) -> RunSummary:
    """Run the journey processor over ``inputs`` into ClickHouse, as one bounded input.

    The records of all the files are processed in event-time order (ingest.ordering),
    so the result does not depend on the order of their lines or of the files; the
    sort spills to temporary files under ``sort_dir`` (default: the system's). Files
    already in time order within the allowed lateness (checked in a first, cheap pass)
    stream through as they are: the fold gives the same result for them.
    ``on_sort_progress`` counts records read into the sort, ``on_progress`` records
    processed.
    """
    rules = rules if rules is not None else rules_for(settings)
    processor = build_processor(settings, rules)
    processing = settings.processing

    def records() -> Generator[RawRecord, None, None]:
        for item in inputs:
            yield from read_records(item.path, source=item.path.name)

    # In time order within the allowed lateness (exports usually are): the same result
    # as sorted, so it streams through as it is, without the sort's disk pass.
    presorted = in_order_within(records(), processing.allowed_lateness)
    run_id = hashlib.sha256(
        "\x1f".join(
            [
                *(
                    [f"{item.path.name}:{item.sha256}" for item in inputs]
                    if presorted
                    else sorted(f"{item.path.name}:{item.sha256}" for item in inputs)
                ),
                # batches differ from those of the unsorted runs before
                "order:as-read" if presorted else "order:event-time",
                rules.model_dump_json(),
                format_duration(processing.allowed_lateness),
                format_duration(processing.dedup_window),
                str(processing.batch_size),
            ]
        ).encode()
    ).hexdigest()[:20]

    writer = ClickHouseWriter(
        client,
        settings.clickhouse.database,
        retries=settings.clickhouse.insert_retries,
        backoff=settings.clickhouse.retry_backoff,
    )
    # The engine inserts one batch while the processor folds the next.
    sink = BackgroundSink(writer, close_inner=False)
    ordered = (
        records()
        if presorted
        else sort_by_event_time(records(), temp_dir=sort_dir, on_read=on_sort_progress)
    )
    try:
        with closing(ordered):  # removes the sort's files also when the run fails
            summary = run_local(
                ordered,
                processor,
                sink,
                batch_size=processing.batch_size,
                run_id=run_id,
                on_progress=on_progress,
            )
    except BaseException:
        sink.abandon()
        raise
    sink.close()
    return summary


# -- distributed path ----------------------------------------------------------


def ensure_pipeline_topics(settings: Settings, *, raw_only: bool = False) -> list[str]:
    """Create the pipeline's topics (idempotent) with the configured partition count."""
    from ingest.kafka import ensure_topics
    from schemas.topics import Topics

    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix)
    names = (topics.raw,) if raw_only else (topics.raw, *topics.outputs, topics.store)
    return ensure_topics(
        kafka.bootstrap,
        {name: kafka.partitions for name in names},
        replication=kafka.replication,
        compacted=topics.compacted,
    )


def generated_payloads(settings: Settings, buyers: int, seed: int) -> tuple[Iterator[bytes], int]:
    """Synthetic journeys as raw records (and their count), shaped by the configured rules."""
    from ingest.generator import GeneratorConfig, generate

    rules = rules_for(settings)
    config = GeneratorConfig(
        buyers=buyers,
        seed=seed,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    lines, _ = generate(config)
    return (line.encode() for line in lines), len(lines)


def file_payloads(
    paths: Sequence[Path],
    *,
    sort_dir: Path | None = None,
    on_sort_progress: Callable[[int], None] | None = None,
    lateness: timedelta | None = None,
) -> tuple[Iterator[bytes], int]:
    """Raw records of input files in event-time order, as ``run_files`` processes them
    (and a line count for the progress bar). The files are sorted when the first record
    is taken — unless they are already in order within ``lateness``, which the workers
    handle as a sorted input; closing the iterator removes the sort's temporary files."""
    files = inspect_inputs(paths)

    def records() -> Iterator[RawRecord]:
        for item in files:
            yield from read_records(item.path)

    def payloads() -> Iterator[bytes]:
        if lateness is not None and in_order_within(records(), lateness):
            yield from (record.data for record in records())
            return
        ordered = sort_by_event_time(records(), temp_dir=sort_dir, on_read=on_sort_progress)
        with closing(ordered):
            for record in ordered:
                yield record.data

    return payloads(), sum(item.lines for item in files)


def produce(
    settings: Settings,
    payloads: Iterator[bytes],
    *,
    watermark: bool,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[str, int, int]:
    """Send raw records to the raw topic; returns (topic, records acknowledged, partitions told)."""
    from ingest.kafka import TouchpointProducer
    from schemas.topics import Topics

    ensure_pipeline_topics(settings, raw_only=True)
    topic = Topics(settings.kafka.topic_prefix).raw
    producer = TouchpointProducer(
        settings.kafka.bootstrap, topic=topic, pack_events=settings.kafka.pack_events
    )
    try:
        for payload in payloads:
            producer.send(payload)
            if on_progress is not None:
                on_progress(1)
        producer.flush()
        told = producer.send_watermark() if watermark else 0
        stats = producer.flush()
    finally:
        producer.close()
        if isinstance(payloads, Generator):
            payloads.close()  # e.g. the temporary files of a sorted input
    return topic, stats.acknowledged, told


def _registry(settings: Settings, component: str) -> Any:
    """A metrics registry served on /metrics, or None when no metrics port is set.

    Served before anything talks to Kafka, so it answers while Kafka is down.
    """
    if not settings.metrics_port:
        return None
    from prometheus_client import CollectorRegistry

    from touchpoint.monitoring import build_info, serve_metrics

    registry = CollectorRegistry()
    build_info(registry, component)
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    return registry


def wait_for_topics(settings: Settings) -> None:
    """Create the pipeline's topics, retrying every 5 s while Kafka cannot be reached."""
    while True:
        try:
            ensure_pipeline_topics(settings)
            return
        except BrokerError as exc:
            logger.warning("Kafka is not reachable yet (%s); retrying in 5 s", exc)
            time.sleep(5)


def run_worker(settings: Settings, *, loglevel: str) -> None:
    """Create the topics, then run one Faust journey worker until it is stopped."""
    from processors.faust_app import run_worker as run_faust_worker
    from processors.metrics import WorkerMetrics
    from schemas.topics import Topics
    from touchpoint.monitoring import LagMonitor

    rules = rules_for(settings)
    registry = _registry(settings, "worker")
    metrics = WorkerMetrics(registry) if registry is not None else None
    kafka = settings.kafka
    wait_for_topics(settings)
    if registry is not None:
        raw = [Topics(kafka.topic_prefix).raw]
        LagMonitor(registry, kafka.bootstrap, kafka.app_id, raw).start()
    run_faust_worker(kafka, settings.processing, rules, loglevel=loglevel, metrics=metrics)


def run_sink(settings: Settings, stop: threading.Event) -> Any:
    """Consume the output topics into ClickHouse until ``stop`` is set; returns the sink stats."""
    from schemas.topics import Topics
    from sinks.consumer import KafkaClickHouseSink
    from sinks.metrics import SinkMetrics
    from touchpoint.monitoring import LagMonitor

    registry = _registry(settings, "sink")
    metrics = SinkMetrics(registry) if registry is not None else None
    wait_for_topics(settings)
    if registry is not None:
        outputs = Topics(settings.kafka.topic_prefix).outputs
        LagMonitor(registry, settings.kafka.bootstrap, settings.kafka.sink_group, outputs).start()
    with clickhouse(settings) as client:
        writer = ClickHouseWriter(
            client,
            settings.clickhouse.database,
            retries=settings.clickhouse.insert_retries,
            backoff=settings.clickhouse.retry_backoff,
            metrics=metrics,
        )
        topics = Topics(settings.kafka.topic_prefix).table_by_topic
        with KafkaClickHouseSink(settings.kafka, writer, topics=topics) as sink:
            return sink.run(stop=stop)


def run_collector(settings: Settings) -> None:
    """Serve the HTTP collector until SIGTERM/SIGINT (Kafka need not be up to start)."""
    from ingest.collector import Collector, KafkaPublisher, new_metrics
    from ingest.collector.server import run
    from schemas.topics import Topics
    from touchpoint.monitoring import build_info

    collector_settings = settings.collector
    publisher = KafkaPublisher(
        settings.kafka.bootstrap,
        Topics(settings.kafka.topic_prefix),
        timeout=collector_settings.produce_timeout.total_seconds(),
    )
    metrics = new_metrics()
    build_info(metrics.registry, "collector")
    collector = Collector(collector_settings, publisher, metrics)

    threading.Thread(target=wait_for_topics, args=(settings,), daemon=True).start()
    run(collector)


def import_ads_csv(settings: Settings, path: Path, platform: str) -> tuple[int, int]:
    """Load an ad-platform spend export into ``ad_spend``; returns (rows, dead letters)."""
    from ingest.ads_csv import read_ads_csv
    from schemas.rows import AdSpendRow

    loaded = read_ads_csv(path, platform=platform)
    return _write_import(
        settings,
        path,
        lambda digest: f"ads-csv:{digest}:{platform}",
        AdSpendRow.table,
        loaded.rows,
        loaded.dead_letters,
    )


def _write_import(
    settings: Settings,
    path: Path,
    token: Callable[[str], str],
    table: str,
    rows: Sequence[Row],
    dead_letters: Sequence[DeadLetter],
) -> tuple[int, int]:
    """Write an imported file's rows and dead letters in one batch; (rows, dead letters).

    ``token`` makes the batch's insert-deduplication token from the file's content hash.
    """
    from schemas.rows import DeadLetterRow

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    with clickhouse(settings) as client:
        ClickHouseWriter(client, settings.clickhouse.database).write(
            RowBatch(
                token=token(digest),
                tables={
                    table: rows,
                    DeadLetterRow.table: [
                        DeadLetterRow.from_dead_letter(letter) for letter in dead_letters
                    ],
                },
            )
        )
    return len(rows), len(dead_letters)


def load_report_config(path: Path | None) -> Any:
    """Personas and KPI targets for the report; the shipped default when ``path`` is None."""
    import tomllib
    from importlib import resources

    from schemas.report_config import ReportConfig

    if path is None:
        text = resources.files("sinks").joinpath("default_report.toml").read_text("utf-8")
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read report config {path}: {exc.strerror}") from exc
    try:
        return ReportConfig.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"report config {path or 'default'} is invalid: {exc}") from exc


def full_report(
    settings: Settings,
    *,
    config_path: Path | None,
    start: datetime | None,
    end: datetime | None,
    by: Any,
    compare: tuple[datetime | None, datetime | None] | None,
) -> Any:
    """Gather every analyst answer (see sinks.answers)."""
    from sinks.analysis import Period
    from sinks.answers import gather

    config = load_report_config(config_path)
    with clickhouse(settings) as client:
        return gather(
            client,
            settings.clickhouse.database,
            config,
            period=Period(start, end),
            by=by,
            compare=Period(*compare) if compare else None,
            now=datetime.now(UTC),
        )


def brief_report(
    settings: Settings,
    client: Client,
    *,
    config_path: Path | None,
    start: datetime | None,
    end: datetime | None,
    by: Any,
) -> Any:
    """The funnel, drop-offs and exits of the full report (see sinks.answers.gather_brief)."""
    from sinks.analysis import Period
    from sinks.answers import gather_brief

    return gather_brief(
        client,
        settings.clickhouse.database,
        load_report_config(config_path),
        period=Period(start, end),
        by=by,
    )


def import_crm_csv(settings: Settings, path: Path) -> tuple[int, int]:
    """Load a CRM export into ``crm_clients``; returns (rows, dead letters)."""
    from ingest.crm_csv import read_crm_csv
    from schemas.rows import CrmClientRow

    loaded = read_crm_csv(path)
    return _write_import(
        settings,
        path,
        lambda digest: f"crm-csv:{digest}",
        CrmClientRow.table,
        loaded.rows,
        loaded.dead_letters,
    )
