"""`touchpoint serve` as a real child process, for the tests that talk to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

__all__ = ["Served", "environment", "serving"]


def environment(cwd: Path, **extra: str) -> dict[str, str]:
    """The test's environment without TOUCHPOINT_* settings, with the repo importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cwd / "cache")}, **extra)
    return env


@dataclass
class Served:
    url: str
    host: str
    port: int
    process: subprocess.Popen[str]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``signum``; (exit code, rest of stdout, stderr)."""
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


@contextmanager
def serving(cwd: Path, *args: str, password: str | None = "s3cret") -> Iterator[Served]:
    """``touchpoint serve --port 0 ARGS`` in ``cwd`` (password in the environment), stopped
    (SIGTERM) on exit unless the test stopped it."""
    extra = {} if password is None else {"TOUCHPOINT_SERVE_PASSWORD": password}
    with subprocess.Popen(
        [sys.executable, "-m", "touchpoint", "serve", "--port", "0", *args],
        cwd=cwd,
        env=environment(cwd, **extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stderr is not None
            first = child.stdout.readline()
            found = re.search(r"on (http://([\d.]+|\[[\da-f:]+\]):(\d+))$", first.strip())
            if found is None:
                child.kill()
                raise AssertionError(f"serve did not start: {first!r} {child.stderr.read()!r}")
            child.stdout.readline()  # "ClickHouse HTTP interface; Ctrl-C stops."
            yield Served(found.group(1), found.group(2), int(found.group(3)), child)
        finally:
            if child.poll() is None:
                child.terminate()
                child.communicate(timeout=60)
