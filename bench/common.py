"""What every benchmark shares, so each script holds only its own phases and peer.

A benchmark is a module with a ``_parser()``, a ``benchmark(args, run_dir) -> result``
and a ``_render(result) -> str``; its ``main`` is one call to :func:`run`, which sets
up logging, stamps ``args.started_at``, makes the scratch directory (:func:`add_run_options`:
``--workdir``, ``--keep``, ``--results-dir``), turns a :class:`BenchError` into a one-line
error and exit code 1, prints the table and writes the JSON result. Around that:

- options: :func:`add_dataset_options` (``--events``, ``--buyers``, ``--seed``) and
  :func:`buyers_for`; the argparse types :func:`positive` and :func:`positive_seconds`
- the input: :func:`generate` (a synthetic JSONL file and its ground truth),
  :func:`count_lines`, :class:`Progress` (a log line every tenth), :func:`chdb_settings`
  (the pipeline's settings on one chDB directory)
- the machine: :class:`CpuMeter` (cores in use per process and of the whole machine, peak
  RSS, a timeline), :func:`cpu_text`, :class:`CpuSince` (this process and the others since
  a moment), :class:`QuietMachine` and :func:`add_quiet_options` (``--max-wait``,
  ``--retries``: wait for the others to be idle, time again if they were not),
  :func:`kafka_broker` (a fresh Apache Kafka broker), :func:`free_port`,
  :func:`stop_process`, :func:`in_child` (a phase in a fresh interpreter)
- the figures: :class:`Timed` (a phase and its events/s), :func:`median_run` (the run a
  repeated phase reports), :func:`ratio` (a figure against its peer), :func:`warnings_text`
  (contention, code changed meanwhile)
- the record: :func:`environment` (versions, git revision, settings in force; a chDB
  benchmark's: :func:`chdb_environment`), :func:`code_revision`, :func:`changed_during_run`,
  :func:`package_versions`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:  # imported when used: the bare HTTP ceiling stays lean
    from ingest.generator import GeneratorConfig
    from schemas.settings import Settings

logger = logging.getLogger("bench")

REPO: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
KAFKA_SH: Final = REPO / "deploy" / "kafka" / "kafka.sh"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
EVENTS_PER_BUYER: Final = 7.5
"""Input records per generated buyer with the default generator settings (measured)."""
OTHER_CPU_LIMIT: Final = 0.25
"""Cores used by other processes above which a result says its figures are disturbed."""

_LOG_FORMAT: Final = "%(asctime)s %(processName)s: %(message)s"
_PAGE_MIB: Final = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) / 2**20
_SAMPLE_SECONDS: Final = 1.0
_P = ParamSpec("_P")
_T = TypeVar("_T")
_Run = TypeVar("_Run")


class BenchError(RuntimeError):
    """The benchmark could not run to the end (its message says why and where the logs are)."""


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` allowed)."""
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
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


# ---------------------------------------------------------------------- options, the run


def add_dataset_options(parser: argparse.ArgumentParser, events_help: str = "") -> None:
    """``--events`` (records to aim for), ``--buyers`` (exact) and ``--seed`` of the input."""
    parser.add_argument(
        "--events",
        type=positive,
        default=1_000_000,
        help=events_help
        or f"input records to aim for: buyers = events / {EVENTS_PER_BUYER} "
        "(the actual count is reported) [default: 1000000]",
    )
    parser.add_argument(
        "--buyers", type=positive, help="generate exactly this many buyers (overrides --events)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed [default: 7]")


def buyers_for(args: argparse.Namespace) -> int:
    """``--buyers``, or as many buyers as make about ``--events`` records."""
    buyers: int = args.buyers or max(1, round(args.events / EVENTS_PER_BUYER))
    return buyers


def setup_logging(*quiet: str) -> None:
    """Progress on stderr with the time and process; the ``quiet`` loggers at WARNING."""
    logging.basicConfig(
        level=logging.INFO, format=_LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def run(
    name: str,
    args: argparse.Namespace,
    benchmark: Callable[[argparse.Namespace, Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    *,
    scratch_prefix: str,
    kept: str = "",
    keep_on_failure: bool = True,
    succeeded: Callable[[dict[str, Any]], bool] = lambda result: True,
    quiet: Sequence[str] = (),
    run_dir: Path | None = None,
) -> int:
    """A benchmark's ``main`` after parsing: ``benchmark(args, run_dir)`` in a scratch
    directory (or in ``run_dir``, created if need be and never deleted), then its table on
    stdout and its JSON in ``--results-dir``.

    Exit code 0 if ``succeeded(result)``, else 1; 1 too on a :class:`BenchError` (logged
    as one line, no result written).
    """
    args.started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    setup_logging(*quiet)
    try:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            result = benchmark(args, run_dir.resolve())
        else:
            with scratch_directory(
                args.workdir,
                scratch_prefix,
                keep=args.keep,
                keep_on_failure=keep_on_failure,
                kept=kept,
            ) as scratch:
                result = benchmark(args, scratch)
    except BenchError as exc:
        logger.error("%s", exc)
        return 1
    print(render(result))
    print(f"results written to {write_result(name, result, args.results_dir)}")
    return 0 if succeeded(result) else 1


# -------------------------------------------------------------------------- the input


class Progress:
    """Logs ``label`` every tenth of ``total`` (an ``on_progress``/``on_buyer`` callback)."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.next_tenth = 1
        self.started = time.perf_counter()

    def __call__(self, step: int) -> None:
        self.done += step
        if self.done * 10 >= self.next_tenth * self.total:
            self.next_tenth = self.done * 10 // self.total + 1
            elapsed = time.perf_counter() - self.started
            logger.info(
                "%s: %d%% (%s of %s) after %.0f s",
                self.label,
                min(100, self.done * 100 // self.total),
                f"{self.done:,}",
                f"{self.total:,}",
                elapsed,
            )


def generate(events: Path, config: GeneratorConfig) -> dict[str, Any]:
    """Write ``config``'s synthetic journeys to ``events`` (JSONL), timed; what it wrote."""
    from ingest.generator import write_dataset

    logger.info("generating %s buyers (seed %d) into %s", f"{config.buyers:,}", config.seed, events)
    started = time.perf_counter()
    truth = write_dataset(config, events, on_buyer=Progress("generate", config.buyers))
    return {
        "seconds": time.perf_counter() - started,
        "buyers": config.buyers,
        "seed": config.seed,
        "events_unique": truth.events_unique,
        "duplicates": truth.duplicates,
        "malformed": sum(truth.malformed.values()),
    }


def count_lines(path: Path) -> int:
    """Lines of a file (its records), read in 1 MiB chunks."""
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def chdb_settings(chdb_dir: Path, database: str, batch_size: int) -> Settings:
    """The pipeline's settings (environment and defaults) on the chDB directory ``chdb_dir``."""
    from touchpoint import wiring

    return wiring.load_settings(
        data_dir=chdb_dir.parent,
        clickhouse_url=f"chdb:{chdb_dir}",
        clickhouse_database=database,
        batch_size=batch_size,
    )


# ------------------------------------------------------------------------- processes


def in_child(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``function`` in a fresh spawned interpreter and return its (pickled) result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=setup_logging) as pool:
        return pool.submit(function, *args, **kwargs).result()


def stop_process(process: subprocess.Popen[bytes], name: str, timeout: float) -> int:
    """SIGTERM (the commands flush and exit cleanly), SIGKILL after ``timeout`` s; its code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s: killing it", name, process.pid, timeout
            )
            process.kill()
            process.wait()
    return process.returncode


# ------------------------------------------------------------------------------- CPU


def _proc_stat(pid: int) -> tuple[float, float] | None:
    """(CPU seconds of all threads, RSS MiB) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    # after "pid (comm)": [0] state ... [11] utime, [12] stime, [21] rss (pages)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[21]) * _PAGE_MIB


@dataclass
class CpuSnapshot:
    at: float
    seconds: dict[int, float]
    machine: float | None


class CpuMeter:
    """CPU seconds of named processes and of the machine, from /proc.

    Each process has a name and a group (``worker-1`` in ``workers``); both are reported.
    Snapshots are taken on demand; after :meth:`start`, a background thread also samples
    every second, so a process's last value survives its exit, and keeps each one's peak
    RSS; :meth:`timeline_point` records cores in use over time (its log line lists
    ``roles``).
    """

    def __init__(self, roles: Sequence[str] = ()) -> None:
        self.roles = tuple(roles)
        self.names: dict[int, str] = {}
        self.groups: dict[int, str] = {}
        self.last: dict[int, float] = {}
        self.peak_rss_mib: dict[int, float] = {}
        self.timeline: list[dict[str, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="cpu-meter", daemon=True)
        self._timeline_from: CpuSnapshot | None = None
        self._started = time.perf_counter()

    def track(self, name: str, pid: int, group: str | None = None) -> None:
        with self._lock:
            self.names[pid] = name
            self.groups[pid] = group or name
        self.snapshot()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def snapshot(self) -> CpuSnapshot:
        with self._lock:
            pids = list(self.names)
            for pid in pids:
                stat = _proc_stat(pid)
                if stat is not None:
                    self.last[pid] = stat[0]
                    self.peak_rss_mib[pid] = max(self.peak_rss_mib.get(pid, 0.0), stat[1])
            return CpuSnapshot(
                time.perf_counter(),
                {pid: self.last[pid] for pid in pids if pid in self.last},
                machine_busy(),
            )

    def cores(self, begin: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """Cores in use per group (and per process of a group), ``machine`` and ``other``."""
        wall = end.at - begin.at
        if wall <= 0:
            return {}
        used: dict[str, float] = {}
        total = 0.0
        for pid, seconds in end.seconds.items():
            share = (seconds - begin.seconds.get(pid, 0.0)) / wall
            total += share
            keys = {self.groups[pid], self.names[pid]}
            for key in keys:
                used[key] = used.get(key, 0.0) + share
        result = {key: round(value, 3) for key, value in sorted(used.items())}
        if begin.machine is not None and end.machine is not None:
            machine = (end.machine - begin.machine) / wall
            result["machine"] = round(machine, 3)
            result["other"] = round(max(0.0, machine - total), 3)
        return result

    def peak_rss_by_group(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for pid, rss in self.peak_rss_mib.items():
            name = self.names[pid]
            peaks[name] = round(max(peaks.get(name, 0.0), rss), 1)
        return peaks

    def timeline_point(self, label: str, **values: float) -> None:
        """Record (and log) cores in use since the previous point, with ``values``."""
        now = self.snapshot()
        previous, self._timeline_from = self._timeline_from, now
        if previous is None:
            return
        cores = self.cores(previous, now)
        self.timeline.append({"t": round(now.at - self._started, 1), **values, **cores})
        logger.info("%s cpu cores: %s", label, cpu_text(cores, self.roles))

    def _sample_loop(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            self.snapshot()


def cpu_text(cores: Mapping[str, float], roles: Sequence[str]) -> str:
    """``"workers 1.20, sink 0.40, other 0.05"``: cores in use of ``roles``, in that order."""
    return ", ".join(f"{role} {cores[role]:.2f}" for role in roles if role in cores)


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (a subprocess that ran to its end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuSince:
    """Cores in use by this process (all its threads) and by everything else, from when it
    was made until :meth:`cores` is called."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.own = self._own()
        self.machine = machine_busy()

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def cores(self) -> dict[str, float | None]:
        """``bench`` (this process) and ``other`` (None without /proc/stat)."""
        wall = time.perf_counter() - self.wall
        own = (self._own() - self.own) / wall
        machine = machine_busy()
        other = (
            None
            if machine is None or self.machine is None
            else max(0.0, (machine - self.machine) / wall - own)
        )
        return {"bench": own, "other": other}


class Disturbable(Protocol):
    """A measurement that knows how busy the others were while it was taken."""

    other_cores: float | None
    attempts: int


_Measured = TypeVar("_Measured", bound=Disturbable)


def add_quiet_options(parser: argparse.ArgumentParser) -> None:
    """``--max-wait`` and ``--retries`` of a :class:`QuietMachine`."""
    parser.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="before each line, wait up to this many seconds for other processes to use at "
        f"most {OTHER_CPU_LIMIT} cores [default: 600]",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="time a line again (at most this many times) if other processes used more than "
        f"{OTHER_CPU_LIMIT} cores meanwhile [default: 2]",
    )


@dataclass
class QuietMachine:
    """Takes each measurement while the rest of the machine is idle, and again if it was not.

    Before one, waits (up to ``max_wait`` seconds) until other processes use at most
    :data:`OTHER_CPU_LIMIT` cores over a 2-second sample; one during which they used more
    is taken again, at most ``retries`` more times (the last attempt stands, flagged).
    """

    max_wait: float
    retries: int
    waited: float = 0.0
    """Seconds spent waiting so far."""

    def wait(self) -> None:
        started = time.perf_counter()
        logged = False
        while time.perf_counter() - started < self.max_wait:
            probe = CpuSince()
            time.sleep(2.0)
            other = probe.cores()["other"]
            if other is None or other <= OTHER_CPU_LIMIT:
                break
            if not logged:
                logger.info(
                    "other processes use %.2f cores: waiting (up to %.0f s) for a quiet machine",
                    other,
                    self.max_wait,
                )
                logged = True
        self.waited += time.perf_counter() - started

    def run(self, label: str, attempt: Callable[[int], _Measured]) -> _Measured:
        """``attempt(number)`` after :meth:`wait`, again while the others were busy."""
        number = 1
        while True:
            self.wait()
            result = attempt(number)
            result.attempts = number
            other = result.other_cores
            if other is None or other <= OTHER_CPU_LIMIT or number > self.retries:
                return result
            logger.info("%s: other processes used %.2f cores meanwhile: again", label, other)
            number += 1


# ---------------------------------------------------------------------------- figures


@dataclass
class Timed:
    """One timed phase: ``records`` input records in ``seconds`` of wall-clock time."""

    phase: str
    records: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        """Records per second: every ratio of two phases' rates is a ratio of seconds."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


def median_run(runs: Sequence[_Run], key: Callable[[_Run], float]) -> _Run:
    """The run a repeated phase reports: the median by ``key`` (the lower of the two middle
    ones for an even count, so it is a run that happened)."""
    values = [key(run) for run in runs]
    return runs[values.index(statistics.median_low(values))]


def ratio(value: float, peer: float) -> float | None:
    """``value`` against its peer measured in the same run; None if the peer measured 0."""
    return value / peer if peer else None


def warnings_text(result: Mapping[str, Any], other_limit: float = OTHER_CPU_LIMIT) -> str:
    """The warnings a result's summary ends with: other processes busy, the code changed."""
    return (
        f" WARNING: other processes used up to {result['max_other_cpu_cores']:.2f} cores."
        if result["max_other_cpu_cores"] > other_limit
        else ""
    ) + (" WARNING: the code changed during the run." if result["code_changed_during_run"] else "")


# ----------------------------------------------------------------------------- record


def environment(*packages: str, git: dict[str, str] | None, **extra: object) -> dict[str, object]:
    """What a result records of the machine: Python, platform, CPUs, ``git`` (see
    :func:`code_revision`), the versions of ``packages``, and ``extra``."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git": git,
        "packages": package_versions(*packages),
        **extra,
    }


def chdb_environment() -> dict[str, object]:
    """:func:`environment` of a benchmark of the pipeline on embedded chDB: the versions of
    chdb, clickhouse-connect and pydantic, HEAD and the ``TOUCHPOINT_*`` settings in force."""
    return environment(
        "chdb",
        "clickhouse-connect",
        "pydantic",
        git=code_revision(),
        touchpoint_env=touchpoint_env_names("PASSWORD"),
    )


def touchpoint_env_names(*hidden: str) -> list[str]:
    """Names of the ``TOUCHPOINT_*`` settings in force, but none containing ``hidden``."""
    return sorted(
        name
        for name in os.environ
        if name.startswith("TOUCHPOINT_") and not any(word in name for word in hidden)
    )


def kafka_version() -> str:
    """The Apache Kafka version deploy/kafka/kafka.sh starts."""
    return os.environ.get("TOUCHPOINT_KAFKA_VERSION", "4.4.0 (kafka.sh default)")


def changed_during_run(before: object, after: object) -> bool:
    """Whether the code under test changed between two :func:`code_revision` readings
    (logged as a warning: the results may mix versions)."""
    changed = before != after
    if changed:
        logger.warning("the code under test changed during the run: results may mix versions")
    return changed
