"""The sink's batches without Kafka or ClickHouse: planning, intents, decoding.

:mod:`sinks.batches` is pure, so these tests drive it with plain messages; the loop that
feeds it from a consumer group is tested in ``test_sink_consumer.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import ConfigError
from schemas.rows import ROW_ADAPTERS
from sinks.batches import BatchPlanner, Intent, Message, PartitionBatch, decode_batch, rounds
from tests.factories import transition_json

TOPIC = "journey.transitions"


def msg(offset: int, partition: int = 0, topic: str = TOPIC) -> Message:
    return Message(topic, partition, offset, b"{}")


# -- the planner -------------------------------------------------------------------------


def test_size_bound_counts_every_partition_and_take_gives_one_batch_per_partition() -> None:
    planner = BatchPlanner(max_rows=4, max_seconds=60)
    for tp in [(TOPIC, 0), (TOPIC, 1)]:
        planner.open(tp)
    for offset in range(2):
        planner.add(msg(offset, 0), now=0)
        planner.add(msg(offset + 10, 1), now=0)
        assert planner.full() is (offset == 1)
    batches = planner.take()
    assert [(b.tp, b.first, b.last, b.token) for b in batches] == [
        ((TOPIC, 0), 0, 1, f"{TOPIC}:0:0-1"),
        ((TOPIC, 1), 10, 11, f"{TOPIC}:1:10-11"),
    ]
    assert planner.buffered() == 0 and planner.take() == []


def test_time_bound_is_measured_from_the_oldest_buffered_message() -> None:
    planner = BatchPlanner(max_rows=100, max_seconds=2.0)
    planner.open((TOPIC, 0))
    planner.open((TOPIC, 1))
    assert planner.seconds_until_due(now=0) is None and not planner.due(now=100)
    planner.add(msg(0, 0), now=10.0)
    planner.add(msg(0, 1), now=11.0)
    assert planner.seconds_until_due(now=11.5) == pytest.approx(0.5)
    assert not planner.due(now=11.9)
    assert planner.due(now=12.0)
    assert planner.due(now=12.0, exclude={(TOPIC, 0)}) is False  # a partition being revoked


def test_a_partition_holding_more_than_max_rows_is_cut_into_bounded_batches() -> None:
    planner = BatchPlanner(max_rows=3, max_seconds=1)
    planner.open((TOPIC, 0))
    for offset in range(7):
        planner.add(msg(offset), now=0)
    assert [(b.first, b.last) for b in planner.take()] == [(0, 2), (3, 5), (6, 6)]


def test_transaction_markers_leave_gaps_that_the_token_range_spans() -> None:
    planner = BatchPlanner(max_rows=10, max_seconds=1)
    planner.open((TOPIC, 0))
    for offset in (5, 6, 8, 9):  # 7: a commit marker, never delivered
        planner.add(msg(offset), now=0)
    (batch,) = planner.take()
    assert batch.token == f"{TOPIC}:0:5-9" and batch.end == 10
    assert batch.intent == Intent(5, 10)


def test_a_recovered_intent_is_replayed_exactly_and_later_messages_wait() -> None:
    planner = BatchPlanner(max_rows=2, max_seconds=1)  # smaller than the intent: ignored
    planner.open((TOPIC, 0), Intent(10, 15))
    for offset in range(10, 14):
        planner.add(msg(offset), now=0)
    assert planner.awaiting_intent() == [(TOPIC, 0)]
    assert not planner.full() and not planner.due(now=100) and planner.take() == []
    planner.add(msg(14), now=0)
    planner.add(msg(15), now=0)
    planner.add(msg(16), now=0)
    assert planner.due(now=0)
    batches = planner.take()
    assert [(b.token, b.replay, len(b.messages)) for b in batches] == [
        (f"{TOPIC}:0:10-14", True, 5),
        (f"{TOPIC}:0:15-16", False, 2),
    ]
    assert planner.awaiting_intent() == []


def test_an_intent_whose_tail_is_gone_completes_on_the_consumer_position() -> None:
    planner = BatchPlanner(max_rows=100, max_seconds=1)
    planner.open((TOPIC, 0), Intent(10, 15))
    planner.add(msg(11), now=0)  # 10 and 12-14 compacted away
    planner.advance((TOPIC, 0), 14)
    assert planner.take() == []
    planner.advance((TOPIC, 0), 15)
    (batch,) = planner.take()
    assert batch.replay and batch.token == f"{TOPIC}:0:10-14" and len(batch.messages) == 1


def test_an_intent_with_nothing_left_still_yields_an_empty_replay_to_commit_its_end() -> None:
    planner = BatchPlanner(max_rows=100, max_seconds=1)
    planner.open((TOPIC, 0), Intent(3, 8))
    planner.advance((TOPIC, 0), 8)
    (batch,) = planner.take()
    assert batch.replay and batch.messages == () and batch.end == 8


def test_redelivered_offsets_are_ignored_and_closing_drops_the_buffer() -> None:
    planner = BatchPlanner(max_rows=100, max_seconds=1)
    planner.open((TOPIC, 0))
    assert planner.add(msg(4), now=0) and planner.add(msg(5), now=0)
    assert not planner.add(msg(5), now=0) and not planner.add(msg(3), now=0)
    assert planner.close([(TOPIC, 0), (TOPIC, 9)]) == 2
    assert not planner.is_open((TOPIC, 0))
    with pytest.raises(KeyError):
        planner.add(msg(6), now=0)


def test_rounds_keep_one_batch_per_partition_in_offset_order() -> None:
    a1, a2, b1 = (
        PartitionBatch(TOPIC, 0, 0, 1, ()),
        PartitionBatch(TOPIC, 0, 2, 3, ()),
        PartitionBatch(TOPIC, 1, 0, 0, ()),
    )
    assert rounds([a1, a2, b1]) == [[a1, b1], [a2]]


def test_planner_bounds_are_validated() -> None:
    with pytest.raises(ConfigError):
        BatchPlanner(max_rows=0, max_seconds=1)
    with pytest.raises(ConfigError):
        BatchPlanner(max_rows=1, max_seconds=0)


@settings(max_examples=200, deadline=None)
@given(
    max_rows=st.integers(1, 6),
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3), st.booleans()), max_size=40),
)
def test_batches_partition_the_stream_exactly_without_overlap(
    max_rows: int, steps: list[tuple[int, int, bool]]
) -> None:
    """Whatever the interleaving and flush points: every message once, in order, bounded."""
    planner = BatchPlanner(max_rows=max_rows, max_seconds=1)
    next_offset = {p: 0 for p in range(3)}
    for p in range(3):
        planner.open((TOPIC, p))
    batches: list[PartitionBatch] = []
    for partition, gap, flush in steps:
        planner.add(msg(next_offset[partition], partition), now=0)
        next_offset[partition] += gap  # gaps stand for transaction markers
        if flush or planner.full():
            batches.extend(planner.take())
    batches.extend(planner.take())
    for p in range(3):
        mine = [b for b in batches if b.partition == p]
        offsets = [m.offset for b in mine for m in b.messages]
        assert offsets == sorted(set(offsets))
        assert all(0 < len(b.messages) <= max_rows for b in mine)
        assert all(
            b.first == b.messages[0].offset and b.last == b.messages[-1].offset for b in mine
        )
        assert all(x.end <= y.first for x, y in pairwise(mine))
    assert len({b.token for b in batches}) == len(batches)


def test_intent_metadata_round_trips_and_foreign_or_stale_metadata_is_ignored() -> None:
    intent = Intent(7, 12)
    assert Intent.decode(7, intent.encode()) == intent
    assert Intent.decode(7, "") is None
    assert Intent.decode(None, intent.encode()) is None
    assert Intent.decode(9, intent.encode()) is None  # offset moved since: not ours to replay
    assert Intent.decode(7, "written by a tool") is None
    assert Intent.decode(7, '{"end": 12}') is None
    assert Intent.decode(7, '{"sink":1,"start":7,"end":7}') is None


# -- decoding ----------------------------------------------------------------------------


def test_invalid_messages_become_dead_letters_in_the_same_batch() -> None:
    batch = PartitionBatch(
        TOPIC,
        2,
        40,
        42,
        (
            Message(TOPIC, 2, 40, transition_json("b1")),
            Message(TOPIC, 2, 41, b'{"buyer_id": 1}', timestamp_ms=1_772_441_400_000),
            Message(TOPIC, 2, 42, None),
        ),
    )
    row_batch, dead = decode_batch(batch, "stage_transitions")
    assert dead == 2 and row_batch.token == f"{TOPIC}:2:40-42"
    assert list(row_batch.tables["stage_transitions"]) == [transition_json("b1")]  # its own bytes
    letters = [
        ROW_ADAPTERS["dead_letters"].validate_json(row) for row in row_batch.tables["dead_letters"]
    ]
    assert [(r.reason, r.source, r.position) for r in letters] == [
        ("invalid_output_row", TOPIC, "2:41"),
        ("invalid_output_row", TOPIC, "2:42"),
    ]
    assert letters[0].raw == '{"buyer_id": 1}'
    assert letters[0].recorded_at == datetime(2026, 3, 2, 8, 50, tzinfo=UTC)
    again, _ = decode_batch(batch, "stage_transitions")
    assert again == row_batch  # a replay builds identical rows


def test_a_message_of_several_rows_is_checked_row_by_row() -> None:
    rows = [transition_json("b1"), b'{"buyer_id": "b2", "to_stage": "nowhere"}']
    rows.append(transition_json("b3"))
    batch = PartitionBatch(TOPIC, 0, 7, 7, (Message(TOPIC, 0, 7, b"\n".join(rows)),))
    row_batch, dead = decode_batch(batch, "stage_transitions")
    assert dead == 1
    assert list(row_batch.tables["stage_transitions"]) == [rows[0], rows[2]]
    [letter] = [
        ROW_ADAPTERS["dead_letters"].validate_json(row) for row in row_batch.tables["dead_letters"]
    ]
    assert (letter.position, letter.raw) == ("0:7:1", rows[1].decode())


def test_a_message_of_many_rows_counts_as_its_rows_toward_a_batch() -> None:
    planner = BatchPlanner(max_rows=500, max_seconds=60)
    planner.open((TOPIC, 0))
    for offset in range(3):
        planner.add(Message(TOPIC, 0, offset, b"{}\n" * 299 + b"{}", rows=300), now=0.0)
        assert planner.full() == (offset >= 1)
    batches = planner.take()
    assert [(b.first, b.last) for b in batches] == [(0, 0), (1, 1), (2, 2)]  # 300 rows each
