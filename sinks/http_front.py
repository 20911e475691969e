"""ClickHouse's HTTP interface in front of chDB: ``touchpoint serve``.

chDB is the ClickHouse engine in-process; it opens its data directory for one process at
a time. This front is that process for everyone else: notebooks (clickhouse-connect's
HTTP client), Grafana's ClickHouse datasource in HTTP mode, BI tools and ``curl`` talk to
it as they talk to a ClickHouse server. It implements the subset of
https://clickhouse.com/docs/interfaces/http those clients use:

- ``GET /ping`` (and ``GET /`` without a query: ``Ok.``); ``GET``/``POST /`` with the SQL
  in the ``query`` parameter, the body, or both (the parameter first, as ClickHouse does);
  an ``INSERT ... FORMAT X`` takes the rest of the body (or all of it, when the statement is
  the parameter) as its data, which runs as ``INSERT ... FROM INFILE`` in chDB;
- ``database``, ``param_*`` (server-side query parameters) and any other parameter as a
  setting on a fresh chDB session per request, so nothing leaks between requests;
  transport-only parameters (``query_id``, ``session_id``, ``wait_end_of_query``, …) are read
  or ignored; ``client_protocol_version`` is ignored, so clickhouse-connect's probe settles on
  protocol 0 (Native blocks without block info), which it supports;
- request bodies compressed with lz4 (frame), zstd, gzip or deflate (``Content-Encoding``),
  plain or chunked; answers compressed with the first of those the client accepts when it
  asks with ``enable_http_compression=1`` (as ClickHouse). A SELECT streams (chunked, block
  by block; an error after the first block cuts it short) unless ``wait_end_of_query=1``,
  anything else comes whole, with ``X-ClickHouse-Format``, ``-Summary``, ``-Query-Id`` and
  ``-Timezone``;
- one user, with a password: HTTP basic authentication, ``X-ClickHouse-User``/``-Key`` or the
  ``user``/``password`` parameters;
- read-only unless started read-write: each session gets ClickHouse's own ``readonly``
  setting after the request's own settings (URL parameters). ``readonly = 1`` (the
  default) refuses INSERT, DDL, ``SET``, ``SETTINGS`` clauses and the table functions that
  reach files or the network (``file``, ``url``, …) with ClickHouse's error 164 (READONLY);
  ``readonly = 2`` lets clients change settings (clickhouse-connect and Grafana send some),
  which in ClickHouse also opens those table functions — the server's files;
- errors as ClickHouse sends them: the ``X-ClickHouse-Exception-Code`` header, the message as
  the body, and ClickHouse's HTTP status for the code (400 for a syntax error, 403 for
  READONLY or a wrong password, 404 for an unknown table, 413 for a body over the limit,
  500 otherwise). Nothing the client sends gets a traceback; a client that stops sending or
  reading is cut off after the socket timeout.

One statement runs at a time (chDB sessions share one engine); a streamed answer holds the
engine until it is read or the client times out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import logging
import re
import socket
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame
from backports import zstd

from schemas.errors import ConfigError
from sinks.clickhouse import locked_by_another_process

__all__ = ["ChdbEngine", "FrontConfig", "HttpFront", "ServeError", "open_engine", "open_front"]

logger = logging.getLogger(__name__)

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
        "http_zlib_compression_level",
        "client_protocol_version",
        "buffer_size",
        "quota_key",
        "role",
        "cancel_http_readonly_queries_on_client_close",
        "max_query_size_http",
    }
)
_INSERT_DATA: Final = re.compile(
    r"^\s*(INSERT\s+INTO\s.*?\bFORMAT\s+\w+)[ \t]*\r?\n?(.*)$", re.DOTALL | re.IGNORECASE
)
_INSERT: Final = re.compile(r"^\s*INSERT\s+INTO\s", re.IGNORECASE)
_INSERT_TABLE: Final = re.compile(r"^\s*INSERT\s+INTO\s+([\w.`]+)", re.IGNORECASE)
_FORMAT: Final = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SELECT: Final = re.compile(r"^\s*(SELECT|WITH|\()", re.IGNORECASE)
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUERY_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CODE: Final = re.compile(r"Code: (\d+)\.")
_ENCODINGS: Final = ("lz4", "zstd", "gzip", "deflate")

# ClickHouse's HTTP status per error code (its HTTPHandler's exceptionCodeToHTTPStatus).
_BAD_REQUEST: Final = frozenset(
    {6, 26, 27, 36, 38, 41, 42, 43, 44, 53, 62, 72, 117, 271, 321, 456, 457}
)
_NOT_FOUND: Final = frozenset({46, 47, 50, 56, 60, 63, 73, 78, 81, 115})
_FORBIDDEN: Final = frozenset({164, 192, 193, 291, 497, 516})
_STATUS_BY_CODE: Final = {
    194: HTTPStatus.UNAUTHORIZED,  # REQUIRED_PASSWORD
    229: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,  # QUERY_IS_TOO_LARGE
    48: HTTPStatus.NOT_IMPLEMENTED,
    159: HTTPStatus.REQUEST_TIMEOUT,  # TIMEOUT_EXCEEDED
    209: HTTPStatus.SERVICE_UNAVAILABLE,  # SOCKET_TIMEOUT
    381: HTTPStatus.LENGTH_REQUIRED,
}

READONLY = 164
BAD_ARGUMENTS = 36
QUERY_IS_TOO_LARGE = 229


class ServeError(Exception):
    """A request answered with a ClickHouse error: code, message, HTTP status."""

    def __init__(self, code: int, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status if status is not None else _status(code)


def _status(code: int) -> int:
    if code in _BAD_REQUEST:
        return HTTPStatus.BAD_REQUEST
    if code in _NOT_FOUND:
        return HTTPStatus.NOT_FOUND
    if code in _FORBIDDEN:
        return HTTPStatus.FORBIDDEN
    return _STATUS_BY_CODE.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)


def _error(code: int, message: str) -> ServeError:
    """A ClickHouse-style error (``Code: N. DB::Exception: ...``) for a request."""
    return ServeError(code, f"Code: {code}. DB::Exception: {message}")


def _engine_error(message: str) -> ServeError:
    found = _CODE.search(message)
    if found is None:
        return ServeError(1001, f"Code: 1001. DB::Exception: {message.strip()}")
    return ServeError(int(found.group(1)), message[found.start() :].strip())


@dataclass(frozen=True)
class FrontConfig:
    """How ``touchpoint serve`` serves a chDB directory."""

    path: Path
    user: str
    password: str
    host: str = "127.0.0.1"
    port: int = 8123
    database: str | None = None
    """The database of statements that name none (ClickHouse's ``default`` if it is absent)."""
    readonly: Literal[0, 1, 2] = 1
    """ClickHouse's ``readonly`` for every session: 1 read-only, 2 read-only but settings may
    change (and file/url table functions run), 0 read-write."""
    max_body_bytes: int = 64 << 20
    """Largest request body, compressed or not (a bigger one is refused with 413)."""
    max_connections: int = 64
    """Connections served at once (each a thread); more get a 503 (code 202) at once."""
    timeout: float = 30.0
    """Seconds a client may stay silent while sending, or stop reading an answer."""
    record_statements: bool = False
    """Keep what ran, for ``GET /_front/statements`` (tests only; not ClickHouse's)."""


def _session(path: str) -> Any:
    """A new chDB session on the engine of ``path`` (its settings are its own)."""
    return chdb.connect(path)  # type: ignore[no-untyped-call]  # chdb's connect is untyped


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbEngine:
    """chDB in this process; one session per request, one request at a time."""

    def __init__(
        self, path: Path, *, readonly: Literal[0, 1, 2], database: str | None = None
    ) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self.readonly = readonly
        self._keep = _session(self._path)  # keeps the engine up between requests
        self.database = database if database and self.has_database(database) else None
        """Used when a statement names none (if it exists when the engine opens)."""
        self.timezone = (
            self._keep.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
        )

    def has_database(self, name: str) -> bool:
        with self._lock:
            found = self._keep.query(
                "SELECT count() FROM system.databases WHERE name = {name:String}",
                "TabSeparated",
                params={"name": name},
            )
        return bool(int(found.bytes().decode().strip()))

    def close(self, timeout: float) -> None:
        """Close the engine once the statement running (if any) is done, or after ``timeout``."""
        if self._lock.acquire(timeout=timeout):
            try:
                self._keep.close()
            finally:
                self._lock.release()

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
        readonly: int | None = None,
    ) -> Iterator[tuple[Iterator[bytes], str, dict[str, str]]]:
        """Runs one statement (``readonly``: the session's, at least as strict as the
        engine's); yields its answer's chunks (one, unless ``stream``), format and
        summary. The session (and the engine lock) stays held until the chunks are read."""
        fmt_match = _FORMAT.search(sql)
        fmt = fmt_match.group(1) if fmt_match and data is None else default_format
        with self._lock, tempfile.NamedTemporaryFile(suffix=".data") as infile:
            conn = _session(self._path)
            try:
                try:
                    if database or self.database:
                        conn.query(f"USE `{database or self.database}`", "TabSeparated")
                    for name, value in settings.items():
                        conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
                    level = self.readonly if readonly is None else readonly
                    if level:
                        # The engine's own read-only mode, after the request's settings.
                        conn.query(f"SET readonly = {int(level)}", "TabSeparated")
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
                except (chdb.ChdbError, RuntimeError) as exc:
                    raise _engine_error(str(exc)) from exc
                yield _translated(chunks), fmt, summary
            finally:
                conn.close()


def _translated(chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    except (chdb.ChdbError, RuntimeError) as exc:
        raise _engine_error(str(exc)) from exc


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
        raise _error(62, "an INSERT with data needs FORMAT at its end (SYNTAX_ERROR)")
    return match.group(1).rstrip(), match.group(2)


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decoded per its Content-Encoding, refused past ``limit`` bytes (a small body
    may decompress to gigabytes)."""
    too_large = _error(
        QUERY_IS_TOO_LARGE,
        f"the request body decompresses to more than {limit} bytes (QUERY_IS_TOO_LARGE)",
    )
    try:
        if encoding in ("", "identity"):
            return data
        if encoding == "lz4":  # a frame, as clickhouse-connect writes it
            lz4_out = lz4.frame.LZ4FrameDecompressor()
            out = bytes(lz4_out.decompress(data, max_length=limit + 1))
            finished = lz4_out.eof
        elif encoding == "zstd":
            zstd_out = zstd.ZstdDecompressor()
            out = zstd_out.decompress(data, max_length=limit + 1)
            finished = zstd_out.eof
        elif encoding in ("gzip", "x-gzip", "deflate"):
            wbits = zlib.MAX_WBITS | 16 if encoding != "deflate" else zlib.MAX_WBITS
            zlib_out = zlib.decompressobj(wbits)
            out = zlib_out.decompress(data, limit + 1)
            finished = zlib_out.eof
        else:
            raise _error(BAD_ARGUMENTS, f"unsupported Content-Encoding {encoding!r}")
    except (RuntimeError, ValueError, OSError, zlib.error, zstd.ZstdError) as exc:
        raise _error(
            271, f"cannot decompress the {encoding} body: {exc} (CANNOT_DECOMPRESS)"
        ) from None
    if len(out) > limit:
        raise too_large
    if not finished:
        raise _error(271, f"the {encoding} body is truncated (CANNOT_DECOMPRESS)")
    return out


class _Compressor:
    """The answer, compressed for ``Accept-Encoding`` chunk by chunk (or passed through)."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = encoding
        self._compress: Callable[[bytes], bytes] = lambda data: data
        self._flush: Callable[[], bytes] = lambda: b""
        if encoding == "gzip" or encoding == "deflate":
            wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
            packer = zlib.compressobj(3, zlib.DEFLATED, wbits)
            self._compress, self._flush = packer.compress, packer.flush
        elif encoding == "zstd":
            zstd_packer = zstd.ZstdCompressor()
            self._compress, self._flush = zstd_packer.compress, zstd_packer.flush
        elif encoding == "lz4":
            lz4_packer = lz4.frame.LZ4FrameCompressor()
            first = True

            def lz4_chunk(data: bytes) -> bytes:
                nonlocal first
                head = lz4_packer.begin() if first else b""
                first = False
                return bytes(head + lz4_packer.compress(data))

            def lz4_end() -> bytes:
                return bytes((lz4_packer.begin() if first else b"") + lz4_packer.flush())

            self._compress, self._flush = lz4_chunk, lz4_end

    def chunk(self, data: bytes) -> bytes:
        return self._compress(data)

    def end(self) -> bytes:
        return self._flush()


def _accepted(header: str) -> str | None:
    """The first encoding of ``Accept-Encoding`` this front can write, or None."""
    for part in header.split(","):
        name = part.split(";")[0].strip().lower()
        if name in _ENCODINGS:
            return name
    return None


def _session_readonly(server: int, asked: str | None) -> int:
    """The session's ``readonly``: the client may ask for a stricter one, never a looser."""
    if asked is None:
        return server
    if asked not in ("0", "1", "2"):
        raise _error(BAD_ARGUMENTS, f"readonly must be 0, 1 or 2, not {asked[:20]!r}")
    level = int(asked)
    if server and (level == 0 or (server == 1 and level == 2)):
        raise _error(
            READONLY,
            f"Cannot modify 'readonly' setting in readonly mode: this server runs with "
            f"readonly = {server} (touchpoint serve --read-write allows writes). (READONLY)",
        )
    return 1 if 1 in (server, level) else max(server, level)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HttpFront

    def setup(self) -> None:
        # Reads and writes time out: a client that stops sending or reading is cut off.
        self.request.settimeout(self.server.config.timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        """The request body, at most ``max_body_bytes`` (compressed and decompressed)."""
        limit = self.server.config.max_body_bytes
        too_large = _error(
            QUERY_IS_TOO_LARGE,
            f"the request body is larger than this server's limit of {limit} bytes "
            "(QUERY_IS_TOO_LARGE; touchpoint serve --max-body)",
        )
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, size_read = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _error(BAD_ARGUMENTS, "malformed chunked request body") from None
                if size < 0:
                    raise _error(BAD_ARGUMENTS, "malformed chunked request body")
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                size_read += size
                if size_read > limit:
                    raise too_large
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise _error(BAD_ARGUMENTS, "the request body ended early")
                chunks.append(chunk)
                self.rfile.readline(1024)
            body = b"".join(chunks)
        else:
            length_text = self.headers.get("Content-Length") or "0"
            if not length_text.strip().isdigit():
                raise _error(BAD_ARGUMENTS, f"bad Content-Length {length_text[:40]!r}")
            length = int(length_text)
            if length > limit:
                raise too_large
            body = self.rfile.read(length)
            if len(body) < length:
                raise _error(BAD_ARGUMENTS, "the request body ended early")
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        return _decompress(body, encoding, limit)

    def _check_credentials(self, query: dict[str, str]) -> None:
        user = query.get("user") or self.headers.get("X-ClickHouse-User")
        password = query.get("password") or self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise _error(
                    516, "malformed basic authentication (AUTHENTICATION_FAILED)"
                ) from None
            user, _, password = decoded.partition(":")
        if password is None and not auth:
            raise _error(194, "a password is required (REQUIRED_PASSWORD)")
        config = self.server.config
        # Both compared, in constant time: the answer does not tell which one was wrong.
        good_user = hmac.compare_digest((user or "default").encode(), config.user.encode())
        good_password = hmac.compare_digest((password or "").encode(), config.password.encode())
        if not (good_user and good_password):
            raise _error(
                516,
                f"{user or 'default'}: Authentication failed: password is incorrect, or there "
                "is no user with such name. (AUTHENTICATION_FAILED)",
            )

    def _serve(self) -> None:
        try:
            self._serve_request()
        except TimeoutError:
            logger.info("closing a connection from %s: timed out", self.address_string())
            self.close_connection = True
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception:
            # A bug here, not the client's doing: logged with its traceback, and the
            # client gets a ClickHouse-style error (or a cut connection mid-answer).
            logger.exception("internal error answering %s", self.address_string())
            self.close_connection = True
            try:
                self._answer(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    b"Code: 1001. DB::Exception: internal error of touchpoint serve (its log has"
                    b" the details)\n",
                    {"X-ClickHouse-Exception-Code": "1001", "Content-Type": "text/plain"},
                )
            except OSError:
                pass

    def _serve_request(self) -> None:
        parts = urlsplit(self.path)
        try:
            try:
                query = dict(
                    parse_qsl(
                        parts.query, keep_blank_values=True, errors="strict", max_num_fields=1000
                    )
                )
            except (ValueError, UnicodeDecodeError) as exc:
                raise _error(BAD_ARGUMENTS, f"malformed URL parameters: {exc}") from None
            if parts.path == "/ping" or (parts.path == "/" and not query and self.command == "GET"):
                self._answer(HTTPStatus.OK, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            if parts.path not in ("/", "/_front/statements"):
                raise ServeError(
                    BAD_ARGUMENTS,
                    f"Code: {BAD_ARGUMENTS}. DB::Exception: There is no handle {parts.path[:100]}",
                    HTTPStatus.NOT_FOUND,
                )
            try:
                self._check_credentials(query)
            except ServeError:
                self.close_connection = True  # the body (unread) is not a next request
                raise
            if parts.path == "/_front/statements" and self.server.config.record_statements:
                ran = json.dumps(self.server.ran).encode()
                self._answer(HTTPStatus.OK, ran, {"Content-Type": "application/json"})
                return
            if parts.path != "/":
                raise ServeError(
                    BAD_ARGUMENTS,
                    f"Code: {BAD_ARGUMENTS}. DB::Exception: There is no handle {parts.path}",
                    HTTPStatus.NOT_FOUND,
                )
            if "multipart/form-data" in self.headers.get("Content-Type", ""):
                raise _error(48, "form-encoded queries are not supported here (NOT_IMPLEMENTED)")
            try:
                body = self._body()
            except ServeError:
                self.close_connection = True
                raise
            self._run(query, body)
        except ServeError as failure:
            self._answer(
                failure.status,
                failure.message.encode("utf-8", "replace") + b"\n",
                {
                    "X-ClickHouse-Exception-Code": str(failure.code),
                    "Content-Type": "text/plain; charset=UTF-8",
                },
            )

    def _run(self, query: dict[str, str], body: bytes) -> None:
        engine = self.server.engine
        sql, data = self._statement(query.get("query", ""), body)
        params = {name[6:]: value for name, value in query.items() if name.startswith("param_")}
        settings = {
            name: value
            for name, value in query.items()
            if name not in _TRANSPORT and not name.startswith("param_")
        }
        for name in settings:
            if not _NAME.match(name):
                raise _error(115, f"Unknown setting {name[:100]!r} (UNKNOWN_SETTING)")
        readonly = _session_readonly(engine.readonly, settings.pop("readonly", None))
        database = query.get("database") or None
        if database is not None and not _NAME.match(database):
            raise _error(81, f"Database {database[:100]!r} does not exist (UNKNOWN_DATABASE)")
        default_format = query.get("default_format") or "TabSeparated"
        if not _NAME.match(default_format):
            raise _error(73, f"Unknown format {default_format[:100]!r} (UNKNOWN_FORMAT)")
        query_id = query.get("query_id") or ""
        if not _QUERY_ID.match(query_id):  # echoed in a header: no CR/LF from the client
            query_id = str(uuid.uuid4())
        self.server.record(sql, data)
        # As ClickHouse: the answer streams (chunked) unless wait_end_of_query buffers it.
        # (chDB streams only SELECTs: other statements answer whole.)
        stream = query.get("wait_end_of_query") != "1" and bool(_SELECT.match(sql))
        compress = query.get("enable_http_compression") == "1"
        packer = _Compressor(
            _accepted(self.headers.get("Accept-Encoding", "")) if compress else None
        )
        with engine.execute(
            sql,
            data,
            database,
            settings,
            params,
            default_format=default_format,
            stream=stream,
            readonly=readonly,
        ) as (chunks, fmt, summary):
            first = next(chunks, b"")  # most errors show here, before the headers
            headers = {
                "Content-Type": "application/octet-stream",
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Summary": json.dumps(summary),
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": engine.timezone,
            }
            if packer.encoding is not None:
                headers["Content-Encoding"] = packer.encoding
            if not stream:
                whole = first + b"".join(chunks)
                self._answer(HTTPStatus.OK, packer.chunk(whole) + packer.end(), headers)
                return
            self._stream(first, chunks, headers, packer)

    def _stream(
        self, first: bytes, chunks: Iterator[bytes], headers: dict[str, str], packer: _Compressor
    ) -> None:
        self.send_response(HTTPStatus.OK)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(data: bytes) -> None:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            for chunk in itertools.chain([first], chunks):
                write(packer.chunk(chunk))
            write(packer.end())
        except ServeError as failure:
            # Too late for a status: ClickHouse writes the error into the body and cuts the
            # answer short; so does this (the client sees a broken stream).
            write(failure.message.encode("utf-8", "replace"))
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
            raise _error(62, "Empty query (SYNTAX_ERROR)")
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:
            raise _error(BAD_ARGUMENTS, "the query is not valid UTF-8") from None
        return sql, None

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="ClickHouse", charset="UTF-8"')
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, a URL or header too long, an
        unsupported method), ClickHouse-style instead of an HTML page."""
        self.close_connection = True
        text = f"Code: {BAD_ARGUMENTS}. DB::Exception: {message or HTTPStatus(code).phrase}\n"
        body = text.encode("latin-1", "replace")
        self.send_response(code, message)
        self.send_header("X-ClickHouse-Exception-Code", str(BAD_ARGUMENTS))
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class HttpFront(ThreadingHTTPServer):
    """The HTTP server; :meth:`serve_until` runs it, :meth:`close` stops it and the engine."""

    daemon_threads = True

    def __init__(self, config: FrontConfig, engine: ChdbEngine) -> None:
        self.config = config
        self.engine = engine
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.ran: list[dict[str, str]] = []
        self._slots = threading.BoundedSemaphore(config.max_connections)
        super().__init__((config.host, config.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to ``max_connections``; beyond, a 503 at once."""
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1)
                message = b"Code: 202. DB::Exception: Too many simultaneous connections.\n"
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                    b"X-ClickHouse-Exception-Code: 202\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(message), message)
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def record(self, sql: str, data: bytes | None) -> None:
        if not self.config.record_statements:
            return
        words = sql.split(None, 1)
        entry = {"kind": words[0].upper() if words else ""}
        table = _INSERT_TABLE.match(sql)
        if table is not None:
            entry["table"] = table.group(1).replace("`", "").split(".")[-1]
            if data is not None:
                entry["format"] = _split_format(sql)[1]
        self.ran.append(entry)

    def serve_until(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (e.g. by a SIGTERM handler), then close."""
        worker = threading.Thread(target=self.serve_forever, name="http-front", daemon=True)
        worker.start()
        try:
            while not stop.wait(0.5):  # a short wait: signal handlers run in between
                pass
        finally:
            self.shutdown()
            worker.join()
            self.close()

    def close(self) -> None:
        self.server_close()
        self.engine.close(timeout=self.config.timeout)


def open_engine(path: Path, *, readonly: Literal[0, 1, 2], database: str | None) -> ChdbEngine:
    """chDB on ``path`` in this process; ConfigError when the directory is another
    process's (chDB opens it for one process) or the engine cannot start there."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        return ChdbEngine(path, readonly=readonly, database=database)
    except (chdb.ChdbError, RuntimeError) as exc:
        if locked_by_another_process(path):
            raise ConfigError(
                f"another process has the chDB directory {path} open (a running "
                "`touchpoint serve`, `sink`, `demo` or `run`?); chDB allows one process per "
                "directory: stop it, or query it through that process (`touchpoint serve`)"
            ) from exc
        raise ConfigError(f"chDB cannot open {path}: {exc}") from exc


def open_front(config: FrontConfig) -> HttpFront:
    """The front over ``config.path``, listening (not serving yet); ConfigError when the
    directory cannot be opened (see :func:`open_engine`) or the address is taken."""
    engine = open_engine(config.path, readonly=config.readonly, database=config.database)
    try:
        return HttpFront(config, engine)
    except OSError as exc:
        engine.close(timeout=1)
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
