"""Loading day by day gives what loading everything at once gives.

An analyst loads each day's export with its own `touchpoint run` into the same data
directory. Each run must resume from the journeys (and the dedup memory) the runs
before it stored, or a later order leaves a buyer at the stage they had and adds a
bogus move. One generated export spanning two months is cut into consecutive
periods, each file shuffled (exports come in any line order), and run one after the
other; the result must equal one run over the whole export and the generator's
ground truth. Re-running a file that was loaded changes nothing, a run refused or
killed half-way is finished by running it again, and a rules change is refused.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import processors
from ingest.generator import GeneratorConfig, GroundTruth, generate
from processors.classify import default_rules
from tests.readback import everything_written, expected_from_truth
from touchpoint.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _occurred_at(line: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(json.loads(line)["occurred_at"])
    except (ValueError, KeyError, TypeError):
        return None
    return at if at.tzinfo is not None else None


def _generate(buyers: int = 600) -> tuple[list[str], GroundTruth]:
    config = GeneratorConfig(
        buyers=buyers,
        seed=2207,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        timeouts=dict(default_rules().timeouts),
    )
    return generate(config)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], GroundTruth]:
    lines, truth = _generate()
    whole = tmp_path_factory.mktemp("resumed-runs") / "whole.jsonl"
    whole.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return whole, lines, truth


def split_by_event_time(
    lines: list[str], shares: tuple[float, ...], folder: Path, seed: int
) -> list[Path]:
    """Consecutive periods of event time, each written in a shuffled line order.

    A line without an event time (a malformed record) goes with the first period.
    """
    times = sorted(at for at in map(_occurred_at, lines) if at is not None)
    cuts = []
    total = 0.0
    for share in shares[:-1]:
        total += share
        cuts.append(times[int(len(times) * total)])
    parts: list[list[str]] = [[] for _ in shares]
    for line in lines:
        at = _occurred_at(line)
        index = 0 if at is None else sum(1 for cut in cuts if at >= cut)
        parts[index].append(line)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = random.Random(seed)
    for number, part in enumerate(parts, 1):
        rng.shuffle(part)
        path = folder / f"day-{number}.jsonl"
        path.write_text("\n".join(part) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def split_by_delivery(lines: list[str], parts: int, folder: Path) -> list[Path]:
    """Consecutive runs of lines as delivered: late deliveries cross the cuts."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(lines) // parts)
    paths = []
    for number in range(parts):
        path = folder / f"delivery-{number + 1}.jsonl"
        path.write_text("\n".join(lines[number * size : (number + 1) * size]) + "\n", "utf-8")
        paths.append(path)
    return paths


@pytest.fixture
def fresh_database(clickhouse_client: Any) -> Iterator[Callable[[], str]]:
    names: list[str] = []

    def new() -> str:
        names.append(f"resume_{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    for name in names:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def touchpoint_run(
    capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, *paths: Path, **kw: Any
) -> tuple[int, str, str]:
    """`touchpoint run` in this process (chDB opens one directory per process)."""
    capsys.readouterr()
    more = [f"--{name.replace('_', '-')}={value}" for name, value in kw.items()]
    inputs = [arg for path in paths for arg in ("--input", str(path))]
    code = main(["--clickhouse-url", chdb_url, "--database", database, "run", *inputs, *more])
    out, err = capsys.readouterr()
    return code, out, err


def run_ok(capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, *paths: Path) -> str:
    code, out, err = touchpoint_run(capsys, chdb_url, database, *paths, batch_size=400)
    assert code == 0, err
    return out


def test_days_loaded_one_run_each_give_the_result_of_one_run_and_the_truth(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    whole, lines, truth = export
    at_once = fresh_database()
    run_ok(capsys, chdb_url, at_once, whole)
    want = everything_written(clickhouse_client, at_once)
    expected = expected_from_truth(truth)
    assert {key: want[key] for key in expected} == expected

    splits = {
        "three periods": split_by_event_time(lines, (0.4, 0.35, 0.25), tmp_path / "a", 1),
        "five periods": split_by_event_time(lines, (0.1, 0.3, 0.2, 0.3, 0.1), tmp_path / "b", 2),
        "three deliveries": split_by_delivery(lines, 3, tmp_path / "c"),
    }
    for name, paths in splits.items():
        database = fresh_database()
        for number, path in enumerate(paths, 1):
            printed = run_ok(capsys, chdb_url, database, path)
            assert "too_late" not in printed, f"{name}, {path.name}: {printed}"
            if number > 1:
                assert f"from run {number - 1} in this database" in printed, printed
        got = everything_written(clickhouse_client, database)
        assert got == want, name

    # Without the stored journeys a later run starts empty: the comparison can fail.
    database = fresh_database()
    first, second, third = splits["three periods"]
    run_ok(capsys, chdb_url, database, first, second)
    clickhouse_client.command(f"TRUNCATE TABLE {database}.journey_store")
    run_ok(capsys, chdb_url, database, third)
    assert everything_written(clickhouse_client, database)["funnel"] != want["funnel"]


def test_a_file_loaded_before_is_skipped_and_changes_nothing(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _, lines, _ = export
    first, second = split_by_event_time(lines, (0.6, 0.4), tmp_path, 3)
    database = fresh_database()
    run_ok(capsys, chdb_url, database, first)
    run_ok(capsys, chdb_url, database, second)
    before = everything_written(clickhouse_client, database)
    printed = run_ok(capsys, chdb_url, database, first, second)
    assert f"Skipped {first}: run 1 loaded the same content before." in printed
    assert f"Skipped {second}: run 2 loaded the same content before." in printed
    assert everything_written(clickhouse_client, database) == before

    # The last days again, re-exported under another name (CRLF line ends): inside the
    # dedup window every event is remembered, and none counts twice.
    recent = [line for line in second.read_text(encoding="utf-8").splitlines() if line]
    newest = max(at for at in map(_occurred_at, recent) if at is not None)
    copy = tmp_path / "last-days-again.jsonl"
    copy.write_text(
        "".join(
            line + "\r\n"
            for line in recent
            if (at := _occurred_at(line)) is not None and at > newest - timedelta(days=3)
        ),
        encoding="utf-8",
    )
    printed = run_ok(capsys, chdb_url, database, copy)
    assert re.search(r" 0 touchpoints, [\d,]+ duplicates skipped", printed), printed
    after = everything_written(clickhouse_client, database)
    for key in ("funnel", "tables", "journey_state_rows", "transition_rows", "dropoff_rows"):
        assert after[key] == before[key], key


def test_other_journey_rules_on_stored_journeys_are_refused(
    export: tuple[Path, list[str], GroundTruth],
    chdb_url: str,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _, lines, _ = export
    first, second = split_by_event_time(lines, (0.5, 0.5), tmp_path, 4)
    database = fresh_database()
    run_ok(capsys, chdb_url, database, first)
    shipped = (Path(processors.__file__).parent / "default_rules.toml").read_text("utf-8")
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(shipped.replace('purchase = "60d"', 'purchase = "45d"'), "utf-8")
    code, _, err = touchpoint_run(capsys, chdb_url, database, second, rules=rules_file)
    assert code != 0
    assert "built with other journey rules" in err, err

    # Triggers do not classify: adding one to the rules of the stored journeys is fine.
    with_trigger = tmp_path / "with-trigger.toml"
    with_trigger.write_text(
        shipped + '\n[[trigger]]\nid = "welcome"\non = "stage_move"\nstage = "purchase"\n',
        "utf-8",
    )
    code, out, err = touchpoint_run(capsys, chdb_url, database, second, rules=with_trigger)
    assert code == 0, err
    assert "from run 1 in this database" in out


KILLED_RUN_BUYERS = 3000


def test_a_run_killed_half_way_is_finished_by_running_it_again(tmp_path: Path) -> None:
    """SIGKILL during the second day's run, in processes of their own on their own chDB
    directory (this process has the session's open, and chDB opens one per process)."""
    lines, _ = _generate(KILLED_RUN_BUYERS)
    first, second, third = split_by_event_time(lines, (0.3, 0.5, 0.2), tmp_path, 5)
    url = f"chdb:{tmp_path / 'chdb'}"

    def run(*paths: Path) -> subprocess.Popen[str]:
        return run_process(url, *paths)

    code, out = finish(run(first))
    assert code == 0, out
    killed = run(second)
    printed = _read_until(killed, "Processing", timeout=120)
    time.sleep(0.5)  # some more batches, maybe in the middle of one
    killed.kill()
    _, out = finish(killed)
    out = printed + out
    assert "Written to" not in out, "the run finished before the kill: kill it sooner"
    code, out = finish(run(third))  # another input waits for the unfinished run
    assert code != 0 and "did not finish" in out, out
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


def run_process(url: str, *paths: Path) -> subprocess.Popen[str]:
    """`touchpoint run` of ``paths`` into ``url`` in a process of its own, in batches of 50."""
    inputs = [arg for path in paths for arg in ("--input", str(path))]
    command = [sys.executable, "-m", "touchpoint", "--clickhouse-url", url, "run"]
    return subprocess.Popen(
        [*command, *inputs, "--batch-size=50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for ``process``; its exit code and everything it printed."""
    out, _ = process.communicate(timeout=300)
    return process.returncode, out


def _read_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """What ``process`` printed up to and including ``text`` (read as it comes)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096).decode()
            assert chunk, f"the run ended before {text!r}: {seen!r}"
            seen += chunk
    return seen


def matches_truth(url: str) -> None:
    """Exit 1 (printing the difference) unless ``url``'s default database holds the truth."""
    from schemas.settings import ClickHouseSettings
    from sinks.clickhouse import connect
    from tests.readback import read_back

    _, truth = _generate(KILLED_RUN_BUYERS)
    client = connect(url, ClickHouseSettings())
    got = read_back(client, ClickHouseSettings().database)
    expected = expected_from_truth(truth)
    got = {key: got[key] for key in expected}
    if got != expected:
        print({key: (got[key], value) for key, value in expected.items() if got[key] != value})
        raise SystemExit(1)
