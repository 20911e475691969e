"""Files → journeys in ClickHouse, in this process: ``touchpoint run`` (and the demo's run)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ingest.ordering import in_order_within, sort_by_event_time
from ingest.reader import read_records
from processors.journey_processor import JourneyProcessor
from processors.local import RunSummary, run_local
from schemas.duration import format_duration
from schemas.errors import ConfigError, InputError
from schemas.raw import RawRecord
from schemas.rules import JourneyRules
from schemas.settings import Settings
from sinks import identity, journey_store
from sinks.background import BackgroundSink
from sinks.clickhouse import Client
from sinks.writer import ClickHouseWriter
from touchpoint.config import build_processor, rules_for

__all__ = ["InputFile", "ResumedRun", "inspect_inputs", "resume", "run_files"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    path: Path
    lines: int
    sha256: str


def inspect_inputs(paths: Sequence[Path]) -> list[InputFile]:
    """Line count and content hash of each input: they size the progress bar and name the run."""
    found = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"no such input file: {path}")
        digest = hashlib.sha256()
        lines = 0
        try:
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    lines += chunk.count(b"\n")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        found.append(InputFile(path, lines, digest.hexdigest()))
    return found


def run_files(
    settings: Settings,
    inputs: Sequence[InputFile],
    client: Client,
    *,
    rules: JourneyRules | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_sort_progress: Callable[[int], None] | None = None,
    sort_dir: Path | None = None,
) -> RunSummary:
    """Run the journey processor over ``inputs`` into ClickHouse, as one bounded input.

    The records of all the files are processed in event-time order (ingest.ordering),
    so the result does not depend on the order of their lines or of the files; the
    sort spills to temporary files under ``sort_dir`` (default: the system's). Files
    already in time order within the allowed lateness (checked in a first, cheap pass)
    stream through as they are: the fold gives the same result for them.
    ``on_sort_progress`` counts records read into the sort, ``on_progress`` records
    processed.
    """
    resumed = resume(settings, client, rules if rules is not None else rules_for(settings))
    already = resumed.loaded_inputs()
    skipped = [(item.path, already[item.sha256]) for item in inputs if item.sha256 in already]
    inputs = [item for item in inputs if item.sha256 not in already]
    if not inputs:
        summary = resumed.summary()
        summary.skipped = skipped
        return summary

    def records() -> Generator[RawRecord, None, None]:
        for item in inputs:
            yield from read_records(item.path, source=item.path.name)

    # In time order within the allowed lateness (exports usually are): the same result
    # as sorted, so it streams through as it is, without the sort's disk pass.
    presorted = in_order_within(records(), settings.processing.allowed_lateness)
    input_names = [f"{item.path.name}:{item.sha256}" for item in inputs]
    ordered = (
        records()
        if presorted
        else sort_by_event_time(records(), temp_dir=sort_dir, on_read=on_sort_progress)
    )
    summary = resumed.run(
        ordered,
        identity=[
            *(input_names if presorted else sorted(input_names)),
            # batches differ from those of the unsorted runs before
            "order:as-read" if presorted else "order:event-time",
        ],
        described=", ".join(f"{item.path.name} (sha256 {item.sha256[:12]})" for item in inputs),
        input_sha256=[item.sha256 for item in inputs],
        on_progress=on_progress,
    )
    summary.skipped = skipped
    return summary


@dataclass
class ResumedRun:
    """A processor holding the journeys the committed runs of a database left."""

    settings: Settings
    client: Client
    processor: JourneyProcessor
    runs: journey_store.StoredRuns
    rules_json: str
    rules_sha256: str
    loaded: int

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database

    def loaded_inputs(self) -> dict[str, int]:
        if self.runs.committed is None:
            return {}
        return journey_store.loaded_inputs(self.client, self.database)

    def summary(self) -> RunSummary:
        return RunSummary(
            counters=self.processor.counters,
            resumed_from=None if self.runs.committed is None else self.runs.committed.seq,
            resumed_journeys=self.loaded,
            watermark=self.processor.watermark(),
        )

    def run(
        self,
        records: Generator[RawRecord, None, None],
        *,
        identity: Sequence[str],
        described: str,
        input_sha256: Sequence[str],
        on_progress: Callable[[int], None] | None = None,
    ) -> RunSummary:
        """Process ``records`` into ClickHouse and store the journeys they changed.

        ``identity`` names the input (with the settings and the run resumed from it makes
        the run id, hence the batches' deduplication tokens).
        """
        settings, client, processor = self.settings, self.client, self.processor
        processing = settings.processing
        committed = self.runs.committed
        run_id = hashlib.sha256(
            "\x1f".join(
                [
                    *identity,
                    self.rules_json,
                    format_duration(processing.allowed_lateness),
                    format_duration(processing.dedup_window),
                    str(processing.batch_size),
                    # the same input folded into other journeys gives other batches
                    f"resumed:{0 if committed is None else committed.seq}",
                ]
            ).encode()
        ).hexdigest()[:20]
        database = self.database
        seq = journey_store.begin_run(
            client,
            database,
            self.runs,
            run_id=run_id,
            inputs=described,
            input_sha256=input_sha256,
            rules_sha256=self.rules_sha256,
        )
        writer = ClickHouseWriter(
            client,
            database,
            retries=settings.clickhouse.insert_retries,
            backoff=settings.clickhouse.retry_backoff,
        )
        # The engine inserts one batch while the processor folds the next.
        sink = BackgroundSink(writer, close_inner=False)
        try:
            with closing(records):  # e.g. removes a sort's files also when the run fails
                summary = run_local(
                    records,
                    processor,
                    sink,
                    batch_size=processing.batch_size,
                    run_id=run_id,
                    on_progress=on_progress,
                )
        except BaseException:
            sink.abandon()
            raise
        sink.close()
        states = processor.states
        started = time.perf_counter()
        stored = journey_store.commit_run(
            client,
            database,
            seq,
            run_id=run_id,
            inputs=described,
            input_sha256=input_sha256,
            rules_sha256=self.rules_sha256,
            states=(
                (buyer_id, partition, states[buyer_id])
                for buyer_id, partition in summary.changed.items()
            ),
            newest_event_time=processor.max_event_time,
            records=summary.records,
        )
        logger.info(
            "run %d: stored %d journeys in %.2fs", seq, stored, time.perf_counter() - started
        )
        summary.resumed_from = None if committed is None else committed.seq
        summary.resumed_journeys = self.loaded
        summary.run_seq = seq
        return summary


def resume(settings: Settings, client: Client, rules: JourneyRules) -> ResumedRun:
    """A processor with the journeys, timers and event time the committed runs left."""
    processor = build_processor(settings, rules)
    database = settings.clickhouse.database
    rules_json = rules.model_dump_json()
    # What classifies and judges: triggers may change between runs (new ones apply to new
    # events), stages, rules and timeouts may not.
    rules_sha256 = hashlib.sha256(rules.model_dump_json(exclude={"triggers"}).encode()).hexdigest()
    runs = journey_store.stored_runs(client, database)
    committed = runs.committed
    if committed is not None and committed.rules_sha256 != rules_sha256:
        raise ConfigError(
            f"the journeys in database {database} were built with other journey rules "
            f"(run {committed.seq}, inputs {committed.inputs}); a run folds new events into "
            "them, so two rule sets would classify the days differently: use the rules file "
            "of the runs before, or load every input again into a new database"
        )
    if committed is not None:
        processor.states.update(journey_store.load_states(client, database, runs))
        newest = committed.newest_event_time
        processor.restore(newest_event_times={0: newest} if newest is not None else None)
    processor.unlinkable = identity.blocked_ids(client, database)
    processor.link_epoch = runs.unfinished.seq if runs.unfinished is not None else runs.next_seq
    return ResumedRun(
        settings, client, processor, runs, rules_json, rules_sha256, len(processor.states)
    )
