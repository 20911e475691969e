"""A soak: a bounded, steady load for minutes through two workers and the sink.

Generated journeys are produced at a fixed rate (a fraction of what the Kafka path
sustains, see docs/benchmarks.md), while the test samples, every few seconds, the
workers' and the sink's consumer lag and the resident memory of each process. The lag
must stay bounded (no hop falls behind a steady load), memory must level off (no leak:
what grows must be the journeys themselves), and the end result must be exactly the
generator's ground truth. The figures are printed (``pytest -s``) and written to
``soak.json`` in the test's directory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from kafka.errors import KafkaError

from ingest.generator import GeneratorConfig, write_dataset
from ingest.kafka import TouchpointProducer, peek
from processors.classify import default_rules
from tests.integration.test_faults import assert_ground_truth, create_topics
from tests.kafka_pipeline import Pipeline, read_back_dir, rss_kib, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = int(os.environ.get("TOUCHPOINT_SOAK_RATE", "200"))
"""Events per second sent (the Kafka path sustains ~3,000/s on two cores)."""
BUYERS = int(os.environ.get("TOUCHPOINT_SOAK_BUYERS", "5000"))
"""About 7.5 events per buyer: 5,000 buyers at 200/s is a little over three minutes."""
SAMPLE_EVERY = 5.0
WARM_UP = 30.0
"""Seconds of start-up (groups forming, first commits, chDB opening) before bounds apply."""


@dataclass
class Sample:
    at: float
    sent: int
    raw_lag: int
    sink_lag: int
    rss_kib: dict[str, int]


def test_a_steady_load_for_minutes_keeps_lag_bounded_and_memory_level(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    config = GeneratorConfig(
        buyers=BUYERS,
        seed=31337,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.002,
        timeouts=dict(default_rules().timeouts),
    )
    truth = write_dataset(config, events)
    lines = [line.encode() for line in events.read_text().splitlines()]
    newest = max(at for _, at in map(peek, lines) if at is not None)
    chdb = tmp_path / "ch"
    create_topics(pipeline)
    processes = {
        "worker-a": pipeline.start_worker("worker-a"),
        "worker-b": pipeline.start_worker("worker-b"),
        "sink": pipeline.start_sink("sink", chdb),
    }
    producer = TouchpointProducer(pipeline.bootstrap, topic=pipeline.topics.raw)
    samples: list[Sample] = []
    try:
        started = time.monotonic()
        next_sample = started
        sent = 0
        while sent < len(lines):
            now = time.monotonic()
            due = min(len(lines), int((now - started) * RATE))
            while sent < due:
                producer.send(lines[sent])
                sent += 1
            if now >= next_sample:
                samples.append(sample(pipeline, processes, now - started, sent))
                next_sample += SAMPLE_EVERY
                exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
                assert not exited, f"exited under load: {exited}; see {tmp_path}"
            time.sleep(0.02)
        load_seconds = time.monotonic() - started
        producer.flush()
        producer.send_watermark(newest)
        producer.flush()
        pipeline.wait_until_workers_consumed_everything()
        caught_up = pipeline.wait_until_sink_committed_everything(sink=processes["sink"])
        drained = time.monotonic() - started - load_seconds
        samples.append(sample(pipeline, processes, time.monotonic() - started, sent))
    finally:
        producer.close()
        for process in processes.values():
            stop(process)
    assert processes["sink"].returncode == 0

    during = [s for s in samples if s.at <= load_seconds]
    steady = [s for s in during if s.at >= WARM_UP]
    warm = [s for s in steady if s.at <= WARM_UP + 30]  # the first 30 s after warm-up
    tail = steady[-6:]  # the last 30 s of load
    outputs = sum(pipeline.output_ends().values())

    def median_rss(window: list[Sample], name: str) -> int:
        return int(statistics.median(s.rss_kib[name] for s in window))

    figures = {
        "events": len(lines),
        "rate_per_s": RATE,
        "load_seconds": round(load_seconds, 1),
        "drained_seconds_after_load": round(drained, 1),
        "sink_caught_up_seconds": round(caught_up, 1),
        "max_raw_lag": max(s.raw_lag for s in during),
        "max_sink_lag": max(s.sink_lag for s in during),
        "max_raw_lag_after_warm_up": max(s.raw_lag for s in steady),
        "max_sink_lag_after_warm_up": max(s.sink_lag for s in steady),
        "output_records": outputs,
        "rss_mib": {
            name: {
                "start": round(during[0].rss_kib[name] / 1024, 1),
                "after_warm_up": round(median_rss(warm, name) / 1024, 1),
                "end": round(median_rss(tail, name) / 1024, 1),
                "max": round(max(s.rss_kib[name] for s in during) / 1024, 1),
            }
            for name in processes
        },
        "samples": [asdict(s) for s in samples],
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=2))

    # Lag bounded: once started, no hop is more than ~15 s of load behind at any sample,
    # and what is left when the load stops drains quickly.
    assert figures["max_raw_lag_after_warm_up"] <= 15 * RATE, figures
    assert figures["max_sink_lag_after_warm_up"] <= 15 * outputs / load_seconds, figures
    assert drained < 60, figures
    # Memory levels off (medians of 30 s windows, so one sample's jitter does not count).
    # A worker holds its journeys and remembered event ids; the sink holds at most a batch
    # besides chDB, whose caches grow a little with the tables: allow that, not a leak's
    # climb with every message.
    growth = {name: median_rss(tail, name) - median_rss(warm, name) for name in processes}
    assert growth["sink"] <= 80 * 1024, figures["rss_mib"]
    assert growth["worker-a"] <= 32 * 1024 and growth["worker-b"] <= 32 * 1024, figures["rss_mib"]

    assert_ground_truth(read_back_dir(chdb), truth)


def sample(
    pipeline: Pipeline, processes: dict[str, subprocess.Popen[bytes]], at: float, sent: int
) -> Sample:
    def lag(measure: Callable[[], int]) -> int:
        try:
            return measure()
        except KafkaError:  # e.g. the group's coordinator is still loading: not measured
            return -1

    return Sample(
        at=round(at, 1),
        sent=sent,
        raw_lag=lag(pipeline.raw_lag),
        sink_lag=lag(pipeline.sink_lag),
        rss_kib={name: rss_kib(process.pid) for name, process in processes.items()},
    )
