"""Size of a buyer's journey state as it is stored (``journey.store``, the state stores).

Runs the journey processor (no ClickHouse, no Kafka) over a generated file — or
``--input FILE`` — in batches like ``touchpoint run``, then reports the encoded size of
every buyer's final state: mean, p50, p99 and max bytes. Beside it, for scale, the same
states as JSON (``msgspec.json``) — the form a JSON store would hold.

    python -m bench.state_size                   # ~250k generated events
    python -m bench.state_size --events 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import msgspec

from bench.common import EVENTS_PER_BUYER, RESULTS_DIR, code_revision, positive, write_result
from ingest.generator import GeneratorConfig, write_dataset
from ingest.reader import read_records
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from schemas.journey import decode_state


def _percentile(values: Sequence[int], share: float) -> int:
    return values[min(len(values) - 1, int(len(values) * share))]


def measure(events: Path, batch_size: int) -> dict[str, object]:
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=2), dedup_window=timedelta(days=7)
    )
    started = time.perf_counter()
    records = 0
    for record in read_records(events):
        if record.error is None:
            processor.process_raw(record.data, source="bench", position=record.position)
        records += 1
        if records % batch_size == 0:
            processor.flush()
    processor.flush()
    sizes = sorted(len(blob) for blob in processor.states.values())
    json_sizes = sorted(
        len(msgspec.json.encode(decode_state(blob))) for blob in processor.states.values()
    )
    return {
        "records": records,
        "buyers": len(sizes),
        "seconds": time.perf_counter() - started,
        "encoded": {
            "mean": statistics.fmean(sizes),
            "p50": _percentile(sizes, 0.5),
            "p99": _percentile(sizes, 0.99),
            "max": sizes[-1],
        },
        "as_json": {
            "mean": statistics.fmean(json_sizes),
            "p50": _percentile(json_sizes, 0.5),
            "p99": _percentile(json_sizes, 0.99),
            "max": json_sizes[-1],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_size", description=__doc__)
    parser.add_argument("--events", type=positive, default=250_000, help="events to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--input", type=Path, help="a JSONL file instead of generated events")
    parser.add_argument("--batch-size", type=positive, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="touchpoint-state-size-") as scratch:
        events = args.input
        if events is None:
            events = Path(scratch) / "events.jsonl"
            buyers = max(1, round(args.events / EVENTS_PER_BUYER))
            print(f"generating ~{args.events:,} events ({buyers:,} buyers)", file=sys.stderr)
            write_dataset(GeneratorConfig(buyers=buyers, seed=args.seed), events)
        result = measure(events, args.batch_size)
    encoded, as_json = result["encoded"], result["as_json"]
    assert isinstance(encoded, dict) and isinstance(as_json, dict)
    print(f"{result['records']:,} records, {result['buyers']:,} buyers")
    print("bytes per buyer   mean    p50    p99    max")
    for name, sizes in (("stored (msgpack)", encoded), ("as JSON", as_json)):
        print(f"{name:<16} {sizes['mean']:6.0f} {sizes['p50']:6} {sizes['p99']:6} {sizes['max']:6}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_result(
        "state_size",
        {
            "started_at": started,
            "config": {**vars(args), "input": str(events)},
            "code": code_revision(),
            **result,
        },
        RESULTS_DIR,
    )
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
