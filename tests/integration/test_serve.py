"""`touchpoint serve`: the embedded store behind ClickHouse's HTTP interface.

The server is the real command in a child process (chDB opens a directory for one process,
and this session has its own open). Clients are the unmodified clickhouse-connect HTTP
client (the report queries: the answers must equal the embedded path's on the same data)
and raw HTTP, as curl or an attacker sends it.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pyarrow.parquet as pq
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, ProgrammingError

from ingest.generator import GeneratorConfig, write_dataset
from processors.classify import default_rules
from schemas.settings import ClickHouseSettings
from sinks.analysis import Period
from sinks.answers import gather, gather_brief
from sinks.clickhouse import connect
from sinks.report import render_answers
from tests.serving import Served, environment, serving
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files
from touchpoint.report import load_report_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "analyst", "pa:ss@word"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
MAX_BODY = 200_000
TIMEOUT = 2.0


def touchpoint(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "touchpoint", *args],
        cwd=cwd,
        env=environment(cwd),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-export") / "events.jsonl"
    write_dataset(
        GeneratorConfig(buyers=400, seed=1414, timeouts=dict(default_rules().timeouts)), path
    )
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Path:
    """A directory whose default store (touchpoint-data/clickhouse) holds the export."""
    where = tmp_path_factory.mktemp("serve")
    ran = touchpoint(where, "run", "--input", str(export))
    assert ran.returncode == 0, ran.stderr
    return where


@pytest.fixture(scope="module")
def served(workdir: Path) -> Iterator[Served]:
    with serving(
        workdir,
        "--user",
        USER,
        "--max-body",
        str(MAX_BODY),
        "--timeout",
        str(TIMEOUT),
        password=PASSWORD,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def embedded(chdb_url: str, clickhouse_client: Any, export: Path) -> Iterator[str]:
    """The same export, run into this session's embedded chDB."""
    database = f"serve_peer_{uuid.uuid4().hex[:8]}"
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    with clickhouse(settings) as client:
        run_files(settings, inspect_inputs([export]), client)
    yield database
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    """clickhouse-connect's HTTP client (compression on: its default)."""
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@{served.host}:{served.port}"
    opened = connect(url, ClickHouseSettings())
    yield opened
    opened.close()


def request(
    served: Served,
    *,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = (USER, PASSWORD),
    path: str = "/",
    raw_query: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request as curl would send it; (status, headers, body)."""
    connection = http.client.HTTPConnection(served.host, served.port, timeout=30)
    sent = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        sent["Authorization"] = f"Basic {token}"
    target = path + ("?" + (raw_query if raw_query is not None else urlencode(params or {})))
    try:
        connection.request("POST" if body is not None else "GET", target, body, sent)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def assert_clickhouse_error(
    answer: tuple[int, dict[str, str], bytes], code: int, status: int
) -> None:
    got_status, headers, body = answer
    assert (got_status, headers.get("x-clickhouse-exception-code")) == (status, str(code)), body
    assert body.startswith(f"Code: {code}. DB::Exception: ".encode()), body
    assert b"Traceback" not in body and len(body.splitlines()) == 1


# -- the report over HTTP ----------------------------------------------------------------


def test_the_report_answers_over_serve_equal_the_embedded_ones(
    client: Any, clickhouse_client: Any, embedded: str
) -> None:
    rules = default_rules()
    config = load_report_config(None).for_stages(rules.order)

    def answers(on: Any, database: str) -> Any:
        return gather(
            on,
            database,
            config,
            period=Period(None, None),
            by="persona",
            compare=Period(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)),
            now=NOW,
            stages=rules.order,
            purchase_stage=rules.purchase_stage,
        )

    over_http, in_process = answers(client, "touchpoint"), answers(clickhouse_client, embedded)
    assert comparable(over_http) == comparable(in_process)
    assert sum(row.reached for row in over_http.funnel) > 0
    assert render_answers(over_http) == render_answers(in_process).replace(embedded, "touchpoint")
    for by in ("channel", "campaign", None):
        assert comparable(gather_brief(client, "touchpoint", config, by=by)) == comparable(
            gather_brief(clickhouse_client, embedded, config, by=by)
        )


def comparable(answers: Any) -> Any:
    """``answers`` as plain data without its database name, floats to 9 digits: the engine
    sums floats in parallel, so the last bits may differ between any two runs."""

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.9g}")
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    data = dataclasses.asdict(answers)
    data.pop("database")
    return plain(data)


def test_the_grafana_dashboard_queries_answer_as_they_do_embedded(
    client: Any, clickhouse_client: Any, embedded: str
) -> None:
    dashboard = json.loads(
        (
            Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/journey-funnel.json"
        ).read_text(encoding="utf-8")
    )
    queries = [target["rawSql"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 6
    for sql in queries:
        over_http = client.query(sql).result_rows
        in_process = clickhouse_client.query(sql.replace("touchpoint.", f"{embedded}.")).result_rows
        assert over_http, sql
        assert sorted(map(repr, over_http)) == sorted(map(repr, in_process)), sql


def test_large_answers_stream_compressed_and_the_client_keeps_its_connection(
    client: Any,
) -> None:
    rows = client.query("SELECT number FROM numbers(300000)").result_rows
    assert len(rows) == 300_000 and rows[-1] == (299_999,)
    with pytest.raises(DatabaseError) as failed:
        client.query("SELECT throwIf(number = 250000) FROM numbers(300000)")
    assert failed.value.code == 395
    assert client.query("SELECT 1").result_rows == [(1,)]


def test_formats_parameters_and_compression_as_curl_uses_them(served: Served) -> None:
    status, headers, body = request(
        served,
        params={"query": "SELECT {n:UInt32} * 2 AS twice FORMAT JSONEachRow", "param_n": "21"},
    )
    assert (status, json.loads(body)) == (200, {"twice": 42})
    assert headers["x-clickhouse-format"] == "JSONEachRow"
    status, _, body = request(
        served,
        params={"default_format": "CSVWithNames", "database": "touchpoint"},
        body=b"SELECT channel, count() AS n FROM touchpoints GROUP BY channel ORDER BY channel",
    )
    assert status == 200 and body.splitlines()[0] == b'"channel","n"'
    status, _, body = request(
        served, params={"query": "SELECT number AS x FROM numbers(10) FORMAT Parquet"}
    )
    assert pq.read_table(io.BytesIO(body)).to_pydict() == {"x": list(range(10))}
    status, headers, body = request(
        served,
        params={"query": "SELECT number FROM numbers(1000)", "enable_http_compression": "1"},
        headers={"Accept-Encoding": "gzip"},
    )
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).split() == [str(n).encode() for n in range(1000)]
    status, _, body = request(
        served,
        body=gzip.compress(b"SELECT 'zipped' AS q"),
        headers={"Content-Encoding": "gzip"},
    )
    assert (status, body) == (200, b"zipped\n")
    assert request(served, path="/ping", auth=None)[2] == b"Ok.\n"


# -- read-only ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO touchpoint.touchpoints SELECT * FROM touchpoint.touchpoints LIMIT 1",
        "DROP TABLE touchpoint.touchpoints",
        "ALTER TABLE touchpoint.touchpoints DELETE WHERE 1",
        "CREATE TABLE touchpoint.scratch (x UInt8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        "SYSTEM DROP MARK CACHE",
    ],
)
def test_writes_and_escapes_are_refused_with_clickhouse_readonly_errors(
    served: Served, client: Any, statement: str
) -> None:
    assert_clickhouse_error(request(served, body=statement.encode()), 164, 403)
    with pytest.raises(DatabaseError) as refused:
        client.command(statement)
    assert refused.value.code == 164


def test_a_client_cannot_lift_read_only_through_the_url(served: Served) -> None:
    for level in ("0", "2"):
        answer = request(served, params={"query": "SELECT 1", "readonly": level})
        assert_clickhouse_error(answer, 164, 403)
    assert request(served, params={"query": "SELECT 1", "readonly": "1"})[2] == b"1\n"
    status, _, body = request(
        served,
        params={"readonly": "0"},
        body=b"INSERT INTO touchpoint.touchpoints SELECT * FROM touchpoint.touchpoints",
    )
    assert status == 403 and b"READONLY" in body
    count = request(served, params={"query": "SELECT count() FROM touchpoint.dead_letters"})
    assert count[0] == 200


def test_url_settings_apply_before_the_session_turns_read_only(served: Served) -> None:
    answer = request(
        served,
        params={
            "query": "SELECT getSetting('max_result_rows'), getSetting('readonly')",
            "max_result_rows": "123",
        },
    )
    assert answer[:1] == (200,) and answer[2] == b"123\t1\n"


# -- who may ask -------------------------------------------------------------------------


def test_credentials_are_checked_and_the_answer_does_not_say_which_part_was_wrong(
    served: Served,
) -> None:
    query = {"query": "SELECT 1"}
    status, headers, _ = request(served, params=query, auth=None)
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert headers["x-clickhouse-exception-code"] == "194"
    wrong_password = request(served, params=query, auth=(USER, "guess"))
    wrong_user = request(served, params=query, auth=("default", PASSWORD))
    assert_clickhouse_error(wrong_password, 516, 403)
    assert_clickhouse_error(wrong_user, 516, 403)
    malformed = request(served, params=query, auth=None, headers={"Authorization": "Basic !!"})
    assert_clickhouse_error(malformed, 516, 403)
    # The other ways ClickHouse takes credentials.
    by_headers = request(
        served,
        params=query,
        auth=None,
        headers={"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD},
    )
    by_params = request(served, params={**query, "user": USER, "password": PASSWORD}, auth=None)
    assert by_headers[2] == by_params[2] == b"1\n"


# -- what an attacker sends --------------------------------------------------------------


def test_bodies_over_the_limit_get_413_without_being_read(served: Served) -> None:
    too_big = b"SELECT '" + b"x" * MAX_BODY + b"'"
    assert_clickhouse_error(request(served, body=too_big), 229, 413)
    # A huge declared length is refused at once: nothing waits for the bytes.
    with socket.create_connection((served.host, served.port), timeout=30) as sock:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
            + f"Authorization: Basic {token}\r\n\r\n".encode()
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"X-ClickHouse-Exception-Code: 229" in answer
    # A small body that decompresses past the limit (a zip bomb).
    bomb = gzip.compress(b"SELECT 1 -- " + b" " * (MAX_BODY * 20))
    assert len(bomb) < MAX_BODY
    answer = request(served, body=bomb, headers={"Content-Encoding": "gzip"})
    assert_clickhouse_error(answer, 229, 413)


def test_malformed_requests_get_clickhouse_errors(served: Served) -> None:
    cases: list[tuple[dict[str, Any], int, int]] = [
        ({"raw_query": "query=SELECT%201&bad-name=1"}, 115, 404),
        ({"params": {"query": "SELECT 1", "no_such_setting": "1"}}, 115, 404),
        ({"params": {"query": "SELECT {n:UInt8}", "param_n": "abc"}}, 457, 400),
        ({"params": {"query": "SELECT {n:UInt8}"}}, 456, 400),
        ({"raw_query": "query=SELECT%20%FF"}, 36, 400),
        ({"params": {"query": "SELECT 1", "database": "x`; DROP"}}, 81, 404),
        ({"params": {"query": "SELECT 1", "database": "no_such_db"}}, 81, 404),
        ({"params": {"query": "SELECT 1", "default_format": "No Such"}}, 73, 404),
        ({"params": {"query": "SELECT 1", "default_format": "NoSuch"}}, 73, 404),
        ({"params": {"query": "SELEC 1"}}, 62, 400),
        ({"params": {"query": ""}, "body": b""}, 62, 400),
        ({"body": b"SELECT 1", "headers": {"Content-Encoding": "br"}}, 36, 400),
        ({"body": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 271, 400),
        (
            {"body": gzip.compress(b"SELECT 1")[:-8], "headers": {"Content-Encoding": "gzip"}},
            271,
            400,
        ),
        ({"body": b"SELECT 1", "headers": {"Content-Type": "multipart/form-data"}}, 48, 501),
        ({"params": {"query": "SELECT 1"}, "path": "/no/such/handler"}, 36, 404),
    ]
    for case, code, status in cases:
        assert_clickhouse_error(request(served, **case), code, status)


def test_bad_framing_gets_400_and_the_connection_is_closed(served: Served) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for framing in (
        b"Content-Length: abc\r\n\r\nSELECT 1",
        b"Content-Length: -5\r\n\r\nSELECT 1",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n",
    ):
        with socket.create_connection((served.host, served.port), timeout=30) as sock:
            sock.sendall(
                f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n".encode() + framing
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"X-ClickHouse-Exception-Code: 36" in answer and b"Traceback" not in answer


def test_a_query_id_cannot_inject_headers(served: Served) -> None:
    status, headers, _ = request(
        served, raw_query="query=SELECT%201&query_id=a%0d%0aX-Injected:%20yes"
    )
    assert status == 200 and "x-injected" not in headers
    assert "\n" not in headers["x-clickhouse-query-id"]
    assert (
        request(served, params={"query": "SELECT 1", "query_id": "mine-1"})[1][
            "x-clickhouse-query-id"
        ]
        == "mine-1"
    )


def test_slow_clients_are_cut_off_and_do_not_block_the_others(served: Served) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    guard = TIMEOUT * 15  # a hang fails here rather than never
    # 1. Stops in the middle of its headers; 2. sends a third of its body and stops.
    stalled_headers = socket.create_connection((served.host, served.port), timeout=guard)
    stalled_headers.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    stalled_body = socket.create_connection((served.host, served.port), timeout=guard)
    stalled_body.sendall(
        f"POST / HTTP/1.1\r\nAuthorization: Basic {token}\r\nContent-Length: 30\r\n\r\n".encode()
        + b"SELECT 1 -"
    )
    # 3. Asks for a big streamed answer and never reads it: the engine must not stay taken.
    not_reading = socket.socket()
    not_reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    not_reading.settimeout(guard)
    not_reading.connect((served.host, served.port))
    not_reading.sendall(
        f"GET /?query=SELECT%20*%20FROM%20numbers(100000000) HTTP/1.1\r\n"
        f"Authorization: Basic {token}\r\n\r\n".encode()
    )
    try:
        # Meanwhile the others are answered (once the stalled reader's write times out).
        assert request(served, params={"query": "SELECT 'served'"})[2] == b"served\n"
        for stalled in (stalled_headers, stalled_body):
            received = b""
            while chunk := stalled.recv(65536):  # the server closes it: recv gives b""
                received += chunk
            assert b"Traceback" not in received
    finally:
        for sock in (stalled_headers, stalled_body, not_reading):
            sock.close()


def test_http_level_refusals_are_clickhouse_style_too(served: Served) -> None:
    long_url = request(served, raw_query="query=SELECT%201&x=" + "y" * 70_000)
    assert long_url[0] == 414 and long_url[1]["x-clickhouse-exception-code"] == "36"
    connection = http.client.HTTPConnection(served.host, served.port, timeout=30)
    try:
        connection.request("PUT", "/?query=SELECT%201", b"")
        answer = connection.getresponse()
        assert answer.status == 501 and answer.getheader("X-ClickHouse-Exception-Code") == "36"
        assert answer.read().startswith(b"Code: 36. DB::Exception: ")
    finally:
        connection.close()


def test_connections_beyond_the_limit_get_503_at_once(tmp_path: Path) -> None:
    with serving(tmp_path, "--max-connections", "2", "--timeout", "30", password="x") as running:
        held = [socket.create_connection((running.host, running.port), timeout=30) for _ in "ab"]
        try:
            third = socket.create_connection((running.host, running.port), timeout=30)
            with third:
                answer = third.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503") and b"Exception-Code: 202" in answer
        finally:
            for sock in held:
                sock.close()
        # The slots come back when those connections end.
        for _ in range(50):
            try:
                ok = request(running, params={"query": "SELECT 1"}, auth=("default", "x"))
            except (ConnectionError, http.client.HTTPException):
                ok = (0, {}, b"")
            if ok[0] == 200:
                break
            time.sleep(0.2)  # the held connections' threads are ending
        assert ok[2] == b"1\n"


# -- starting and stopping ---------------------------------------------------------------


def test_read_write_serves_inserts_and_allow_settings_only_settings(tmp_path: Path) -> None:
    with serving(tmp_path, "--read-write", "--user", USER, password=PASSWORD) as running:
        url = f"http://{USER}:{quote(PASSWORD, safe='')}@{running.host}:{running.port}"
        writer = connect(url, ClickHouseSettings())
        try:
            writer.command("CREATE DATABASE IF NOT EXISTS scratch")
            writer.command(
                "CREATE TABLE scratch.t (x UInt32, s String) ENGINE = MergeTree ORDER BY x"
            )
            writer.insert("scratch.t", [[1, "a"], [2, "b"]], column_names=["x", "s"])
            assert writer.query("SELECT sum(x) FROM scratch.t").result_rows == [(3,)]
        finally:
            writer.close()
        assert running.stop()[0] == 0
    with serving(tmp_path, "--allow-settings", "--user", USER, password=PASSWORD) as running:
        url = f"http://{USER}:{quote(PASSWORD, safe='')}@{running.host}:{running.port}"
        reader = connect(url, ClickHouseSettings())
        try:
            rows = reader.query(
                "SELECT x FROM scratch.t ORDER BY x", settings={"max_block_size": 1}
            ).result_rows
            assert rows == [(1,), (2,)]
            with pytest.raises(DatabaseError) as refused:
                reader.insert("scratch.t", [[3, "c"]], column_names=["x", "s"])
            assert refused.value.code == 164
        finally:
            reader.close()


def test_settings_are_refused_by_the_client_on_a_strict_read_only_server(client: Any) -> None:
    """readonly = 1, as a ClickHouse user with it: clickhouse-connect will not send settings."""
    with pytest.raises(ProgrammingError, match="readonly"):
        client.query("SELECT 1", settings={"max_block_size": 1})


def test_the_password_can_come_from_stdin_and_never_from_argv(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "touchpoint", "serve", "--port", "0", "--password-stdin"],
        cwd=tmp_path,
        env=environment(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with child:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("from-stdin\n")
        child.stdin.close()
        child.stdin = None  # closed: communicate() must not flush it
        line = child.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        served = Served(f"http://127.0.0.1:{port}", "127.0.0.1", port, child)
        assert (
            request(served, params={"query": "SELECT 1"}, auth=("default", "from-stdin"))[2]
            == b"1\n"
        )
        assert request(served, params={"query": "SELECT 1"}, auth=("default", ""))[0] == 403
        arguments = Path(f"/proc/{child.pid}/cmdline").read_bytes()
        assert b"from-stdin" not in arguments  # ps shows no password
        code, out, err = served.stop(signal.SIGINT)  # Ctrl-C
        assert code == 0 and out.splitlines()[-1] == "Stopped.", err


def test_refusals_at_start_are_one_line_and_exit_code_1(
    served: Served, workdir: Path, tmp_path: Path
) -> None:
    for where, args, message in [
        (workdir, ("--host", "0.0.0.0"), "reachable from other machines: set a password"),
        (workdir, (), "another process has the chDB directory"),
        (workdir, ("--read-write", "--allow-settings"), "give one of them"),
        (tmp_path, ("--port", str(served.port)), f"cannot listen on 127.0.0.1:{served.port}"),
    ]:
        got = touchpoint(where, "serve", "--port", "0", *args)
        assert got.returncode == 1, (args, got.stdout)
        assert message in got.stderr and "Traceback" not in got.stderr, got.stderr
    remote = touchpoint(workdir, "--clickhouse-url", "http://127.0.0.1:1", "serve")
    assert remote.returncode == 1 and "has its own HTTP interface" in remote.stderr


def test_sigterm_stops_the_server_and_frees_the_directory(tmp_path: Path) -> None:
    with serving(tmp_path, password="x") as running:
        assert request(running, params={"query": "SELECT 1"}, auth=("default", "x"))[2] == b"1\n"
        code, out, err = running.stop(signal.SIGTERM)
    assert code == 0 and "Stopped." in out and "Traceback" not in err
    after = touchpoint(tmp_path, "sql", "SELECT 'free' AS directory")
    assert after.returncode == 0 and "free" in after.stdout
