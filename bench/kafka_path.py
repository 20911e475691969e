"""Throughput of the distributed path (produce → Faust workers → sink), against a raw consumer.

What is measured
----------------
One synthetic JSONL file (default: about 1M records from :mod:`ingest.generator`) goes
through a genuine Apache Kafka broker that this script starts for itself
(``deploy/kafka/kafka.sh start --fresh`` on a dedicated port, stopped at the end), in one
invocation and on the same machine, one phase after the other:

``produce``
    Wall time of ``touchpoint produce --input FILE`` (a subprocess: interpreter start, one
    hashing pass over the file, every record sent with ``acks=all`` and acknowledged, the
    end-of-input watermarks).

``ceiling (raw aiokafka)``
    A bare :class:`aiokafka.AIOKafkaConsumer` in this process, configured like the
    workers' consumer (``read_committed``, the same fetch size, no consumer group, no
    commits), reading the whole raw topic the producer just wrote, from the beginning,
    doing nothing with the records. It is the peer: the rate at which the workers' own
    client library can hand this topic to Python on this machine, i.e. what a worker
    could reach if processing and writing the outputs cost nothing. Run ``--ceiling-repeat``
    times (median reported), before the workers start, so nothing else competes.

``workers``
    ``--workers`` ``touchpoint worker`` processes (sharing the partitions) and one
    ``touchpoint sink`` are launched together on the already-filled topic; timed from that
    launch (so process start-up and the group join are included, and reported separately)
    until the workers' consumer group (the app id) has committed every raw offset, i.e.
    every record is processed and its outputs are committed to Kafka (exactly once, in
    transactions).

``pipeline (workers+sink)``
    From the same launch until the sink's group has committed, for every output partition,
    the end of what the workers wrote (``end - 1`` counts: a transaction's commit marker
    takes the last offset), i.e. every row is inserted into ClickHouse (chDB). The sink is
    then stopped (SIGTERM: flush and exit), the workers too, and this script opens the
    chDB directory and counts the ``touchpoints`` rows against the generator's ground
    truth (``events_unique``).

With ``--staged`` the sink is started only once the workers are done (and stopped), so
``workers (alone)`` and ``sink (alone)`` (from its launch to the same end condition) are
each measured without the other competing for the CPU; ``pipeline (staged)`` is then the
wall time of both, one after the other.

With ``--metrics-compare`` the workers+sink phase runs twice in the same invocation, on
the same records: once with metrics off (no ``--metrics-port``, as above) and once with them
on (each worker and the sink serves ``/metrics`` on its own free port). Each pass is a
separate deployment: its own topic prefix, so its own raw, output and ``journey.store``
topics (they all derive from ``TOUCHPOINT_KAFKA_TOPIC_PREFIX``: passes sharing the raw topic
would share the store and append to the same outputs, and the second one would restore the
first one's journeys), its own app id, sink group and chDB directory. The file is therefore
produced once per pass; only the first produce is timed, and the ceiling reads that first
copy. The order is off then on (``--compare-rounds N`` adds pairs, alternately on then off
and off then on; medians). Just before the metrics-on processes are stopped, each one's
``/metrics`` is scraped once: the workers' ``touchpoint_worker_events_total`` (summed) and
the sink's ``touchpoint_sink_rows_total{table="touchpoints"}`` must reach the generator's
unique events (exit code 1 if not; above it is reported too). The result reports both
passes, events/s with metrics on over off, and what was scraped.

With ``--peer quix`` the same job written idiomatically with Quix Streams
(:mod:`bench.quix_peer`: exactly-once, RocksDB state per buyer key, a ``BatchingSink`` into
its own chDB directory) runs as its own process on the same broker and records, after the
Touchpoint runs, timed the same way: from its launch until its consumer group has committed
every offset of its input (Quix flushes its sinks before it commits), i.e. every row is in
chDB. Its input (``--quix-input``) is by default a per-event copy of the records: one
Touchpoint JSON per record keyed by buyer id (the classic contract a Quix user has),
produced by this script in the same event-time order as ``touchpoint produce``, plus the
same end-of-input watermarks; or the packed raw topic itself, which the job unpacks and
re-keys through a Quix repartition topic. With the peer (or ``--per-event``), Touchpoint
also runs on that per-event topic (its own deployment), and a raw consumer reads it too.
Afterwards every deployment's tables (``FINAL``) are compared with Touchpoint's on the
packed topic (:data:`ROW_VIEWS`); rows that must be equal and are not make the exit code 1.
The peer judges drop-offs only by each buyer's own events (see :mod:`bench.quix_peer`), so
its ``dropoffs`` and the drop-off columns of ``journey_state`` are compared but not required.

Events/s always divides the number of input records (lines of the file, including the
generator's duplicates and malformed records: what is on the raw topic apart from one
watermark per partition) by the phase's wall-clock seconds, so every ``vs ceiling`` ratio
is a ratio of seconds. The pipeline's rate of *unique events landed* is reported too.

Producing first, rather than concurrently with the workers, keeps each phase alone on the
machine; the pipeline figure is therefore a catch-up (backlog) rate, not the latency of a
live stream. Setup is not timed: starting the broker, generating the file, creating the
topics, migrating the chDB database.

CPU: the CPU seconds (user + system, all threads) of the broker, the workers, the sink
and this process are read from ``/proc`` and reported per phase as cores in use, beside
the whole machine's busy time ("other" is anything else running, e.g. a test suite, which
makes the figures unreliable, and the result says so; plus a little kernel time charged to
no process). The producer's CPU is its rusage.

Run from the repository root with the project's virtualenv (it starts ``python -m
touchpoint`` with the same interpreter)::

    .venv/bin/python -m bench.kafka_path --events 50000     # ~1-2 minutes
    .venv/bin/python -m bench.kafka_path                    # ~1M records; long (see README)
    .venv/bin/python -m bench.kafka_path --events 300000 --metrics-compare   # metrics cost
    .venv/bin/python -m bench.kafka_path --events 50000 --peer quix   # vs Quix Streams

Results are printed and written as JSON to ``bench/results/kafka_path-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench import common
from bench.common import (
    OTHER_CPU_LIMIT,
    REPO,
    BenchError,
    CpuMeter,
    Progress,
    Timed,
    add_dataset_options,
    add_run_options,
    buyers_for,
    changed_during_run,
    children_cpu,
    code_revision,
    count_lines,
    cpu_text,
    environment,
    free_port,
    generate,
    kafka_broker,
    kafka_version,
    median_run,
    package_versions,
    positive,
    stop_process,
    tail,
    warnings_text,
)
from ingest.generator import GeneratorConfig
from ingest.kafka import peek
from schemas.settings import Settings
from schemas.topics import CONTROL_HEADER, CONTROL_WATERMARK, Topics
from touchpoint import wiring

__all__ = ["main"]

logger = logging.getLogger("bench.kafka_path")

DEFAULT_PORT: Final = 29392
"""Away from the test suite's broker (39092) and a developer's (9092, 29092)."""
FAUST_FETCH_BYTES: Final = 4 * 1024 * 1024
"""``consumer_max_fetch_size`` of the worker's Faust app (processors/faust_app.py)."""
_POLL_SECONDS: Final = 0.5
_TIMELINE_SECONDS: Final = 10.0
_STOP_SECONDS: Final = 120.0
"""How long a ``touchpoint`` process may take to flush and exit after SIGTERM."""
_ROLES: Final = ("producer", "bench", "workers", "sink", "quix", "broker", "other")
"""The CPU figures shown, in this order."""
_OWN_SETTINGS: Final = frozenset(
    {
        "TOUCHPOINT_KAFKA_BOOTSTRAP",
        "TOUCHPOINT_KAFKA_PARTITIONS",
        "TOUCHPOINT_KAFKA_TOPIC_PREFIX",
        "TOUCHPOINT_KAFKA_APP_ID",
        "TOUCHPOINT_KAFKA_SINK_GROUP",
        "TOUCHPOINT_CLICKHOUSE_URL",
        "TOUCHPOINT_CLICKHOUSE_DATABASE",
        "TOUCHPOINT_DATA_DIR",
        "TOUCHPOINT_METRICS_PORT",
        "TOUCHPOINT_METRICS_HOST",
    }
)


@dataclass
class Phase(Timed):
    """One timed phase, with the cores each process used during it."""

    cpu_cores: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "records": self.records,
            "seconds": self.seconds,
            "events_per_second": self.events_per_second,
            "cpu_cores": self.cpu_cores,
            "details": self.details,
        }


# ------------------------------------------------------------------------- processes


@dataclass
class Deployment:
    """Names and settings of one pipeline (its own topics, groups and chDB directory)."""

    bootstrap: str
    partitions: int
    run_dir: Path
    label: str = ""
    """Names this deployment's chDB directory and process logs when a run has several."""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def prefix(self) -> str:
        return f"bench{self.tag}."

    @property
    def app_id(self) -> str:
        return f"bench-kafka-{self.tag}"

    @property
    def sink_group(self) -> str:
        return f"bench-kafka-{self.tag}-sink"

    @property
    def chdb_dir(self) -> Path:
        return self.run_dir / (f"clickhouse-{self.label}" if self.label else "clickhouse")

    def log(self, name: str) -> Path:
        """The log file of this deployment's process ``name``."""
        return self.run_dir / (f"{self.label}-{name}.log" if self.label else f"{name}.log")

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def env(self) -> dict[str, str]:
        """The environment of every ``touchpoint`` subprocess: the caller's, with our names."""
        env = {key: value for key, value in os.environ.items() if key not in _OWN_SETTINGS}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            TOUCHPOINT_KAFKA_BOOTSTRAP=self.bootstrap,
            TOUCHPOINT_KAFKA_PARTITIONS=str(self.partitions),
            TOUCHPOINT_KAFKA_TOPIC_PREFIX=self.prefix,
            TOUCHPOINT_KAFKA_APP_ID=self.app_id,
            TOUCHPOINT_KAFKA_SINK_GROUP=self.sink_group,
            TOUCHPOINT_CLICKHOUSE_URL=f"chdb:{self.chdb_dir}",
        )
        return env

    def settings(self) -> Settings:
        return wiring.load_settings(
            clickhouse_url=f"chdb:{self.chdb_dir}",
            kafka_bootstrap=self.bootstrap,
            kafka_partitions=self.partitions,
            kafka_topic_prefix=self.prefix,
            kafka_app_id=self.app_id,
            kafka_sink_group=self.sink_group,
        )

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "touchpoint", *args]

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``touchpoint`` command to completion (cwd: the scratch directory), logged."""
        result = subprocess.run(
            self.command(*args),
            env=self.env(),
            cwd=self.run_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        self.log(name).write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            raise BenchError(
                f"touchpoint {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        """Start a long-running ``touchpoint`` command; its output goes to ``<name>.log``."""
        log = self.log(name).open("wb")
        process = subprocess.Popen(
            self.command(*args), env=self.env(), cwd=self.run_dir, stdout=log, stderr=log
        )
        return process, log


# --------------------------------------------------------------------------- offsets


class Offsets:
    """Committed offsets of the two consumer groups and end offsets of the topics."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.admin = KafkaAdminClient(
            bootstrap_servers=deployment.bootstrap, client_id="bench-kafka-path"
        )
        self.probe = KafkaConsumer(
            bootstrap_servers=deployment.bootstrap, client_id="bench-kafka-path"
        )

    def close(self) -> None:
        self.admin.close()
        self.probe.close()

    def partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self.deployment.partitions)]

    def ends(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        tps = [tp for topic in topics for tp in self.partitions(topic)]
        ends: dict[TopicPartition, int] = self.probe.end_offsets(tps)
        return ends

    def committed(self, group: str) -> dict[TopicPartition, int]:
        try:
            offsets = self.admin.list_group_offsets(group).get(group, {})
        except KafkaError as exc:
            logger.debug("no committed offsets for %s yet: %s", group, exc)
            return {}
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


# ----------------------------------------------------------------------------- phases


def produce_phase(deployment: Deployment, events: Path, records: int) -> Phase:
    """``touchpoint produce --input events``, wall time of the whole command."""
    logger.info("produce: sending %s records", f"{records:,}")
    cpu_before = children_cpu()
    started = time.perf_counter()
    result = deployment.run("produce", "produce", "--input", str(events))
    seconds = time.perf_counter() - started
    cpu = children_cpu() - cpu_before
    found = re.search(r"Sent ([\d,]+) records", result.stdout)
    sent = int(found.group(1).replace(",", "")) if found else -1
    told = re.search(r"watermark sent to (\d+) partitions", result.stdout)
    watermarks = int(told.group(1)) if told else 0
    logger.info(
        "produce: %s records (%d of them watermarks) in %.1f s", f"{sent:,}", watermarks, seconds
    )
    if sent - watermarks != records:
        raise BenchError(f"produce sent {sent} records ({watermarks} watermarks), file: {records}")
    return Phase(
        "produce",
        records,
        seconds,
        cpu_cores={"producer": round(cpu / seconds, 3)},
        details={
            "acknowledged": sent,
            "watermarks": watermarks,
            "summary": result.stdout.strip().splitlines()[-1:],
        },
    )


async def _drain(bootstrap: str, topic: str, partitions: int) -> tuple[int, int, float]:
    """Read ``topic`` from the beginning to its end, touching nothing; (records, bytes, s)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=FAUST_FETCH_BYTES,
    )
    started = time.perf_counter()
    await consumer.start()
    try:
        tps = [AioTopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        records = size = 0
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                if not messages:
                    continue
                records += len(messages)
                size += sum(len(message.value or b"") for message in messages)
                if messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return records, size, seconds


def ceiling_phase(
    deployment: Deployment, meter: CpuMeter, records: int, repeat: int, raw_end: int
) -> Phase:
    """A raw aiokafka consumer over the whole raw topic, ``repeat`` times; the median run."""
    runs: list[Phase] = []
    for number in range(1, repeat + 1):
        before = meter.snapshot()
        read, size, seconds = asyncio.run(
            _drain(deployment.bootstrap, deployment.topics.raw, deployment.partitions)
        )
        cores = meter.cores(before, meter.snapshot())
        logger.info(
            "ceiling run %d of %d: %s records (%.0f MiB) in %.2f s",
            number,
            repeat,
            f"{read:,}",
            size / 2**20,
            seconds,
        )
        if read != raw_end:
            raise BenchError(f"the raw consumer read {read} records, the topic holds {raw_end}")
        runs.append(
            Phase(
                "ceiling (raw aiokafka)",
                records,
                seconds,
                cpu_cores=cores,
                details={"records_read": read, "value_bytes": size},
            )
        )
    chosen = median_run(runs, key=lambda run: run.seconds)
    chosen.details["runs_seconds"] = [run.seconds for run in runs]
    return chosen


def scrape_metrics(port: int) -> dict[str, Any]:
    """A few values from a worker's or sink's ``/metrics`` (served on 127.0.0.1, the default)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8")
    sums: dict[str, float] = {}
    rows: dict[str, float] = {}
    samples = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples += 1
            if sample.name == "touchpoint_sink_rows_total":
                rows[sample.labels["table"]] = sample.value
            elif sample.name in (
                "touchpoint_worker_events_total",
                "touchpoint_worker_duplicates_total",
                "touchpoint_worker_dead_letters_total",
                "touchpoint_sink_batch_rows_count",
            ):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return {
        "port": port,
        "samples": samples,
        **{name: int(value) for name, value in sorted(sums.items())},
        **(
            {"touchpoint_sink_rows_total": {t: int(v) for t, v in sorted(rows.items())}}
            if rows
            else {}
        ),
    }


def _sink_done(committed: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]) -> bool:
    # A transaction's commit marker takes a partition's last offset: the sink's committed
    # position may rest on it (end - 1) or past it (end).
    return all(end == 0 or committed.get(tp, -1) >= end - 1 for tp, end in ends.items())


def pipeline_phases(
    deployment: Deployment,
    meter: CpuMeter,
    records: int,
    raw_end: int,
    workers: int,
    timeout: float,
    staged: bool,
    metrics: bool = False,
) -> tuple[list[Phase], dict[str, Any]]:
    """Workers and sink on the filled topic: the workers, (sink,) pipeline phases; sink stats.

    Together (default): the workers and the sink start at once. ``staged``: the workers run
    alone until they are done and are stopped, then the sink runs alone. ``metrics``: every
    process serves /metrics on its own free port (``--metrics-port``), scraped once just
    before it is stopped (the stats' ``scraped``, by process name).
    """
    offsets = Offsets(deployment)
    raw_tps = offsets.partitions(deployment.topics.raw)
    processes: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
    ports: dict[str, int] = {}
    scraped: dict[str, dict[str, Any]] = {}

    def launch(name: str, *args: str) -> None:
        if metrics:
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[name] = port
            args = (*args, "--metrics-port", str(port))
        process, log = deployment.start(name, *args)
        processes[name] = (process, log)
        meter.track(name, process.pid, "sink" if name == "sink" else "workers")

    def scrape(names: Sequence[str]) -> None:
        for name in names:
            if name in ports:
                try:
                    scraped[name] = scrape_metrics(ports[name])
                except (OSError, ValueError) as exc:
                    raise BenchError(
                        f"cannot scrape {name}'s /metrics on port {ports[name]}: {exc}"
                    ) from exc

    def stop(name: str) -> int:
        process, log = processes.pop(name)
        code = stop_process(process, name, _STOP_SECONDS)
        log.close()
        if code not in (0, -signal.SIGTERM):
            logger.warning("%s exited %d; see %s", name, code, deployment.log(name))
        return code

    try:
        before = meter.snapshot()
        started = time.perf_counter()
        for number in range(1, workers + 1):
            launch(f"worker-{number}", "worker")
        sink_started: float | None = None
        sink_before = before
        if not staged:
            launch("sink", "sink")
            sink_started = 0.0
        logger.info(
            "%d worker(s)%s started (pids %s); waiting for %s raw offsets to be committed",
            workers,
            " and a sink" if not staged else "",
            ", ".join(str(process.pid) for process, _ in processes.values()),
            f"{raw_end:,}",
        )
        meter.timeline_point("start")
        progress = Progress("workers committed", raw_end)
        first_commit: float | None = None
        workers_done: float | None = None
        workers_cpu: dict[str, float] = {}
        output_ends: dict[TopicPartition, int] = {}
        sink_committed: dict[TopicPartition, int] = {}
        done_raw = first_raw = sink_sum = 0
        sink_advanced = 0.0
        last_point = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now - started > timeout:
                raise BenchError(
                    f"gave up after {timeout:.0f} s: workers committed {done_raw:,} of "
                    f"{raw_end:,} raw offsets; the sink {sink_sum:,} of "
                    f"{sum(output_ends.values()) or '(not known yet)'} output offsets"
                )
            for name, (process, _) in processes.items():
                if process.poll() is not None:
                    raise BenchError(
                        f"{name} exited early with code {process.returncode}:\n"
                        + tail(deployment.log(name))
                    )
            if workers_done is None:
                committed = offsets.committed(deployment.app_id)
                now_raw = sum(committed.get(tp, 0) for tp in raw_tps)
                now = time.perf_counter()
                if now_raw > done_raw:
                    if first_commit is None:
                        first_commit, first_raw = now - started, now_raw
                        logger.info("first raw offsets committed after %.1f s", first_commit)
                    progress(now_raw - done_raw)
                    done_raw = now_raw
                if done_raw >= raw_end:
                    workers_done = now - started
                    workers_cpu = meter.cores(before, meter.snapshot())
                    output_ends = offsets.ends(deployment.topics.outputs)
                    logger.info(
                        "workers done after %.1f s; %s output offsets for the sink",
                        workers_done,
                        f"{sum(output_ends.values()):,}",
                    )
                    if staged:
                        started_workers = [name for name in processes if name.startswith("worker-")]
                        scrape(started_workers)
                        for name in started_workers:
                            stop(name)
                        sink_before = meter.snapshot()
                        sink_started = time.perf_counter() - started
                        launch("sink", "sink")
                        logger.info(
                            "sink started %.1f s after the workers finished",
                            sink_started - workers_done,
                        )
            if sink_started is not None:
                sink_committed = offsets.committed(deployment.sink_group)
                if sum(sink_committed.values()) > sink_sum:
                    sink_sum = sum(sink_committed.values())
                    sink_advanced = time.perf_counter() - started
                if workers_done is not None and _sink_done(sink_committed, output_ends):
                    break
            if now - last_point >= _TIMELINE_SECONDS:
                last_point = now
                meter.timeline_point(
                    f"{now - started:.0f} s:",
                    committed_raw=float(done_raw),
                    sink_committed=float(sink_sum),
                )
            time.sleep(_POLL_SECONDS)
        pipeline_seconds = time.perf_counter() - started
        end = meter.snapshot()
        pipeline_cpu = meter.cores(before, end)
        sink_cpu = meter.cores(sink_before, end)
        meter.timeline_point("end", committed_raw=float(done_raw), sink_committed=float(sink_sum))
        logger.info("sink done after %.1f s: stopping it", pipeline_seconds)
        scrape(list(processes))
        stopped_at = time.perf_counter()
        code = stop("sink")
        sink_out = deployment.log("sink").read_text(errors="replace")
        if code != 0:
            raise BenchError(f"the sink exited {code} on SIGTERM:\n{tail(deployment.log('sink'))}")
        stats = re.search(r"Sink stopped after ([\d,]+) messages in ([\d,]+) batches", sink_out)
        sink_details: dict[str, Any] = {
            "stop_seconds": time.perf_counter() - stopped_at,
            "messages": int(stats.group(1).replace(",", "")) if stats else None,
            "batches": int(stats.group(2).replace(",", "")) if stats else None,
            "output_offsets": sum(output_ends.values()),
            "metrics_ports": ports or None,
            "scraped": scraped or None,
        }
    finally:
        for name in list(processes):
            stop(name)
        offsets.close()
    assert workers_done is not None and sink_started is not None
    phases = [
        Phase(
            "workers (alone)" if staged else "workers",
            records,
            workers_done,
            cpu_cores=workers_cpu,
            details={
                "workers": workers,
                "startup_seconds": first_commit,
                "raw_offsets": raw_end,
                # raw offsets are packs on a packed topic: scaled to input records
                "after_first_commit_events_per_second": (
                    records * (raw_end - first_raw) / raw_end / (workers_done - first_commit)
                    if first_commit is not None and workers_done > first_commit
                    else None
                ),
            },
        )
    ]
    if staged:
        phases.append(
            Phase(
                "sink (alone)",
                records,
                pipeline_seconds - sink_started,
                cpu_cores=sink_cpu,
                details={"output_messages": sink_details["messages"]},
            )
        )
    phases.append(
        Phase(
            "pipeline (staged)" if staged else "pipeline (workers+sink)",
            records,
            pipeline_seconds,
            cpu_cores=pipeline_cpu,
            details={
                "sink_lag_after_workers_seconds": pipeline_seconds - workers_done,
                "sink_last_commit_seconds": sink_advanced,
                "staged": staged,
            },
        )
    )
    return phases, sink_details


# ------------------------------------------------------------------------ the peer


def produce_keyed_phase(deployment: Deployment, events: Path, records: int) -> Phase:
    """The classic contract: one record per touchpoint, keyed by buyer id (murmur2, like
    ``touchpoint produce``'s packs), in the same event-time order, then one source watermark
    per partition. In this process (kafka-python, the producer's settings); untimed prep
    for the per-event runs, reported for scale."""
    topic = deployment.topics.raw
    logger.info("produce (per event, keyed): %s records into %s", f"{records:,}", topic)
    payloads, _ = wiring.file_payloads([events])
    started = time.perf_counter()
    cpu_before = time.process_time()
    producer = KafkaProducer(
        bootstrap_servers=deployment.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="zstd",
        linger_ms=20,
        max_request_size=2_000_000,
        client_id="bench-keyed-producer",
    )
    acked = [0]
    failed: list[BaseException] = []
    newest: datetime | None = None
    sent = 0
    try:
        for data in payloads:
            key, at = peek(data)
            if at is not None and (newest is None or at > newest):
                newest = at
            future = producer.send(topic, key=key, value=data)
            future.add_callback(lambda _meta: acked.__setitem__(0, acked[0] + 1))
            future.add_errback(failed.append)
            sent += 1
        producer.flush()
        partitions = sorted(producer.partitions_for(topic) or ())
        if newest is not None:
            for partition in partitions:
                future = producer.send(
                    topic,
                    value=newest.isoformat().encode(),
                    partition=partition,
                    headers=[(CONTROL_HEADER, CONTROL_WATERMARK)],
                )
                future.add_callback(lambda _meta: acked.__setitem__(0, acked[0] + 1))
                future.add_errback(failed.append)
                sent += 1
        producer.flush()
    finally:
        producer.close(timeout=30)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    if failed or acked[0] != sent:
        raise BenchError(
            f"keyed produce: {acked[0]} of {sent} records acknowledged; first error: "
            f"{failed[0] if failed else None}"
        )
    logger.info(
        "produce (per event, keyed): %s records acknowledged in %.1f s", f"{sent:,}", seconds
    )
    return Phase(
        "produce (per event, keyed)",
        records,
        seconds,
        cpu_cores={"bench": round(cpu / seconds, 3)},
        details={"acknowledged": sent, "watermarks": len(partitions) if newest else 0},
    )


@dataclass
class Peer:
    """The Quix Streams job: its input, group, chDB and state directories."""

    deployment: Deployment
    """Names its chDB directory and log (label ``quix``); its own topics are Quix's
    (changelog, and a repartition topic for a packed input), named after the group."""
    input_topic: str
    packed: bool
    commit_interval: float

    @property
    def group(self) -> str:
        return f"bench-quix-{self.deployment.tag}"

    @property
    def state_dir(self) -> Path:
        return self.deployment.run_dir / "quix-state"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.quix_peer",
            "--bootstrap",
            self.deployment.bootstrap,
            "--topic",
            self.input_topic,
            "--group",
            self.group,
            "--clickhouse-dir",
            str(self.deployment.chdb_dir),
            "--state-dir",
            str(self.state_dir),
            "--input",
            "packed" if self.packed else "per-event",
            "--commit-interval",
            str(self.commit_interval),
        ]


def quix_phase(peer: Peer, meter: CpuMeter, records: int, timeout: float) -> Phase:
    """The peer launched on its filled input topic, until its group has committed every
    input offset (and, packed, every repartition offset: ``end - 1``, its records are
    written in transactions). Quix flushes its sinks before it commits a checkpoint, so
    by then every row is in chDB. Then SIGTERM (commit, close)."""
    deployment = peer.deployment
    offsets = Offsets(deployment)
    input_tps = offsets.partitions(peer.input_topic)
    input_end = sum(offsets.ends([peer.input_topic]).values())
    log_path = deployment.log("peer")
    log = log_path.open("wb")
    before = meter.snapshot()
    started = time.perf_counter()
    process = subprocess.Popen(
        peer.command(), env=deployment.env(), cwd=deployment.run_dir, stdout=log, stderr=log
    )
    meter.track("quix", process.pid, "quix")
    logger.info(
        "quix peer started (pid %d) on %s (%s); waiting for %s input offsets",
        process.pid,
        peer.input_topic,
        "packed" if peer.packed else "per event",
        f"{input_end:,}",
    )
    meter.timeline_point("quix start")
    progress = Progress("quix committed", input_end)
    done_input = first_commit = 0.0
    first_seconds: float | None = None
    input_seconds: float | None = None
    repartition_ends: dict[TopicPartition, int] = {}
    last_point = started
    try:
        while True:
            now = time.perf_counter()
            if now - started > timeout:
                raise BenchError(
                    f"gave up after {timeout:.0f} s: the quix peer committed {done_input:,.0f} "
                    f"of {input_end:,} input offsets; see {log_path}"
                )
            if process.poll() is not None:
                raise BenchError(
                    f"the quix peer exited early with code {process.returncode}:\n" + tail(log_path)
                )
            committed = offsets.committed(peer.group)
            now = time.perf_counter()
            if input_seconds is None:
                now_input = sum(committed.get(tp, 0) for tp in input_tps)
                if now_input > done_input:
                    if first_seconds is None:
                        first_seconds, first_commit = now - started, now_input
                        logger.info("quix: first offsets committed after %.1f s", first_seconds)
                    progress(int(now_input - done_input))
                    done_input = now_input
                if done_input >= input_end:
                    input_seconds = now - started
                    if peer.packed:
                        repartition = [
                            topic
                            for topic in offsets.admin.list_topics()
                            if topic.startswith("repartition__") and peer.group in topic
                        ]
                        repartition_ends = offsets.ends(repartition)
            if input_seconds is not None and _sink_done(committed, repartition_ends):
                break
            if now - last_point >= _TIMELINE_SECONDS:
                last_point = now
                meter.timeline_point(f"quix {now - started:.0f} s:", committed=done_input)
            time.sleep(_POLL_SECONDS)
        seconds = time.perf_counter() - started
        cores = meter.cores(before, meter.snapshot())
        meter.timeline_point("quix end", committed=done_input)
        logger.info("quix peer done after %.1f s: stopping it", seconds)
        code = stop_process(process, "quix", _STOP_SECONDS)
    finally:
        if process.poll() is None:
            stop_process(process, "quix", _STOP_SECONDS)
        log.close()
        offsets.close()
    output = log_path.read_text(errors="replace")
    if code not in (0, -signal.SIGTERM):
        raise BenchError(f"the quix peer exited {code} on SIGTERM:\n{tail(log_path)}")
    stats = re.search(
        r"Quix peer stopped after ([\d,]+) messages \(([\d,]+) events, ([\d,]+) rows\)", output
    )
    after_first = (  # input offsets (packs, if packed) scaled to input records
        records * (input_end - first_commit) / input_end / (input_seconds - first_seconds)
        if first_seconds is not None and input_seconds is not None and input_seconds > first_seconds
        else None
    )
    return Phase(
        f"quix peer [{'packed' if peer.packed else 'per-event'}]",
        records,
        seconds,
        cpu_cores=cores,
        details={
            "input_topic": peer.input_topic,
            "input": "packed" if peer.packed else "per-event",
            "input_offsets": input_end,
            "consumer_group": peer.group,
            "commit_interval": peer.commit_interval,
            "startup_seconds": first_seconds,
            "after_first_commit_events_per_second": after_first,
            "repartition_offsets": sum(repartition_ends.values()) if peer.packed else None,
            "messages": int(stats.group(1).replace(",", "")) if stats else None,
            "events_decoded": int(stats.group(2).replace(",", "")) if stats else None,
            "rows_written": int(stats.group(3).replace(",", "")) if stats else None,
            "exit_code": code,
        },
    )


# ------------------------------------------------------------------ row comparison

_JUDGED: Final = ("dropoff_stage", "dropoff_at", "version")
"""journey_state columns set by drop-off judgements (a judgement is a version)."""
ROW_VIEWS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    # view: (table, columns left out)
    "touchpoints": ("touchpoints", ("inserted_at", "source", "source_position")),
    "touchpoints (+source, position)": ("touchpoints", ("inserted_at",)),
    "journey_state": ("journey_state", ()),
    "journey_state (not judged)": ("journey_state", _JUDGED),
    "stage_transitions": ("stage_transitions", ("version",)),
    "dropoffs": ("dropoffs", ("version",)),
    "dead_letters": ("dead_letters", ("dead_letter_id", "source", "position", "recorded_at")),
}
"""What is compared, each read with ``FINAL`` and every remaining column, sorted.
``inserted_at`` is the insert time; ``source``/``source_position`` name the topic and
offset (different topics, or packs, give different ones: compared only between runs on
the same records); a ``version`` of transitions and drop-offs counts the buyer's state
changes up to the batch that wrote the row (batches differ between drivers); dead letters
carry their position in their id and their processing time."""


def dump_rows(deployment: Deployment, directory: Path) -> dict[str, Path]:
    """Each :data:`ROW_VIEWS` view of the deployment's chDB as a sorted TSV file."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = deployment.settings()
    database = settings.clickhouse.database
    files: dict[str, Path] = {}
    with wiring.clickhouse(settings, migrate=False) as client:
        for view, (table, left_out) in ROW_VIEWS.items():
            names = [
                str(row[0])
                for row in client.query(
                    "SELECT name FROM system.columns WHERE database = {db:String} "
                    "AND table = {table:String} ORDER BY position",
                    parameters={"db": database, "table": table},
                ).result_rows
            ]
            columns = ", ".join(f"`{name}`" for name in names if name not in left_out)
            rows = client.query(
                f"SELECT {columns} FROM {database}.{table} FINAL ORDER BY {columns}"
            ).result_rows
            path = directory / (re.sub(r"[^a-z_]+", "-", view).strip("-") + ".tsv")
            with path.open("w", encoding="utf-8") as out:
                for row in rows:
                    out.write("\t".join(map(repr, row)) + "\n")
            files[view] = path
    return files


def compare_rows(
    reference: Mapping[str, Path], other: Mapping[str, Path], views: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per view: rows of each side, whether they are equal, and what differs (a few examples)."""
    result: dict[str, dict[str, Any]] = {}
    for view in views:
        left = reference[view].read_text(encoding="utf-8").splitlines()
        right = other[view].read_text(encoding="utf-8").splitlines()
        entry: dict[str, Any] = {"rows": [len(left), len(right)], "equal": left == right}
        if left != right:
            only_left = Counter(left) - Counter(right)
            only_right = Counter(right) - Counter(left)
            entry["only_in_reference"] = sum(only_left.values())
            entry["only_in_other"] = sum(only_right.values())
            entry["examples_reference"] = [line[:400] for line in list(only_left)[:3]]
            entry["examples_other"] = [line[:400] for line in list(only_right)[:3]]
        result[view] = entry
    return result


_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    # Touchpoint on another copy of the records: the same processor, so every view.
    "touchpoint": tuple(view for view in ROW_VIEWS if view != "touchpoints (+source, position)"),
    # The peer judges drop-offs only by a buyer's own events (bench/quix_peer.py).
    "quix": ("touchpoints", "journey_state (not judged)", "stage_transitions", "dead_letters"),
}


def _compare_deployments(
    reference: Deployment,
    compared: Mapping[str, Deployment],
    peer: Peer | None,
    event_pass: Pass | None,
    run_dir: Path,
) -> dict[str, Any]:
    """Rows of every other deployment against Touchpoint's on the packed topic (and the
    peer's against Touchpoint's on the same per-event topic, source and position included)."""
    rows_dir = run_dir / "rows"
    logger.info("comparing rows (dumps in %s)", rows_dir)
    files = {"touchpoint packed": dump_rows(reference, rows_dir / "touchpoint-packed")}
    for name, deployment in compared.items():
        files[name] = dump_rows(deployment, rows_dir / name.replace(" ", "-"))
    pairs: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = []
    for name in compared:
        kind = "quix" if name == "quix" else "touchpoint"
        views = tuple(view for view in ROW_VIEWS if view != "touchpoints (+source, position)")
        pairs.append(("touchpoint packed", name, views, _REQUIRED[kind]))
    if (
        peer is not None
        and not peer.packed
        and event_pass is not None
        and "touchpoint per-event" in compared
        and peer.input_topic == event_pass.deployment.topics.raw
    ):
        same = ("touchpoints (+source, position)",)
        pairs.append(("touchpoint per-event", "quix", same, same))
    comparisons: list[dict[str, Any]] = []
    equal = True
    for left, right, views, required in pairs:
        found = compare_rows(files[left], files[right], views)
        differing = [view for view in required if not found[view]["equal"]]
        if differing:
            equal = False
            logger.warning("rows of %s differ from %s in: %s", right, left, ", ".join(differing))
        comparisons.append(
            {
                "reference": left,
                "other": right,
                "required": list(required),
                "equal": not differing,
                "views": found,
            }
        )
    return {
        "views": {
            view: {"table": table, "left_out": list(out)}
            for view, (table, out) in ROW_VIEWS.items()
        },
        "comparisons": comparisons,
        "equal": equal,
    }


def count_rows(deployment: Deployment) -> dict[str, Any]:
    """Rows in ClickHouse after the sink exited (this process opens the chDB directory)."""
    settings = deployment.settings()
    database = settings.clickhouse.database
    with wiring.clickhouse(settings, migrate=False) as client:

        def count(sql: str) -> int:
            value = client.command(sql)
            assert isinstance(value, int | str), value
            return int(value)

        tables = ("touchpoints", "stage_transitions", "journey_state", "dropoffs", "dead_letters")
        return {
            "touchpoints_rows": count(f"SELECT count() FROM {database}.touchpoints"),
            "touchpoints_final": count(f"SELECT count() FROM {database}.touchpoints FINAL"),
            "tables_final": {
                table: count(f"SELECT count() FROM {database}.{table} FINAL") for table in tables
            },
        }


# ----------------------------------------------------------------------- orchestration


def _generate(events: Path, buyers: int, seed: int) -> dict[str, Any]:
    """What ``touchpoint generate --buyers N --seed S`` writes (same generator settings)."""
    settings = wiring.load_settings()
    rules = wiring.rules_for(settings)
    config = GeneratorConfig(
        buyers=buyers,
        seed=seed,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    return generate(events, config)


def _environment() -> dict[str, Any]:
    return environment(
        "faust-streaming",
        "aiokafka",
        "kafka-python",
        "chdb",
        "clickhouse-connect",
        git=code_revision(),
        load_average_at_start=os.getloadavg() if hasattr(os, "getloadavg") else None,
        kafka_version=kafka_version(),
        touchpoint_env={  # values too: the settings a run used, none of them secret
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith("TOUCHPOINT_") and "PASSWORD" not in name and "USER" not in name
        },
    )


@dataclass
class Pass:
    """One workers+sink pass over its own copy of the raw topic (several with --metrics-compare)."""

    deployment: Deployment
    metrics: bool
    round: int
    produce_seconds: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    sink: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)


def _compare_plan(rounds: int) -> list[tuple[int, bool]]:
    """(round, metrics on) in run order: off then on in odd rounds, on then off in even ones."""
    return [
        (number, metrics)
        for number in range(1, rounds + 1)
        for metrics in ((False, True) if number % 2 else (True, False))
    ]


def _raw_ends(deployment: Deployment) -> list[int]:
    """End offset of each raw partition, by partition number."""
    offsets = Offsets(deployment)
    try:
        ends = offsets.ends([deployment.topics.raw])
    finally:
        offsets.close()
    return [ends[tp] for tp in sorted(ends, key=lambda tp: tp.partition)]


def benchmark(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    environment = _environment()
    peer_wanted = args.peer == "quix"
    quix_packed = args.quix_input == "packed"
    buyers = buyers_for(args)
    events = run_dir / f"events-seed{args.seed}-buyers{buyers}.jsonl"
    dataset: dict[str, Any] = {"path": str(events), **_generate(events, buyers, args.seed)}
    records = count_lines(events)
    dataset["records"] = records
    dataset["bytes"] = events.stat().st_size
    logger.info("input: %s records, %.0f MiB", f"{records:,}", dataset["bytes"] / 2**20)
    compare = args.metrics_compare

    meter = CpuMeter(_ROLES)
    meter.track("bench", os.getpid())
    meter.start()
    try:
        with kafka_broker(args.port, run_dir / "kafka-start.log") as (bootstrap, broker_pid):
            if broker_pid is not None:
                meter.track("broker", broker_pid)
            # With --metrics-compare every pass has its own prefix (raw, output and store
            # topics), app id, sink group and chDB directory: the same records are produced
            # once per pass (only the first produce is timed), so no pass sees another's
            # outputs or restores another's journey state.
            passes = [
                Pass(
                    Deployment(
                        bootstrap,
                        args.partitions,
                        run_dir,
                        label=f"{'on' if metrics else 'off'}{number}" if compare else "",
                    ),
                    metrics,
                    number,
                )
                for number, metrics in (
                    _compare_plan(args.compare_rounds) if compare else [(1, False)]
                )
            ]
            deployment = passes[0].deployment
            # --per-event: Touchpoint again on a per-event, keyed copy of the records (its
            # own deployment); --peer quix: the Quix Streams job on that copy (or, with
            # --quix-input packed, on the packed raw topic), its own group and chDB.
            event_pass = (
                Pass(Deployment(bootstrap, args.partitions, run_dir, label="event"), False, 1)
                if args.per_event or (peer_wanted and not quix_packed)
                else None
            )
            peer = (
                Peer(
                    Deployment(bootstrap, args.partitions, run_dir, label="quix"),
                    input_topic=(
                        deployment.topics.raw
                        if quix_packed or event_pass is None
                        else event_pass.deployment.topics.raw
                    ),
                    packed=quix_packed,
                    commit_interval=args.quix_commit_interval,
                )
                if peer_wanted
                else None
            )
            setup_started = time.perf_counter()
            for each in passes:
                wiring.ensure_pipeline_topics(each.deployment.settings())
                each.deployment.run("migrate", "migrate")
            if event_pass is not None:
                wiring.ensure_pipeline_topics(event_pass.deployment.settings())
                if args.per_event:
                    event_pass.deployment.run("migrate", "migrate")
            if peer is not None:
                peer.deployment.run("migrate", "migrate")
            setup = time.perf_counter() - setup_started
            logger.info(
                "topics under %s created, chDB migrated in %.1f s",
                ", ".join(each.deployment.prefix for each in passes),
                setup,
            )

            produce = produce_phase(deployment, events, records)
            passes[0].produce_seconds = produce.seconds
            raw_ends = _raw_ends(deployment)
            raw_end = sum(raw_ends)
            for each in passes[1:]:
                logger.info("produce again (untimed) under %s", each.deployment.prefix)
                each.produce_seconds = produce_phase(each.deployment, events, records).seconds
                # Keyed records land on the same partitions; records with no buyer id (some of
                # the malformed ones, dead-lettered anyway) may not, so only totals must match.
                copied = _raw_ends(each.deployment)
                if sum(copied) != raw_end:
                    raise BenchError(
                        f"the raw topic under {each.deployment.prefix} holds {sum(copied)} "
                        f"records, under {deployment.prefix} {raw_end}"
                    )
            keyed: Phase | None = None
            event_ceiling: Phase | None = None
            event_raw_end = 0
            if event_pass is not None:
                keyed = produce_keyed_phase(event_pass.deployment, events, records)
                event_raw_end = sum(_raw_ends(event_pass.deployment))
                if event_raw_end != records + keyed.details["watermarks"]:
                    raise BenchError(
                        f"the per-event topic holds {event_raw_end} records, expected "
                        f"{records} + {keyed.details['watermarks']} watermarks"
                    )
            ceiling = ceiling_phase(deployment, meter, records, args.ceiling_repeat, raw_end)
            if event_pass is not None:
                event_ceiling = ceiling_phase(
                    event_pass.deployment, meter, records, args.ceiling_repeat, event_raw_end
                )
                event_ceiling.phase += " [per-event]"
            for number, each in enumerate(passes, 1):
                if compare:
                    logger.info(
                        "pass %d of %d: metrics %s, topics under %s",
                        number,
                        len(passes),
                        "on" if each.metrics else "off",
                        each.deployment.prefix,
                    )
                each.phases, each.sink = pipeline_phases(
                    each.deployment,
                    meter,
                    records,
                    raw_end,
                    args.workers,
                    args.timeout,
                    args.staged,
                    metrics=each.metrics,
                )
            if event_pass is not None and args.per_event:
                logger.info(
                    "touchpoint on the per-event topic %s", event_pass.deployment.topics.raw
                )
                event_pass.phases, event_pass.sink = pipeline_phases(
                    event_pass.deployment,
                    meter,
                    records,
                    event_raw_end,
                    args.workers,
                    args.timeout,
                    args.staged,
                )
                for phase in event_pass.phases:
                    phase.phase += " [per-event]"
            quix: Phase | None = None
            if peer is not None:
                quix = quix_phase(peer, meter, records, args.timeout)
        for each in passes:
            each.stored = count_rows(each.deployment)
        compared: dict[str, Deployment] = {}
        if event_pass is not None and args.per_event:
            event_pass.stored = count_rows(event_pass.deployment)
            compared["touchpoint per-event"] = event_pass.deployment
        peer_stored: dict[str, Any] | None = None
        if peer is not None:
            peer_stored = count_rows(peer.deployment)
            compared["quix"] = peer.deployment
        rows = (
            _compare_deployments(passes[0].deployment, compared, peer, event_pass, run_dir)
            if compared
            else None
        )
    finally:
        meter.stop()
    unique = dataset["events_unique"]
    complete = True
    for each in passes:
        pipeline = each.phases[-1]
        pipeline.details["unique_events"] = unique
        pipeline.details["unique_events_per_second"] = unique / pipeline.seconds
        if each.stored["touchpoints_final"] != unique:
            complete = False
            logger.warning(
                "ClickHouse%s holds %s unique touchpoints, the generator made %s",
                f" ({each.deployment.label})" if compare else "",
                f"{each.stored['touchpoints_final']:,}",
                f"{unique:,}",
            )
        if compare:
            for phase in each.phases:
                phase.phase = f"{phase.phase} [{each.deployment.label}]"
    if event_pass is not None and args.per_event:
        if event_pass.stored["touchpoints_final"] != unique:
            complete = False
            logger.warning(
                "ClickHouse (per-event) holds %s unique touchpoints, the generator made %s",
                f"{event_pass.stored['touchpoints_final']:,}",
                f"{unique:,}",
            )
    if peer_stored is not None and peer_stored["touchpoints_final"] != unique:
        complete = False
        logger.warning(
            "the quix peer's ClickHouse holds %s unique touchpoints, the generator made %s",
            f"{peer_stored['touchpoints_final']:,}",
            f"{unique:,}",
        )
    main = passes[0]
    downstream, sink, stored = main.phases, main.sink, main.stored
    workers, pipeline = downstream[0], downstream[-1]
    code_changed = changed_during_run(environment["git"], code_revision())
    phases = [
        produce,
        *([keyed] if keyed is not None else []),
        ceiling,
        *([event_ceiling] if event_ceiling is not None else []),
        *(phase for each in passes for phase in each.phases),
        *(event_pass.phases if event_pass is not None else []),
        *([quix] if quix is not None else []),
    ]
    contention = max(phase.cpu_cores.get("other", 0.0) for phase in phases)
    if contention > OTHER_CPU_LIMIT:
        logger.warning(
            "other processes used up to %.2f cores during a phase: figures are disturbed",
            contention,
        )
    metrics_compare = _metrics_comparison(passes, unique) if compare else None
    return {
        "benchmark": "kafka_path",
        "started_at": args.started_at,
        "config": {
            "events_target": args.events,
            "buyers": buyers,
            "seed": args.seed,
            "workers": args.workers,
            "partitions": args.partitions,
            "port": args.port,
            "ceiling_repeat": args.ceiling_repeat,
            "staged": args.staged,
            "metrics_compare": compare,
            "compare_rounds": args.compare_rounds if compare else None,
            "timing": "produce first; workers and pipeline timed from the launch of the "
            "worker processes on the filled topic; the sink starts with them, or when they "
            "are done if staged"
            + (
                "; --metrics-compare: one workers+sink pass per (round, metrics off/on), each "
                "on its own copy of the raw topic (produced untimed after the timed produce), "
                "off then on in odd rounds, on then off in even ones"
                if compare
                else ""
            ),
        },
        "environment": environment,
        "code_changed_during_run": code_changed,
        "max_other_cpu_cores": contention,
        "dataset": dataset,
        "setup_seconds": setup,
        "raw_topic_records": raw_end,
        "phases": [phase.as_dict() for phase in phases],
        "sink": sink,
        "clickhouse": stored,
        "complete": complete,
        "metrics_compare": metrics_compare,
        "peak_rss_mib": meter.peak_rss_by_group(),
        "cpu_timeline": meter.timeline,
        "ratio_pipeline_to_ceiling": _ratio(pipeline, ceiling),
        "ratio_workers_to_ceiling": _ratio(workers, ceiling),
        "ratio_produce_to_ceiling": _ratio(produce, ceiling),
        "ratio_sink_to_ceiling": _ratio(downstream[1], ceiling) if args.staged else None,
        "per_event": (
            {
                "raw_topic": event_pass.deployment.topics.raw,
                "raw_topic_records": event_raw_end,
                "touchpoint": bool(args.per_event),
                "sink": event_pass.sink or None,
                "clickhouse": event_pass.stored or None,
                "ratio_pipeline_to_ceiling": (
                    _ratio(event_pass.phases[-1], event_ceiling)
                    if event_pass.phases and event_ceiling is not None
                    else None
                ),
            }
            if event_pass is not None
            else None
        ),
        "peer": (
            {
                "name": "quix",
                "quixstreams": package_versions("quixstreams", "confluent-kafka"),
                "input": "packed" if peer.packed else "per-event",
                "input_topic": peer.input_topic,
                "consumer_group": peer.group,
                "clickhouse": peer_stored,
                "ratio_pipeline_to_quix": _ratio(pipeline, quix),
                "ratio_pipeline_per_event_to_quix": (
                    _ratio(event_pass.phases[-1], quix)
                    if event_pass is not None and event_pass.phases
                    else None
                ),
            }
            if peer is not None and quix is not None
            else None
        ),
        "rows_compared": rows,
        "rows_equal": rows is None or rows["equal"],
    }


def _metrics_comparison(passes: Sequence[Pass], unique: int) -> dict[str, Any]:
    """Events/s with metrics off and on (medians over rounds), their ratio, and the scrapes."""
    rows: list[dict[str, Any]] = []
    for each in passes:
        workers, pipeline = each.phases[0], each.phases[-1]
        scraped = each.sink.get("scraped") or {}
        worker_events = sink_rows = None
        if each.metrics:
            worker_events = sum(
                values.get("touchpoint_worker_events_total", 0)
                for name, values in scraped.items()
                if name.startswith("worker-")
            )
            sink_rows = (
                scraped.get("sink", {}).get("touchpoint_sink_rows_total", {}).get("touchpoints")
            )
        rows.append(
            {
                "label": each.deployment.label,
                "round": each.round,
                "metrics": each.metrics,
                "prefix": each.deployment.prefix,
                "app_id": each.deployment.app_id,
                "sink_group": each.deployment.sink_group,
                "chdb_dir": each.deployment.chdb_dir.name,
                "produce_seconds": each.produce_seconds,
                "workers_seconds": workers.seconds,
                "workers_events_per_second": workers.events_per_second,
                "pipeline_seconds": pipeline.seconds,
                "pipeline_events_per_second": pipeline.events_per_second,
                "touchpoints_final": each.stored["touchpoints_final"],
                "complete": each.stored["touchpoints_final"] == unique,
                "scraped_worker_events": worker_events,
                "scraped_sink_touchpoints_rows": sink_rows,
                "sink": each.sink,
            }
        )

    def median(metrics: bool, key: str) -> float:
        return float(statistics.median(row[key] for row in rows if row["metrics"] == metrics))

    on_rows = [row for row in rows if row["metrics"]]
    collected = all(
        (row["scraped_worker_events"] or 0) >= unique
        and (row["scraped_sink_touchpoints_rows"] or 0) >= unique
        for row in on_rows
    )
    exact = all(
        row["scraped_worker_events"] == unique and row["scraped_sink_touchpoints_rows"] == unique
        for row in on_rows
    )
    if not collected:
        logger.warning("the scraped counters are below the %s unique events", f"{unique:,}")
    elif not exact:
        logger.warning("the scraped counters exceed the %s unique events", f"{unique:,}")
    result: dict[str, Any] = {
        "order": [row["label"] for row in rows],
        "passes": rows,
        "unique_events": unique,
        "metrics_collected": collected,
        "metrics_match_unique_events": exact,
    }
    for key in ("pipeline", "workers"):
        off = median(False, f"{key}_events_per_second")
        on = median(True, f"{key}_events_per_second")
        result[f"{key}_events_per_second_off"] = off
        result[f"{key}_events_per_second_on"] = on
        result[f"ratio_{key}_on_to_off"] = on / off if off else 0.0
    return result


def _ratio(phase: Phase, ceiling: Phase) -> float:
    return common.ratio(phase.events_per_second, ceiling.events_per_second) or 0.0


def _render(result: dict[str, Any]) -> str:
    dataset = result["dataset"]
    phases = result["phases"]
    ceiling = next(p for p in phases if p["phase"] == "ceiling (raw aiokafka)")["events_per_second"]
    width = max(24, *(len(phase["phase"]) for phase in phases))
    header = (
        f"{'phase':<{width}} {'events':>11} {'seconds':>9} {'events/s':>10} {'vs ceiling':>10}  "
        "CPU (cores in use)"
    )
    lines = [header, "-" * (len(header) + 40)]
    lines.append(
        f"{'generate (prep)':<{width}} {dataset['records']:>11,} {dataset['seconds']:>9.1f} "
        f"{dataset['records'] / dataset['seconds']:>10,.0f}"
    )
    for phase in phases:
        lines.append(
            f"{phase['phase']:<{width}} {phase['records']:>11,} {phase['seconds']:>9.1f} "
            f"{phase['events_per_second']:>10,.0f} "
            f"{phase['events_per_second'] / ceiling:>9.3f}x  {cpu_text(phase['cpu_cores'], _ROLES)}"
        )
    pipeline = next(phase for phase in phases if phase["phase"].startswith("pipeline"))
    workers = next(phase for phase in phases if phase["phase"].startswith("workers"))
    staged = result["config"]["staged"]
    stored = result["clickhouse"]
    lines.append("")
    lines.append(
        f"pipeline runs at {result['ratio_pipeline_to_ceiling']:.3f}x and the workers "
        f"{'alone ' if staged else ''}at "
        f"{result['ratio_workers_to_ceiling']:.3f}x a raw aiokafka consumer of the same topic "
        f"({workers['details']['workers']} worker(s), {result['config']['partitions']} partitions)."
    )
    startup = workers["details"]["startup_seconds"]
    lines.append(
        f"workers: first commit after {startup:.1f} s; "
        f"{workers['details']['after_first_commit_events_per_second']:,.0f} events/s after it. "
        f"sink done {pipeline['details']['sink_lag_after_workers_seconds']:.1f} s after the "
        f"workers (its offsets last moved at {pipeline['details']['sink_last_commit_seconds']:.1f}"
        " s)."
        if startup is not None
        else "workers: no commit observed before the end."
    )
    lines.append(
        f"unique events landed: {stored['touchpoints_final']:,} of {dataset['events_unique']:,} "
        f"({'all' if result['complete'] else 'INCOMPLETE'}; {stored['touchpoints_rows']:,} rows "
        f"before FINAL); {pipeline['details']['unique_events_per_second']:,.0f} unique events/s "
        "end to end."
    )
    if result["metrics_compare"] is not None:
        lines.extend(_render_compare(result["metrics_compare"]))
    if result["peer"] is not None or result["rows_compared"] is not None:
        lines.extend(_render_peer(result))
    lines.append(
        "produce first, then the ceiling, then "
        + (
            "the workers alone, then the sink alone"
            if staged
            else "workers + sink launched together"
        )
        + " on the filled topic (start-up timed)."
        + warnings_text(result)
    )
    return "\n".join(lines)


def _render_peer(result: Mapping[str, Any]) -> list[str]:
    """The --peer / --per-event lines: headline ratios and the row comparison."""
    lines = [""]
    phases = {phase["phase"]: phase for phase in result["phases"]}
    peer = result["peer"]
    if peer is not None:
        quix = next(phase for name, phase in phases.items() if name.startswith("quix peer"))
        lines.append(
            f"pipeline / quix = {peer['ratio_pipeline_to_quix']:.2f}x "
            f"(Touchpoint on packs {phases['pipeline (workers+sink)']['events_per_second']:,.0f}"
            f" vs Quix Streams on {peer['input']} records {quix['events_per_second']:,.0f} "
            "events/s)"
            + (
                f"; pipeline [per-event] / quix = {peer['ratio_pipeline_per_event_to_quix']:.2f}x"
                if peer["ratio_pipeline_per_event_to_quix"] is not None
                else ""
            )
            + "."
        )
        details = quix["details"]
        if details.get("startup_seconds") is not None:
            after = details["after_first_commit_events_per_second"]
            lines.append(
                f"quix: first commit after {details['startup_seconds']:.1f} s; "
                + (
                    f"{after:,.0f} events/s after it; "
                    if after is not None and not details["repartition_offsets"]
                    else ""  # packed: the packs are read (and committed) long before the work
                )
                + f"commit_interval {details['commit_interval']:g} s; "
                f"{peer['quixstreams']['quixstreams']} (confluent-kafka "
                f"{peer['quixstreams']['confluent-kafka']})."
            )
    rows = result["rows_compared"]
    if rows is not None:
        for comparison in rows["comparisons"]:
            parts = []
            for view, found in comparison["views"].items():
                mark = "" if view in comparison["required"] else " (not required)"
                if found["equal"]:
                    parts.append(f"{view} equal ({found['rows'][0]:,}){mark}")
                else:
                    parts.append(
                        f"{view} DIFFER ({found['only_in_reference']:,} rows only in "
                        f"{comparison['reference']}, {found['only_in_other']:,} only in "
                        f"{comparison['other']}){mark}"
                    )
            lines.append(
                f"rows of {comparison['other']} vs {comparison['reference']} (FINAL): "
                + "; ".join(parts)
                + ("." if comparison["equal"] else ". ROWS DIFFER.")
            )
    return lines


def _render_compare(compare: Mapping[str, Any]) -> list[str]:
    """The --metrics-compare lines: each pass, the on/off ratios, the scraped counters."""
    unique = compare["unique_events"]
    lines = [
        "",
        "metrics off vs on (each pass: its own copy of the raw topic, app id, sink group, chDB):",
        f"{'pass':<6} {'metrics':<8} {'workers s':>10} {'events/s':>10} {'pipeline s':>11} "
        f"{'events/s':>10}  scraped: worker events, sink touchpoints rows",
    ]
    for row in compare["passes"]:
        scraped = (
            f"{row['scraped_worker_events']:,}, {row['scraped_sink_touchpoints_rows'] or 0:,}"
            if row["metrics"]
            else "-"
        )
        lines.append(
            f"{row['label']:<6} {'on' if row['metrics'] else 'off':<8} "
            f"{row['workers_seconds']:>10.1f} {row['workers_events_per_second']:>10,.0f} "
            f"{row['pipeline_seconds']:>11.1f} {row['pipeline_events_per_second']:>10,.0f}  "
            f"{scraped}"
        )
    lines.append(
        f"metrics on / off: pipeline {compare['ratio_pipeline_on_to_off']:.3f}x "
        f"({compare['pipeline_events_per_second_on']:,.0f} vs "
        f"{compare['pipeline_events_per_second_off']:,.0f} events/s), workers "
        f"{compare['ratio_workers_on_to_off']:.3f}x; scraped counters "
        + (
            f"equal the {unique:,} unique events."
            if compare["metrics_match_unique_events"]
            else f"DIFFER from the {unique:,} unique events"
            + ("" if compare["metrics_collected"] else " (BELOW: metrics not collected)")
            + "."
        )
    )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kafka_path",
        description=(
            "Events/s of the distributed path (touchpoint produce → touchpoint worker × N → "
            "touchpoint sink → chDB) on a genuine Kafka broker started for the run, beside a "
            "raw aiokafka consumer reading the same topic with no processing (the ceiling), "
            "measured in the same run; reports the ratios. Progress goes to stderr, the table "
            "to stdout, and JSON to bench/results/."
        ),
    )
    add_dataset_options(parser)
    parser.add_argument(
        "--workers", type=positive, default=2, help="touchpoint worker processes [default: 2]"
    )
    parser.add_argument(
        "--partitions",
        type=positive,
        default=6,
        help="partitions of every pipeline topic [default: 6]",
    )
    parser.add_argument(
        "--port",
        type=positive,
        default=DEFAULT_PORT,
        help=f"port of the broker this run starts (and the controller on port + 1) "
        f"[default: {DEFAULT_PORT}]",
    )
    parser.add_argument(
        "--ceiling-repeat",
        type=positive,
        default=3,
        help="runs of the raw consumer; the median is reported [default: 3]",
    )
    parser.add_argument(
        "--staged",
        action="store_true",
        help="run the workers alone until they are done, then the sink alone (each timed), "
        "instead of both at once",
    )
    parser.add_argument(
        "--metrics-compare",
        action="store_true",
        help="run the workers+sink phase twice on the same records, with metrics off (no "
        "--metrics-port) then on (each worker and the sink on its own free port, scraped at "
        "the end), each pass with its own topics, app id, sink group and chDB directory; "
        "reports events/s of both and their ratio",
    )
    parser.add_argument(
        "--compare-rounds",
        type=positive,
        default=1,
        help="with --metrics-compare: pairs of passes, off then on in odd rounds and on then "
        "off in even ones; medians reported [default: 1]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="give up if workers + sink take longer than this many seconds [default: 3600]",
    )
    parser.add_argument(
        "--peer",
        choices=("quix",),
        help="also run the same job written with Quix Streams (bench/quix_peer.py: "
        "exactly-once, RocksDB state per buyer, a BatchingSink into its own chDB; needs the "
        "'bench' extra) on the same broker and records, after the Touchpoint runs; adds its "
        "phase, the ratio pipeline / quix, and a row comparison (exit code 1 if they differ)",
    )
    parser.add_argument(
        "--quix-input",
        choices=("per-event", "packed"),
        default="per-event",
        help="what the peer reads: per-event = one Touchpoint JSON per record keyed by buyer "
        "id (the classic contract, produced by this bench into its own topic); packed = "
        "touchpoint produce's packs on the raw topic, unpacked and re-keyed with group_by "
        "(a repartition topic) [default: per-event]",
    )
    parser.add_argument(
        "--quix-commit-interval",
        type=float,
        default=2.0,
        help="the peer's commit_interval (seconds between checkpoints: sink flush + "
        "transaction); Quix's default is 5 [default: 2, the Touchpoint sink's batch time]",
    )
    parser.add_argument(
        "--per-event",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run Touchpoint (workers + sink, its own deployment) on a per-event, keyed "
        "copy of the records [default: on with --peer, off otherwise]",
    )
    add_run_options(parser, "events file, chDB data, process logs, row dumps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.per_event is None:
        args.per_event = args.peer is not None
    if args.metrics_compare and (args.peer or args.per_event):
        parser.error("--metrics-compare cannot be combined with --peer or --per-event")
    if args.peer == "quix" and importlib.util.find_spec("quixstreams") is None:
        parser.error("--peer quix needs Quix Streams: pip install -e '.[bench]'")

    def succeeded(result: dict[str, Any]) -> bool:
        compare = result["metrics_compare"]
        collected = compare is None or compare["metrics_collected"]
        return bool(result["complete"] and collected and result["rows_equal"])

    return common.run(
        "kafka_path",
        args,
        benchmark,
        _render,
        scratch_prefix="touchpoint-bench-kafka-",
        kept="process logs, events file, chDB data",
        succeeded=succeeded,
        quiet=("kafka", "aiokafka"),
    )


if __name__ == "__main__":
    sys.exit(main())
