"""The worker's state stores: a RocksDB-backed store gives exactly what a dict gives."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ingest.generator import GeneratorConfig, generate
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.state_stores import RocksStates, open_state_store
from schemas.errors import ConfigError
from schemas.journey import JourneyState, encode_state
from tests.factories import final_rows


def run(states: object) -> dict[str, object]:
    lines, _ = generate(GeneratorConfig(buyers=80, seed=21))
    processor = JourneyProcessor(
        default_rules(),
        allowed_lateness=timedelta(hours=2),
        dedup_window=timedelta(days=7),
        states=states,
    )  # type: ignore[arg-type]
    tables: dict[str, list[object]] = {}
    for index, line in enumerate(lines):
        processor.process_raw(line, source="s", position=str(index))
        if index % 50 == 49:
            for table, rows in processor.flush().tables().items():
                tables.setdefault(table, []).extend(rows)
    for table, rows in processor.flush().tables().items():
        tables.setdefault(table, []).extend(rows)
    return final_rows(tables)  # type: ignore[arg-type]


def test_the_rocksdict_store_gives_the_same_journeys_as_memory(tmp_path: Path) -> None:
    rocks = open_state_store("rocksdict", tmp_path / "rocks")
    assert isinstance(rocks, RocksStates)
    try:
        assert run(rocks) == run(open_state_store("memory", tmp_path / "unused"))
        assert len(rocks) == 80
    finally:
        rocks.close()
    assert not (tmp_path / "rocks").exists()


def test_rocks_states_behave_like_a_mapping(tmp_path: Path) -> None:
    store = RocksStates(tmp_path / "db")
    try:
        state = encode_state(JourneyState(buyer_id="b1", partition=3, events=2))
        store["b1"] = state
        assert store["b1"] == state and "b1" in store and list(store) == ["b1"]
        del store["b1"]
        with pytest.raises(KeyError):
            store["b1"]
        with pytest.raises(KeyError):
            del store["b1"]
    finally:
        store.close()


def test_an_unknown_store_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown state store"):
        open_state_store("redis", tmp_path)
