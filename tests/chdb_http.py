"""ClickHouse's HTTP interface in front of chDB for tests: sinks/http_front.py (what
``touchpoint serve`` runs), read-write, recording what ran.

chDB opens one data directory per process and the test session already has one open, so
the front runs in its own process: ``python -m tests.chdb_http --path DIR --user U``, the
password on stdin (not in ``ps``), prints ``PORT`` once it listens on 127.0.0.1 (:func:`start`
does that). ``GET /_front/statements`` (not ClickHouse's) lists what ran, for the tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from sinks.http_front import FrontConfig, open_front

__all__ = ["start", "statements"]


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
    request = urllib.request.Request(f"http://{parts.hostname}:{parts.port}/_front/statements")
    request.add_header("X-ClickHouse-User", parts.username or "default")
    request.add_header("X-ClickHouse-Key", urllib.parse.unquote(parts.password or ""))
    with urllib.request.urlopen(request) as got:
        found: list[dict[str, str]] = json.loads(got.read())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--path", required=True, help="chDB data directory")
    parser.add_argument("--user", default="default")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")  # not in argv: ps would show it
    server = open_front(
        FrontConfig(
            path=Path(args.path),
            user=args.user,
            password=password,
            port=0,
            readonly=0,
            record_statements=True,
        )
    )
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
