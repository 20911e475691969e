"""Real-time triggers on the embedded path: `touchpoint run` with a rules file that has
``[[trigger]]`` entries writes exactly the expected firings to ``journey_triggers``.

Two runs into one fresh database (day by day): the second resumes the stored journeys,
fires what its events cause, and retracts a drop-off the first run fired when a late
event shows progress at the deadline. Running a file again fires nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tests.factories import T0, event
from touchpoint.cli import main

pytestmark = [pytest.mark.integration]

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
TRIGGERS = """
[[trigger]]
id = "considering"
on = "stage_move"
stage = "consideration"
channel = "email"

[[trigger]]
id = "stalled"
on = "dropoff"
stage = "awareness"

[[trigger]]
id = "hot"
on = "high_intent"
threshold = 3
window = "2d"

[[trigger]]
id = "lost"
on = "exit"
kinds = ["unsubscribe"]
cooldown = "30d"
"""


def unsubscribe(buyer: str, at: timedelta) -> dict[str, Any]:
    return event("email_unsubscribe", at=at, buyer=buyer, event_id=f"{buyer}-unsub-{at.days}")


DAY_ONE = [
    event("email_open", at=0 * DAY, buyer="ana"),
    event("email_click", at=DAY, buyer="ana", campaign="spring"),
    event("product_view", at=DAY + HOUR, buyer="ana"),
    event("product_view", at=DAY + 2 * HOUR, buyer="ana"),
    event("purchase", at=2 * DAY, buyer="ana", revenue="40.00", currency="USD"),
    event("ad_impression", at=0 * DAY, buyer="ben"),
    event("ticket_opened", at=5 * DAY, buyer="ben"),
    event("email_open", at=0 * DAY, buyer="cy"),
    unsubscribe("cy", 2 * DAY),
    unsubscribe("cy", 10 * DAY),  # inside the cooldown
    event("ad_click", at=0 * DAY, buyer="dee"),  # a move into consideration, not by email
    event("email_open", at=15 * DAY, buyer="eve"),
    event("email_sent", at=22 * DAY, buyer="zed"),  # event time: day 22, watermark day 22 - 2h
]
DAY_TWO = [
    event("email_click", at=20 * DAY, buyer="ben"),  # late: progress before ben's deadline
    unsubscribe("cy", 35 * DAY),  # after the cooldown
    event("email_sent", at=40 * DAY, buyer="zed"),
]


def at(delta: timedelta) -> datetime:
    return T0 + delta


@pytest.fixture
def fresh_database(clickhouse_client: Any) -> Iterator[str]:
    name = f"triggers_{uuid.uuid4().hex[:12]}"
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in reversed(records)), "utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, *args: str) -> str:
    capsys.readouterr()
    code = main(["--clickhouse-url", chdb_url, "--database", database, *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def fired(client: Any, database: str) -> set[tuple[Any, ...]]:
    rows = client.query(
        f"SELECT trigger_id, buyer_id, fired_at, is_retraction, channel, stage "
        f"FROM {database}.journey_triggers FINAL"
    ).result_rows
    return {(t, b, f.replace(tzinfo=T0.tzinfo), r, c, s) for t, b, f, r, c, s in rows}


def test_a_run_writes_exactly_the_expected_firings_and_a_resumed_run_retracts_one(
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    default = resources.files("processors").joinpath("default_rules.toml").read_text("utf-8")
    rules = tmp_path / "rules.toml"
    rules.write_text(default + TRIGGERS, encoding="utf-8")
    first = write(tmp_path / "day-1.jsonl", DAY_ONE)
    second = write(tmp_path / "day-2.jsonl", DAY_TWO)
    options = ["--rules", str(rules), "--batch-size", "3"]

    run(capsys, chdb_url, fresh_database, "run", "--input", str(first), *options)
    day_one = {
        ("considering", "ana", at(DAY), 0, "email", "consideration"),
        ("hot", "ana", at(DAY + 2 * HOUR), 0, "web", "consideration"),
        ("stalled", "ben", at(21 * DAY), 0, "support", "awareness"),
        ("stalled", "cy", at(21 * DAY), 0, "email", "awareness"),
        ("lost", "cy", at(2 * DAY), 0, "email", "awareness"),
    }
    assert fired(clickhouse_client, fresh_database) == day_one

    printed = run(capsys, chdb_url, fresh_database, "run", "--input", str(second), *options)
    assert "Triggers fired: 3, retracted: 1 (table journey_triggers" in printed, printed
    day_two = {
        ("stalled", "ben", at(21 * DAY), 1, "support", "awareness"),  # retracted
        ("considering", "ben", at(20 * DAY), 0, "email", "consideration"),
        ("lost", "cy", at(35 * DAY), 0, "email", "awareness"),
        ("stalled", "eve", at(36 * DAY), 0, "email", "awareness"),
    }
    expected = (day_one - {("stalled", "ben", at(21 * DAY), 0, "support", "awareness")}) | day_two
    assert fired(clickhouse_client, fresh_database) == expected

    [(payload,)] = clickhouse_client.query(
        f"SELECT payload FROM {fresh_database}.journey_triggers FINAL "
        "WHERE trigger_id = 'stalled' AND buyer_id = 'ben'"
    ).result_rows
    assert json.loads(payload)["disproved_by_progress_at"] == at(20 * DAY).timestamp()

    # Both files again: skipped as loaded; nothing fires twice.
    run(
        capsys,
        chdb_url,
        fresh_database,
        "run",
        "--input",
        str(first),
        "--input",
        str(second),
        *options,
    )
    assert fired(clickhouse_client, fresh_database) == expected
    count = clickhouse_client.query(
        f"SELECT count() FROM {fresh_database}.journey_triggers FINAL"
    ).result_rows[0][0]
    assert count == len(expected)

    # `touchpoint triggers`: counts per trigger, then the latest firings.
    out = run(capsys, chdb_url, fresh_database, "triggers", "--limit", "3")
    counts = {line.split()[0]: line.split()[1:5] for line in out.splitlines()[3:7]}
    assert counts == {
        "considering": ["stage_move", "2", "0", "2"],
        "hot": ["high_intent", "1", "0", "1"],
        "lost": ["exit", "2", "0", "1"],
        "stalled": ["dropoff", "2", "1", "2"],
    }, out
    assert "7 firings" in out
    assert "The latest 3" in out
    assert (
        "2026-04-07 09:00:00  stalled  eve    no progress past awareness (last: email_open)" in out
    ), out
    out = run(capsys, chdb_url, fresh_database, "triggers", "--retractions", "--trigger", "stalled")
    assert "ben" in out and "yes" in out and "eve" not in out, out
    out = run(
        capsys, chdb_url, fresh_database, "triggers", "--from", "2026-03-20", "--to", "2026-04-01"
    )
    assert "considering  stage_move      1          0       1" in out, out
