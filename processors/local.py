"""The local runner: the journey processor in one process, over any iterator of raw records.

The embedded default: read a file (or the generator), process in batches, hand
each batch's rows to a sink (chDB through the ClickHouse writer, by default).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from processors.journey_processor import JourneyProcessor, ProcessorCounters
from schemas.raw import RawRecord
from sinks.base import RowBatch, Sink

__all__ = ["RunSummary", "run_local"]


@dataclass
class RunSummary:
    records: int = 0
    batches: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    counters: ProcessorCounters = field(default_factory=ProcessorCounters)
    watermark: datetime | None = None
    changed: dict[str, int] = field(default_factory=dict)
    """Buyer id → input partition of every journey the run changed."""
    resumed_from: int | None = None
    """The stored run whose journeys this run continued (None: it started empty)."""
    resumed_journeys: int = 0
    run_seq: int | None = None
    """The number of this run in its database's journey_runs (embedded runs)."""
    skipped: list[tuple[Path, int]] = field(default_factory=list)
    """Inputs left out because a stored run had loaded them: (file, that run)."""


def run_local(
    records: Iterable[RawRecord],
    processor: JourneyProcessor,
    sink: Sink,
    *,
    batch_size: int,
    run_id: str,
    on_progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Process ``records`` in batches of ``batch_size`` and write each batch to ``sink``.

    ``run_id`` names the input (e.g. a content hash); with it, every batch gets
    a deterministic token, so running the same input again writes nothing new.
    """
    summary = RunSummary(counters=processor.counters)
    in_batch = 0

    def write_batch() -> None:
        output = processor.flush()
        # The journey state is long-lived and cycle-free; without this, every full
        # collection rescans all of it for nothing (it halves a 1M-event run).
        gc.freeze()
        tables = output.encoded()
        for partition, stored in output.stored.items():
            summary.changed.update((buyer_id, partition) for buyer_id, _ in stored)
        sink.write(RowBatch(token=f"{run_id}:{summary.batches}", tables=tables))
        for table, rows in tables.items():
            summary.rows_written[table] = summary.rows_written.get(table, 0) + len(rows)
        summary.batches += 1

    process_record = processor.process_record
    for record in records:
        process_record(
            record.data, source=record.source, position=record.position, error=record.error
        )
        summary.records += 1
        in_batch += 1
        if in_batch >= batch_size:
            write_batch()
            if on_progress is not None:
                on_progress(in_batch)
            in_batch = 0
    write_batch()
    if on_progress is not None and in_batch:
        on_progress(in_batch)
    sink.flush()
    summary.watermark = processor.watermark()
    return summary
