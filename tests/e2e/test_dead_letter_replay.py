"""`touchpoint dead-letters list|replay`: after a fix, dead letters go back in, once each.

A validation bug (injected here: every SMS event refused as ``invalid_field``) dead-letters
part of a day's export. Once it is fixed, a replay of those dead letters folds them into
the stored journeys — every event counts once, the funnel reaches what the ground truth
says — and replaying again, or after losing the replay ledger, changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, GroundTruth, generate
from processors import journey_processor
from processors.classify import default_rules
from schemas.enums import DeadLetterReason
from schemas.errors import SchemaValidationError
from schemas.events import Event, decode_event
from tests.readback import expected_from_truth, read_back
from touchpoint.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    lines, truth = generate(
        GeneratorConfig(
            buyers=300, seed=4099, malformed_rate=0.01, timeouts=dict(default_rules().timeouts)
        )
    )
    path = tmp_path_factory.mktemp("replay") / "export.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, truth


@pytest.fixture
def database(clickhouse_client: Any) -> Iterator[str]:
    name = f"replay_{uuid.uuid4().hex[:12]}"
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def refusing_sms(data: bytes | str) -> Event:
    event = decode_event(data)
    if event.channel == "sms":
        raise SchemaValidationError(DeadLetterReason.INVALID_FIELD, "sms refused (the bug)")
    return event


def touchpoint(capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, *args: str) -> str:
    capsys.readouterr()
    code = main(["--clickhouse-url", chdb_url, "--database", database, *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_replayed_dead_letters_count_once_and_the_journeys_reach_the_truth(
    export: tuple[Path, GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, truth = export
    expected = expected_from_truth(truth)
    with monkeypatch.context() as bug:
        bug.setattr(journey_processor, "decode_event", refusing_sms)
        touchpoint(capsys, chdb_url, database, "run", "--input", str(path))
    invalid = read_back(clickhouse_client, database)["dead_letters"]["invalid_field"]
    really_invalid = truth.malformed.get("invalid_field", 0)  # the generator's own bad lines
    refused = invalid - really_invalid
    assert refused > 50
    assert read_back(clickhouse_client, database)["tables"]["touchpoints"] < truth.events_unique

    listed = touchpoint(capsys, chdb_url, database, "dead-letters", "list", "--limit", "5")
    assert "invalid_field" in listed and "not replayed" in listed
    assert "sms refused (the bug)" in listed

    # The bug is fixed (the patch is gone): replay what it refused, and only that.
    out = touchpoint(
        capsys, chdb_url, database, "dead-letters", "replay", "--reason", "invalid_field"
    )
    assert f"{invalid:,} dead letters matched: {refused:,} replayed (embedded)" in out, out
    if really_invalid:
        assert f"Still failing: invalid_field {really_invalid} " in out
    after = read_back(clickhouse_client, database)
    assert after["tables"]["touchpoints"] == truth.events_unique
    assert after["purchases"] == expected["purchases"]
    assert after["revenue"] == expected["revenue"]
    assert after["buyers"] == expected["buyers"]
    assert {stage: counts["reached"] for stage, counts in after["funnel"].items()} == {
        stage: counts["reached"] for stage, counts in expected["funnel"].items()
    }

    # Again: nothing is sent twice.
    out = touchpoint(capsys, chdb_url, database, "dead-letters", "replay")
    assert f"0 replayed (embedded), 0 already in touchpoints, {refused:,} replayed before" in out
    assert "not replayable" in out  # the malformed lines of the export: nothing to replay
    assert read_back(clickhouse_client, database) == after

    # Even with the ledger lost (a crash between the run and its ledger rows), each replayed
    # event is found in touchpoints and only marked a duplicate.
    clickhouse_client.command(f"TRUNCATE TABLE {database}.dead_letter_replays")
    out = touchpoint(
        capsys, chdb_url, database, "dead-letters", "replay", "--reason", "invalid_field"
    )
    assert f"0 replayed (embedded), {refused:,} already in touchpoints" in out, out
    assert "0 replayed before" in out
    assert read_back(clickhouse_client, database) == after
    listed = touchpoint(capsys, chdb_url, database, "dead-letters", "list", "--limit", "0")
    assert "duplicate" in listed


def test_a_replay_that_still_fails_is_retried_after_the_next_fix(
    export: tuple[Path, GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, truth = export
    with monkeypatch.context() as bug:
        bug.setattr(journey_processor, "decode_event", refusing_sms)
        touchpoint(capsys, chdb_url, database, "run", "--input", str(path))
        from touchpoint import replay

        bug.setattr(replay, "decode_event", refusing_sms)  # the first fix did not take
        out = touchpoint(capsys, chdb_url, database, "dead-letters", "replay")
        assert "Still failing: invalid_field" in out, out
    out = touchpoint(capsys, chdb_url, database, "dead-letters", "replay", "--from", "2000-01-01")
    assert "0 replayed before" in out and " 0 replayed (embedded)" not in out
    assert read_back(clickhouse_client, database)["tables"]["touchpoints"] == truth.events_unique
