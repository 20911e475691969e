"""The fault suite: real processes, a real broker, real chDB, compared to ground truth.

Every test runs the `touchpoint` commands as subprocesses (workers, sink, collector), on
generated journeys with duplicates, out-of-order events and malformed records, injects
one fault, and then requires exactly the generator's ground truth from the sink's chDB
directory: every funnel, drop-off, exit and dead-letter count, no event lost, none
counted twice (the daily-funnel aggregate, which relies on the insert token, equals a
FINAL recount). What each test guarantees is listed in docs/architecture.md
("Guarantees and how they are tested").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from ingest.kafka import peek
from processors.classify import default_rules
from sinks.batches import Intent
from sinks.consumer import FAULT_EXIT_AFTER_INSERT, FAULT_EXIT_STATUS
from tests.kafka_pipeline import (
    COLLECTOR_KEY,
    PARTITIONS,
    Broker,
    Pipeline,
    group_offsets,
    kill,
    new_pipeline,
    read_back_dir,
    stop,
)
from tests.readback import expected_from_truth
from touchpoint.config import load_settings
from touchpoint.kafka import ensure_pipeline_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Brokers of the tests' own (they stop them); the session broker's controller port is
# its port + 1, so these leave room for it and for each other.
BROKER_STOP_PORT = 39394
FULL_RESTART_PORT = 39396


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    folder = tmp_path_factory.mktemp("faults")
    config = GeneratorConfig(
        buyers=1000,
        seed=2026,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    return events, write_dataset(config, events)


def newest_event_time(lines: list[bytes]) -> datetime:
    times = [at for _, at in map(peek, lines) if at is not None]
    return max(times)


def assert_ground_truth(got: dict[str, Any], truth: GroundTruth) -> None:
    """Exactly the generator's numbers; nothing lost, nothing counted twice."""
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert got["tables"]["touchpoints"] == truth.events_unique
    assert got["funnel_view"] == got["funnel_raw"]  # no batch counted twice in the aggregate


def committed_with_metadata(bootstrap: str, group: str) -> dict[Any, Any]:
    return group_offsets(bootstrap, group)


def create_topics(pipeline: Pipeline) -> None:
    settings = load_settings(
        kafka_bootstrap=pipeline.bootstrap,
        kafka_partitions=PARTITIONS,
        kafka_topic_prefix=pipeline.topics.prefix,
    )
    ensure_pipeline_topics(settings)


def log_of(pipeline: Pipeline, name: str) -> str:
    return (pipeline.logs / f"{name}.log").read_text(errors="replace")


# -- the sink killed between insert and commit ----------------------------------------------


def test_the_sink_killed_between_insert_and_commit_replays_the_batch_once(
    pipeline: Pipeline, dataset: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    """The armed fault point ends the sink right after its 3rd insert round, before the
    commit; the restarted sink (same static member id) replays exactly the intents, which
    ClickHouse drops by token, and takes its partitions back within seconds."""
    events, truth = dataset
    chdb = tmp_path / "ch"
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    static = {"TOUCHPOINT_KAFKA_SINK_INSTANCE_ID": "fault-sink-0"}
    workers = [pipeline.start_worker("worker-a"), pipeline.start_worker("worker-b")]
    sink = pipeline.start_sink(
        "sink-armed",
        chdb,
        TOUCHPOINT_KAFKA_SINK_BATCH_ROWS="500",
        **{FAULT_EXIT_AFTER_INSERT: "3"},
        **static,
    )
    restarted = None
    try:
        assert sink.wait(timeout=240) == FAULT_EXIT_STATUS, log_of(pipeline, "sink-armed")[-3000:]
        assert "exiting after inserting" in log_of(pipeline, "sink-armed")
        intents = {
            tp: Intent.decode(om.offset, om.metadata)
            for tp, om in committed_with_metadata(pipeline.bootstrap, pipeline.sink_group).items()
            if om.metadata
        }
        assert intents and all(intent is not None for intent in intents.values())

        started = time.monotonic()
        restarted = pipeline.start_sink("sink-restarted", chdb, **static)
        while any(
            om.metadata
            for om in committed_with_metadata(pipeline.bootstrap, pipeline.sink_group).values()
        ):
            assert time.monotonic() - started < 60, "the restarted sink did not replay its intents"
            assert restarted.poll() is None, log_of(pipeline, "sink-restarted")[-3000:]
            time.sleep(0.2)
        replayed_after = time.monotonic() - started
        # A static member takes its partitions back without waiting for a session timeout.
        assert replayed_after < 20, f"the restart took {replayed_after:.1f}s to replay"

        pipeline.wait_until_workers_consumed_everything()
        pipeline.wait_until_sink_committed_everything(sink=restarted)
    finally:
        if restarted is not None:
            stop(restarted)
        for worker in workers:
            stop(worker)
        kill([sink])
    assert restarted.returncode == 0
    assert log_of(pipeline, "sink-restarted").count("replaying batch") == len(intents)
    print(f"{len(intents)} intent(s) replayed {replayed_after:.1f}s after the restart")

    got = read_back_dir(chdb)
    assert_ground_truth(got, truth)
    assert got["raw_touchpoints"] == truth.events_unique  # the replays dropped, not merged away


# -- ClickHouse refusing the sink's inserts for a while -------------------------------------


def metrics_of(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            values[name] = float(number)
    return values


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def set_immutable(directories: list[Path], on: bool) -> None:
    subprocess.run(
        ["chattr", "+i" if on else "-i", *map(str, directories)],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def chattr(tmp_path: Path) -> None:
    """The storage fault needs chattr +i (root with CAP_LINUX_IMMUTABLE, ext4/xfs/btrfs)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory immutable here: {done.stderr.decode().strip()}")
    subprocess.run(["chattr", "-i", str(probe)], check=True)


def test_clickhouse_refusing_inserts_is_retried_reported_and_caught_up(
    pipeline: Pipeline, dataset: tuple[Path, GroundTruth], tmp_path: Path, chattr: None
) -> None:
    """While every table directory of the sink's chDB is immutable (the disk refuses
    writes), the sink keeps its batch, commits nothing past it, stays up and says so in
    its metrics; when the disk takes writes again it catches up to the exact truth."""
    events, truth = dataset
    chdb = tmp_path / "ch"
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker = pipeline.start_worker("worker")
    sink = pipeline.start_sink(
        "sink",
        chdb,
        TOUCHPOINT_METRICS_PORT=str(port),
        TOUCHPOINT_KAFKA_SINK_BATCH_ROWS="1000",
        TOUCHPOINT_KAFKA_SINK_RETRY_MAX="4s",
    )
    tables: list[Path] = []
    try:
        produced = pipeline.cli("produce", "--input", str(events))
        assert produced.returncode == 0, produced.stderr
        deadline = time.monotonic() + 120
        while metrics_of_or_empty(metrics_url).get("touchpoint_sink_batch_rows_count", 0) < 2:
            assert time.monotonic() < deadline, "the sink wrote nothing"
            time.sleep(0.2)
        tables = [path for path in (chdb / "store").glob("*/*") if path.is_dir()]
        assert tables
        set_immutable(tables, True)
        fault_started = time.monotonic()
        while metrics_of(metrics_url).get("touchpoint_sink_clickhouse_up") != 0:
            assert time.monotonic() - fault_started < 30, "the sink did not notice the fault"
            time.sleep(0.2)
        noticed = time.monotonic() - fault_started
        committed_in_fault = committed_total(pipeline)
        while time.monotonic() - fault_started < 25:
            assert sink.poll() is None, log_of(pipeline, "sink")[-3000:]
            assert metrics_of(metrics_url)["touchpoint_sink_clickhouse_up"] == 0
            time.sleep(1)
        values = metrics_of(metrics_url)
        assert values["touchpoint_sink_insert_failures_total"] >= 2  # gave up, tried again
        assert values["touchpoint_sink_insert_retries_total"] >= 5
        assert time.time() - values["touchpoint_sink_last_insert_timestamp_seconds"] >= 15
        # Nothing was committed past unwritten rows, and there is work waiting.
        assert committed_total(pipeline) == committed_in_fault
        assert pipeline.sink_lag() > 0
    finally:
        if tables:
            set_immutable(tables, False)
    try:
        pipeline.wait_until_workers_consumed_everything()
        caught_up = pipeline.wait_until_sink_committed_everything(sink=sink)
        values = metrics_of(metrics_url)
        assert values["touchpoint_sink_clickhouse_up"] == 1
        assert time.time() - values["touchpoint_sink_last_insert_timestamp_seconds"] < 60
    finally:
        stop(worker)
        stop(sink)
    assert sink.returncode == 0
    log = log_of(pipeline, "sink")
    assert "it is kept, nothing is committed past it" in log
    assert "written after" in log
    print(f"fault noticed after {noticed:.1f}s; caught up {caught_up:.1f}s after it ended")
    assert_ground_truth(read_back_dir(chdb), truth)


def committed_total(pipeline: Pipeline) -> int:
    return sum(
        om.offset
        for om in committed_with_metadata(pipeline.bootstrap, pipeline.sink_group).values()
        if om.offset > 0
    )


def metrics_of_or_empty(url: str) -> dict[str, float]:
    try:
        return metrics_of(url)
    except (urllib.error.URLError, ConnectionError):
        return {}


# -- the broker stopped for 30 s with everything up -----------------------------------------


class Sender(threading.Thread):
    """Posts NDJSON batches to the collector like a vendor: a 503 (or no answer) is
    retried until the collector acknowledges the batch; counts what was acknowledged."""

    def __init__(self, url: str, lines: list[bytes], per_request: int, pause: float) -> None:
        super().__init__(name="sender", daemon=True)
        self.url = url + "/v1/touchpoints"
        self.batches = [lines[i : i + per_request] for i in range(0, len(lines), per_request)]
        self.pause = pause
        self.acknowledged = 0
        self.batches_done = 0
        self.statuses: Counter[int | str] = Counter()
        self.error: str | None = None

    def post(self, body: bytes) -> tuple[int | str, Any]:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/x-ndjson",
                "Authorization": f"Bearer {COLLECTOR_KEY}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            return type(error).__name__, None

    def run(self) -> None:
        for batch in self.batches:
            body = b"\n".join(batch) + b"\n"
            while True:
                status, answer = self.post(body)
                self.statuses[status] += 1
                if status == 200:
                    self.acknowledged += answer["accepted"] + len(answer["rejected"])
                    break
                if status != 503 and not isinstance(status, str):
                    self.error = f"unexpected answer {status}: {answer!r}"[:500]
                    return
                time.sleep(0.5)
            self.batches_done += 1
            time.sleep(self.pause)


def test_the_broker_stopped_for_30s_mid_run_loses_nothing_and_counts_nothing_twice(
    dataset: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    """Collector, two workers and the sink stay up while their only broker is stopped for
    30 s mid-run; the sender retries the collector's 503s. Afterwards: exact truth."""
    events, truth = dataset
    lines = [line.encode() for line in events.read_text().splitlines()]
    broker = Broker(BROKER_STOP_PORT)
    broker.start(fresh=True)
    pipeline = new_pipeline(broker.bootstrap, tmp_path)
    chdb = tmp_path / "ch"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        create_topics(pipeline)
        processes["worker-a"] = pipeline.start_worker("worker-a")
        processes["worker-b"] = pipeline.start_worker("worker-b")
        processes["sink"] = pipeline.start_sink("sink", chdb)
        processes["collector"], url = pipeline.start_collector("collector")
        sender = Sender(url, lines, per_request=50, pause=0.1)
        sender.start()
        deadline = time.monotonic() + 120
        while sender.batches_done < len(sender.batches) // 3:
            assert time.monotonic() < deadline and sender.error is None, sender.error
            time.sleep(0.1)
        outage_started = time.monotonic()
        broker.stop(hold_port=True)
        time.sleep(30)
        broker.start()
        outage = time.monotonic() - outage_started
        sender.join(timeout=300)
        assert not sender.is_alive() and sender.error is None, sender.error
        assert sender.acknowledged == len(lines)
        assert sender.statuses[503] > 0, sender.statuses  # the outage was seen by the sender
        pipeline.send_watermark(newest_event_time(lines))
        pipeline.wait_until_workers_consumed_everything()
        pipeline.wait_until_sink_committed_everything(sink=processes["sink"])
        exited = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
        assert exited == {}, f"exited during the outage: {exited}; see {tmp_path}"
    finally:
        for process in processes.values():
            stop(process)
        broker.stop()
    assert processes["sink"].returncode == 0
    print(f"broker down {outage:.0f}s; sender answers {dict(sender.statuses)}")
    assert_ground_truth(read_back_dir(chdb), truth)


# -- a full restart of every process on existing data ----------------------------------------


def test_a_full_restart_of_every_process_on_existing_data_continues_exactly(
    dataset: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    """Half the input goes through; workers and sink are killed mid-stream, the broker is
    restarted, everything starts again on the data it left (Kafka log, journey.store,
    chDB) and the second half follows: the result is the truth of the whole input."""
    events, truth = dataset
    lines = events.read_text().splitlines(keepends=True)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    second.write_text("".join(lines[len(lines) // 2 :]))
    broker = Broker(FULL_RESTART_PORT)
    broker.start(fresh=True)
    pipeline = new_pipeline(broker.bootstrap, tmp_path)
    chdb = tmp_path / "ch"
    running: list[subprocess.Popen[bytes]] = []
    try:
        # One record per event (not packs), so the first half spans many worker batches
        # and commits, and the kill below lands in the middle of them.
        produced = pipeline.cli(
            "produce", "--input", str(first), "--no-watermark", TOUCHPOINT_KAFKA_PACK_EVENTS="1"
        )
        assert produced.returncode == 0, produced.stderr
        # The sink first, in its group before the workers start: on a loaded machine a sink
        # still opening chDB let the workers finish the whole half before it read a row.
        ensure_pipeline_topics(
            load_settings(
                kafka_bootstrap=pipeline.bootstrap,
                kafka_topic_prefix=pipeline.topics.prefix,
                kafka_partitions=int(pipeline.env["TOUCHPOINT_KAFKA_PARTITIONS"]),
            )
        )
        running = [pipeline.start_sink("sink", chdb, TOUCHPOINT_KAFKA_SINK_BATCH_ROWS="500")]
        deadline = time.monotonic() + 120
        while not _has_members(pipeline.bootstrap, pipeline.sink_group):
            assert time.monotonic() < deadline, "the sink did not join its group"
            time.sleep(0.2)
        # Small worker batches (a transaction each) keep the workers busy for seconds, so
        # the sink commits some of their output while they are still mid-stream.
        running += [
            pipeline.start_worker(name, TOUCHPOINT_KAFKA_WORKER_BATCH="5")
            for name in ("worker-a", "worker-b")
        ]
        end = pipeline.raw_end()
        deadline = time.monotonic() + 180
        while not (
            0 < pipeline.committed_raw()
            and pipeline.sink_lag() < sum(pipeline.output_ends().values())
        ):
            assert time.monotonic() < deadline, "nothing was processed"
            time.sleep(0.1)
        assert pipeline.committed_raw() < end, "the kill must land mid-stream"
        kill(running)
        broker.stop(hold_port=True)
        broker.start()
        running = [
            pipeline.start_worker("worker-a-again"),
            pipeline.start_worker("worker-b-again"),
            pipeline.start_sink("sink-again", chdb),
        ]
        produced = pipeline.cli("produce", "--input", str(second), "--no-watermark")
        assert produced.returncode == 0, produced.stderr
        pipeline.send_watermark(newest_event_time([line.encode() for line in lines]))
        pipeline.wait_until_workers_consumed_everything()
        pipeline.wait_until_sink_committed_everything(sink=running[-1])
    finally:
        for process in running:
            stop(process)
        broker.stop()
    assert running[-1].returncode == 0
    assert_ground_truth(read_back_dir(chdb), truth)


def _has_members(bootstrap: str, group: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group]).get(group, {})
    except KafkaError:
        return False  # no coordinator for it yet: nobody joined
    finally:
        admin.close()
    state = described.get("group_state", described.get("state"))
    return state == "Stable" and bool(described.get("members"))
