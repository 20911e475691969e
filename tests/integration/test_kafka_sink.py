"""The Kafka → ClickHouse sink against a real broker and real chDB.

Rows of every output table (made by the journey processor from generated journeys) are
produced as JSON in Kafka transactions to fresh topics — plus one aborted transaction
that must never reach ClickHouse — and the sink must write each exactly once, commit
every offset, survive a crash between insert and commit without double counting, and
turn a message that is not a row into a dead letter.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition

from ingest.generator import GeneratorConfig, generate
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from schemas.rows import ROW_ADAPTERS, Row, TouchpointRow
from schemas.settings import KafkaSettings
from schemas.topics import TABLE_BY_TOPIC
from sinks.base import RowBatch, Sink
from sinks.batches import Intent
from sinks.consumer import KafkaClickHouseSink, SinkStats
from sinks.writer import ClickHouseWriter
from tests.factories import final_rows, rules_with_triggers

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture(scope="module")
def rows() -> dict[str, list[Row]]:
    """Real rows of every table: generated journeys through the journey processor."""
    config = GeneratorConfig(
        buyers=120,
        seed=11,
        malformed_rate=0.01,
        several_ids_rate=0.2,
        timeouts=dict(default_rules().timeouts),
    )
    lines, _ = generate(config)
    processor = JourneyProcessor(
        rules_with_triggers(),
        allowed_lateness=timedelta(hours=2),
        dedup_window=timedelta(days=7),
        stitch_identities=True,
    )
    for number, line in enumerate(lines, 1):
        processor.process_raw(line, source="gen.jsonl", position=f"line {number}")
    tables = processor.flush().tables()
    assert all(tables.get(table) for table in TABLE_BY_TOPIC.values()), "a table has no rows"
    return tables


def expected_counts(rows: Mapping[str, Sequence[Row]]) -> dict[str, int]:
    """Rows per table as ``SELECT count() … FINAL`` shows them (one per natural key)."""
    latest = final_rows({table: list(values) for table, values in rows.items()})
    return {
        "touchpoints": len({r.event_id for r in rows["touchpoints"]}),  # type: ignore[attr-defined]
        "dead_letters": len({r.dead_letter_id for r in rows["dead_letters"]}),  # type: ignore[attr-defined]
        "journey_triggers": len({r.trigger_event_id for r in rows["journey_triggers"]}),  # type: ignore[attr-defined]
        **{table: len(keyed) for table, keyed in latest.items()},
    }


def create_topics(bootstrap: str, tag: str, tables: Mapping[str, str]) -> dict[str, str]:
    topics = {f"{topic}.{tag}": table for topic, table in tables.items()}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in topics],
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return topics


def produce(
    bootstrap: str,
    messages: Sequence[tuple[str, bytes | None, bytes]],
    *,
    aborted: Sequence[tuple[str, bytes | None, bytes]] = (),
    partition: int | None = None,
) -> None:
    """Sends ``messages`` in committed transactions (like the workers) and ``aborted`` in one
    that is aborted; the log then holds transaction markers and aborted records."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"test-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )
    try:
        producer.init_transactions()
        for start in range(0, len(messages), 2000):
            producer.begin_transaction()
            for topic, key, value in messages[start : start + 2000]:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.commit_transaction()
        if aborted:
            producer.begin_transaction()
            for topic, key, value in aborted:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush()
            producer.abort_transaction()
    finally:
        producer.close()


def as_messages(
    topics: Mapping[str, str], rows: Mapping[str, Sequence[Row]]
) -> list[tuple[str, bytes | None, bytes]]:
    topic_of = {table: topic for topic, table in topics.items()}
    messages: list[tuple[str, bytes | None, bytes]] = []
    for table, values in rows.items():
        for row in values:
            buyer = getattr(row, "buyer_id", None)
            key = buyer.encode() if buyer else None
            messages.append((topic_of[table], key, ROW_ADAPTERS[table].dump_json(row)))
    return messages


def final_counts(client: Any, database: str, tables: Sequence[str]) -> dict[str, int]:
    return {
        table: int(client.query(f"SELECT count() FROM {database}.{table} FINAL").result_rows[0][0])
        for table in tables
    }


def funnel_touches(client: Any, database: str) -> int:
    return int(client.query(f"SELECT sum(touches) FROM {database}.funnel_daily").result_rows[0][0])


def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, Any]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets: dict[TopicPartition, Any] = admin.list_group_offsets({group: None})[group]
        return offsets
    finally:
        admin.close()


def positions(
    committed: dict[TopicPartition, Any], ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The group's committed offset of every partition in ``ends`` (0: none, e.g. empty)."""
    return {tp: committed[tp].offset if tp in committed else 0 for tp in ends}


def group_members(bootstrap: str, group: str) -> int:
    """Members of a group that finished rebalancing (0 while it is rebalancing)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group])[group]
    finally:
        admin.close()
    return len(described["members"]) if described["group_state"] == "Stable" else 0


def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        ends: dict[TopicPartition, int] = consumer.end_offsets(tps)
        return ends
    finally:
        consumer.close()


def run_sink(
    bootstrap: str,
    group: str,
    topics: Mapping[str, str],
    sink: Sink,
    *,
    max_rows: int,
    idle_timeout: float = 3.0,
) -> SinkStats:
    settings = KafkaSettings(bootstrap=bootstrap, sink_group=group)
    with KafkaClickHouseSink(
        settings, sink, topics=topics, max_rows=max_rows, max_seconds=0.5
    ) as consumer:
        return consumer.run(idle_timeout=idle_timeout)


class SimulatedCrash(Exception):
    """The process dying right after an insert (not a ClickHouse error: nothing retries it)."""


class Recording(Sink):
    """Writes through to ClickHouse and remembers each token; with ``crash_on``, 'crashes'
    right after the insert of the n-th batch that has ``touchpoints`` rows."""

    def __init__(self, inner: Sink, crash_on: int | None = None) -> None:
        self.inner = inner
        self.crash_on = crash_on
        self.tokens: list[str] = []
        self.crashed: str | None = None
        self._touchpoint_batches = 0

    def write(self, batch: RowBatch) -> None:
        self.inner.write(batch)
        self.tokens.append(batch.token)
        if batch.tables.get("touchpoints"):
            self._touchpoint_batches += 1
            if self._touchpoint_batches == self.crash_on:
                self.crashed = batch.token
                raise SimulatedCrash(f"simulated crash after inserting {batch.token}")

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        """The test closes the real writer."""


@pytest.fixture
def tag() -> Iterator[str]:
    yield uuid.uuid4().hex[:10]


def test_rows_of_every_table_land_exactly_once_and_every_offset_is_committed(
    kafka_bootstrap: str,
    clickhouse_client: Any,
    database: str,
    rows: dict[str, list[Row]],
    tag: str,
) -> None:
    topics = create_topics(kafka_bootstrap, tag, TABLE_BY_TOPIC)
    touchpoint_topic = next(t for t, table in topics.items() if table == "touchpoints")
    aborted_row = rows["touchpoints"][0]
    never = TouchpointRow(
        **{
            **{name: getattr(aborted_row, name) for name in TouchpointRow.columns()},
            "event_id": "aborted-1",
        }
    )
    produce(
        kafka_bootstrap,
        as_messages(topics, rows),
        aborted=[(touchpoint_topic, b"b-x", ROW_ADAPTERS["touchpoints"].dump_json(never))],
    )
    group = f"sink-{tag}"
    writer = ClickHouseWriter(clickhouse_client, database)
    stats = run_sink(kafka_bootstrap, group, topics, writer, max_rows=700)

    expected = expected_counts(rows)
    assert final_counts(clickhouse_client, database, list(expected)) == expected
    assert stats.messages == sum(len(values) for values in rows.values())
    assert stats.dead_letters == 0 and stats.replays == 0
    assert stats.rows == {table: len(values) for table, values in rows.items()}
    assert funnel_touches(clickhouse_client, database) == sum(
        1
        for r in rows["touchpoints"]
        if r.stage is not None  # type: ignore[attr-defined]
    )
    # A few values, read back.
    sample = rows["touchpoints"][len(rows["touchpoints"]) // 2]
    got = clickhouse_client.query(
        f"SELECT channel, event_type, stage, source_position, revenue "
        f"FROM {database}.touchpoints FINAL WHERE event_id = %(id)s",
        parameters={"id": sample.event_id},  # type: ignore[attr-defined]
    ).result_rows
    assert got == [
        (
            sample.channel.value,  # type: ignore[attr-defined]
            sample.event_type,  # type: ignore[attr-defined]
            sample.stage,  # type: ignore[attr-defined]
            sample.source_position,  # type: ignore[attr-defined]
            sample.revenue,  # type: ignore[attr-defined]
        )
    ]
    latest_state = final_rows({"journey_state": rows["journey_state"]})["journey_state"]
    events = clickhouse_client.query(
        f"SELECT sum(events) FROM {database}.journey_state FINAL"
    ).result_rows[0][0]
    assert events == sum(r.events for r in latest_state.values())
    aborted = clickhouse_client.query(
        f"SELECT count() FROM {database}.touchpoints WHERE event_id = 'aborted-1'"
    ).result_rows[0][0]
    assert aborted == 0  # read_committed: the aborted transaction never reaches ClickHouse

    committed = committed_offsets(kafka_bootstrap, group)
    ends = end_offsets(kafka_bootstrap, list(topics))
    assert positions(committed, ends) == ends  # past every marker too
    assert all(om.metadata == "" for om in committed.values())


def test_a_crash_between_insert_and_commit_is_replayed_without_double_counting(
    kafka_bootstrap: str,
    clickhouse_client: Any,
    database: str,
    rows: dict[str, list[Row]],
    tag: str,
) -> None:
    topics = create_topics(kafka_bootstrap, tag, TABLE_BY_TOPIC)
    produce(kafka_bootstrap, as_messages(topics, rows))
    group = f"sink-{tag}"
    writer = ClickHouseWriter(clickhouse_client, database)

    crashing = Recording(writer, crash_on=2)
    with pytest.raises(SimulatedCrash, match="simulated crash"):
        run_sink(kafka_bootstrap, group, topics, crashing, max_rows=900)
    intents = {
        tp: Intent.decode(om.offset, om.metadata)
        for tp, om in committed_offsets(kafka_bootstrap, group).items()
        if om.metadata
    }
    assert intents and all(intent is not None for intent in intents.values())
    expected = expected_counts(rows)
    written = sum(final_counts(clickhouse_client, database, list(expected)).values())
    assert 0 < written < sum(expected.values())  # the crash came in the middle

    # The restarted sink batches differently on its own; the intents force the replays.
    restarted = Recording(writer)
    stats = run_sink(kafka_bootstrap, group, topics, restarted, max_rows=250)
    assert stats.replays >= len(intents)
    assert crashing.crashed in restarted.tokens  # the inserted batch was sent again, same token

    assert final_counts(clickhouse_client, database, list(expected)) == expected
    staged = sum(1 for r in rows["touchpoints"] if r.stage is not None)  # type: ignore[attr-defined]
    assert funnel_touches(clickhouse_client, database) == staged  # no batch counted twice
    raw_touchpoints = clickhouse_client.query(
        f"SELECT count() FROM {database}.touchpoints"
    ).result_rows[0][0]
    assert raw_touchpoints == expected["touchpoints"]  # not even before a merge

    committed = committed_offsets(kafka_bootstrap, group)
    ends = end_offsets(kafka_bootstrap, list(topics))
    assert positions(committed, ends) == ends
    assert all(om.metadata == "" for om in committed.values())


def test_a_message_that_is_not_a_row_becomes_a_dead_letter_with_its_position(
    kafka_bootstrap: str,
    clickhouse_client: Any,
    database: str,
    rows: dict[str, list[Row]],
    tag: str,
) -> None:
    topics = create_topics(kafka_bootstrap, tag, {"journey.transitions": "stage_transitions"})
    (topic,) = topics
    good = [ROW_ADAPTERS["stage_transitions"].dump_json(r) for r in rows["stage_transitions"][:2]]
    bad = [b'{"buyer_id": "b1", "to_stage": "nowhere"}', b"\xff not json"]
    produce(
        kafka_bootstrap,
        [(topic, b"k", value) for value in (good[0], bad[0], good[1], bad[1])],
        partition=1,
    )
    stats = run_sink(
        kafka_bootstrap,
        f"sink-{tag}",
        topics,
        ClickHouseWriter(clickhouse_client, database),
        max_rows=100,
        idle_timeout=2.0,
    )
    assert stats.dead_letters == 2 and stats.rows == {"stage_transitions": 2, "dead_letters": 2}
    letters = clickhouse_client.query(
        f"SELECT reason, source, position, raw, raw_bytes FROM {database}.dead_letters FINAL "
        "ORDER BY position"
    ).result_rows
    assert letters == [
        ("invalid_output_row", topic, "1:1", bad[0].decode(), len(bad[0])),
        ("invalid_output_row", topic, "1:3", bad[1].decode("utf-8", "replace"), len(bad[1])),
    ]
    assert final_counts(clickhouse_client, database, ["stage_transitions"]) == {
        "stage_transitions": 2
    }


class Locked(Sink):
    """Serializes two sinks' writes to the one chDB client of the test process."""

    def __init__(self, inner: Sink, lock: threading.Lock) -> None:
        self.inner = inner
        self.lock = lock

    def write(self, batch: RowBatch) -> None:
        with self.lock:
            self.inner.write(batch)

    def flush(self) -> None:
        with self.lock:
            self.inner.flush()

    def close(self) -> None:
        """The test closes the real writer."""


def test_a_second_sink_joining_mid_stream_splits_the_work_without_loss_or_duplicates(
    kafka_bootstrap: str,
    clickhouse_client: Any,
    database: str,
    rows: dict[str, list[Row]],
    tag: str,
) -> None:
    topics = create_topics(kafka_bootstrap, tag, TABLE_BY_TOPIC)
    messages = as_messages(topics, rows)
    half = len(messages) // 2
    produce(kafka_bootstrap, messages[:half])
    group = f"sink-{tag}"
    settings = KafkaSettings(bootstrap=kafka_bootstrap, sink_group=group)
    lock = threading.Lock()
    stop = threading.Event()
    results: dict[str, SinkStats | BaseException] = {}

    def member(name: str) -> None:
        writer = Locked(ClickHouseWriter(clickhouse_client, database), lock)
        try:
            with KafkaClickHouseSink(
                settings, writer, topics=topics, max_rows=300, max_seconds=0.3
            ) as sink:
                results[name] = sink.run(stop=stop)
        except BaseException as exc:
            results[name] = exc

    first = threading.Thread(target=member, args=("first",))
    first.start()
    second = threading.Thread(target=member, args=("second",))
    try:
        deadline = time.monotonic() + 30
        while not clickhouse_client.query(  # the first member is writing: now join
            f"SELECT count() FROM {database}.touchpoints"
        ).result_rows[0][0]:
            assert time.monotonic() < deadline, "the first sink wrote nothing"
            time.sleep(0.1)
        second.start()
        while group_members(kafka_bootstrap, group) != 2:  # the rebalance is done
            assert time.monotonic() < deadline, "the second sink did not join"
            time.sleep(0.2)
        produce(kafka_bootstrap, messages[half:])
        while True:
            # Read every time: commit markers are written after the commit returns.
            ends = end_offsets(kafka_bootstrap, list(topics))
            committed = committed_offsets(kafka_bootstrap, group)
            if positions(committed, ends) == ends:
                break
            assert time.monotonic() < deadline + 30, f"offsets stuck at {committed}, ends {ends}"
            time.sleep(0.2)
    finally:
        stop.set()
        first.join(30)
        if second.ident is not None:
            second.join(30)

    stats = [results["first"], results["second"]]
    assert all(isinstance(s, SinkStats) for s in stats), stats
    assert all(s.messages for s in stats if isinstance(s, SinkStats))  # both did work
    expected = expected_counts(rows)
    assert final_counts(clickhouse_client, database, list(expected)) == expected
    staged = sum(1 for r in rows["touchpoints"] if r.stage is not None)  # type: ignore[attr-defined]
    assert funnel_touches(clickhouse_client, database) == staged
