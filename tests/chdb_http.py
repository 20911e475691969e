"""A ClickHouse HTTP interface in front of chDB, for tests only.

Production talks to a ClickHouse server over HTTP; no server can be installed here, so
this front lets clickhouse-connect's *HTTP* client (not its in-process ``chdb`` interface)
carry every query and insert the project makes, in tests. It implements the subset of
https://clickhouse.com/docs/interfaces/http that clickhouse-connect uses:

- ``GET /ping``; ``GET``/``POST /`` with the SQL in the ``query`` parameter, the body, or
  both (the parameter first, as ClickHouse does); an ``INSERT ... FORMAT X`` takes the rest
  of the body (or all of it, when the statement is the parameter) as its data, which runs as
  ``INSERT ... FROM INFILE`` in chDB;
- ``database``, ``param_*`` (server-side parameters) and any other parameter as a setting
  (``SET``) on a fresh chDB connection per request, so nothing leaks between requests;
  transport-only parameters (``query_id``, ``compress``, ``wait_end_of_query``, …) are read
  or ignored; ``client_protocol_version`` is ignored, so the client's probe settles on
  protocol 0 (Native blocks without block info), which it supports;
- request bodies compressed with lz4 (frame), zstd, gzip or deflate (``Content-Encoding``),
  plain or chunked; answers uncompressed — a SELECT streams (chunked, block by block, an
  error after the first block cutting it short) unless ``wait_end_of_query=1``, anything
  else comes whole — with
  ``X-ClickHouse-Format``, ``X-ClickHouse-Summary``, ``X-ClickHouse-Query-Id`` and
  ``X-ClickHouse-Timezone``;
- basic authentication (``Authorization: Basic``, ``X-ClickHouse-User``/``-Key`` or the
  ``user``/``password`` parameters): anything but the one user is refused with code 516;
- errors as ClickHouse sends them: HTTP 500 (404 for an unknown table or database), the
  ``X-ClickHouse-Exception-Code`` header and the message as the body.

chDB opens one data directory per process and the test session already has one open, so
the front runs in its own process: ``python -m tests.chdb_http --path DIR --user U``, the
password on stdin (not in ``ps``), prints ``PORT`` once it listens on 127.0.0.1 (:func:`start`
does that). ``GET /_front/statements`` (not ClickHouse's) lists what ran, for the tests.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib
import itertools
import json
import re
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

__all__ = ["start", "statements"]

_TRANSPORT: Final = frozenset(
    {
        "query",
        "database",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "default_format",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "client_protocol_version",
        "buffer_size",
        "quota_key",
        "role",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_INSERT_DATA: Final = re.compile(
    r"^\s*(INSERT\s+INTO\s.*?\bFORMAT\s+\w+)[ \t]*\r?\n?(.*)$", re.DOTALL | re.IGNORECASE
)
_INSERT: Final = re.compile(r"^\s*INSERT\s+INTO\s", re.IGNORECASE)
_INSERT_TABLE: Final = re.compile(r"^\s*INSERT\s+INTO\s+([\w.`]+)", re.IGNORECASE)
_FORMAT: Final = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SELECT: Final = re.compile(r"^\s*(SELECT|WITH|\()", re.IGNORECASE)
_SETTING: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE: Final = re.compile(r"Code: (\d+)\.")
_NOT_FOUND: Final = frozenset({60, 81})  # UNKNOWN_TABLE, UNKNOWN_DATABASE


class _Failure(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _decompress(data: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return data
    if encoding == "lz4":  # a frame, as clickhouse-connect writes it
        return bytes(importlib.import_module("lz4.frame").decompress(data))
    if encoding == "zstd":
        from backports import zstd

        return zstd.decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    raise _Failure(HTTPStatus.BAD_REQUEST, 1, f"unsupported Content-Encoding {encoding!r}")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Engine:
    """chDB in this process; one connection per request, one request at a time."""

    def __init__(self, path: str) -> None:
        chdb: Any = importlib.import_module("chdb")  # untyped
        self._chdb: Any = chdb
        self._path = path
        self._lock = threading.Lock()
        self._keep = chdb.connect(path)  # keeps the engine up between requests
        self.timezone = (
            self._keep.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
        )

    @contextmanager
    def execute(
        self,
        sql: str,
        data: bytes | None,
        database: str | None,
        settings: dict[str, str],
        params: dict[str, str],
        *,
        default_format: str,
        stream: bool,
    ) -> Iterator[tuple[Iterator[bytes], str, dict[str, str]]]:
        """Runs one statement; yields its answer's chunks (one, unless ``stream``), format and
        summary. The connection (and the engine lock) stays held until the chunks are read."""
        fmt_match = _FORMAT.search(sql)
        fmt = fmt_match.group(1) if fmt_match and data is None else default_format
        with self._lock, tempfile.NamedTemporaryFile(suffix=".data") as infile:
            conn = self._chdb.connect(self._path)
            try:
                try:
                    if database:
                        conn.query(f"USE `{database}`", "TabSeparated")
                    for name, value in settings.items():
                        if not _SETTING.match(name):
                            raise _Failure(HTTPStatus.BAD_REQUEST, 115, f"bad setting {name!r}")
                        conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
                    if data is not None:
                        infile.write(data)
                        infile.flush()
                        head, data_format = _split_format(sql)
                        sql = f"{head} FROM INFILE {_quote(infile.name)} FORMAT {data_format}"
                    if stream and data is None:
                        blocks = conn.send_query(sql, fmt, params=params)
                        chunks: Iterator[bytes] = (block.bytes() for block in blocks)
                        summary: dict[str, str] = {}
                    else:
                        result = conn.query(sql, fmt, params=params)
                        chunks = iter([result.bytes() or b""])
                        summary = _summary(result)
                except (self._chdb.ChdbError, RuntimeError) as exc:
                    raise _failure(str(exc)) from exc
                yield _translated(chunks, self._chdb.ChdbError), fmt, summary
            finally:
                conn.close()


def _translated(chunks: Iterator[bytes], error: type[Exception]) -> Iterator[bytes]:
    try:
        yield from chunks
    except (error, RuntimeError) as exc:
        raise _failure(str(exc)) from exc


def _summary(result: Any) -> dict[str, str]:
    return {
        "read_rows": str(result.rows_read()),
        "read_bytes": str(result.bytes_read()),
        "written_rows": str(result.rows_written()),
        "written_bytes": str(result.bytes_written()),
        "elapsed_ns": str(int(result.elapsed() * 1e9)),
    }


def _split_format(sql: str) -> tuple[str, str]:
    match = re.search(r"^(.*)\bFORMAT\s+(\w+)\s*$", sql, re.DOTALL | re.IGNORECASE)
    if match is None:
        raise _Failure(HTTPStatus.BAD_REQUEST, 62, "an INSERT with data needs FORMAT")
    return match.group(1).rstrip(), match.group(2)


def _failure(message: str) -> _Failure:
    found = _CODE.search(message)
    code = int(found.group(1)) if found else 1000
    status = HTTPStatus.NOT_FOUND if code in _NOT_FOUND else HTTPStatus.INTERNAL_SERVER_ERROR
    return _Failure(status, code, message[message.find("Code: ") :] if found else message)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the answers, not an access log."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return _decompress(body, self.headers.get("Content-Encoding", "").lower())

    def _authorized(self, query: dict[str, str]) -> bool:
        user = query.get("user") or self.headers.get("X-ClickHouse-User")
        password = query.get("password") or self.headers.get("X-ClickHouse-Key") or ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return (user or "default", password) == (self.server.user, self.server.password)

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            body = self._body()
            if parts.path == "/ping":
                self._answer(HTTPStatus.OK, b"Ok.\n", {"Content-Type": "text/plain"})
                return
            if parts.path == "/_front/statements":  # the tests' view of what ran (not ClickHouse)
                ran = json.dumps(self.server.ran).encode()
                self._answer(HTTPStatus.OK, ran, {"Content-Type": "application/json"})
                return
            if parts.path != "/":
                raise _Failure(HTTPStatus.NOT_FOUND, 1, f"no handler for {parts.path}")
            if "multipart/form-data" in self.headers.get("Content-Type", ""):
                raise _Failure(
                    HTTPStatus.NOT_IMPLEMENTED, 48, "form-encoded queries: not in this front"
                )
            if not self._authorized(query):
                raise _Failure(HTTPStatus.UNAUTHORIZED, 516, "Code: 516. Authentication failed")
            sql, data = self._statement(query.get("query", ""), body)
            params = {name[6:]: value for name, value in query.items() if name.startswith("param_")}
            settings = {
                name: value
                for name, value in query.items()
                if name not in _TRANSPORT and not name.startswith("param_")
            }
            self.server.record(sql, data)
            # As ClickHouse: the answer streams (chunked) unless wait_end_of_query buffers it.
            # (chDB streams only SELECTs: other statements answer whole.)
            stream = query.get("wait_end_of_query") != "1" and bool(_SELECT.match(sql))
            with self.server.engine.execute(
                sql,
                data,
                query.get("database"),
                settings,
                params,
                default_format=query.get("default_format") or "TabSeparated",
                stream=stream,
            ) as (chunks, fmt, summary):
                first = next(chunks, b"")  # most errors show here, before the headers
                headers = {
                    "Content-Type": "application/octet-stream",
                    "X-ClickHouse-Format": fmt,
                    "X-ClickHouse-Summary": json.dumps(summary),
                    "X-ClickHouse-Query-Id": query.get("query_id") or str(uuid.uuid4()),
                    "X-ClickHouse-Timezone": self.server.engine.timezone,
                }
                if not stream:
                    self._answer(HTTPStatus.OK, first + b"".join(chunks), headers)
                    return
                self._stream(first, chunks, headers)
        except _Failure as failure:
            self._answer(
                failure.status,
                failure.message.encode() + b"\n",
                {"X-ClickHouse-Exception-Code": str(failure.code), "Content-Type": "text/plain"},
            )

    def _stream(self, first: bytes, chunks: Iterator[bytes], headers: dict[str, str]) -> None:
        self.send_response(HTTPStatus.OK)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in itertools.chain([first], chunks):
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except _Failure as failure:
            # Too late for a status: ClickHouse writes the error into the body and cuts the
            # answer short; so does this (the client sees a broken stream).
            message = failure.message.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(message), message))
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _statement(param: str, body: bytes) -> tuple[str, bytes | None]:
        """The SQL and, for an INSERT with inline data, the data."""
        if param and _INSERT.match(param):
            return param, body
        text = body.decode("utf-8", errors="surrogateescape")
        if not param and _INSERT.match(text):
            found = _INSERT_DATA.match(text)
            if found is not None:
                return found.group(1), found.group(2).encode("utf-8", errors="surrogateescape")
        sql = f"{param}\n{text}" if param and text else param or text
        if not sql.strip():
            raise _Failure(HTTPStatus.BAD_REQUEST, 62, "empty query")
        return sql, None

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: _Engine, user: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.engine, self.user, self.password = engine, user, password
        self.ran: list[dict[str, str]] = []

    def record(self, sql: str, data: bytes | None) -> None:
        words = sql.split(None, 1)
        entry = {"kind": words[0].upper() if words else ""}
        table = _INSERT_TABLE.match(sql)
        if table is not None:
            entry["table"] = table.group(1).replace("`", "").split(".")[-1]
            if data is not None:
                entry["format"] = _split_format(sql)[1]
        self.ran.append(entry)


@contextmanager
def start(path: Path, user: str, password: str) -> Iterator[str]:
    """The front in a child process over chDB directory ``path``; yields its ``http://`` URL
    (with the credentials), stopped on exit."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.chdb_http", "--path", str(path), "--user", user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as child:
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(password + "\n")
            child.stdin.close()
            port = child.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError(f"the chDB HTTP front did not start (said {port!r})")
            yield f"http://{user}:{password}@127.0.0.1:{port}"
        finally:
            child.terminate()
            child.wait(timeout=30)


def statements(url: str) -> list[dict[str, str]]:
    """What the front at ``url`` ran so far: ``kind`` (the first word), ``table`` (of an
    INSERT) and ``format`` (of an INSERT's data), one dict per request, in order."""
    parts = urlsplit(url)
    address = f"http://{parts.hostname}:{parts.port}/_front/statements"
    with urllib.request.urlopen(address) as got:
        found: list[dict[str, str]] = json.loads(got.read())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="chDB data directory")
    parser.add_argument("--user", default="default")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")  # not in argv: ps would show it
    server = _Server(_Engine(args.path), args.user, password)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
