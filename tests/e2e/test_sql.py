"""`touchpoint sql`: SQL over the database `touchpoint report` reads, read-only by default."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.serving import serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
COUNTS = "SELECT channel, count() AS n FROM touchpoints GROUP BY channel ORDER BY channel"


def touchpoint(
    cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    environment.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cwd / "cache")})
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "touchpoint", *args],
        cwd=cwd,
        env=environment,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose default database holds a small demo."""
    where = tmp_path_factory.mktemp("sql")
    demo = touchpoint(where, "demo", "--buyers", "150", "--now", "2026-06-01T00:00:00")
    assert demo.returncode == 0, demo.stderr
    return where


def expected_counts(workdir: Path) -> dict[str, int]:
    """The channel counts, read as JSON (the reference the other outputs are checked with)."""
    got = touchpoint(workdir, "sql", "--format", "JSONEachRow", COUNTS)
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    return {row["channel"]: int(row["n"]) for row in rows}


def test_a_query_prints_an_aligned_table_of_the_report_database(workdir: Path) -> None:
    counts = expected_counts(workdir)
    assert set(counts) == {"ads", "email", "sms", "support", "web"} and all(counts.values())
    got = touchpoint(workdir, "sql", COUNTS)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].split() == ["channel", "n"]
    assert set(lines[1]) == {"-", " "}
    body = [line.split() for line in lines[2:-1]]
    assert {channel: int(n) for channel, n in body} == counts
    widths = {len(line) for line in lines[2:-1]}
    assert len(widths) == 1  # numbers align right, to one width
    assert lines[-1] == f"({len(counts)} rows)"


def test_each_format_parses_back_to_the_same_rows(workdir: Path) -> None:
    counts = expected_counts(workdir)
    as_csv = touchpoint(workdir, "sql", "--format", "CSV", COUNTS)
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["channel"]: int(row["n"]) for row in parsed} == counts
    tsv_file = workdir / "out" / "counts.tsv"
    as_tsv = touchpoint(workdir, "sql", "--format", "TSV", "-o", str(tsv_file), COUNTS)
    assert as_tsv.returncode == 0 and str(tsv_file) in as_tsv.stdout
    rows = list(csv.DictReader(io.StringIO(tsv_file.read_text()), delimiter="\t"))
    assert {row["channel"]: int(row["n"]) for row in rows} == counts
    parquet = workdir / "counts.parquet"
    as_parquet = touchpoint(workdir, "sql", "--format", "Parquet", "--output", str(parquet), COUNTS)
    assert as_parquet.returncode == 0, as_parquet.stderr
    table = pq.read_table(parquet).to_pydict()
    assert dict(zip(table["channel"], table["n"], strict=True)) == counts
    refused = touchpoint(workdir, "sql", "--format", "Parquet", COUNTS)
    assert refused.returncode == 1 and "needs --output" in refused.stderr


def test_writes_are_refused_unless_read_write(workdir: Path) -> None:
    for statement in (
        "INSERT INTO touchpoints SELECT * FROM touchpoints LIMIT 1",
        "DROP TABLE touchpoints",
        "ALTER TABLE touchpoints DELETE WHERE 1",
        "CREATE TABLE scratch (x UInt8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    ):
        got = touchpoint(workdir, "sql", statement)
        assert got.returncode == 1, statement
        assert "Code: 164" in got.stderr and "READONLY" in got.stderr, got.stderr
        assert "Traceback" not in got.stderr and len(got.stderr.splitlines()) == 1
    created = touchpoint(
        workdir, "sql", "--read-write", "CREATE TABLE scratch (x UInt8) ENGINE = Memory"
    )
    assert created.returncode == 0, created.stderr
    listed = touchpoint(workdir, "sql", "SHOW TABLES")
    assert "scratch" in listed.stdout and "touchpoints" in listed.stdout
    dropped = touchpoint(workdir, "sql", "--read-write", "DROP TABLE scratch")
    assert dropped.returncode == 0, dropped.stderr


def test_a_bad_query_is_one_line_and_exit_code_1(workdir: Path) -> None:
    got = touchpoint(workdir, "sql", "SELEC 1")
    assert got.returncode == 1
    assert got.stderr.startswith("touchpoint: error: query failed: Code: 62.")
    assert "Traceback" not in got.stderr
    missing = touchpoint(workdir, "sql", "SELECT * FROM no_such_table")
    assert missing.returncode == 1 and "Code: 60." in missing.stderr


def test_the_query_can_come_from_stdin(workdir: Path) -> None:
    got = touchpoint(workdir, "sql", "-", stdin="SELECT 6 * 7 AS answer;\n")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[2].strip() == "42"


def test_the_prompt_runs_statements_across_lines_and_survives_errors(workdir: Path) -> None:
    counts = expected_counts(workdir)
    script = (
        "SELECT count() AS n\n"
        "  FROM touchpoints;\n"
        "SELECT no_such_column FROM touchpoints;\n"
        "\n"
        "SELECT 'after the error' AS still;\n"
        "\\q\n"
        "SELECT 'after quit';\n"
    )
    got = touchpoint(workdir, "sql", stdin=script)
    assert got.returncode == 1  # one statement failed
    assert f"{sum(counts.values())}" in got.stdout.split()
    assert "after the error" in got.stdout and "after quit" not in got.stdout
    assert got.stderr.count("error:") == 1 and "Code: 47." in got.stderr
    history = (workdir / "cache" / "touchpoint" / "sql_history").read_text()
    assert "SELECT count() AS n FROM touchpoints;" in history and "after the error" in history
    ended = touchpoint(workdir, "sql", stdin="SELECT 1 AS one;\n")  # EOF (Ctrl-D) ends it
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.splitlines() == ["one", "---", "  1", "(1 row)"]


def test_sql_refuses_a_directory_another_process_has_open(workdir: Path) -> None:
    with serving(workdir) as served:
        got = touchpoint(workdir, "sql", "SELECT 1")
        assert got.returncode == 1
        assert "another process has the chDB directory" in got.stderr
        assert "Traceback" not in got.stderr
        assert served.stop()[0] == 0


def test_a_table_stops_at_a_thousand_rows_and_says_so(workdir: Path) -> None:
    got = touchpoint(workdir, "sql", "SELECT number FROM numbers(5000)")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert [line.strip() for line in lines[2:-1]] == [str(n) for n in range(1000)]
    assert lines[-1].startswith("(the first 1,000 rows; more not shown")
    vertical = touchpoint(workdir, "sql", "SELECT 1 AS a, 'x' AS b FORMAT Vertical")
    assert vertical.stdout.splitlines()[0] == "Row 1:" and "b: x" in vertical.stdout


def test_on_a_terminal_the_prompt_edits_lines_and_keeps_history(workdir: Path) -> None:
    """Driven through a pseudo-terminal, as a person types it."""
    import pty
    import select

    main, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(workdir / "tty-cache")})
    env["TERM"] = "dumb"
    with subprocess.Popen(
        [sys.executable, "-m", "touchpoint", "sql"],
        cwd=workdir,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    ) as child:
        os.close(terminal)
        seen = b""

        def read_until(marker: bytes) -> None:
            nonlocal seen
            while marker not in seen:
                ready, _, _ = select.select([main], [], [], 60)
                assert ready, f"no {marker!r} in {seen!r}"
                try:
                    seen += os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break

        read_until(b"touchpoint> ")
        os.write(main, b"SELECT 6 * 7\n")
        read_until(b"-> ")
        os.write(main, b"  AS answer;\n")
        read_until(b"(1 row)")
        os.write(main, b"\\q\n")
        assert child.wait(timeout=60) == 0
    os.close(main)
    assert b"42" in seen and b"answer" in seen
    history = (workdir / "tty-cache" / "touchpoint" / "sql_history").read_text()
    assert "SELECT 6 * 7 AS answer;\n" in history  # one entry, on one line
