"""Settings → objects: the glue the CLI (and tests) use to assemble a run."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ingest.ordering import in_order_within, sort_by_event_time
from ingest.reader import read_records
from processors.classify import load_rules
from processors.journey_processor import JourneyProcessor
from processors.local import RunSummary, run_local
from schemas.dead_letter import DeadLetter
from schemas.duration import format_duration
from schemas.enums import DeadLetterReason
from schemas.errors import BrokerError, ConfigError, InputError, SchemaValidationError
from schemas.events import decode_event
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
from sinks import dead_letters, identity, journey_store, queries
from sinks.background import BackgroundSink
from sinks.base import RowBatch
from sinks.clickhouse import Client, connect, describe_target
from sinks.migrate import apply_migrations
from sinks.writer import ClickHouseWriter

__all__ = [
    "DemoData",
    "InputFile",
    "ReplayResult",
    "brief_report",
    "build_processor",
    "clickhouse",
    "demo_data",
    "full_report",
    "import_ads_csv",
    "import_crm_csv",
    "inspect_inputs",
    "load_report_config",
    "load_settings",
    "load_webhooks",
    "replay_dead_letters",
    "rules_for",
    "run_collector",
    "run_files",
    "run_sink",
    "run_webhooks",
    "run_worker",
    "split_identity",
    "target_description",
]


logger = logging.getLogger(__name__)

_PROCESSING_KEYS = frozenset(
    {"rules_file", "allowed_lateness", "dedup_window", "max_future_skew", "batch_size"}
)


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
        if key in ("data_dir", "metrics_port", "metrics_host", "webhooks_file")
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
        max_future_skew=processing.max_future_skew,
        stitch_identities=processing.stitch_identities,
        max_person_ids=processing.identity_max_ids,
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
    resumed = _resume(settings, client, rules if rules is not None else rules_for(settings))
    already = resumed.loaded_inputs()
    skipped = [(item.path, already[item.sha256]) for item in inputs if item.sha256 in already]
    inputs = [item for item in inputs if item.sha256 not in already]
    if not inputs:
        summary = resumed.summary()
        summary.skipped = skipped
        return summary

    def records() -> Generator[RawRecord, None, None]:
        for item in inputs:
            yield from read_records(item.path, source=item.path.name)

    # In time order within the allowed lateness (exports usually are): the same result
    # as sorted, so it streams through as it is, without the sort's disk pass.
    presorted = in_order_within(records(), settings.processing.allowed_lateness)
    input_names = [f"{item.path.name}:{item.sha256}" for item in inputs]
    ordered = (
        records()
        if presorted
        else sort_by_event_time(records(), temp_dir=sort_dir, on_read=on_sort_progress)
    )
    summary = resumed.run(
        ordered,
        identity=[
            *(input_names if presorted else sorted(input_names)),
            # batches differ from those of the unsorted runs before
            "order:as-read" if presorted else "order:event-time",
        ],
        described=", ".join(f"{item.path.name} (sha256 {item.sha256[:12]})" for item in inputs),
        input_sha256=[item.sha256 for item in inputs],
        on_progress=on_progress,
    )
    summary.skipped = skipped
    return summary


@dataclass
class _ResumedRun:
    """A processor holding the journeys the committed runs of a database left."""

    settings: Settings
    client: Client
    processor: JourneyProcessor
    runs: journey_store.StoredRuns
    rules_json: str
    rules_sha256: str
    loaded: int

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database

    def loaded_inputs(self) -> dict[str, int]:
        if self.runs.committed is None:
            return {}
        return journey_store.loaded_inputs(self.client, self.database)

    def summary(self) -> RunSummary:
        return RunSummary(
            counters=self.processor.counters,
            resumed_from=None if self.runs.committed is None else self.runs.committed.seq,
            resumed_journeys=self.loaded,
            watermark=self.processor.watermark(),
        )

    def run(
        self,
        records: Generator[RawRecord, None, None],
        *,
        identity: Sequence[str],
        described: str,
        input_sha256: Sequence[str],
        on_progress: Callable[[int], None] | None = None,
    ) -> RunSummary:
        """Process ``records`` into ClickHouse and store the journeys they changed.

        ``identity`` names the input (with the settings and the run resumed from it makes
        the run id, hence the batches' deduplication tokens).
        """
        settings, client, processor = self.settings, self.client, self.processor
        processing = settings.processing
        committed = self.runs.committed
        run_id = hashlib.sha256(
            "\x1f".join(
                [
                    *identity,
                    self.rules_json,
                    format_duration(processing.allowed_lateness),
                    format_duration(processing.dedup_window),
                    str(processing.batch_size),
                    # the same input folded into other journeys gives other batches
                    f"resumed:{0 if committed is None else committed.seq}",
                ]
            ).encode()
        ).hexdigest()[:20]
        database = self.database
        seq = journey_store.begin_run(
            client,
            database,
            self.runs,
            run_id=run_id,
            inputs=described,
            input_sha256=input_sha256,
            rules_sha256=self.rules_sha256,
        )
        writer = ClickHouseWriter(
            client,
            database,
            retries=settings.clickhouse.insert_retries,
            backoff=settings.clickhouse.retry_backoff,
        )
        # The engine inserts one batch while the processor folds the next.
        sink = BackgroundSink(writer, close_inner=False)
        try:
            with closing(records):  # e.g. removes a sort's files also when the run fails
                summary = run_local(
                    records,
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
        states = processor.states
        started = time.perf_counter()
        stored = journey_store.commit_run(
            client,
            database,
            seq,
            run_id=run_id,
            inputs=described,
            input_sha256=input_sha256,
            rules_sha256=self.rules_sha256,
            states=(
                (buyer_id, partition, states[buyer_id])
                for buyer_id, partition in summary.changed.items()
            ),
            newest_event_time=processor.max_event_time,
            records=summary.records,
        )
        logger.info(
            "run %d: stored %d journeys in %.2fs", seq, stored, time.perf_counter() - started
        )
        summary.resumed_from = None if committed is None else committed.seq
        summary.resumed_journeys = self.loaded
        summary.run_seq = seq
        return summary


def _resume(settings: Settings, client: Client, rules: JourneyRules) -> _ResumedRun:
    """A processor with the journeys, timers and event time the committed runs left."""
    processor = build_processor(settings, rules)
    database = settings.clickhouse.database
    rules_json = rules.model_dump_json()
    # What classifies and judges: triggers may change between runs (new ones apply to new
    # events), stages, rules and timeouts may not.
    rules_sha256 = hashlib.sha256(rules.model_dump_json(exclude={"triggers"}).encode()).hexdigest()
    runs = journey_store.stored_runs(client, database)
    committed = runs.committed
    if committed is not None and committed.rules_sha256 != rules_sha256:
        raise ConfigError(
            f"the journeys in database {database} were built with other journey rules "
            f"(run {committed.seq}, inputs {committed.inputs}); a run folds new events into "
            "them, so two rule sets would classify the days differently: use the rules file "
            "of the runs before, or load every input again into a new database"
        )
    if committed is not None:
        processor.states.update(journey_store.load_states(client, database, runs))
        newest = committed.newest_event_time
        processor.restore(newest_event_times={0: newest} if newest is not None else None)
    processor.unlinkable = identity.blocked_ids(client, database)
    processor.link_epoch = runs.unfinished.seq if runs.unfinished is not None else runs.next_seq
    return _ResumedRun(
        settings, client, processor, runs, rules_json, rules_sha256, len(processor.states)
    )


def split_identity(settings: Settings, client: Client, buyer_id: str) -> tuple[str, RunSummary]:
    """Take ``buyer_id`` out of its person for good (``touchpoint identity split``).

    A run like any other (resumable, its batches deduplicated): the person's journeys start
    over and their stored touchpoints are folded again, linking the other ids once more but
    never ``buyer_id``. Returns the person id it was split from and the run's summary.
    """
    rules = rules_for(settings)
    resumed = _resume(settings, client, rules)
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


@dataclass
class ReplayResult:
    """What ``touchpoint dead-letters replay`` did with the matching dead letters."""

    matched: int = 0
    already_done: int = 0
    """Replayed before (or their event was already there): not sent again."""
    unreplayable: int = 0
    """Their raw payload was cut when stored, or is a CSV row (run the fixed file again)."""
    duplicates: int = 0
    """Their event id is in ``touchpoints`` already: marked, not sent."""
    replayed: int = 0
    still_failing: Counter[str] = field(default_factory=Counter)
    """Reason → letters that fail validation again (fix, then replay again)."""
    target: str = "embedded"
    summary: RunSummary | None = None


def _then_judge(
    records: Generator[RawRecord, None, None], processor: JourneyProcessor
) -> Generator[RawRecord, None, None]:
    """``records``, then the deadlines their late events armed that are already due."""
    with closing(records):
        yield from records
    processor.judge_due()


def replay_dead_letters(
    settings: Settings,
    client: Client,
    where: dead_letters.DeadLetterFilter,
    *,
    to_kafka: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Send matching dead letters back through the pipeline, each at most once.

    Embedded (default): folded into the stored journeys of this database like one more
    ``touchpoint run`` — however far behind the event time reached, since each event id
    is first looked up in ``touchpoints`` (an event already there is a duplicate and is
    only marked). ``to_kafka``: produced to the raw topic for the workers instead.
    Every letter's outcome goes to ``dead_letter_replays``; a letter replayed before,
    or whose event was there, is skipped next time, one that failed again is retried.
    """
    database = settings.clickhouse.database
    letters = dead_letters.find(client, database, where)
    result = ReplayResult(matched=len(letters))
    outcomes: list[tuple[str, str, str]] = []
    candidates: list[tuple[dead_letters.StoredDeadLetter, bytes, str]] = []
    for letter in letters:
        if letter.done:
            result.already_done += 1
        elif letter.raw_truncated or letter.reason == DeadLetterReason.MALFORMED_ROW.value:
            result.unreplayable += 1
        else:
            data = letter.raw.encode("utf-8", "surrogatepass")
            try:
                event = decode_event(data)
            except SchemaValidationError as exc:
                result.still_failing[exc.reason.value] += 1
                outcomes.append(
                    (letter.dead_letter_id, "failed", f"{exc.reason.value}: {exc.detail}")
                )
                continue
            candidates.append((letter, data, event.event_id))
    known = dead_letters.known_event_ids(
        client, database, [event_id for *_, event_id in candidates]
    )
    fresh = []
    for letter, data, event_id in candidates:
        if event_id in known:
            result.duplicates += 1
            outcomes.append((letter.dead_letter_id, "duplicate", ""))
        else:
            fresh.append((letter, data))
    run_seq = 0
    if fresh and to_kafka:
        result.target, sent, _ = produce(
            settings, iter([data for _, data in fresh]), watermark=False, on_progress=on_progress
        )
        if sent != len(fresh):
            raise BrokerError(
                f"{len(fresh) - sent} of {len(fresh)} replayed records were not acknowledged"
            )
        outcomes.extend((letter.dead_letter_id, "sent", "") for letter, _ in fresh)
        result.replayed = len(fresh)
    elif fresh:
        resumed = _resume(settings, client, rules_for(settings))
        resumed.processor.accept_late = True
        ids = sorted(letter.dead_letter_id for letter, _ in fresh)
        records = sort_by_event_time(
            RawRecord(letter.source, letter.position, data) for letter, data in fresh
        )
        result.summary = resumed.run(
            records,
            identity=["replay", hashlib.sha256("\x1f".join(ids).encode()).hexdigest()],
            described=f"replay of {len(fresh)} dead letters",
            input_sha256=[],
            on_progress=on_progress,
        )
        run_seq = result.summary.run_seq or 0
        outcomes.extend((letter.dead_letter_id, "replayed", "") for letter, _ in fresh)
        result.replayed = len(fresh)
    dead_letters.record_outcomes(client, database, outcomes, target=result.target, run_seq=run_seq)
    return result


# -- the demo -------------------------------------------------------------------


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
    from ingest.generator import GeneratorConfig, write_dataset

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


# -- distributed path ----------------------------------------------------------


def ensure_pipeline_topics(settings: Settings, *, raw_only: bool = False) -> list[str]:
    """Create the pipeline's topics (idempotent) with the configured partition count."""
    from ingest.topics import ensure_topics
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


def load_webhooks(path: Path | None) -> Any:
    """The webhook destinations file (TOML, :class:`schemas.webhooks.WebhooksConfig`)."""
    import tomllib

    from schemas.webhooks import WebhooksConfig

    if path is None:
        raise ConfigError("no webhooks file: pass --file or set TOUCHPOINT_WEBHOOKS_FILE")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read webhooks file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return WebhooksConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def run_webhooks(
    settings: Settings, stop: threading.Event, *, idle_timeout: float | None = None
) -> Any:
    """Deliver fired triggers to the configured webhooks until ``stop``; returns the stats."""
    from ingest.topics import ensure_topics
    from schemas.topics import Topics
    from sinks.webhooks import WebhookDeliverer, WebhookMetrics
    from sinks.webhooks import run_webhooks as deliver_triggers

    config = load_webhooks(settings.webhooks_file)
    registry = _registry(settings, "webhooks")
    metrics = WebhookMetrics(registry) if registry is not None else None
    topics = Topics(settings.kafka.topic_prefix)
    kafka = settings.kafka
    ensure_topics(
        kafka.bootstrap,
        {topics.triggers: kafka.partitions, topics.triggers_dlq: kafka.partitions},
        replication=kafka.replication,
    )
    deliverer = WebhookDeliverer(
        config.webhooks, observe=metrics.observe if metrics is not None else None
    )
    return deliver_triggers(
        kafka.bootstrap,
        topic=topics.triggers,
        dlq_topic=topics.triggers_dlq,
        group=kafka.webhook_group,
        deliverer=deliverer,
        stop=stop,
        idle_timeout=idle_timeout,
    )


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
    """Gather every analyst answer (see sinks.answers), by the stages of the journey rules
    in use. The shipped report config's conversion targets name the shipped stages: under
    rules of one's own, those of other stages are left out; a config of one's own naming a
    stage the rules do not have is a ConfigError."""
    from sinks.analysis import Period
    from sinks.answers import gather

    rules = rules_for(settings)
    config = load_report_config(config_path)
    if config_path is None:
        config = config.for_stages(rules.order)
    with clickhouse(settings) as client:
        return gather(
            client,
            settings.clickhouse.database,
            config,
            period=Period(start, end),
            by=by,
            compare=Period(*compare) if compare else None,
            now=datetime.now(UTC),
            stages=rules.order,
            purchase_stage=rules.purchase_stage,
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
    """The funnel, drop-offs and exits of the full report (see sinks.answers.gather_brief),
    by the stages of the journey rules in use."""
    from sinks.analysis import Period
    from sinks.answers import gather_brief

    return gather_brief(
        client,
        settings.clickhouse.database,
        load_report_config(config_path),
        period=Period(start, end),
        by=by,
        stages=rules_for(settings).order,
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
