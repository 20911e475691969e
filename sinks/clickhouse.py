"""Connecting to ClickHouse — chDB in-process or a server over HTTP — and translating its errors."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from schemas.errors import ConfigError, SinkError, SinkFatalError, SinkRetryableError
from schemas.settings import ClickHouseSettings

__all__ = [
    "Client",
    "chdb_path",
    "connect",
    "describe_target",
    "identifier",
    "locked_by_another_process",
    "translate_error",
]

# ClickHouse error codes worth another attempt: overload, timeouts, network, keeper,
# no space left (243).
_RETRYABLE_CODES: Final = frozenset({3, 159, 202, 209, 210, 241, 242, 243, 252, 425, 999})
# Storage refusing writes (a full, read-only or immutable disk) comes as a C++ filesystem
# error (code 1001, STD_EXCEPTION): the environment's fault, gone once it is fixed.
_STORAGE_FAULTS: Final = ("filesystem error", "Read-only file system", "No space left on device")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def identifier(name: str) -> str:
    """``name`` if it is a plain SQL identifier (safe to splice into SQL text), else ConfigError.

    Database names cannot be bound as query parameters in DDL, so every query
    that names the database checks it through here first.
    """
    if not _IDENTIFIER.match(name):
        raise ConfigError(f"{name!r} is not a valid database name (letters, digits, _)")
    return name


def chdb_path(url: str) -> Path | None:
    """The chDB data directory of a ``chdb:`` URL, or None for a server URL."""
    if not url.startswith("chdb:"):
        return None
    rest = url[len("chdb:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ConfigError("a chdb: URL needs a directory, e.g. chdb:touchpoint-data/clickhouse")
    return Path(unquote(rest)).expanduser().resolve()


def describe_target(url: str) -> str:
    path = chdb_path(url)
    if path is not None:
        return f"chDB (embedded ClickHouse) in {path}"
    parts = urlsplit(url)
    return f"ClickHouse server {parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")


def translate_error(exc: BaseException, action: str) -> SinkError:
    """Our exception for a ClickHouse driver failure: retryable or fatal."""
    code = getattr(exc, "code", None)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = f"{action} failed: {message}"
    if (
        isinstance(exc, OperationalError | ConnectionError | TimeoutError)
        or code in _RETRYABLE_CODES
        or (code == 1001 and any(fault in str(exc) for fault in _STORAGE_FAULTS))
    ):
        return SinkRetryableError(text)
    return SinkFatalError(text)


def locked_by_another_process(path: Path) -> bool:
    """Whether the ClickHouse engine lock (``status``) of a chDB directory is held."""
    status = path / "status"
    if not status.exists():
        return False
    with status.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def connect(url: str, settings: ClickHouseSettings) -> Client:
    """A clickhouse-connect client for ``url`` (``chdb:PATH`` or ``http(s)://host:port``)."""
    path = chdb_path(url)
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise ConfigError(f"the chDB directory {path} is not writable")
            return clickhouse_connect.get_client(interface="chdb", path=str(path))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"unsupported ClickHouse URL {url!r}: use chdb:DIRECTORY or http(s)://host:port"
            )
        return clickhouse_connect.get_client(
            interface=parts.scheme,
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username) if parts.username else settings.user,
            password=(
                unquote(parts.password) if parts.password else settings.password.get_secret_value()
            ),
        )
    except ClickHouseError as exc:
        if path is not None and locked_by_another_process(path):
            raise ConfigError(
                f"another process has the chDB directory {path} open (a running `touchpoint "
                "serve`, `sink`, `demo` or `run`?); chDB allows one process per directory: stop "
                "it, or point TOUCHPOINT_CLICKHOUSE_URL at another directory"
            ) from exc
        raise translate_error(exc, f"connecting to {describe_target(url)}") from exc
    except OSError as exc:
        raise SinkRetryableError(f"connecting to {describe_target(url)} failed: {exc}") from exc
