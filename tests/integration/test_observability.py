"""SRE view: promtool checks, a real Prometheus scraping collector, worker and sink during
a pipeline run, and dashboards that only use metrics a real scrape exposes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.collector_server import WEB_KEY, free_port, send_request, start_collector
from tests.kafka_pipeline import REPO, Pipeline, stop

pytestmark = pytest.mark.integration
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's Prometheus (promtool and the server); installed with apt-get if missing."""
    if shutil.which("promtool") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            check=False,
            capture_output=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    found = shutil.which("promtool")
    if found is None or shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus package is not installed and apt-get could not install it")
    return found


@pytest.mark.parametrize(
    "check",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "config", "prometheus.compose.yml"),
        ("check", "rules", "touchpoint.rules.yml"),
        ("test", "rules", "touchpoint.rules.test.yml"),
    ],
)
def test_promtool_accepts_the_config_rules_and_rule_tests(
    promtool: str, check: tuple[str, ...]
) -> None:
    result = subprocess.run(
        [promtool, *check], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def dashboard_queries() -> tuple[list[str], list[str]]:
    promql, sql = [], []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if "expr" in target:
                    promql.append(target["expr"])
                if "rawSql" in target:
                    sql.append(target["rawSql"])
    return promql, sql


def metric_names(expression: str) -> set[str]:
    names = set(re.findall(r"\b(touchpoint_[a-z0-9_]+)", expression))
    return {
        re.sub(r"_(bucket|count|sum)$", "", name)
        if (name.endswith(("_bucket", "_count", "_sum")) and "seconds" in name)
        or name.endswith("_rows_bucket")
        else name
        for name in names
    }


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]  # type: ignore[no-any-return]


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if result else None


def start_process(
    pipeline: Pipeline, logs: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "touchpoint", *args],
            env={**pipeline.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


@pytest.mark.slow
def test_a_real_prometheus_counts_every_event_and_the_dashboards_match_its_scrape(
    promtool: str, pipeline: Pipeline, tmp_path: Path, clickhouse_client: Any, database: str
) -> None:
    worker_port, sink_port, prometheus_port = free_port(), free_port(), free_port()
    collector, collector_url, _ = start_collector(pipeline, tmp_path)
    worker = start_process(
        pipeline, tmp_path, "worker", "worker", "--metrics-port", str(worker_port)
    )
    sink = start_process(
        pipeline,
        tmp_path,
        "sink",
        "sink",
        "--metrics-port",
        str(sink_port),
        env={
            "TOUCHPOINT_CLICKHOUSE_URL": f"chdb:{tmp_path / 'ch'}",
            "TOUCHPOINT_KAFKA_SINK_GROUP": f"{pipeline.app_id}-sink",
            "TOUCHPOINT_KAFKA_SINK_BATCH_SECONDS": "1",
        },
    )
    collector_target = collector_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: collector\n    static_configs: [{{targets: ['{collector_target}']}}]\n"
        f"  - job_name: worker\n    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n"
        f"  - job_name: sink\n    static_configs: [{{targets: ['127.0.0.1:{sink_port}']}}]\n"
    )
    with (tmp_path / "prometheus.log").open("ab") as log:
        prometheus = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{prometheus_port}"
    try:
        events = 0
        for batch in range(6):
            body = [
                {
                    "event_id": f"obs-{batch}-{i}",
                    "buyer_id": f"b{i % 37}",
                    "channel": "web",
                    "event_type": "page_view" if i % 3 else "product_view",
                    "occurred_at": f"2026-03-02T{10 + batch:02d}:{i % 60:02d}:00Z",
                }
                for i in range(50)
            ]
            body.append({"event_id": f"obs-bad-{batch}", "channel": "fax"})  # rejected
            request = urllib.request.Request(
                collector_url + "/v1/touchpoints",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Authorization": f"Bearer {WEB_KEY}", "Content-Type": "application/json"},
            )
            status, answer = send_request(request)
            assert status == 200, answer
            events += answer["accepted"]
        assert events == 300
        assert answer["rejected"][0]["reason"] == "missing_field"
        pipeline.wait_until_workers_consumed_everything()

        wanted = {
            "sum(touchpoint_collector_events_accepted_total)": events,
            "sum(touchpoint_collector_events_rejected_total)": 6,
            "sum(touchpoint_worker_events_total)": events,
            'sum(touchpoint_sink_rows_total{table="touchpoints"})': events,
        }
        deadline = time.monotonic() + 90
        got: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            got = {promql: scalar(base, promql) for promql in wanted}
            if all(got[promql] == value for promql, value in wanted.items()):
                break
            time.sleep(1)
        assert got == {promql: float(value) for promql, value in wanted.items()}
        assert scalar(base, 'sum(up{job=~"collector|worker|sink"})') == 3.0
        assert scalar(base, "count(count by (component) (touchpoint_build_info))") == 3.0

        with urllib.request.urlopen(f"{base}/api/v1/label/__name__/values", timeout=10) as response:
            scraped = set(json.loads(response.read())["data"])
        promql, sql = dashboard_queries()
        used: set[str] = set()
        for expression in promql:
            used |= set(re.findall(r"\b(touchpoint_[a-z0-9_]+)", expression))
        missing = sorted(name for name in used if name not in scraped)
        assert missing == [], f"dashboard metrics no real scrape exposes: {missing}"
        assert len(used) >= 12
    finally:
        for process in (prometheus, worker, sink, collector):
            stop(process)

    for statement in sql:  # the ClickHouse dashboard's SQL runs on the real engine
        clickhouse_client.query(statement.replace("touchpoint.", f"{database}."))


def test_metrics_are_served_while_kafka_is_unreachable(pipeline: Pipeline, tmp_path: Path) -> None:
    port = free_port()
    process = start_process(
        pipeline,
        tmp_path,
        "worker-no-kafka",
        "worker",
        "--metrics-port",
        str(port),
        env={"TOUCHPOINT_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
    )
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and "touchpoint_build_info" not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert 'touchpoint_build_info{component="worker"' in body
        assert process.poll() is None  # still waiting for Kafka, not crashed
    finally:
        stop(process)


def test_the_lag_monitor_measures_a_groups_lag_without_a_warning(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Its group-less consumer once made kafka-python warn "group_id is None: disabling
    auto-commit." at every measurement: every 10 s in each worker and sink (issue 16)."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition
    from prometheus_client import CollectorRegistry

    from ingest.topics import ensure_topics
    from touchpoint.monitoring import LagMonitor

    topic, group = pipeline.topics.raw, f"{pipeline.app_id}-lag"
    ensure_topics(pipeline.bootstrap, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all")
    for number in range(5):
        producer.send(topic, f"m{number}".encode(), partition=0)
    producer.send(topic, b"other", partition=1)
    producer.flush()
    producer.close()
    committer = KafkaConsumer(
        bootstrap_servers=pipeline.bootstrap, group_id=group, enable_auto_commit=False
    )
    committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    committer.close()

    registry = CollectorRegistry()
    monitor = LagMonitor(registry, pipeline.bootstrap, group, [topic])
    caplog.set_level(logging.INFO)
    caplog.clear()  # the commit above may warn while the new group's coordinator loads
    for _ in range(3):  # each measurement used to warn once
        monitor.measure()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
    lag = {
        partition: registry.get_sample_value(
            "touchpoint_consumer_lag", {"group": group, "topic": topic, "partition": partition}
        )
        for partition in ("0", "1")
    }
    assert lag == {"0": 3.0, "1": 1.0}


def metric_value(port: int, name: str) -> float | None:
    """One sample of a metric as a process serves it on /metrics, or None if absent."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else None


_WARNING_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ WARNING (\S+): ")


def warnings_since(log: str, since: datetime) -> list[str]:
    """WARNING lines logged at or after ``since`` (``logging`` writes local time, in seconds)."""
    found = []
    for line in log.splitlines():
        match = _WARNING_LINE.search(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").astimezone()
        # kafka-python's watchdog for a slow step of its network loop: a loaded machine
        # (a shared CI runner) can trip it at any time.
        if at >= since and match.group(2) != "kafka.net.selector":
            found.append(line)
    return found


@pytest.mark.slow
def test_an_idle_worker_and_sink_log_no_periodic_warning(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A healthy worker and sink with metrics on, past their start and over more than one
    lag-monitor period (10 s), log no warnings: they logged "group_id is None: disabling
    auto-commit." every 10 s (issue 16). Warnings while they start (e.g. the sink's first
    assignment racing the topics' creation) are not this test's business."""
    worker_port, sink_port = free_port(), free_port()
    worker = start_process(
        pipeline, tmp_path, "worker", "worker", "--metrics-port", str(worker_port)
    )
    sink = start_process(
        pipeline,
        tmp_path,
        "sink",
        "sink",
        "--metrics-port",
        str(sink_port),
        env={
            "TOUCHPOINT_CLICKHOUSE_URL": f"chdb:{tmp_path / 'ch'}",
            "TOUCHPOINT_KAFKA_SINK_GROUP": f"{pipeline.app_id}-sink",
        },
    )
    try:
        deadline = time.monotonic() + 120
        ports = {"worker": worker_port, "sink": sink_port}
        while ports and time.monotonic() < deadline:
            for name, port in list(ports.items()):
                if metric_value(port, "touchpoint_consumer_lag_up") == 1.0:
                    del ports[name]  # its lag monitor has measured once
            time.sleep(0.5)
        assert ports == {}, f"the lag monitor of {sorted(ports)} never reached Kafka"
        steady = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
        time.sleep(12)  # at least one more measurement each
        assert worker.poll() is None and sink.poll() is None
    finally:
        stop(worker)
        stop(sink)
    for name in ("worker", "sink"):
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert "group_id is None" not in log, name
        assert warnings_since(log, steady) == [], name
