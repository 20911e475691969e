"""What every benchmark needs: paths, a fresh Kafka broker, CPU readings, results, args."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger("bench")

REPO: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
KAFKA_SH: Final = REPO / "deploy" / "kafka" / "kafka.sh"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """The benchmark could not run to the end (its message says why and where the logs are)."""


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` allowed)."""
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; the process binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def kafka_broker(port: int, log: Path) -> Iterator[tuple[str, int | None]]:
    """A fresh single-node broker on ``port`` (deploy/kafka/kafka.sh): (bootstrap, pid).

    Stopped on exit. The pid is None (and a warning logged) if kafka.sh left no pid file.
    """
    env = dict(os.environ, TOUCHPOINT_KAFKA_PORT=str(port))
    env.pop("TOUCHPOINT_KAFKA_CONTROLLER_PORT", None)
    logger.info("starting a fresh Kafka broker on port %d (%s)", port, KAFKA_SH)
    started = subprocess.run(
        ["bash", str(KAFKA_SH), "start", "--fresh"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log.write_text(started.stdout + started.stderr, encoding="utf-8")
    try:
        if started.returncode != 0:
            raise BenchError(f"kafka.sh start failed:\n{started.stderr[-3000:]}")
        found = re.search(r"^bootstrap=(\S+)$", started.stdout, re.MULTILINE)
        if found is None:
            raise BenchError(f"kafka.sh start printed no bootstrap line: {started.stdout!r}")
        home = Path(os.environ.get("TOUCHPOINT_KAFKA_HOME", REPO / ".cache" / "kafka"))
        pid_file = home / f"run-{port}" / "kafka.pid"
        try:
            pid: int | None = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            logger.warning("no broker pid in %s: its CPU is not measured", pid_file)
            pid = None
        yield found.group(1), pid
    finally:
        logger.info("stopping the Kafka broker on port %d", port)
        stopped = subprocess.run(
            ["bash", str(KAFKA_SH), "stop"], env=env, capture_output=True, text=True, check=False
        )
        if stopped.returncode != 0:
            logger.warning("kafka.sh stop failed: %s", stopped.stderr[-2000:])


def write_result(benchmark: str, result: dict[str, Any], directory: Path) -> Path:
    """Write ``result`` as ``<benchmark>-<started_at>.json`` in ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result["started_at"].replace(":", "").replace("-", "")
    path = directory / f"{benchmark}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def add_run_options(parser: argparse.ArgumentParser, scratch: str) -> None:
    """``--workdir``, ``--keep`` and ``--results-dir``; ``scratch`` says what the scratch holds."""
    parser.add_argument(
        "--workdir",
        type=Path,
        help=f"create the run's scratch directory ({scratch}) under this one "
        "[default: the system temp directory]",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory instead of deleting it"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON result goes [default: bench/results]",
    )


@contextmanager
def scratch_directory(
    workdir: Path | None,
    prefix: str,
    *,
    keep: bool,
    keep_on_failure: bool = True,
    kept: str = "",
) -> Iterator[Path]:
    """A fresh directory under ``workdir`` (or the temp dir), deleted afterwards unless
    ``keep``, or the body failed and ``keep_on_failure`` (``kept`` names what is in it)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    logger.info("scratch directory %s", run_dir)
    failed = True
    try:
        yield run_dir
        failed = False
    finally:
        if keep or (failed and keep_on_failure):
            logger.info("kept %s%s", run_dir, f" ({kept})" if kept else "")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def code_revision(paths: tuple[str, ...] = (), salt: bytes = b"") -> dict[str, str] | None:
    """HEAD, whether the tracked files under ``paths`` (all if none) differ from it, and a
    fingerprint of both plus ``salt`` (the code under test), or None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", *paths], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0 or diff.returncode != 0:
        return None
    digest = hashlib.sha256((head.stdout + diff.stdout).encode() + salt).hexdigest()[:16]
    return {
        "revision": head.stdout.strip() + ("-dirty" if diff.stdout else ""),
        "fingerprint": digest,
    }


def package_versions(*packages: str) -> dict[str, str | None]:
    """Installed version of each package (None if it is not installed)."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
