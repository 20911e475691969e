"""The Kafka → ClickHouse sink's loop and intent protocol, without Kafka.

The loop runs against a small in-memory stand-in for a consumer group (committed offsets
with metadata, positions, rebalance callbacks) and ``MemorySink``, which drops a replayed
token like ClickHouse does. The pure batches it writes are tested in
``test_sink_batches.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas.errors import BrokerError, ConfigError, SinkFatalError, SinkRetryableError
from schemas.settings import KafkaSettings
from sinks.base import RowBatch
from sinks.batches import Intent, Message
from sinks.consumer import KafkaClickHouseSink
from sinks.testing import MemorySink
from tests.factories import transition_json

TOPIC = "journey.transitions"
TOPICS = {TOPIC: "stage_transitions"}


# -- the loop, against a stand-in consumer group ------------------------------------------


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 1_772_441_400_000


@dataclass
class Group:
    """A topic log per partition (offsets may have gaps) and the group's committed offsets."""

    logs: dict[tuple[str, int], list[Record]] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, int], OffsetAndMetadata] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)

    def append(self, tp: tuple[str, int], value: bytes | None, marker_after: bool = False) -> int:
        offset = self.ends.get(tp, 0)
        self.logs.setdefault(tp, []).append(Record(tp[0], tp[1], offset, value))
        self.ends[tp] = offset + (2 if marker_after else 1)
        return offset


class FakeConsumer:
    """Joins on the first poll (every partition), serves records, records commits."""

    def __init__(self, group: Group, per_poll: int = 1000, fail_commit_on: int | None = None):
        self.group = group
        self.per_poll = per_poll
        self.listener: Any = None
        self.topics: list[str] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.commits = 0
        self.fail_commit_on = fail_commit_on
        self.closed = False
        self.paused: set[tuple[str, int]] = set()
        self.commit_errors: list[Exception] = []
        self.polls = 0
        self.on_poll: Any = None

    def subscribe(self, topics: Sequence[str], *, listener: Any) -> None:
        self.topics = list(topics)
        self.listener = listener

    def rebalance(self, assigned: set[tuple[str, int]]) -> None:
        self.listener.on_partitions_revoked({TopicPartition(*tp) for tp in self.positions})
        kept = {tp: pos for tp, pos in self.positions.items() if tp in assigned}
        self.positions = kept
        for tp in assigned - set(kept):
            om = self.group.committed.get(tp)
            self.positions[tp] = om.offset if om else 0
        self.listener.on_partitions_assigned({TopicPartition(*tp) for tp in assigned})

    def poll(self, timeout_ms: int = 0) -> Mapping[Any, Sequence[Any]]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        if not self.positions:
            self.rebalance({tp for tp in self.group.ends if tp[0] in self.topics})
        result: dict[Any, list[Record]] = {}
        budget = self.per_poll
        for tp, position in sorted(self.positions.items()):
            if tp in self.paused:
                continue
            records = [r for r in self.group.logs.get(tp, []) if r.offset >= position][:budget]
            if records:
                result[TopicPartition(*tp)] = records
                budget -= len(records)
            if records and len(records) < self.per_poll and budget > 0:
                self.positions[tp] = self.group.ends[tp]  # past any trailing marker
            elif records:
                self.positions[tp] = records[-1].offset + 1
            else:
                self.positions[tp] = max(position, self.group.ends.get(tp, 0))
        return result

    def commit(self, offsets: Mapping[Any, Any]) -> None:
        if self.commit_errors:
            self.group.events.append(("commit failed", None))
            raise self.commit_errors.pop(0)
        self.commits += 1
        if self.commits == self.fail_commit_on:
            raise CommitFailedError("rebalanced away")
        for tp, om in offsets.items():
            assert isinstance(om, OffsetAndMetadata)
            self.group.committed[(tp.topic, tp.partition)] = om
            self.group.events.append(("commit", (tp.partition, om.offset, om.metadata)))

    def committed(self, partition: Any, metadata: bool = False) -> Any:
        om = self.group.committed.get((partition.topic, partition.partition))
        return om if metadata or om is None else om.offset

    def position(self, partition: Any, timeout_ms: int | None = None) -> int | None:
        return self.positions.get((partition.topic, partition.partition))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(*tp) for tp in self.positions}

    def seek(self, partition: Any, offset: int) -> None:
        tp = (partition.topic, partition.partition)
        if tp not in self.positions:
            raise ValueError("Unassigned partition")
        self.positions[tp] = offset

    def pause(self, *partitions: Any) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, *partitions: Any) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def close(self) -> None:
        self.closed = True


class Crash(Exception):
    """A process dying inside ``write`` (not a ClickHouse error: nothing retries it)."""


class RecordingSink(MemorySink):
    """A MemorySink that logs each write into the group's event list and may fail: the
    ``fail_on``-th write raises ``error`` (before the insert, or after it with
    ``after_insert``), and writes ``refuse_from`` … ``refuse_until`` raise a retryable error."""

    def __init__(
        self,
        group: Group,
        fail_on: int | None = None,
        after_insert: bool = False,
        error: Exception | None = None,
    ):
        super().__init__()
        self.group = group
        self.writes = 0
        self.fail_on = fail_on
        self.after_insert = after_insert
        self.error = error or Crash("the process died")
        self.refused: tuple[int, int] | None = None

    def write(self, batch: RowBatch) -> None:
        self.writes += 1
        if self.refused is not None and self.refused[0] <= self.writes <= self.refused[1]:
            self.group.events.append(("refused", batch.token))
            raise SinkRetryableError("ClickHouse unreachable (gave up after 5 retries)")
        failing = self.writes == self.fail_on
        if failing and not self.after_insert:
            raise self.error
        super().write(batch)
        self.group.events.append(("write", batch.token))
        if failing:
            raise self.error


def make_sink(
    group: Group, sink: MemorySink, *, max_rows: int = 1000, **consumer: Any
) -> KafkaClickHouseSink:
    return KafkaClickHouseSink(
        KafkaSettings(sink_retry_max="0.04s"),
        sink,
        topics=TOPICS,
        max_rows=max_rows,
        max_seconds=0.05,
        consumer=FakeConsumer(group, **consumer),
        retry_backoff=0.01,
    )


def fill(group: Group, partitions: int = 2, per_partition: int = 5) -> None:
    for p in range(partitions):
        for i in range(per_partition):
            group.append((TOPIC, p), transition_json(f"b{p}-{i}"))


def test_each_batch_commits_its_intent_then_inserts_then_commits_its_end() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=3)
    sink = RecordingSink(group)
    stats = make_sink(group, sink).run(idle_timeout=0.2)
    intent = Intent(0, 3).encode()
    assert group.events == [
        ("commit", (0, 0, intent)),
        ("write", f"{TOPIC}:0:0-2"),
        ("commit", (0, 3, "")),
    ]
    assert stats.messages == 3 and stats.batches == 1 and stats.rows == {"stage_transitions": 3}


def test_a_fatal_insert_error_commits_nothing_past_it_and_the_sink_refuses_to_go_on() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=3)
    store = RecordingSink(group, fail_on=1, error=SinkFatalError("no such column"))
    consumer_sink = make_sink(group, store)
    with pytest.raises(SinkFatalError):
        consumer_sink.run(idle_timeout=0.2)
    assert store.writes == 1  # not retried
    assert group.committed[(TOPIC, 0)] == OffsetAndMetadata(0, Intent(0, 3).encode(), -1)
    with pytest.raises(BrokerError):
        consumer_sink.run(idle_timeout=0.2)


def test_a_crash_between_insert_and_commit_replays_the_same_batch_which_is_dropped() -> None:
    group = Group()
    fill(group, partitions=2, per_partition=4)
    store = RecordingSink(group, fail_on=2, after_insert=True)  # partition 1's insert "crashes"
    with pytest.raises(Crash):
        make_sink(group, store, max_rows=8).run(idle_timeout=0.2)
    # Both partitions' intents went out in one commit; neither got its end committed.
    assert group.committed[(TOPIC, 0)].metadata == Intent(0, 4).encode()
    assert group.committed[(TOPIC, 1)].metadata == Intent(0, 4).encode()
    # More arrives before the restart: the replay must still end where the intent says.
    for i in range(3):
        group.append((TOPIC, 1), transition_json(f"late-{i}"))
    store.fail_on = None
    stats = make_sink(group, store, max_rows=2).run(idle_timeout=0.2)
    writes = [token for kind, token in group.events if kind == "write"]
    assert writes[:2] == [f"{TOPIC}:0:0-3", f"{TOPIC}:1:0-3"]
    # The replays carry the same tokens (dropped by the sink); the late messages come after.
    assert writes[2:] == [f"{TOPIC}:0:0-3", f"{TOPIC}:1:0-3", f"{TOPIC}:1:4-5", f"{TOPIC}:1:6-6"]
    assert stats.replays == 2
    buyers = [r.buyer_id for r in store.rows("stage_transitions")]  # type: ignore[attr-defined]
    assert len(buyers) == len(set(buyers)) == 11
    assert {tp: om.offset for tp, om in group.committed.items()} == {(TOPIC, 0): 4, (TOPIC, 1): 7}
    assert all(om.metadata == "" for om in group.committed.values())


def test_an_intent_commit_the_group_refuses_means_no_insert_and_the_batch_is_read_again() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=2)
    store = RecordingSink(group)
    stats = make_sink(group, store, fail_commit_on=1).run(idle_timeout=0.2)
    intent = Intent(0, 2).encode()
    assert group.events == [  # the refused intent commit left no trace; then all is normal
        ("commit", (0, 0, intent)),
        ("write", f"{TOPIC}:0:0-1"),
        ("commit", (0, 2, "")),
    ]
    assert stats.batches == 1 and stats.messages == 4  # read twice, written once


def test_a_done_commit_the_group_refuses_is_made_good_by_replaying_the_intent() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=2)
    store = RecordingSink(group)
    stats = make_sink(group, store, fail_commit_on=2).run(idle_timeout=0.2)
    intent = Intent(0, 2).encode()
    assert group.events == [
        ("commit", (0, 0, intent)),
        ("write", f"{TOPIC}:0:0-1"),  # its done commit is refused: read again, intent found
        ("write", f"{TOPIC}:0:0-1"),  # the replay, same token (the sink drops it)
        ("commit", (0, 2, "")),
    ]
    assert stats.replays == 1 and len(store.rows("stage_transitions")) == 2


def test_a_commit_refused_for_a_reason_other_than_the_group_stops_the_sink() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=2)
    store = RecordingSink(group)
    sink = make_sink(group, store)
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]
    consumer.commit_errors = [KafkaError("authorization failed")]
    with pytest.raises(BrokerError, match="intent"):
        sink.run(idle_timeout=0.2)
    assert store.batches == [] and group.committed == {}


def test_trailing_transaction_markers_are_committed_past_when_the_partition_is_idle() -> None:
    group = Group()
    group.append((TOPIC, 0), transition_json("b1"), marker_after=True)
    make_sink(group, RecordingSink(group)).run(idle_timeout=0.2)
    assert group.committed[(TOPIC, 0)].offset == 2 == group.ends[(TOPIC, 0)]


def test_stop_event_flushes_what_is_buffered() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=2)
    store = RecordingSink(group)
    sink = KafkaClickHouseSink(
        KafkaSettings(),
        store,
        topics=TOPICS,
        max_rows=1000,
        max_seconds=3600,
        consumer=FakeConsumer(group),
    )
    stop = threading.Event()
    original = sink._poll

    def poll_then_stop(timeout_ms: int) -> list[Message]:
        messages = original(timeout_ms)
        stop.set()
        return messages

    sink._poll = poll_then_stop  # type: ignore[method-assign]
    stats = sink.run(stop=stop)
    assert stats.batches == 1 and len(store.rows("stage_transitions")) == 2
    sink.close()
    assert sink._consumer.closed  # type: ignore[attr-defined]


def test_rebalance_keeps_buffers_of_kept_partitions_and_drops_those_that_move() -> None:
    group = Group()
    fill(group, partitions=2, per_partition=3)
    store = RecordingSink(group)
    sink = make_sink(group, store)
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]
    for message in sink._poll(0):
        if not sink._planner.is_open(message.tp):
            sink._open_partitions([message.tp])
        sink._planner.add(message, now=0)
    consumer.rebalance({(TOPIC, 0)})  # partition 1 goes to another sink
    sink._open_assigned()
    assert sink._planner.partitions() == [(TOPIC, 0)]
    assert sink._planner.buffered() == 3  # partition 0 kept its buffer (and position)
    sink._flush(catch_up=True)
    assert [t for kind, t in group.events if kind == "write"] == [f"{TOPIC}:0:0-2"]
    assert (TOPIC, 1) not in group.committed  # the new owner starts from the beginning


def test_unknown_tables_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        KafkaClickHouseSink(
            KafkaSettings(), MemorySink(), topics={"x": "nope"}, consumer=FakeConsumer(Group())
        )


def test_a_batch_clickhouse_refuses_is_kept_and_retried_in_the_group_until_it_is_written() -> None:
    group = Group()
    fill(group, partitions=2, per_partition=3)
    store = RecordingSink(group)
    store.refused = (1, 4)  # partition 0's batch is refused four times, then written
    sink = make_sink(group, store)
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]
    seen: list[tuple[set[tuple[str, int]], dict[tuple[str, int], OffsetAndMetadata]]] = []
    consumer.on_poll = lambda c: seen.append((set(c.paused), dict(group.committed)))
    stats = sink.run(idle_timeout=0.3)

    refused, written = f"{TOPIC}:0:0-2", f"{TOPIC}:1:0-2"
    assert [e for e in group.events if e[0] != "commit"] == [
        ("refused", refused),
        ("refused", refused),
        ("refused", refused),
        ("refused", refused),
        ("write", refused),
        ("write", written),
    ]
    assert stats.write_retries == 4 and stats.batches == 2 and stats.abandoned == 0
    # While it waited, the sink kept polling (staying in its group) with every partition
    # paused, and nothing was committed past the intents.
    waiting = [state for state in seen if state[0]]
    assert waiting and all(paused == {(TOPIC, 0), (TOPIC, 1)} for paused, _ in waiting)
    assert all(
        committed[(TOPIC, 0)] == OffsetAndMetadata(0, Intent(0, 3).encode(), -1)
        for _, committed in waiting
    )
    assert {tp: om.offset for tp, om in group.committed.items()} == {(TOPIC, 0): 3, (TOPIC, 1): 3}
    assert consumer.paused == set()


def test_a_batch_whose_partition_moves_away_while_it_waits_is_left_to_the_new_owner() -> None:
    group = Group()
    fill(group, partitions=2, per_partition=3)
    store = RecordingSink(group)
    store.refused = (1, 2)
    sink = make_sink(group, store)
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]

    def move_partition_0(c: FakeConsumer) -> None:
        if c.paused and (TOPIC, 0) in c.positions:  # during the wait: another sink takes it
            c.rebalance({(TOPIC, 1)})

    consumer.on_poll = move_partition_0
    stats = sink.run(idle_timeout=0.3)
    assert stats.abandoned == 1
    assert [e for e in group.events if e[0] != "commit"] == [
        ("refused", f"{TOPIC}:0:0-2"),  # then partition 0 moves away: never written here
        ("refused", f"{TOPIC}:1:0-2"),  # partition 1 stays: written once ClickHouse is back
        ("write", f"{TOPIC}:1:0-2"),
    ]
    # Partition 0 keeps the intent for its new owner; partition 1 is committed past its batch.
    assert group.committed[(TOPIC, 0)] == OffsetAndMetadata(0, Intent(0, 3).encode(), -1)
    assert group.committed[(TOPIC, 1)] == OffsetAndMetadata(3, "", -1)
    assert ("write", f"{TOPIC}:0:0-2") not in group.events


def test_a_stop_while_a_batch_waits_for_clickhouse_ends_the_run_without_committing_it() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=3)
    store = RecordingSink(group)
    store.refused = (1, 10**6)
    sink = make_sink(group, store)
    stop = threading.Event()
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]
    consumer.on_poll = lambda c: stop.set() if c.paused else None
    with pytest.raises(SinkRetryableError, match="stopped while a batch waited"):
        sink.run(stop=stop)
    assert group.committed[(TOPIC, 0)] == OffsetAndMetadata(0, Intent(0, 3).encode(), -1)


def test_the_fault_point_is_inert_unless_armed_and_rejects_a_bad_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = Group()
    fill(group, partitions=1, per_partition=3)
    monkeypatch.delenv("TOUCHPOINT_FAULT_SINK_EXIT_AFTER_INSERT", raising=False)
    assert make_sink(group, RecordingSink(group)).run(idle_timeout=0.2).batches == 1
    monkeypatch.setenv("TOUCHPOINT_FAULT_SINK_EXIT_AFTER_INSERT", "soon")
    with pytest.raises(ConfigError, match="positive integer"):
        make_sink(group, RecordingSink(group))


def test_a_commit_that_fails_while_kafka_is_unreachable_is_retried_with_the_same_offsets() -> None:
    group = Group()
    fill(group, partitions=1, per_partition=3)
    store = RecordingSink(group)
    sink = make_sink(group, store)
    consumer: FakeConsumer = sink._consumer  # type: ignore[assignment]
    consumer.commit_errors = [KafkaTimeoutError("no answer"), KafkaConnectionError("refused")]
    stats = sink.run(idle_timeout=0.2)
    intent = Intent(0, 3).encode()
    assert group.events[:4] == [
        ("commit failed", None),
        ("commit failed", None),
        ("commit", (0, 0, intent)),
        ("write", f"{TOPIC}:0:0-2"),
    ]
    assert stats.batches == 1 and group.committed[(TOPIC, 0)] == OffsetAndMetadata(3, "", -1)


def test_polls_failing_while_kafka_is_unreachable_are_retried_not_fatal() -> None:
    from kafka.errors import KafkaConnectionError

    group = Group()
    fill(group, partitions=1, per_partition=3)
    store = RecordingSink(group)
    sink = make_sink(group, store)
    failures = iter([True, True, False])

    def unreachable(consumer: FakeConsumer) -> None:
        if next(failures, False):
            raise KafkaConnectionError("111 ECONNREFUSED")

    sink._consumer.on_poll = unreachable  # type: ignore[attr-defined]
    stats = sink.run(idle_timeout=0.3)
    assert stats.rows == {"stage_transitions": 3}
    assert group.committed[(TOPIC, 0)].offset == 3
