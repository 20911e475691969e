"""A worker's position per partition: what its stored states already include."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from processors.faust_app import PartitionStates
from schemas.journey import (
    PARTITION_POSITION_ADAPTER,
    JourneyState,
    PartitionPosition,
    encode_state,
)
from schemas.topics import STORE_POSITION_KEY


def test_records_up_to_the_applied_offset_are_already_applied() -> None:
    store = PartitionStates(["127.0.0.1:9"], "journey.store")
    assert not store.already_applied(2, 0)  # nothing applied yet
    store.applied[2] = 41
    assert store.already_applied(2, 0)
    assert store.already_applied(2, 41)
    assert not store.already_applied(2, 42)
    assert not store.already_applied(3, 0)  # per partition


def test_the_position_record_carries_the_offset_and_event_time_to_the_store() -> None:
    store = PartitionStates(["127.0.0.1:9"], "journey.store")
    store.applied[4] = 1234
    at = datetime(2026, 8, 3, 8, 36, tzinfo=UTC)
    topic, key, value = store.position_record(4, at)
    assert (topic, key) == ("journey.store", STORE_POSITION_KEY)
    assert PARTITION_POSITION_ADAPTER.validate_json(value) == PartitionPosition(4, 1234, at)


def test_the_position_key_can_never_be_a_buyers_key() -> None:
    with pytest.raises(UnicodeDecodeError):
        STORE_POSITION_KEY.decode()  # buyer keys are UTF-8 text


def test_dropping_a_partition_forgets_its_position_and_states() -> None:
    store = PartitionStates(["127.0.0.1:9"], "journey.store")
    store.states["b1"] = encode_state(JourneyState("b1", partition=1))
    store.states["b2"] = encode_state(JourneyState("b2", partition=2))
    store.note(1, ["b1"])
    store.note(2, ["b2"])
    store.loaded = {1, 2}
    store.applied = {1: 10, 2: 20}
    store.drop({1})
    assert (store.loaded, store.applied, set(store.states)) == ({2}, {2: 20}, {"b2"})
