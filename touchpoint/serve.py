"""The embedded store behind ClickHouse's HTTP interface: ``touchpoint serve``."""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Callable
from typing import Literal

from schemas.errors import ConfigError
from schemas.settings import Settings
from sinks.clickhouse import chdb_path, describe_target, identifier
from sinks.http_front import FrontConfig, HttpFront, open_front

__all__ = ["is_loopback", "open_server", "serve_until_signalled"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to loopback addresses only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found
    )


def open_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    readonly: Literal[0, 1, 2],
    max_body_bytes: int,
    max_connections: int,
    timeout: float,
) -> HttpFront:
    """The embedded store's chDB directory behind an HTTP front, listening (not serving yet).

    Only the embedded store is served (a ClickHouse server has its own HTTP interface), and
    only with a password when the address is reachable from other machines.
    """
    url = settings.clickhouse_url()
    path = chdb_path(url)
    if path is None:
        raise ConfigError(
            f"touchpoint serve serves the embedded store (a chdb: URL); {describe_target(url)} "
            "has its own HTTP interface: point the clients at it"
        )
    if not password and not is_loopback(host):
        raise ConfigError(
            f"--host {host} is reachable from other machines: set a password "
            "(TOUCHPOINT_SERVE_PASSWORD, or --password-stdin)"
        )
    if not user or ":" in user:
        raise ConfigError(f"invalid user name {user!r} (not empty, no ':')")
    return open_front(
        FrontConfig(
            path=path,
            user=user,
            password=password,
            host=host,
            port=port,
            database=identifier(settings.clickhouse.database),
            readonly=readonly,
            max_body_bytes=max_body_bytes,
            max_connections=max_connections,
            timeout=timeout,
        )
    )


def serve_until_signalled(server: HttpFront, on_stop: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (Ctrl-C), then close the server and the engine."""
    stop = threading.Event()

    def stopping(signum: int, frame: object) -> None:
        if on_stop is not None and not stop.is_set():
            on_stop()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    server.serve_until(stop)
