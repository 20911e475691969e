"""Identity stitching on the embedded default: people known by several ids count once.

The generator files some buyers' anonymous visits under a cookie and their email under their
address, and links them on the sign-in visit (``anonymous_id`` + ``properties.aliases``);
the ground truth is per person. Every number must equal the truth — with the links arriving
before or after the events they join, in one run or in several, and after a SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, GroundTruth, generate
from processors.classify import default_rules
from tests.e2e.test_resumed_runs import (
    _read_until,
    finish,
    fresh_database,
    run_ok,
    run_process,
    split_by_delivery,
    split_by_event_time,
    touchpoint_run,
)
from tests.readback import everything_written, expected_from_truth
from touchpoint.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["fresh_database"]  # a fixture, used by name

BUYERS = 800
KILLED_RUN_BUYERS = 400


def people(buyers: int = BUYERS) -> tuple[list[str], GroundTruth]:
    config = GeneratorConfig(
        buyers=buyers,
        seed=3131,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        several_ids_rate=0.7,
        timeouts=dict(default_rules().timeouts),
    )
    return generate(config)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], GroundTruth]:
    lines, truth = people()
    whole = tmp_path_factory.mktemp("identity") / "whole.jsonl"
    whole.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return whole, lines, truth


def records(lines: list[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Each line with its JSON object (None for a malformed record)."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        yield line, record if isinstance(record, dict) else None


def per_person(client: Any, database: str) -> dict[str, tuple[Any, ...]]:
    rows = client.query(
        f"SELECT buyer_id, furthest_stage, dropoff_stage, purchases, revenue, events "
        f"FROM {database}.journey_state FINAL"
    ).result_rows
    return {row[0]: (row[1], row[2], row[3], Decimal(row[4]), row[5]) for row in rows}


def links(client: Any, database: str) -> dict[str, str]:
    rows = client.query(
        f"SELECT alias_id, person_id FROM {database}.identity_links FINAL"
    ).result_rows
    return dict(rows)


def truth_per_person(truth: GroundTruth, lines: list[str]) -> dict[str, tuple[Any, ...]]:
    events: dict[str, set[str]] = {}
    person_of = {other: buyer.buyer_id for buyer in truth.buyers for other in buyer.other_ids}
    for _, record in records(lines):
        buyer = None if record is None else record.get("buyer_id")
        if record and isinstance(buyer, str) and not buyer.startswith("buyer-malformed"):
            events.setdefault(person_of.get(buyer, buyer), set()).add(record["event_id"])
    return {
        buyer.buyer_id: (
            buyer.furthest_stage.value,
            buyer.dropoff_stage.value if buyer.dropoff_stage else None,
            buyer.purchases,
            buyer.revenue,
            len(events[buyer.buyer_id]),
        )
        for buyer in truth.buyers
    }


def test_a_person_known_by_several_ids_is_counted_once_as_the_truth_says(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, lines, truth = export
    several = [buyer for buyer in truth.buyers if buyer.other_ids]
    assert len(several) > BUYERS // 8  # the comparison is not vacuous

    database = fresh_database()
    run_ok(capsys, chdb_url, database, whole)
    got = everything_written(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert per_person(clickhouse_client, database) == truth_per_person(truth, lines)
    assert links(clickhouse_client, database) == {
        other: buyer.buyer_id for buyer in several for other in buyer.other_ids
    } | {  # the generator's other buyers browse with a cookie that has no journey of its own
        f"anonymous:{line_anonymous}": buyer
        for buyer, line_anonymous in _cookies(lines, {b.buyer_id for b in several})
    }

    # Without stitching the same file counts the cookies and addresses as buyers of their own.
    monkeypatch.setenv("TOUCHPOINT_STITCH_IDENTITIES", "false")
    apart = fresh_database()
    run_ok(capsys, chdb_url, apart, whole)
    assert everything_written(clickhouse_client, apart)["buyers"] > len(truth.buyers)


def _cookies(lines: list[str], split: set[str]) -> set[tuple[str, str]]:
    """(buyer, anonymous id) of the buyers that kept one id but browse with a cookie."""
    found: set[tuple[str, str]] = set()
    for _, record in records(lines):
        if record is None:
            continue
        buyer, anonymous = record.get("buyer_id"), record.get("anonymous_id")
        if isinstance(buyer, str) and isinstance(anonymous, str) and buyer.startswith("buyer-"):
            if buyer not in split and not buyer.startswith("buyer-malformed"):
                found.add((buyer, anonymous))
    return found


def test_several_runs_in_any_line_order_give_the_people_of_one_run(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    whole, lines, _ = export
    at_once = fresh_database()
    run_ok(capsys, chdb_url, at_once, whole)
    want = everything_written(clickhouse_client, at_once), links(clickhouse_client, at_once)

    splits = {
        "three periods": split_by_event_time(lines, (0.4, 0.35, 0.25), tmp_path / "a", 11),
        "three deliveries": split_by_delivery(lines, 3, tmp_path / "b"),
    }
    for name, paths in splits.items():
        database = fresh_database()
        for path in paths:
            printed = run_ok(capsys, chdb_url, database, path)
            assert "too_late" not in printed, f"{name}, {path.name}: {printed}"
        got = everything_written(clickhouse_client, database), links(clickhouse_client, database)
        assert got == want, name


def test_a_cap_keeps_a_shared_id_from_joining_everyone(
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one support mailbox that every ticket names beside its customer
    lines = [
        json.dumps(
            {
                "event_id": f"t{number}",
                "buyer_id": f"customer-{number}",
                "channel": "support",
                "event_type": "ticket_opened",
                "occurred_at": f"2026-03-02T09:{number:02d}:00+00:00",
                "properties": {"aliases": "mail:help@shop.example"},
            }
        )
        for number in range(12)
    ]
    path = tmp_path / "tickets.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    database = fresh_database()
    code, _, err = touchpoint_run(capsys, chdb_url, database, path, batch_size=400)
    assert code == 0, err
    # cap 50 by default; TOUCHPOINT_IDENTITY_MAX_IDS lowers it for this run
    assert len(per_person(clickhouse_client, database)) == 1

    capped = fresh_database()
    monkeypatch.setenv("TOUCHPOINT_IDENTITY_MAX_IDS", "5")
    code, _, err = touchpoint_run(capsys, chdb_url, capped, path, batch_size=400)
    assert code == 0, err
    persons = per_person(clickhouse_client, capped)
    assert len(persons) == 12 - 4 + 1  # the first four customers and the mailbox are one
    refused = clickhouse_client.query(
        f"SELECT count() FROM {capped}.dead_letters FINAL WHERE reason = 'identity_cap'"
    ).result_rows[0][0]
    assert refused == 8
    assert sum(row[4] for row in persons.values()) == 12  # no event lost


def test_a_run_killed_half_way_is_finished_with_every_person_right(tmp_path: Path) -> None:
    """SIGKILL during the second run, in processes of their own on their own chDB directory."""
    lines, _ = people(KILLED_RUN_BUYERS)
    first, second, third = split_by_event_time(lines, (0.3, 0.5, 0.2), tmp_path, 5)
    url = f"chdb:{tmp_path / 'chdb'}"

    def run(*paths: Path) -> subprocess.Popen[str]:
        return run_process(url, *paths)

    code, out = finish(run(first))
    assert code == 0, out
    killed = run(second)
    printed = _read_until(killed, "Processing", timeout=120)
    time.sleep(0.5)
    killed.kill()
    _, out = finish(killed)
    assert "Written to" not in printed + out, "the run finished before the kill: kill it sooner"
    for path in (second, third):
        code, out = finish(run(path))
        assert code == 0, out

    check = subprocess.run(
        [sys.executable, "-c", f"from {__name__} import matches_truth; matches_truth({url!r})"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def matches_truth(url: str) -> None:
    """Exit 1 (printing the difference) unless ``url``'s default database holds the truth."""
    from schemas.settings import ClickHouseSettings
    from sinks.clickhouse import connect
    from tests.readback import read_back

    lines, truth = people(KILLED_RUN_BUYERS)
    client = connect(url, ClickHouseSettings())
    database = ClickHouseSettings().database
    got = read_back(client, database)
    expected = expected_from_truth(truth)
    differences = {key: (got[key], value) for key, value in expected.items() if got[key] != value}
    persons = per_person(client, database)
    want = truth_per_person(truth, lines)
    differences |= {
        buyer: (persons.get(buyer), value)
        for buyer, value in want.items()
        if persons.get(buyer) != value
    }
    if differences or len(persons) != len(want):
        print(differences, len(persons), len(want))
        raise SystemExit(1)


def test_every_report_answer_counts_a_person_once(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The whole report (attribution paths, drop-off diagnosis, channels, cohorts, …) over
    stitched ids is the report over the same events sent under the person id already."""
    import difflib

    whole, lines, truth = export
    person_of = {other: buyer.buyer_id for buyer in truth.buyers for other in buyer.other_ids}
    known = tmp_path / "known.jsonl"
    with known.open("w", encoding="utf-8") as out:
        for line, record in records(lines):
            buyer = None if record is None else record.get("buyer_id")
            if record is None or not isinstance(buyer, str):
                out.write(line + "\n")  # a malformed record stays as it was
                continue
            record["buyer_id"] = person_of.get(buyer, buyer)
            out.write(json.dumps(record, separators=(",", ":")) + "\n")

    reports = []
    for path in (whole, known):
        database = fresh_database()
        run_ok(capsys, chdb_url, database, path)
        capsys.readouterr()
        code = main(["--clickhouse-url", chdb_url, "--database", database, "report"])
        printed, err = capsys.readouterr()
        assert code == 0, err
        reports.append(printed.replace(database, "DB"))
    stitched, known_already = (report.splitlines(keepends=True) for report in reports)
    assert reports[0] == reports[1], "".join(difflib.unified_diff(known_already, stitched, n=1))


def test_forget_erases_a_person_and_every_id_of_theirs_from_every_table(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    whole, lines, truth = export
    person = next(buyer for buyer in truth.buyers if len(buyer.other_ids) == 2 and buyer.purchases)
    ids = [person.buyer_id, *person.other_ids]
    database = fresh_database()
    run_ok(capsys, chdb_url, database, whole)
    assert _mentions(clickhouse_client, database, ids)  # there is something to erase

    capsys.readouterr()
    code = main(["--clickhouse-url", chdb_url, "--database", database, "forget", ids[1], "--yes"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert f"Erased person {person.buyer_id}" in printed, printed
    assert _mentions(clickhouse_client, database, ids) == {}

    # Everything else is as if the person had never been: the report of the same file
    # without their events (their id may still appear as the anonymous id of an event).
    kept = [
        line for line, record in records(lines) if not record or record.get("buyer_id") not in ids
    ]
    without = tmp_path / "without.jsonl"
    without.write_text("\n".join(kept) + "\n", "utf-8")
    never = fresh_database()
    run_ok(capsys, chdb_url, never, without)
    reports = []
    for name in (database, never):
        capsys.readouterr()
        assert main(["--clickhouse-url", chdb_url, "--database", name, "report"]) == 0
        reports.append(capsys.readouterr()[0].replace(name, "DB"))
    assert reports[0] == reports[1]
    assert everything_written(clickhouse_client, database) == everything_written(
        clickhouse_client, never
    )


def _mentions(client: Any, database: str, ids: list[str]) -> dict[str, int]:
    """Table → rows whose any column holds one of ``ids`` (as a whole value or in JSON)."""
    found = {}
    tables = client.query(
        "SELECT name FROM system.tables WHERE database = %(db)s AND engine LIKE '%%MergeTree'",
        parameters={"db": database},
    ).result_rows
    needles = [*ids, *(f'"{one}"' for one in ids)]
    for (table,) in tables:
        count = client.query(
            f"SELECT count() FROM {database}.{table} "
            f"WHERE multiSearchAny(toString(tuple(*)), %(needles)s)",
            parameters={"needles": needles},
        ).result_rows[0][0]
        if count:
            found[table] = count
    return found


def test_split_takes_an_id_out_of_its_person_for_good(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """After `identity split ADDRESS` the store is what it would be had the sign-in never
    named the address — and a later run that names it again does not link it back."""
    whole, lines, truth = export
    person = next(buyer for buyer in truth.buyers if len(buyer.other_ids) == 2 and buyer.purchases)
    address = person.other_ids[1]
    assert address.startswith("mail:")

    def unnamed(line: str) -> str:
        [(_, record)] = records([line])
        properties = {} if record is None else record.get("properties") or {}
        if (
            record is None
            or not isinstance(properties, dict)
            or properties.get("aliases") != address
        ):
            return line
        record["properties"] = {k: v for k, v in properties.items() if k != "aliases"}
        return json.dumps(record, separators=(",", ":"))

    never = tmp_path / "never-named.jsonl"
    never.write_text("\n".join(unnamed(line) for line in lines) + "\n", encoding="utf-8")
    expected = fresh_database()
    run_ok(capsys, chdb_url, expected, never)

    database = fresh_database()
    run_ok(capsys, chdb_url, database, whole)
    assert links(clickhouse_client, database)[address] == person.buyer_id
    capsys.readouterr()
    code = main(
        ["--clickhouse-url", chdb_url, "--database", database, "identity", "split", address]
    )
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert f"Split {address} off person {person.buyer_id}" in printed, printed

    assert address not in links(clickhouse_client, database)
    assert links(clickhouse_client, database) == links(clickhouse_client, expected)
    assert per_person(clickhouse_client, database) == per_person(clickhouse_client, expected)
    reports = []
    for name in (database, expected):
        capsys.readouterr()
        assert main(["--clickhouse-url", chdb_url, "--database", name, "report"]) == 0
        reports.append(capsys.readouterr()[0].replace(name, "DB"))
    assert reports[0] == reports[1]

    # the same sign-in delivered again in a later run does not link the address back
    sign_in = next(line for line in lines if unnamed(line) != line)
    again = tmp_path / "again.jsonl"
    record = json.loads(sign_in)
    record["event_id"] = "sign-in-again"
    again.write_text(json.dumps(record) + "\n", encoding="utf-8")
    run_ok(capsys, chdb_url, database, again)
    assert address not in links(clickhouse_client, database)
