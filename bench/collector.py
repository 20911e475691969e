"""Throughput and latency of the HTTP collector on real Kafka, against a bare aiohttp ceiling.

What is measured
----------------
A genuine Apache Kafka broker is started for the run (``deploy/kafka/kafka.sh start
--fresh`` on a dedicated port, stopped at the end), then two HTTP servers, each its own
subprocess on loopback:

``collector``
    The real one, ``python -m touchpoint collector``, exactly as deployed: API-key
    authentication, validation of every item, each request's touchpoints produced to the
    raw topic with ``acks=all`` (idempotent kafka-python producer, zstd; one record per
    partition, see docs/collector.md) and the answer sent only once Kafka acknowledged
    them.

``ceiling (bare aiohttp)``
    ``python -m bench.collector --serve-bare``: the same framework (aiohttp, the same
    ``web.run_app`` with no access log, the same body limit) with a single POST handler
    that does ``await request.read()`` and answers 200 with a constant body — no
    authentication, no validation, no Kafka. It is what HTTP on this machine costs; the
    collector cannot beat it, and ``collector / ceiling`` is the share of it that the
    collector's own work (validation, serialization, the Kafka round trip) leaves.

A load generator in this process (an ``aiohttp.ClientSession``, keep-alive) keeps
exactly ``--concurrency`` requests in flight: each of that many tasks sends a request,
waits for the whole answer, and sends the next. Two modes, each against both servers,
with the same bodies:

``single``
    ``POST /v1/touchpoints`` with one Touchpoint JSON object per request.

``batch``
    ``POST /v1/touchpoints`` with a JSON array of ``--batch`` Touchpoints per request.

Every event has a unique ``event_id``. A collector request counts as good only if it is
answered 200 with ``accepted`` equal to the events sent and nothing rejected; a ceiling
request if it is answered 200. Anything else (another status, a short count, a timeout, a
connection error) is an error, counted by kind, and its events are not counted.

Each phase first warms up (``--warmup`` seconds, same session and concurrency; not
measured), then runs ``--duration`` seconds (or ``--requests`` requests): tasks start no
new request after the end and the phase ends when the last answer is in. Events/s is
the events accepted in the measured part divided by its wall-clock seconds; latency is
``perf_counter`` around each request (send to last byte of the answer; every request,
errors included), reported as p50/p99 (nearest rank). The phases run one after the
other: for each mode, the ceiling, then the collector; ``--repeat N`` runs the whole
sequence N times and reports, per phase, the run with the median events/s.

CPU (user + system, all threads) of the collector, the bare server, the broker and this
process (the load generator) is read from ``/proc`` over each measured part and reported
as cores in use, beside the whole machine's ("other": anything else running, which makes
the figures unreliable — the result says so above a quarter of a core). All of them share
the machine's cores, as they would on a small host: read the ratios, not the absolutes.
The collector's mean Kafka hand-off time per request (its
``touchpoint_collector_produce_seconds`` histogram, scraped before and after) is reported
too.

At the end, the raw topic is read back from the beginning to its end offsets and its
events counted — each line of a pack (header ``touchpoint-pack``) is one — and checked
against every event the collector accepted, warm-ups included: as many, no event id twice;
the dead-letter topic must be empty. A mismatch makes the exit code 1.

``--profile DIR`` records the collector with py-spy (``py-spy record --gil``, 250
samples/s, GIL-holding samples only) during each measured collector phase, writes the
collapsed stacks to DIR and prints where the collector's CPU goes per event: its CPU
seconds per accepted event, split by the share of samples each part of the request path
takes (:data:`PROFILE_PARTS`). py-spy pauses the process to sample it, so a profiled run's
events/s are lower: measure and profile in separate runs.

Run from the repository root with the project's virtualenv (the servers are started with
the same interpreter)::

    .venv/bin/python -m bench.collector                          # 4 phases × 20 s, ~2 minutes
    .venv/bin/python -m bench.collector --duration 3 --warmup 1  # quick check
    .venv/bin/python -m bench.collector --profile /tmp/profile   # where the time goes

Results are printed and written as JSON to ``bench/results/collector-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
from aiohttp import web

from bench import common
from bench.common import (
    REPO,
    BenchError,
    CpuMeter,
    add_run_options,
    changed_during_run,
    code_revision,
    cpu_text,
    environment,
    free_port,
    kafka_broker,
    kafka_version,
    median_run,
    positive,
    positive_seconds,
    stop_process,
    tail,
    touchpoint_env_names,
    warnings_text,
)

__all__ = ["main", "serve_bare"]

logger = logging.getLogger("bench.collector")

DEFAULT_KAFKA_PORT: Final = 29492
"""Away from the test suite's broker (39092), a developer's (9092, 29092) and
bench.kafka_path's (29392)."""
MAX_BODY_BYTES: Final = 5_000_000
"""The collector's default ``TOUCHPOINT_COLLECTOR_MAX_BODY_BYTES``, given to the bare server too."""
ENDPOINT: Final = "/v1/touchpoints"
_BARE_ANSWER: Final = b'{"accepted": 0, "rejected": []}'
_READY_TIMEOUT: Final = 120.0
_ROLES: Final = ("collector", "bare", "broker", "bench", "other")
"""The CPU figures shown, in this order (bench: the load generator)."""
_BUSY_GENERATOR: Final = 0.9
"""Cores of this process (one event loop) at which the load generator is the bottleneck."""
_PRODUCE_METRIC: Final = re.compile(
    r"^touchpoint_collector_produce_seconds_(sum|count) ([0-9.eE+-]+)$", re.MULTILINE
)


# ------------------------------------------------------------------- the bare ceiling


def serve_bare(host: str, port: int) -> None:
    """The ceiling: aiohttp, one POST handler that only reads the body and answers 200."""

    async def touchpoints(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_BARE_ANSWER, content_type="application/json")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ready"}', content_type="application/json")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes([web.post(ENDPOINT, touchpoints), web.get("/readyz", readyz)])
    web.run_app(app, host=host, port=port, print=None, access_log=None)


# --------------------------------------------------------------------------- profile

PROFILE_PARTS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # (part, frame substrings): a sample belongs to the first part with a frame anywhere in
    # its stack (so a part includes what it calls). Frames are py-spy's "function (file)".
    ("readiness probe", ("_round_trip", "KafkaPublisher.ready")),
    (
        "kafka-python sender thread (network, batches, compression)",
        ("Sender.run (kafka/producer/sender.py)", "run (kafka/producer/sender.py)"),
    ),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("dead letters (build, serialize)", ("DeadLetter", "dead_letter", "letter_rows")),
    (
        "encode (touchpoint JSON for Kafka)",
        ("model_dump_json", "encode_event", "Encoder.encode"),
    ),
    ("re-encode each item (raw_item)", ("raw_item",)),
    (
        "decode (JSON body)",
        ("decode_json", "_items (ingest", "json_too_deep", "split_items", "json/decoder.py"),
    ),
    (
        "validate (pydantic / decode_event)",
        ("touchpoint_from_dict", "parse_touchpoint", "decode_event", "validate_all", "pydantic"),
    ),
    ("kafka-python send()", ("send (kafka/producer/kafka.py)",)),
    (
        "kafka-python flush / waiting on futures",
        ("flush (kafka/producer/kafka.py)", "FutureRecordMetadata.get", "FutureProduceResult"),
    ),
    ("pack per partition", ("pack", "partition_for", "murmur2")),
    (
        "thread hop (worker threads, call_soon_threadsafe)",
        ("_Workers", "_settle", "call_soon_threadsafe"),
    ),
)
PROFILE_LEAVES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # What is left goes by the frame nearest the leaf that one of these names.
    ("collector request path (auth, routing, answer)", ("ingest/collector/", "ingest/webhooks/")),
    ("aiohttp (HTTP parsing, responses)", ("aiohttp/", "multidict/", "yarl/")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)


def _part(frames: Sequence[str]) -> str:
    for name, needles in PROFILE_PARTS:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    for frame in reversed(frames):
        for name, needles in PROFILE_LEAVES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarize_profile(path: Path) -> dict[str, float]:
    """Share of GIL-holding samples per part of a py-spy ``--format raw`` file."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            counts[_part(stack.split(";"))] += int(number)
    total = sum(counts.values())
    return {name: count / total for name, count in counts.most_common()} if total else {}


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` (GIL-holding samples, raw collapsed stacks), or None."""
    spy = _py_spy()
    if spy is None:
        logger.warning("py-spy not found (pip install py-spy): no profile")
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--gil",
            "--rate",
            "250",
            "--nolineno",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        profiler.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


# --------------------------------------------------------------------- broker, servers


@dataclass
class Server:
    """An HTTP server subprocess on loopback, its output going to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    handle: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        code = stop_process(self.process, self.name, timeout)
        self.handle.close()
        return code


def start_server(name: str, command: Sequence[str], env: Mapping[str, str], log: Path) -> Server:
    port = int(command[command.index("--port") + 1])
    handle = log.open("wb")
    logger.info("starting %s on port %d (log: %s)", name, port, log)
    process = subprocess.Popen(
        list(command), cwd=REPO, env=dict(env), stdout=handle, stderr=subprocess.STDOUT
    )
    return Server(name, process, port, log, handle)


async def wait_ready(server: Server, timeout: float = _READY_TIMEOUT) -> float:
    """Poll ``GET /readyz`` until 200; the seconds it took."""
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.perf_counter() - started < timeout:
            if server.process.poll() is not None:
                raise BenchError(
                    f"{server.name} exited with {server.process.returncode}:\n"
                    + tail(server.log, 20)
                )
            try:
                async with session.get(f"{server.base_url}/readyz") as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.25)
    raise BenchError(f"{server.name} not ready after {timeout:.0f} s:\n{tail(server.log, 20)}")


async def produce_totals(session: aiohttp.ClientSession, server: Server) -> tuple[float, float]:
    """(seconds, requests) of the collector's Kafka hand-off histogram so far."""
    async with session.get(f"{server.base_url}/metrics") as response:
        text = await response.text()
    found = dict(_PRODUCE_METRIC.findall(text))
    return float(found.get("sum", 0.0)), float(found.get("count", 0.0))


# --------------------------------------------------------------------- load generator


class Bodies:
    """Request bodies with unique event ids: one object, or a JSON array of ``batch``."""

    def __init__(self, run_id: str, batch: int | None) -> None:
        self.run_id = run_id
        self.batch = batch
        self.next_id = 0

    def _event(self) -> str:
        number = self.next_id
        self.next_id += 1
        return (
            f'{{"event_id": "bench-{self.run_id}-{number}", "buyer_id": "b-{number % 10007}", '
            '"channel": "web", "event_type": "page_view", '
            '"occurred_at": "2026-03-02T09:00:00Z", "properties": {"url": "/pricing"}}'
        )

    def next(self) -> tuple[bytes, int]:
        """The next body and how many events it carries."""
        if self.batch is None:
            return self._event().encode(), 1
        return ("[" + ", ".join(self._event() for _ in range(self.batch)) + "]").encode(), (
            self.batch
        )


@dataclass
class Load:
    """What one stretch of load (a warm-up or a measured part) did."""

    requests: int = 0
    good_requests: int = 0
    events_sent: int = 0
    events_accepted: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values (0 if there are none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    bodies: Bodies,
    *,
    concurrency: int,
    seconds: float | None,
    requests: int | None,
    check_accepted: bool,
) -> Load:
    """Keep ``concurrency`` requests in flight for ``seconds`` (or ``requests`` in all)."""
    load = Load()
    started = time.perf_counter()
    stop_at = started + seconds if seconds is not None else math.inf
    issued = 0

    def more() -> bool:
        nonlocal issued
        if requests is not None:
            if issued >= requests:
                return False
        elif time.perf_counter() >= stop_at:
            return False
        issued += 1
        return True

    async def one(body: bytes, events: int) -> None:
        load.requests += 1
        load.events_sent += events
        error: str | None = None
        sent = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            load.latencies.append(time.perf_counter() - sent)
            load.errors[type(exc).__name__] += 1
            return
        load.latencies.append(time.perf_counter() - sent)
        if status != 200:
            error = f"status {status}"
        elif check_accepted:
            try:
                reply = json.loads(answer)
            except ValueError:
                reply = None
            if not isinstance(reply, dict) or reply.get("accepted") != events:
                got = reply.get("accepted") if isinstance(reply, dict) else None
                error = f"accepted {got} of {events}"
            elif reply.get("rejected"):
                error = "rejected items"
        if error is None:
            load.good_requests += 1
            load.events_accepted += events
        else:
            load.errors[error] += 1

    async def worker() -> None:
        while more():
            await one(*bodies.next())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.seconds = time.perf_counter() - started
    return load


# ------------------------------------------------------------------------------ phases


@dataclass
class Target:
    """One server under load: ``collector`` or ``ceiling (bare aiohttp)``."""

    label: str
    server: Server
    headers: dict[str, str]
    check_accepted: bool
    is_collector: bool


@dataclass
class Phase:
    mode: str
    target: str
    load: Load
    warmup: Load
    cpu_cores: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        load = self.load
        ordered = sorted(load.latencies)
        seconds = load.seconds or math.inf
        return {
            "mode": self.mode,
            "target": self.target,
            "requests": load.requests,
            "good_requests": load.good_requests,
            "events_sent": load.events_sent,
            "events_accepted": load.events_accepted,
            "seconds": load.seconds,
            "requests_per_second": load.good_requests / seconds,
            "events_per_second": load.events_accepted / seconds,
            "latency_ms": {
                "p50": _percentile(ordered, 0.50) * 1000,
                "p90": _percentile(ordered, 0.90) * 1000,
                "p99": _percentile(ordered, 0.99) * 1000,
                "max": (ordered[-1] if ordered else 0.0) * 1000,
                "mean": (statistics.fmean(ordered) if ordered else 0.0) * 1000,
            },
            "errors": sum(load.errors.values()),
            "errors_by_kind": dict(load.errors),
            "warmup": {
                "seconds": self.warmup.seconds,
                "requests": self.warmup.requests,
                "events_accepted": self.warmup.events_accepted,
                "errors": sum(self.warmup.errors.values()),
            },
            "cpu_cores": self.cpu_cores,
            "details": self.details,
        }


async def run_phase(
    args: argparse.Namespace, mode: str, target: Target, bodies: Bodies, meter: CpuMeter
) -> Phase:
    url = f"{target.server.base_url}{ENDPOINT}"
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        common: dict[str, Any] = {
            "concurrency": args.concurrency,
            "check_accepted": target.check_accepted,
        }
        logger.info("%s / %s: warming up for %.0f s", mode, target.label, args.warmup)
        warmup = await drive(
            session,
            url,
            target.headers,
            bodies,
            seconds=args.warmup,
            requests=None,
            **common,
        )
        produce_before = (
            await produce_totals(session, target.server) if target.is_collector else None
        )
        logger.info(
            "%s / %s: measuring %s",
            mode,
            target.label,
            f"{args.requests:,} requests" if args.requests else f"{args.duration:.0f} s",
        )
        profile: Path | None = None
        profiler: subprocess.Popen[bytes] | None = None
        if args.profile is not None and target.is_collector:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = args.profile / f"{bodies.run_id}-{mode.replace(' ', '')}.txt"
            profiler = start_profiler(target.server.process.pid, profile)
        begin = meter.snapshot()
        load = await drive(
            session,
            url,
            target.headers,
            bodies,
            seconds=None if args.requests else args.duration,
            requests=args.requests,
            **common,
        )
        end = meter.snapshot()
        stop_profiler(profiler)
        details: dict[str, Any] = {}
        if profile is not None and profile.exists():
            details["profile"] = str(profile)
            details["profile_shares"] = summarize_profile(profile)
        if produce_before is not None:
            after = await produce_totals(session, target.server)
            calls = after[1] - produce_before[1]
            details["kafka_handoff_mean_ms"] = (
                (after[0] - produce_before[0]) / calls * 1000 if calls else None
            )
    phase = Phase(mode, target.label, load, warmup, meter.cores(begin, end), details)
    summary = phase.as_dict()
    logger.info(
        "%s / %s: %s events/s, %s req/s, p50 %.1f ms, p99 %.1f ms, %d errors; cpu %s",
        mode,
        target.label,
        f"{summary['events_per_second']:,.0f}",
        f"{summary['requests_per_second']:,.0f}",
        summary["latency_ms"]["p50"],
        summary["latency_ms"]["p99"],
        summary["errors"],
        cpu_text(phase.cpu_cores, _ROLES),
    )
    return phase


async def run_phases(
    args: argparse.Namespace, targets: Sequence[Target], run_id: str, meter: CpuMeter
) -> list[Phase]:
    for target in targets:
        waited = await wait_ready(target.server)
        logger.info("%s ready after %.1f s", target.server.name, waited)
    modes: list[tuple[str, int | None]] = [("single", None), (f"batch x{args.batch}", args.batch)]
    if args.only is not None:
        modes = [mode for mode in modes if mode[0].startswith(args.only)]
    phases: list[Phase] = []
    for number in range(1, args.repeat + 1):
        if args.repeat > 1:
            logger.info("run %d of %d", number, args.repeat)
        for mode, batch in modes:
            for target in targets:
                tag = f"{run_id}-{number}-{'b' if batch else 's'}-{target.server.name}"
                phases.append(await run_phase(args, mode, target, Bodies(tag, batch), meter))
    return phases


# ------------------------------------------------------------------------ verification


@dataclass
class TopicContents:
    """What a topic holds: records, the events in them (a pack's lines each count), and
    event ids seen more than once."""

    records: int = 0
    events: int = 0
    duplicates: int = 0


def read_topic(bootstrap: str, topic: str, timeout: float = 300.0) -> TopicContents:
    """Read ``topic`` from the beginning to its end offsets, counting the events inside packs
    and checking every event id is there once (the bench's ids are unique)."""
    import msgspec
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from schemas.topics import PACK_HEADER, PACK_NDJSON

    class _Id(msgspec.Struct):
        event_id: str = ""

    decoder = msgspec.json.Decoder(_Id)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="bench-collector",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    contents = TopicContents()
    seen: set[str] = set()
    try:
        partitions = [
            TopicPartition(topic, number)
            for number in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return contents
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        left = {tp for tp in partitions if ends[tp] > 0}
        while left and time.monotonic() < deadline:
            for tp, messages in consumer.poll(timeout_ms=1000).items():
                for message in messages:
                    contents.records += 1
                    packed = (PACK_HEADER, PACK_NDJSON) in list(message.headers or ())
                    lines = message.value.split(b"\n") if packed else [message.value]
                    for line in lines:
                        if not line:
                            continue
                        contents.events += 1
                        event_id = decoder.decode(line).event_id
                        if event_id in seen:
                            contents.duplicates += 1
                        seen.add(event_id)
                if consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        if left:
            raise BenchError(f"could not read {topic} to its end within {timeout:.0f} s")
        return contents
    finally:
        consumer.close()


# ----------------------------------------------------------------------- orchestration


CODE_UNDER_TEST: Final = ("schemas", "ingest", "touchpoint", "pyproject.toml")


def _code_revision() -> dict[str, str] | None:
    """The collector's code as it is now, and this file.

    Narrower than the other benchmarks' (the whole tree): other benchmarks being edited
    meanwhile do not change what this one measures.
    """
    try:
        this = Path(__file__).read_bytes()
    except OSError:
        return None
    return code_revision(CODE_UNDER_TEST, salt=this)


def _environment() -> dict[str, Any]:
    return environment(
        "aiohttp",
        "kafka-python",
        "pydantic",
        git=_code_revision(),
        kafka_version=kafka_version(),
        touchpoint_env=touchpoint_env_names("PASSWORD", "KEY"),
    )


def _events_per_second(run: Phase) -> float:
    rate: float = run.as_dict()["events_per_second"]
    return rate


def benchmark(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from schemas.rows import DeadLetterRow
    from schemas.topics import Topics

    environment = _environment()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-collector-{run_id}."
    topics = Topics(prefix)
    dead_letter_topic = topics.for_table(DeadLetterRow.table)
    key = secrets.token_urlsafe(24)
    meter = CpuMeter(_ROLES)
    meter.track("bench", os.getpid())
    servers: list[Server] = []
    with kafka_broker(args.kafka_port, run_dir / "kafka-start.log") as (bootstrap, broker_pid):
        if broker_pid is not None:
            meter.track("broker", broker_pid)
        try:
            env = dict(
                os.environ,
                TOUCHPOINT_KAFKA_BOOTSTRAP=bootstrap,
                TOUCHPOINT_KAFKA_TOPIC_PREFIX=prefix,
                TOUCHPOINT_COLLECTOR_API_KEYS=json.dumps({"bench": key}),
            )

            def launch(name: str, port: int | None, *argv: str) -> Server:
                """``python -m ARGV… --port`` (``port`` or a free one), logged and metered."""
                command = [sys.executable, "-m", *argv, "--port", str(port or free_port())]
                server = start_server(name, command, env, run_dir / f"{name}.log")
                servers.append(server)
                meter.track(name, server.process.pid)
                return server

            collector = launch("collector", args.collector_port, "touchpoint", "collector")
            bare = launch("bare", args.bare_port, "bench.collector", "--serve-bare")
            targets = [
                Target(
                    "ceiling (bare aiohttp)",
                    bare,
                    {"Content-Type": "application/json"},
                    False,
                    False,
                ),
                Target(
                    "collector",
                    collector,
                    {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
                    True,
                    True,
                ),
            ]
            phases = asyncio.run(run_phases(args, targets, run_id, meter))
            logger.info("reading the raw and dead-letter topics back")
            raw_topic = read_topic(bootstrap, topics.raw)
            dead_letters = read_topic(bootstrap, dead_letter_topic)
        finally:
            for server in servers:
                code = server.stop()
                if code not in (0, None, -signal.SIGTERM):
                    logger.warning("%s exited with %s (log: %s)", server.name, code, server.log)

    accepted_total = sum(
        phase.load.events_accepted + phase.warmup.events_accepted
        for phase in phases
        if phase.target == "collector"
    )
    topic_matches = (
        raw_topic.events == accepted_total
        and raw_topic.duplicates == 0
        and dead_letters.records == 0
    )
    if not topic_matches:
        logger.warning(
            "the raw topic holds %d events (%d ids repeated) in %d records, the collector "
            "accepted %d (dead-letter records: %d)",
            raw_topic.events,
            raw_topic.duplicates,
            raw_topic.records,
            accepted_total,
            dead_letters.records,
        )
    chosen: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float | None]] = {}
    for mode in dict.fromkeys(phase.mode for phase in phases):
        pair: dict[str, dict[str, Any]] = {}
        for target in ("ceiling (bare aiohttp)", "collector"):
            runs = [p for p in phases if p.mode == mode and p.target == target]
            summary = median_run(runs, key=_events_per_second).as_dict()
            summary["runs_events_per_second"] = [run.as_dict()["events_per_second"] for run in runs]
            pair[target] = summary
            chosen.append(summary)
        ceiling, measured = pair["ceiling (bare aiohttp)"], pair["collector"]
        ratios[mode] = {
            "events_per_second": common.ratio(
                measured["events_per_second"], ceiling["events_per_second"]
            ),
            "p50_latency": common.ratio(
                measured["latency_ms"]["p50"], ceiling["latency_ms"]["p50"]
            ),
            "p99_latency": common.ratio(
                measured["latency_ms"]["p99"], ceiling["latency_ms"]["p99"]
            ),
        }
    code_changed = changed_during_run(environment["git"], _code_revision())
    return {
        "benchmark": "collector",
        "started_at": args.started_at,
        "config": {
            "duration_seconds": None if args.requests else args.duration,
            "requests": args.requests,
            "warmup_seconds": args.warmup,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "kafka_port": args.kafka_port,
            "topic_prefix": prefix,
        },
        "environment": environment,
        "code_changed_during_run": code_changed,
        "phases": chosen,
        "all_runs": [phase.as_dict() for phase in phases] if args.repeat > 1 else None,
        "ratios_collector_to_ceiling": ratios,
        "raw_topic": {
            "records": raw_topic.records,
            "events": raw_topic.events,
            "repeated_event_ids": raw_topic.duplicates,
            "accepted_by_collector": accepted_total,
            "dead_letters": dead_letters.records,
            "matches": topic_matches,
        },
        "max_other_cpu_cores": max(
            (phase["cpu_cores"].get("other", 0.0) for phase in chosen), default=0.0
        ),
        "errors_total": sum(phase["errors"] for phase in chosen),
    }


def _render(result: dict[str, Any]) -> str:
    header = (
        f"{'mode':<10} {'target':<22} {'requests':>9} {'events':>9} {'seconds':>7} "
        f"{'req/s':>8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'vs ceiling':>10}"
    )
    lines = [header, "-" * len(header)]
    ceilings: dict[str, float] = {}
    for phase in result["phases"]:
        rate = phase["events_per_second"]
        if phase["target"].startswith("ceiling"):
            ceilings[phase["mode"]] = rate
        top = ceilings.get(phase["mode"])
        versus = f"{rate / top:>9.3f}x" if top else f"{'':>10}"
        lines.append(
            f"{phase['mode']:<10} {phase['target']:<22} {phase['good_requests']:>9,} "
            f"{phase['events_accepted']:>9,} {phase['seconds']:>7.1f} "
            f"{phase['requests_per_second']:>8,.0f} {rate:>9,.0f} "
            f"{phase['latency_ms']['p50']:>7.1f} {phase['latency_ms']['p99']:>7.1f} "
            f"{phase['errors']:>6,} {versus}"
        )
    lines.append("")
    lines.append("CPU, cores in use while measuring (bench = the load generator):")
    for phase in result["phases"]:
        handoff = phase["details"].get("kafka_handoff_mean_ms")
        lines.append(
            f"  {phase['mode']:<10} {phase['target']:<22} {cpu_text(phase['cpu_cores'], _ROLES)}"
            + (f"; Kafka hand-off {handoff:.1f} ms/request" if handoff is not None else "")
        )
    lines.append("")
    for phase in result["phases"]:
        shares = phase["details"].get("profile_shares")
        if not shares:
            continue
        cores = phase["cpu_cores"].get("collector", 0.0)
        events = phase["events_accepted"]
        per_event = cores * phase["seconds"] / events * 1e6 if events else 0.0
        lines.append(
            f"where the collector's time goes, {phase['mode']} (py-spy, GIL-holding samples; "
            f"{per_event:,.0f} us of collector CPU per event, split by share of samples):"
        )
        for name, share in shares.items():
            lines.append(f"  {share * 100:5.1f}%  {share * per_event:7.1f} us/event  {name}")
        lines.append(f"  (stacks: {phase['details']['profile']})")
        lines.append("")
    for mode, ratio in result["ratios_collector_to_ceiling"].items():
        events = ratio["events_per_second"]
        p99 = ratio["p99_latency"]
        lines.append(
            f"{mode}: the collector reaches "
            + (f"{events:.3f}x" if events is not None else "n/a")
            + " the events/s of a bare aiohttp handler, at "
            + (f"{p99:.1f}x" if p99 is not None else "n/a")
            + " its p99 latency."
        )
    generator = max(
        (
            phase["cpu_cores"].get("bench", 0.0)
            for phase in result["phases"]
            if phase["target"].startswith("ceiling")
        ),
        default=0.0,
    )
    if generator >= _BUSY_GENERATOR:
        lines.append(
            f"the load generator used {generator:.2f} cores under the ceiling: the bare server "
            "could go faster, so the ratios are upper bounds."
        )
    raw = result["raw_topic"]
    lines.append(
        f"raw topic: {raw['events']:,} events ({raw['repeated_event_ids']:,} ids repeated) in "
        f"{raw['records']:,} records for {raw['accepted_by_collector']:,} events accepted "
        f"(warm-ups included), {raw['dead_letters']:,} dead-letter records: "
        + ("match." if raw["matches"] else "MISMATCH.")
    )
    config = result["config"]
    lines.append(
        f"concurrency {config['concurrency']}; "
        + (
            f"{config['requests']:,} requests"
            if config["requests"]
            else f"{config['duration_seconds']:.0f} s"
        )
        + f" per phase after a {config['warmup_seconds']:.0f} s warm-up; "
        + (f"median of {config['repeat']} runs" if config["repeat"] > 1 else "1 run")
        + "."
        + warnings_text(result)
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.collector",
        description=(
            "Events/s and p50/p99 latency of `touchpoint collector` (POST /v1/touchpoints, "
            "single events and batches) with a genuine Kafka broker behind it, beside a bare "
            "aiohttp handler that only reads the body (the ceiling), measured in the same run "
            "by a load generator with a fixed number of requests in flight on loopback; "
            "reports collector/ceiling ratios. Progress goes to stderr, the table to stdout, "
            "and JSON to bench/results/."
        ),
    )
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        default=20.0,
        help="measured seconds per phase [default: 20]",
    )
    parser.add_argument(
        "--requests",
        type=positive,
        help="measure this many requests per phase instead of --duration seconds",
    )
    parser.add_argument(
        "--warmup",
        type=positive_seconds,
        default=3.0,
        help="unmeasured seconds of the same load before each phase [default: 3]",
    )
    parser.add_argument(
        "--batch",
        type=positive,
        default=100,
        help="touchpoints per request in the batch mode [default: 100]",
    )
    parser.add_argument(
        "--only",
        choices=["single", "batch"],
        help="run only this mode's two phases [default: both modes]",
    )
    parser.add_argument(
        "--concurrency",
        type=positive,
        default=32,
        help="requests in flight at any time [default: 32]",
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="run the four phases this many times; report the median run [default: 1]",
    )
    parser.add_argument(
        "--kafka-port",
        type=positive,
        default=DEFAULT_KAFKA_PORT,
        help="port of the broker this run starts (and the controller on port + 1) "
        f"[default: {DEFAULT_KAFKA_PORT}]",
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=30.0,
        help="seconds before a request counts as an error [default: 30]",
    )
    parser.add_argument(
        "--collector-port", type=int, default=0, help="port of the collector [default: a free port]"
    )
    parser.add_argument(
        "--bare-port", type=int, default=0, help="port of the bare server [default: a free port]"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the collector with py-spy (GIL-holding samples) during each measured "
        "collector phase into this directory, and print where its time goes; the sampling "
        "slows the collector, so such a run's ratios are not the benchmark's",
    )
    add_run_options(parser, "server logs")
    parser.add_argument(
        "--serve-bare",
        action="store_true",
        help="instead of benchmarking, serve the bare ceiling handler on --port (used by the "
        "benchmark itself)",
    )
    parser.add_argument("--port", type=int, default=8089, help="port for --serve-bare")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_bare:
        serve_bare("127.0.0.1", args.port)
        return 0
    return common.run(
        "collector",
        args,
        benchmark,
        _render,
        scratch_prefix="touchpoint-bench-collector-",
        kept="server logs",
        succeeded=lambda result: bool(result["raw_topic"]["matches"]),
        quiet=("kafka",),
    )


if __name__ == "__main__":
    sys.exit(main())
