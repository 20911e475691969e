"""A worker's partitions without Kafka: what it owns, what its states include, what a
batch sends (:mod:`processors.partitions`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from processors.classify import default_rules
from processors.journey_processor import BatchOutput, JourneyProcessor
from processors.partitions import PartitionStates, pack_rows
from schemas.journey import (
    PARTITION_POSITION_ADAPTER,
    JourneyState,
    PartitionPosition,
    encode_state,
)
from schemas.topics import STORE_POSITION_KEY, Topics
from tests.factories import event


def test_records_up_to_the_applied_offset_are_already_applied() -> None:
    store = PartitionStates(Topics())
    assert not store.already_applied(2, 0)  # nothing applied yet
    store.applied[2] = 41
    assert store.already_applied(2, 0)
    assert store.already_applied(2, 41)
    assert not store.already_applied(2, 42)
    assert not store.already_applied(3, 0)  # per partition


def test_the_position_record_carries_the_offset_and_event_time_to_the_store() -> None:
    store = PartitionStates(Topics())
    store.applied[4] = 1234
    at = datetime(2026, 8, 3, 8, 36, tzinfo=UTC)
    topic, key, value = store.position_record(4, at)
    assert (topic, key) == ("journey.store", STORE_POSITION_KEY)
    assert PARTITION_POSITION_ADAPTER.validate_json(value) == PartitionPosition(4, 1234, at)


def test_the_position_key_can_never_be_a_buyers_key() -> None:
    with pytest.raises(UnicodeDecodeError):
        STORE_POSITION_KEY.decode()  # buyer keys are UTF-8 text


def test_dropping_a_partition_forgets_its_position_and_states() -> None:
    store = PartitionStates(Topics())
    store.states["b1"] = encode_state(JourneyState("b1", partition=1))
    store.states["b2"] = encode_state(JourneyState("b2", partition=2))
    store.note(1, ["b1"])
    store.note(2, ["b2"])
    store.loaded = {1, 2}
    store.applied = {1: 10, 2: 20}
    store.drop({1})
    assert (store.loaded, store.applied, set(store.states)) == ({2}, {2: 20}, {"b2"})


@dataclass
class StoreRecord:
    key: bytes
    value: bytes | None


def position(partition: int, offset: int, at: datetime | None = None) -> StoreRecord:
    value = PARTITION_POSITION_ADAPTER.dump_json(PartitionPosition(partition, offset, at))
    return StoreRecord(STORE_POSITION_KEY, value)


def test_loading_the_store_keeps_the_last_state_of_each_buyer_and_the_position() -> None:
    store = PartitionStates(Topics())
    b1, b2 = (encode_state(JourneyState(b, partition=3)) for b in ("b1", "b2"))
    at = datetime(2026, 8, 3, 8, 36, tzinfo=UTC)
    store.start_load(3)
    assert store.loading == {3} and not store.loaded
    store.load_records(3, [StoreRecord(b"b1", b"old"), StoreRecord(b"b2", b2), position(3, 7)])
    store.load_records(3, [StoreRecord(b"b1", b1), StoreRecord(b"b2", None), position(3, 9, at)])
    assert store.end_load(3, complete=True) == {"b1"}
    assert (store.loading, store.loaded) == (set(), {3})
    assert dict(store.states) == {"b1": b1}  # b2's tombstone removed it
    assert (store.applied, store.stored_event_times) == ({3: 9}, {3: at})


def test_a_load_that_failed_leaves_the_partition_to_be_loaded_again() -> None:
    store = PartitionStates(Topics())
    store.applied[5] = 40  # from an earlier ownership: a new load starts afresh
    store.start_load(5)
    assert store.applied == {}
    store.end_load(5, complete=False)
    assert (store.loading, store.loaded) == (set(), set())


def test_records_delivered_again_are_skipped_until_the_first_new_one() -> None:
    store = PartitionStates(Topics())
    store.applied[2] = 41
    assert [store.apply(2, offset) for offset in (39, 40, 41, 42, 43)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert store.applied[2] == 43 and store.skipping == {}
    assert store.apply(6, 0) and store.applied[6] == 0  # nothing applied yet: applied


def test_partitions_taken_during_a_batch_leave_when_it_ends() -> None:
    store = PartitionStates(Topics())
    assert store.owns(1)  # before the first assignment, every partition is
    store.loaded = {1, 2}
    store.start_load(4)
    assert store.assign({1, 2, 4}) == set()
    store.begin_batch()
    assert store.assign({2, 3}) == set()  # a rebalance while the batch awaits
    assert store.leaving == {1, 4}
    assert [store.owns(p) for p in (1, 2, 3, 4)] == [False, True, True, False]
    gone = store.end_batch()
    assert gone == {1, 4} and store.leaving == set()
    store.drop(gone)  # the worker forgets them (and its processor their timers)
    store.end_load(4, complete=False)  # the load in flight gave up: 4 is not ours
    assert store.assign({3}) == {2}  # no batch in flight: to forget at once


def test_a_batch_sends_per_partition_its_position_states_and_packed_rows() -> None:
    topics = Topics("t.")
    store = PartitionStates(topics)
    proc = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=timedelta(days=1)
    )
    at = datetime(2026, 8, 3, 8, 36, tzinfo=UTC)
    for offset, partition, buyer in ((10, 1, "b1"), (20, 2, "b2"), (21, 2, "b3")):
        assert store.apply(partition, offset)
        record = json.dumps(event("page_view", at=at, buyer=buyer)).encode()
        proc.process_raw(record, source="raw", position="-", partition=partition)
    output = proc.flush()
    sent = store.outgoing(output, {1, 2}, {1: at})
    assert sorted(sent) == [1, 2]
    assert store.buyers == {1: {"b1"}, 2: {"b2", "b3"}}  # noted as the partitions' own
    assert sent[2][0] == store.position_record(2, None)
    assert {key for _, key, _ in sent[2][1:3]} == {b"b2", b"b3"}
    assert {topic for topic, _, _ in sent[2][1:3]} == {"t.journey.store"}
    packs = sent[2][3:]
    assert {key for _, key, _ in packs} == {b"2:21:0"}  # applied offset, pack 0
    assert sorted(topic for topic, _, _ in packs) == sorted(
        topic for topic, table in topics.table_by_topic.items() if output.rows[2].get(table)
    )
    [touchpoints] = [value for topic, _, value in packs if topic == "t.touchpoints.classified"]
    assert touchpoints == b"\n".join(output.rows[2]["touchpoints"])  # both rows, one pack
    assert PARTITION_POSITION_ADAPTER.validate_json(sent[1][0][2]) == PartitionPosition(1, 10, at)


def test_a_partition_leaving_during_the_batch_sends_nothing() -> None:
    store = PartitionStates(Topics())
    output = BatchOutput()
    output.add(1, "touchpoints", b"{}")
    output.add(2, "touchpoints", b"{}")
    store.begin_batch()
    store.loaded = {1, 2}
    store.assign({2})
    assert list(store.outgoing(output, set(), {})) == [2]


def test_rows_are_packed_up_to_the_limit_and_a_bigger_row_travels_alone() -> None:
    rows = [b"a" * 3, b"b" * 3, b"c" * 9, b"d"]
    assert list(pack_rows(rows, limit=8)) == [b"aaa\nbbb", b"c" * 9, b"d"]
    assert list(pack_rows([], limit=8)) == []
    assert b"\n".join(pack_rows(rows, limit=8)) == b"\n".join(rows)
