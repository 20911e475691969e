"""A pipeline on the real broker for tests: its topics, its workers, its sink.

Besides the in-process helpers, the fault tests use real processes only: the
``touchpoint sink`` / ``worker`` / ``collector`` commands (:meth:`Pipeline.start_sink`,
:meth:`Pipeline.start_worker`, :meth:`Pipeline.start_collector`), a broker of their own that
they can stop and start (:class:`Broker`), and :func:`read_back_dir` to read a sink's chDB
directory from a separate process once the sink has stopped (chDB opens one directory per
process, and the test process has its own).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from schemas.settings import KafkaSettings
from schemas.topics import Topics
from sinks.consumer import KafkaClickHouseSink
from sinks.writer import ClickHouseWriter

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
COLLECTOR_KEY = "fault-suite-key"


@dataclass
class Pipeline:
    """One pipeline's names and processes on the shared test broker."""

    bootstrap: str
    topics: Topics
    app_id: str
    env: dict[str, str]
    logs: Path

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "touchpoint", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def start_worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "touchpoint", "-v", "worker"],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def sink_group(self) -> str:
        return f"{self.app_id}-sink"

    def start_sink(self, name: str, chdb_dir: Path, **env: str) -> subprocess.Popen[bytes]:
        """``touchpoint -v sink`` into ``chdb_dir`` (database ``touchpoint``), logs in NAME.log."""
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "touchpoint", "-v", "sink"],
                env={
                    **self.env,
                    "TOUCHPOINT_CLICKHOUSE_URL": f"chdb:{chdb_dir}",
                    "TOUCHPOINT_KAFKA_SINK_GROUP": self.sink_group,
                    "TOUCHPOINT_KAFKA_SINK_BATCH_SECONDS": "1",
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_collector(self, name: str) -> tuple[subprocess.Popen[bytes], str]:
        """``touchpoint collector`` on a free port (API key :data:`COLLECTOR_KEY` for ``web``)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "touchpoint", "-v", "collector"],
                env={
                    **self.env,
                    "TOUCHPOINT_COLLECTOR_PORT": str(port),
                    "TOUCHPOINT_COLLECTOR_API_KEYS": json.dumps({"web": COLLECTOR_KEY}),
                    "TOUCHPOINT_COLLECTOR_PRODUCE_TIMEOUT": "3s",
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                    if response.status == 200:
                        return process, url
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        process.kill()
        pytest.fail(f"the collector did not answer /healthz; see {self.logs / name}.log")

    def sink_lag(self) -> int:
        """Output records (and transaction markers) the sink group has not committed yet."""
        committed = group_offsets(self.bootstrap, self.sink_group)
        return sum(
            max(0, end - (committed[tp].offset if tp in committed else 0))
            for tp, end in self.output_ends().items()
        )

    def raw_lag(self) -> int:
        return max(0, self.raw_end() - self.committed_raw())

    def wait_until_sink_committed_everything(
        self, timeout: float = 240, sink: subprocess.Popen[bytes] | None = None
    ) -> float:
        """Wait until the sink group committed every output partition's end; returns seconds."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                if self.sink_lag() == 0:
                    return time.monotonic() - started
            except KafkaError:
                pass
            if sink is not None and sink.poll() is not None:
                pytest.fail(f"the sink exited with {sink.returncode}; see {self.logs}")
            time.sleep(0.5)
        pytest.fail(f"the sink did not catch up ({self.sink_lag()} behind); see {self.logs}")

    def send_watermark(self, at: datetime) -> None:
        """A source watermark on every raw partition, as a live source sends it."""
        from ingest.kafka import TouchpointProducer

        producer = TouchpointProducer(self.bootstrap, topic=self.topics.raw)
        try:
            assert producer.send_watermark(at) == PARTITIONS
            producer.flush()
        finally:
            producer.close()

    def committed_raw(self) -> int:
        """Input records the workers have committed (0 while their group is still forming)."""
        return sum(self.committed_raw_offsets().values())

    def raw_end(self) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tps = [TopicPartition(self.topics.raw, p) for p in range(PARTITIONS)]
            return sum(consumer.end_offsets(tps).values())
        finally:
            consumer.close()

    def rewind_workers_to(self, offset: int) -> None:
        """Set the workers' committed input offsets back (their group must have no members)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            tps = [TopicPartition(self.topics.raw, p) for p in range(PARTITIONS)]
            admin.reset_group_offsets(self.app_id, {tp: offset for tp in tps})
        finally:
            admin.close()

    def output_ends(self) -> dict[TopicPartition, int]:
        """End offsets of every output topic partition (they move with each record or marker)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tps = [
                TopicPartition(topic, p) for topic in self.topics.outputs for p in range(PARTITIONS)
            ]
            return dict(consumer.end_offsets(tps))
        finally:
            consumer.close()

    def wait_until_workers_consumed_everything(self, timeout: float = 300) -> None:
        """Until the workers committed every input record on every raw partition, and every
        control record they sent each other since (identity stitching) as well."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # not "committed >= end offset": transaction markers take offsets of their own
            if not self.unconsumed_after(self.committed_raw_offsets()):
                return
            time.sleep(1)
        pytest.fail(
            f"workers did not catch up: {self.committed_raw()} of {self.raw_end()}; see {self.logs}"
        )

    def unconsumed_after(self, committed: dict[TopicPartition, int]) -> bool:
        """Whether a committed record lies after the workers' committed offset on a raw
        partition (one worker's control record to another, not yet applied by it)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        try:
            tps = [TopicPartition(self.topics.raw, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, committed.get(tp, 0))
            ends = consumer.end_offsets(tps)  # read-committed: the last stable offsets
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if any(consumer.poll(timeout_ms=500, max_records=1).values()):
                    return True
                if all(consumer.position(tp) >= ends[tp] for tp in tps):
                    return False
            return True
        finally:
            consumer.close()

    def committed_raw_offsets(self) -> dict[TopicPartition, int]:
        """Per raw partition, the workers' committed offset (none while their group forms)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets(self.app_id).get(self.app_id, {})
        except KafkaError:
            return {}
        finally:
            admin.close()
        return {
            tp: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.topics.raw and meta.offset > 0
        }

    def sink_into(self, clickhouse_client: Any, database: str) -> None:
        from sinks.migrate import apply_migrations

        apply_migrations(clickhouse_client, database)
        settings = KafkaSettings(bootstrap=self.bootstrap, sink_group=f"{self.app_id}-sink")
        writer = ClickHouseWriter(clickhouse_client, database)
        with KafkaClickHouseSink(
            settings, writer, topics=self.topics.table_by_topic, max_rows=5000, max_seconds=1.0
        ) as sink:
            sink.run(idle_timeout=8.0)


def new_pipeline(bootstrap: str, logs: Path) -> Pipeline:
    """A pipeline with its own topic prefix, app id and logs, on ``bootstrap``."""
    tag = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"t{tag}.")
    app_id = f"touchpoint-{tag}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")}
    env.update(
        PYTHONPATH=str(REPO),
        TOUCHPOINT_KAFKA_BOOTSTRAP=bootstrap,
        TOUCHPOINT_KAFKA_PARTITIONS=str(PARTITIONS),
        TOUCHPOINT_KAFKA_TOPIC_PREFIX=topics.prefix,
        TOUCHPOINT_KAFKA_APP_ID=app_id,
    )
    return Pipeline(bootstrap, topics, app_id, env, logs)


def assert_aggregates_match_the_raw_table(clickhouse_client: Any, database: str) -> None:
    """No output row was written twice: the daily funnel aggregate equals a FINAL recount."""
    from_view = clickhouse_client.query(
        f"SELECT sum(touches) FROM {database}.funnel_daily"
    ).result_rows[0][0]
    from_raw = clickhouse_client.query(
        f"SELECT count() FROM {database}.touchpoints FINAL WHERE stage IS NOT NULL"
    ).result_rows[0][0]
    assert from_view == from_raw


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def group_offsets(bootstrap: str, group: str, timeout: float = 15) -> dict[Any, Any]:
    """A group's committed offsets (with metadata), retrying while its coordinator moves or
    loads (``NotCoordinatorError`` right after the group appears or the broker restarts)."""
    deadline = time.monotonic() + timeout
    while True:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            offsets: dict[Any, Any] = admin.list_group_offsets(group).get(group, {})
            return offsets
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
        finally:
            admin.close()
        time.sleep(0.5)


class Broker:
    """A broker of a test's own (deploy/kafka/kafka.sh, one run dir per port) that it may
    stop and start; the session broker is shared and must stay up."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._holder: socket.socket | None = None
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "TOUCHPOINT_KAFKA_PORT": str(port),
            "TOUCHPOINT_KAFKA_CONTROLLER_PORT": str(port + 1),
        }

    @property
    def log(self) -> Path:
        home = Path(os.environ.get("TOUCHPOINT_KAFKA_HOME", REPO / ".cache" / "kafka"))
        return home / f"run-{self.port}" / "kafka.log"

    def _bind_failed_since(self, offset: int) -> bool:
        try:
            with self.log.open("rb") as log:
                log.seek(offset if log.seek(0, os.SEEK_END) >= offset else 0)
                return b"Address already in use" in log.read()
        except OSError:
            return False

    def _run(self, *args: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            offset = self.log.stat().st_size if self.log.exists() else 0
            done = subprocess.run(
                ["bash", str(KAFKA_SCRIPT), *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode == 0:
                return
            # These ports lie in Linux's ephemeral range: an outgoing connection may hold
            # one — even the broker's own port, when a client retrying it while it is down
            # connects to itself — and leave it in TIME-WAIT for up to a minute.
            if not self._bind_failed_since(offset) or time.monotonic() > deadline:
                break
            time.sleep(5)
        tail = "\n".join(done.stderr.splitlines()[-30:])
        pytest.fail(f"kafka.sh {' '.join(args)} failed:\n{done.stdout}\n{tail}")

    def start(self, *, fresh: bool = False) -> None:
        try:
            self._run("start", *(["--fresh"] if fresh else []))
        finally:
            self._release_port()

    def stop(self, *, hold_port: bool = False) -> None:
        """Stop the broker. With ``hold_port``, keep its port bound (not listening, so
        clients are refused as by a stopped broker) until the next :meth:`start` is done.

        The port lies in Linux's ephemeral range: a client retrying it while nothing
        listens can be handed the port itself as its source port and connect to itself
        (seen: ``127.0.0.1:39394 → 127.0.0.1:39394``, then TIME-WAIT), and Kafka cannot
        bind it again. A bound port is never handed out; the holder has SO_REUSEADDR like
        the broker's server socket, so the broker binds next to it."""
        self._run("stop")
        if hold_port:
            holder = socket.socket()
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                holder.bind(("127.0.0.1", self.port))
            except OSError:
                holder.close()  # held already: start() waits a TIME-WAIT out
            else:
                self._holder = holder

    def _release_port(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.close()  # never connected: leaves no TIME-WAIT behind


def read_back_dir(chdb_dir: Path, database: str = "touchpoint") -> dict[str, Any]:
    """:func:`tests.readback.read_back` of a sink's chDB directory, from another process,
    plus ``funnel_view`` / ``funnel_raw`` (the aggregate vs a FINAL recount) and
    ``raw_touchpoints`` (rows before any merge)."""
    code = f"""
import pickle, sys
from schemas.settings import ClickHouseSettings
from sinks.clickhouse import connect
from tests.readback import read_back
client = connect({f"chdb:{chdb_dir}"!r}, ClickHouseSettings())
db = {database!r}
got = read_back(client, db)
got["funnel_view"] = client.query(f"SELECT sum(touches) FROM {{db}}.funnel_daily").result_rows[0][0]
got["funnel_raw"] = client.query(
    f"SELECT count() FROM {{db}}.touchpoints FINAL WHERE stage IS NOT NULL").result_rows[0][0]
got["raw_touchpoints"] = client.query(f"SELECT count() FROM {{db}}.touchpoints").result_rows[0][0]
sys.stdout.buffer.write(pickle.dumps(got))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"reading {chdb_dir} back failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = pickle.loads(done.stdout)  # our own child process wrote it
    return result


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def kill(processes: Sequence[subprocess.Popen[bytes] | None]) -> None:
    """SIGKILL, as a crash or a power cut does."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
