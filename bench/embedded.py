"""Throughput of ``touchpoint run`` on embedded chDB, against a plain-insert ceiling.

What is measured
----------------
One synthetic JSONL file (default: about 1M events from :mod:`ingest.generator`) is
pushed through, in the same invocation and on the same machine:

``pipeline``
    Exactly what ``touchpoint run --input FILE`` does (see ``touchpoint/cli.py``):
    :func:`touchpoint.wiring.inspect_inputs` (one hashing pass over the file) then
    :func:`touchpoint.wiring.run_files` (read, parse, validate, classify, de-duplicate,
    track journeys, judge drop-offs, and write every batch through
    :class:`sinks.writer.ClickHouseWriter`). Connecting and migrating a fresh database
    are setup and are not timed (they are reported separately).

``ceiling (writer)``
    The *same rows* the pipeline writes, materialized beforehand (untimed) by the same
    processor into a spool file, loaded, then written batch by batch with the same
    :class:`~sinks.writer.ClickHouseWriter`, the same batch size, tables, materialized
    views and insert settings, into a fresh database (so no batch is deduplicated away).
    It is the right peer: it is everything the pipeline cannot avoid doing to land its
    output in chDB, and nothing else. ``pipeline / ceiling`` is the share of the achievable
    insert throughput that the processing leaves; the gap is the cost of processing.

``ceiling (raw insert)``
    Lower still: the same batches, each table's rows already joined into the one
    ``JSONEachRow`` block the writer sends (untimed), passed to ``client.raw_insert`` with
    the input-format settings only (no deduplication token). Only the chDB engine remains.

``process only`` (informational)
    The materialization step, timed anyway (minus the spooling): the processor and the
    reader, i.e. the pipeline with no ClickHouse at all. Roughly, pipeline seconds ≈
    process only + ceiling (writer) + one hashing pass over the file.

Events/s always divides the number of input records (lines of the file, including the
generator's duplicates and malformed records) by the phase's wall-clock seconds. Each
pipeline run gets a fresh ``spawn`` subprocess and chDB directory, like a real
``touchpoint run``; the ceilings share one subprocess (chDB hosts one data directory per
process, and the rows are produced there), one chDB directory, a fresh database each, and
wait for background merges to finish before they start. With ``--repeat N`` every timed
phase runs N times and the median seconds are reported.

Run from the repository root::

    python -m bench.embedded                 # ~1M events, about 10 minutes on 2 cores
    python -m bench.embedded --events 100000 --repeat 3

Results are printed and written as JSON to ``bench/results/embedded-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import pickle
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from bench import common
from bench.common import (
    EVENTS_PER_BUYER,
    Progress,
    Timed,
    add_dataset_options,
    add_run_options,
    buyers_for,
    changed_during_run,
    chdb_environment,
    chdb_settings,
    code_revision,
    count_lines,
    generate,
    in_child,
    median_run,
    positive,
    setup_logging,
)
from ingest.generator import GeneratorConfig
from ingest.reader import read_records
from processors.local import run_local
from sinks.base import RowBatch, Sink
from sinks.clickhouse import Client
from sinks.migrate import apply_migrations
from sinks.writer import JSON_INPUT_SETTINGS, ClickHouseWriter
from touchpoint import wiring

__all__ = ["EVENTS_PER_BUYER", "PhaseResult", "main"]

logger = logging.getLogger("bench.embedded")

_RUN_ID: Final = "bench-ceiling"


@dataclass
class PhaseResult(Timed):
    """One timed pass of one phase."""

    peak_rss_mib: float
    rows_written: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


def _peak_rss_mib() -> float:
    """Peak resident set size of this process's own memory, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: Linux carries
    ``ru_maxrss`` over a fork + exec, so a spawned phase would report this benchmark's own
    peak (the generator's) whenever that is larger than the phase's.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _count_touchpoints(client: Client, database: str) -> int:
    count = client.command(f"SELECT count() FROM {database}.touchpoints")
    assert isinstance(count, int | str), count
    return int(count)


# ----------------------------------------------------------- phases (run in children)


def pipeline_phase(events: Path, chdb_dir: Path, database: str, batch_size: int) -> PhaseResult:
    """``touchpoint run --input events`` into a fresh database, timed without setup."""
    settings = chdb_settings(chdb_dir, database, batch_size)
    setup_started = time.perf_counter()
    with wiring.clickhouse(settings) as client:
        setup = time.perf_counter() - setup_started
        started = time.perf_counter()
        inputs = wiring.inspect_inputs([events])
        inspected = time.perf_counter()
        progress = Progress("pipeline", inputs[0].lines)
        summary = wiring.run_files(settings, inputs, client, on_progress=progress)
        seconds = time.perf_counter() - started
        stored = _count_touchpoints(client, database)
    counters = summary.counters
    return PhaseResult(
        phase="pipeline",
        records=summary.records,
        seconds=seconds,
        peak_rss_mib=_peak_rss_mib(),
        rows_written=dict(summary.rows_written),
        details={
            "setup_seconds": setup,
            "inspect_seconds": inspected - started,
            "batches": summary.batches,
            "accepted": counters.accepted,
            "duplicates": counters.duplicates,
            "unclassified": counters.unclassified,
            "late": counters.late,
            "dead_lettered": counters.dead_lettered,
            "dropoffs": counters.dropoffs,
            "touchpoints_stored": stored,
        },
    )


class _SpoolSink(Sink):
    """Pickles each batch to a file as it comes (so no rows pile up in memory), timing itself."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.batches = 0
        self.seconds = 0.0

    def write(self, batch: RowBatch) -> None:
        started = time.perf_counter()
        pickle.dump(batch, self.handle, protocol=pickle.HIGHEST_PROTOCOL)
        self.batches += 1
        self.seconds += time.perf_counter() - started

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.flush()


def _load_batches(batches_file: Path) -> list[RowBatch]:
    batches: list[RowBatch] = []
    with batches_file.open("rb") as handle:
        while True:
            try:
                batches.append(pickle.load(handle))  # our own file, written just before
            except EOFError:
                return batches


def _materialize(events: Path, spool_file: Path, batch_size: int) -> PhaseResult:
    """The processor with a spooling sink: the ceilings' rows, and the ``process only`` time.

    Spooling (rather than keeping the rows) stops them from piling up in memory, where
    the garbage collector would rescan them and slow the processor down; its time is
    measured by the sink and subtracted.
    """
    settings = wiring.load_settings(batch_size=batch_size)
    processor = wiring.build_processor(settings, wiring.rules_for(settings))
    lines = wiring.inspect_inputs([events])[0].lines
    with spool_file.open("wb") as handle:
        sink = _SpoolSink(handle)
        started = time.perf_counter()
        summary = run_local(
            read_records(events, source=events.name),
            processor,
            sink,
            batch_size=batch_size,
            run_id=_RUN_ID,
            on_progress=Progress("process only", lines),
        )
        seconds = time.perf_counter() - started - sink.seconds
    return PhaseResult(
        phase="process only",
        records=summary.records,
        seconds=seconds,
        peak_rss_mib=_peak_rss_mib(),
        rows_written=dict(summary.rows_written),
        details={
            "batches": sink.batches,
            "spool_seconds": sink.seconds,
            "spool_bytes": spool_file.stat().st_size,
        },
    )


def _wait_for_merges(client: Client, limit: float = 120.0) -> float:
    """Let background merges of an earlier phase finish, so phases do not share the CPU."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        running = client.command("SELECT count() FROM system.merges")
        if not isinstance(running, int | str) or int(running) == 0:
            break
        time.sleep(0.5)
    return time.perf_counter() - started


def ceilings_phase(
    events: Path, spool_file: Path, chdb_dir: Path, batch_size: int, repeat: int
) -> list[PhaseResult]:
    """Materialize the pipeline's rows, then insert them into fresh databases, ``repeat`` times.

    One process throughout, so the spooled rows are read back by the very classes that
    made them. Each repeat times the ``writer`` ceiling (the batches through
    :class:`ClickHouseWriter`) and the ``raw`` one (pre-joined JSONEachRow blocks through a bare
    ``client.insert``), each into a database of its own in one chDB directory.
    """
    materialized = _materialize(events, spool_file, batch_size)
    results = [materialized]
    batches = _load_batches(spool_file)
    spool_file.unlink()
    inserts = [
        (table, _block(table_rows))
        for batch in batches
        for table, table_rows in batch.tables.items()
        if table_rows
    ]
    gc.collect()
    gc.freeze()  # the loaded rows never die: keep the collector from rescanning them
    settings = chdb_settings(chdb_dir, "default", batch_size)
    with wiring.clickhouse(settings, migrate=False) as client:
        for number in range(1, repeat + 1):
            for kind in ("writer", "raw"):
                label = "ceiling (writer)" if kind == "writer" else "ceiling (raw insert)"
                database = f"bench_ceiling_{kind}_{number}"
                settled = _wait_for_merges(client)
                setup_started = time.perf_counter()
                apply_migrations(client, database)
                setup = time.perf_counter() - setup_started
                if kind == "writer":
                    writer = ClickHouseWriter(client, database)
                    progress = Progress(label, len(batches))
                    started = time.perf_counter()
                    for batch in batches:
                        writer.write(batch)
                        progress(1)
                    seconds = time.perf_counter() - started
                else:
                    progress = Progress(label, len(inserts))
                    started = time.perf_counter()
                    for table, block in inserts:
                        client.raw_insert(
                            f"{database}.{table}",
                            None,
                            block,
                            fmt="JSONEachRow",
                            settings=JSON_INPUT_SETTINGS,
                        )
                        progress(1)
                    seconds = time.perf_counter() - started
                results.append(
                    PhaseResult(
                        phase=label,
                        records=materialized.records,
                        seconds=seconds,
                        peak_rss_mib=_peak_rss_mib(),
                        rows_written=dict(materialized.rows_written),
                        details={
                            "setup_seconds": setup,
                            "waited_for_merges_seconds": settled,
                            "touchpoints_stored": _count_touchpoints(client, database),
                        },
                    )
                )
    return results


def _block(rows: Sequence[Any]) -> bytes:
    """The rows as the one ``JSONEachRow`` block the writer would send (joined untimed)."""
    return b"\n".join(rows)


# ----------------------------------------------------------------------- orchestration


def _summarize(runs: Sequence[PhaseResult]) -> dict[str, Any]:
    """The run with the median seconds, the peak RSS of all, and every run."""
    chosen = median_run(runs, key=lambda run: run.seconds)
    return {
        "phase": chosen.phase,
        "records": chosen.records,
        "seconds": chosen.seconds,
        "events_per_second": chosen.events_per_second,
        "peak_rss_mib": max(run.peak_rss_mib for run in runs),
        "rows_written": chosen.rows_written,
        "runs": [{**asdict(run), "events_per_second": run.events_per_second} for run in runs],
    }


def benchmark(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Generate (or take) the input, run every phase ``args.repeat`` times, summarize."""
    environment = chdb_environment()
    dataset: dict[str, Any]
    if args.input is not None:
        events = args.input.resolve()
        dataset = {"path": str(events), "generated": False}
    else:
        buyers = buyers_for(args)
        events = run_dir / f"events-seed{args.seed}-buyers{buyers}.jsonl"
        generated = generate(events, GeneratorConfig(buyers=buyers, seed=args.seed))
        dataset = {"path": str(events), "generated": True, **generated}
    dataset["records"] = count_lines(events)
    dataset["bytes"] = events.stat().st_size
    logger.info("input: %s records, %.0f MiB", f"{dataset['records']:,}", dataset["bytes"] / 2**20)

    pipelines = []
    for number in range(1, args.repeat + 1):
        logger.info("pipeline, run %d of %d", number, args.repeat)
        pipelines.append(
            in_child(
                pipeline_phase,
                events,
                run_dir / f"chdb-pipeline-{number}",
                f"bench_pipeline_{number}",
                args.batch_size,
            )
        )
    logger.info("ceilings: materializing the pipeline's rows (untimed), then inserting them")
    ceilings = in_child(
        ceilings_phase,
        events,
        run_dir / "batches.pickle",
        run_dir / "chdb-ceilings",
        args.batch_size,
        args.repeat,
    )
    materialized = ceilings[0]
    runs = {
        "pipeline": pipelines,
        "writer": [run for run in ceilings if run.phase == "ceiling (writer)"],
        "raw": [run for run in ceilings if run.phase == "ceiling (raw insert)"],
    }

    pipeline = _summarize(runs["pipeline"])
    writer = _summarize(runs["writer"])
    raw = _summarize(runs["raw"])
    rows_match = pipeline["rows_written"] == materialized.rows_written
    if not rows_match:
        logger.warning(
            "the pipeline wrote %s rows but the ceiling inserted %s",
            pipeline["rows_written"],
            materialized.rows_written,
        )
    code_changed = changed_during_run(environment["git"], code_revision())
    return {
        "benchmark": "embedded",
        "started_at": args.started_at,
        "config": {
            "events_target": args.events,
            "batch_size": args.batch_size,
            "repeat": args.repeat,
            "seed": args.seed,
        },
        "environment": environment,
        "code_changed_during_run": code_changed,
        "dataset": dataset,
        "phases": [_summarize([materialized]), pipeline, writer, raw],
        "rows_match": rows_match,
        "ratio_pipeline_to_writer_ceiling": _ratio(pipeline, writer),
        "ratio_pipeline_to_raw_ceiling": _ratio(pipeline, raw),
    }


def _ratio(phase: dict[str, Any], ceiling: dict[str, Any]) -> float:
    return common.ratio(phase["events_per_second"], ceiling["events_per_second"]) or 0.0


def _render(result: dict[str, Any]) -> str:
    dataset = result["dataset"]
    ceiling = result["phases"][2]["events_per_second"]
    header = (
        f"{'phase':<22} {'events':>11} {'seconds':>9} {'events/s':>10} "
        f"{'vs ceiling':>10} {'peak RSS':>11}"
    )
    lines = [header, "-" * len(header)]
    if dataset.get("generated"):
        lines.append(
            f"{'generate (prep)':<22} {dataset['records']:>11,} {dataset['seconds']:>9.1f} "
            f"{dataset['records'] / dataset['seconds']:>10,.0f}"
        )
    for phase in result["phases"]:
        name = phase["phase"] + (" (no CH)" if phase["phase"] == "process only" else "")
        lines.append(
            f"{name:<22} {phase['records']:>11,} {phase['seconds']:>9.1f} "
            f"{phase['events_per_second']:>10,.0f} "
            f"{phase['events_per_second'] / ceiling:>9.2f}x "
            f"{phase['peak_rss_mib']:>7,.0f} MiB"
        )
    lines.append("")
    lines.append(
        f"pipeline runs at {result['ratio_pipeline_to_writer_ceiling']:.2f}x the plain-insert "
        "ceiling (its own rows, through ClickHouseWriter)"
    )
    lines.append(
        f"and at {result['ratio_pipeline_to_raw_ceiling']:.2f}x a raw client.insert of the same "
        "rows, pre-joined into JSONEachRow blocks."
    )
    repeat = result["config"]["repeat"]
    lines.append(
        f"batch size {result['config']['batch_size']:,}; "
        + (f"median of {repeat} runs" if repeat > 1 else "1 run")
        + "; peak RSS per subprocess (ceilings: incl. making the rows)"
        + ("" if result["rows_match"] else "; WARNING: row counts differ, see log")
        + (
            "; WARNING: the code changed during the run"
            if result["code_changed_during_run"]
            else ""
        )
        + "."
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded",
        description=(
            "Events/s of `touchpoint run` (embedded chDB) on generated events, beside a plain "
            "chDB insert of the very rows it writes (the ceiling), measured in the same run; "
            "reports pipeline/ceiling as a ratio. Each timed phase runs in a fresh subprocess "
            "with a fresh chDB directory. Progress goes to stderr, the table to stdout, and "
            "JSON to bench/results/."
        ),
    )
    add_dataset_options(
        parser,
        f"input records to aim for when generating: buyers = events / {EVENTS_PER_BUYER} "
        "(the actual count is reported) [default: 1000000]",
    )
    parser.add_argument(
        "--input",
        type=Path,
        help="benchmark this existing JSONL/CSV file instead of generating one",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=5000,
        help="records per batch, as TOUCHPOINT_BATCH_SIZE [default: 5000, the product default]",
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="run every timed phase this many times and report medians [default: 1]",
    )
    add_run_options(parser, "events file, chDB data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.input is not None and not args.input.is_file():
        setup_logging()
        logger.error("no such input file: %s", args.input)
        return 2
    return common.run(
        "embedded",
        args,
        benchmark,
        _render,
        scratch_prefix="touchpoint-bench-",
        keep_on_failure=False,
    )


if __name__ == "__main__":
    sys.exit(main())
