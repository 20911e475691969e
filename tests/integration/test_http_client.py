"""The production path: clickhouse-connect's HTTP client, against ClickHouse's HTTP interface.

Production runs a ClickHouse server over HTTP; none can be installed here, so
tests/chdb_http.py puts ClickHouse's HTTP interface in front of chDB, in a child process
with its own data directory (chDB opens one per process, and this session has one). The
same export goes through `touchpoint run` (inserts: the sink writer, the journey store,
migrations) and `touchpoint report` (every report query) once over HTTP and once through
the embedded chDB interface: the reports must be the same.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, generate
from processors.classify import default_rules
from tests.chdb_http import start, statements
from touchpoint.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "analyst", "s3cret:with@signs"


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from urllib.parse import quote

    with start(tmp_path_factory.mktemp("chdb-http"), USER, PASSWORD) as url:
        yield url.replace(f":{PASSWORD}@", f":{quote(PASSWORD, safe='')}@")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines, _ = generate(
        GeneratorConfig(
            buyers=300,
            seed=1414,
            duplicate_rate=0.03,
            out_of_order_rate=0.1,
            malformed_rate=0.003,
            timeouts=dict(default_rules().timeouts),
        )
    )
    path = tmp_path_factory.mktemp("http-export") / "export.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cli(capsys: pytest.CaptureFixture[str], url: str, database: str, *args: str) -> str:
    capsys.readouterr()
    code = main(["--clickhouse-url", url, "--database", database, *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture
def embedded_database(clickhouse_client: Any) -> Iterator[str]:
    name = f"embedded_{uuid.uuid4().hex[:10]}"
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def test_run_and_report_over_http_give_the_numbers_of_the_embedded_path(
    http_url: str,
    chdb_url: str,
    embedded_database: str,
    export: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = "over_http"
    outputs = []
    for url, name in ((http_url, database), (chdb_url, embedded_database)):
        ran = _cli(capsys, url, name, "run", "--input", str(export), "--batch-size=400")
        report = _cli(capsys, url, name, "report")
        outputs.append((ran, report.replace(name, "DB")))
    (http_run, http_report), (_, chdb_report) = outputs
    assert "ClickHouse server http://127.0.0.1" in http_run
    inserted = {
        (ran["table"], ran.get("format", "SELECT"))
        for ran in statements(http_url)
        if ran["kind"] == "INSERT"
    }
    assert {
        ("touchpoints", "JSONEachRow"),
        ("stage_transitions", "JSONEachRow"),
        ("journey_state", "JSONEachRow"),
        ("dropoffs", "JSONEachRow"),
        ("dead_letters", "JSONEachRow"),
        ("journey_store", "Native"),
        ("journey_runs", "Native"),
        ("schema_migrations", "Native"),
    } <= inserted
    assert http_report == chdb_report
    assert len(http_report.splitlines()) > 20

    # Running the same export again writes nothing twice (insert dedup tokens, journeys).
    _cli(capsys, http_url, database, "run", "--input", str(export), "--batch-size=400")
    assert _cli(capsys, http_url, database, "report").replace(database, "DB") == chdb_report


def test_a_wrong_password_is_one_line_and_exit_code_1(
    http_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = http_url.split("@")[1]
    capsys.readouterr()
    code = main(["--clickhouse-url", f"http://{USER}:nope@{wrong}", "migrate"])
    err = capsys.readouterr().err
    assert code == 1
    assert "516" in err and "Traceback" not in err


def _wall_clock_out(text: str) -> str:
    """``text`` without today's times (when dead letters were recorded, replayed)."""
    today = datetime.now(UTC).date().isoformat()
    return re.sub(rf"{today}[ T][0-9:.]+", "<now>", text)


def test_the_other_clickhouse_commands_answer_over_http_as_they_do_embedded(
    http_url: str,
    chdb_url: str,
    embedded_database: str,
    export: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Imports, dead letters (list and replay), triggers, the brief, split, period-compared
    and HTML reports."""
    (tmp_path / "spend.csv").write_text(
        "Day,Campaign,Impressions,Clicks,Cost\n"
        "2026-03-01,spring,1000,40,12.50\n"
        "not a day,spring,1,1,1\n",
        encoding="utf-8",
    )
    (tmp_path / "crm.csv").write_text(
        "Client ID,Client name,Client type,Region\nbuyer-1,Acme,enterprise,EMEA\n,x,smb,US\n",
        encoding="utf-8",
    )
    commands = [
        ("run", "--input", str(export), "--batch-size=400"),
        ("import", "ads-csv", str(tmp_path / "spend.csv"), "--platform", "google"),
        ("import", "crm", str(tmp_path / "crm.csv")),
        ("dead-letters", "list"),
        ("dead-letters", "replay"),
        ("dead-letters", "list"),
        ("triggers",),
        ("report", "--brief"),
        ("report", "--by", "persona", "--from", "2000-01-01", "--to", "2100-01-01"),
        ("report", "--compare-from", "1990-01-01", "--compare-to", "2000-01-01"),
        ("report", "--html", str(tmp_path / "DB.html")),
    ]
    seen: list[list[str]] = []
    for url, name in ((http_url, f"http_{uuid.uuid4().hex[:8]}"), (chdb_url, embedded_database)):
        outputs = [
            _cli(capsys, url, name, *(arg.replace("DB.html", f"{name}.html") for arg in command))
            for command in commands
        ]
        outputs.append((tmp_path / f"{name}.html").read_text(encoding="utf-8"))
        seen.append([_wall_clock_out(out.replace(name, "DB")) for out in outputs[1:]])
    for http_out, chdb_out in zip(*seen, strict=True):
        assert http_out.splitlines() == chdb_out.splitlines()
    kinds = {ran["kind"] for ran in statements(http_url)}
    assert {"SELECT", "INSERT", "CREATE", "ALTER", "EXCHANGE"} <= kinds


def test_the_demo_over_http_prints_what_it_prints_embedded(
    http_url: str,
    chdb_url: str,
    embedded_database: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`demo --fresh` drops its database first (a command over HTTP), then runs and reports."""
    printed = []
    for url, name in ((http_url, "demo_over_http"), (chdb_url, embedded_database)):
        data_dir = tmp_path / name
        args = ["--data-dir", str(data_dir), "--clickhouse-url", url, "--database", name]
        demo = [*args, "demo", "--fresh", "--buyers", "150", "--now", "2026-06-01T00:00:00"]
        capsys.readouterr()
        assert main(demo) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        printed.append(out.replace(str(data_dir), "DIR").replace(name, "DB"))
    http_lines = [line for line in printed[0].splitlines() if "ClickHouse server" not in line]
    chdb_lines = [line for line in printed[1].splitlines() if "chDB" not in line]
    assert http_lines == chdb_lines
    assert len(http_lines) > 20


def test_large_answers_stream_and_errors_come_back_as_clickhouse_errors(http_url: str) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    from schemas.settings import ClickHouseSettings
    from sinks.clickhouse import connect

    client = connect(http_url, ClickHouseSettings())
    try:
        blocks = {"max_block_size": 65536}
        rows = client.query("SELECT number FROM numbers(2000000)", settings=blocks).result_rows
        assert len(rows) == 2_000_000 and rows[-1] == (1_999_999,)
        with pytest.raises(DatabaseError) as failed:
            client.query("SELECT throwIf(number = 1500000) FROM numbers(2000000)", settings=blocks)
        assert failed.value.code == 395
        with pytest.raises(DatabaseError) as missing:
            client.query("SELECT * FROM no_such_database.t")
        assert missing.value.code == 81
        assert client.query("SELECT 1").result_rows == [(1,)]  # the connection is still good
    finally:
        client.close()


def test_sql_asks_a_server_read_only_unless_read_write(
    http_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`touchpoint sql` over a server URL: readonly = 1 is sent with each query."""
    args = ["--clickhouse-url", http_url, "--database", "default"]
    capsys.readouterr()
    assert main([*args, "sql", "SELECT 6 * 7 AS answer"]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == "42"
    assert main([*args, "sql", "CREATE TABLE sql_scratch (x UInt8) ENGINE = Memory"]) == 1
    err = capsys.readouterr().err
    assert "164" in err and "Traceback" not in err
    created = main(
        [*args, "sql", "--read-write", "CREATE TABLE sql_scratch (x UInt8) ENGINE = Memory"]
    )
    assert created == 0, capsys.readouterr().err
    assert main([*args, "sql", "--read-write", "DROP TABLE sql_scratch"]) == 0
