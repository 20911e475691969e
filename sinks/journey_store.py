"""Journey state kept between embedded runs, in the run's own ClickHouse database.

Each ``touchpoint run`` folds its input into the journeys the runs before it left,
so loading day 1 and then day 2 gives exactly what loading both at once gives: the
same journeys, moves and drop-offs, and the same dedup memory (a day-2 copy of a
day-1 event is a duplicate, not a second touchpoint).

A run is numbered (``seq``) and recorded twice in ``journey_runs``: ``started``
before its first batch, ``committed`` once every batch is written and the journeys
it changed are in ``journey_store``. Only committed runs are resumed from. A run
that did not finish (killed, or its inserts failed) is finished by running the
same inputs again: it resumes from the same journeys, so its batches carry the
same deduplication tokens and what it had written is not written twice. Starting
other inputs on top of an unfinished run is refused, since its rows are in the
tables but its journeys are not.

Kafka workers keep their journeys in the compacted ``journey.store`` topic instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import InputError
from sinks.clickhouse import Client, identifier, translate_error

__all__ = [
    "RunRecord",
    "StoredRuns",
    "begin_run",
    "commit_run",
    "load_states",
    "loaded_inputs",
    "stored_runs",
]

_STATES: Final = "journey_store"
_RUNS: Final = "journey_runs"
_CHUNK: Final = 20_000


@dataclass(frozen=True, slots=True)
class RunRecord:
    seq: int
    run_id: str
    inputs: str
    input_sha256: tuple[str, ...]
    rules_sha256: str
    newest_event_time: datetime | None
    records: int
    journeys: int


@dataclass(frozen=True, slots=True)
class StoredRuns:
    """What the runs before this one left in a database."""

    committed: RunRecord | None
    """The last committed run: its journeys are the ones to resume from."""
    unfinished: RunRecord | None
    """A run started after it that never committed."""

    @property
    def next_seq(self) -> int:
        return 1 if self.committed is None else self.committed.seq + 1


def stored_runs(client: Client, database: str) -> StoredRuns:
    """The last committed run and, if one started after it, the run that did not finish."""
    database = identifier(database)
    committed = _last(client, database, statuses=("committed",), after=0)
    after = 0 if committed is None else committed.seq
    return StoredRuns(committed, _last(client, database, statuses=("started",), after=after))


def _last(
    client: Client, database: str, *, statuses: tuple[str, ...], after: int
) -> RunRecord | None:
    try:
        rows = client.query(
            "SELECT seq, run_id, inputs, input_sha256, rules_sha256, newest_event_time, records, "
            f"journeys FROM {database}.{_RUNS} "
            "WHERE status IN %(statuses)s AND seq > %(after)s ORDER BY seq DESC LIMIT 1",
            parameters={"statuses": statuses, "after": after},
        ).result_rows
    except ClickHouseError as exc:
        raise translate_error(exc, f"reading {database}.{_RUNS}") from exc
    if not rows:
        return None
    seq, run_id, inputs, shas, rules_sha256, newest, records, journeys = rows[0]
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return RunRecord(
        int(seq), run_id, inputs, tuple(shas), rules_sha256, newest, int(records), int(journeys)
    )


def loaded_inputs(client: Client, database: str) -> dict[str, int]:
    """SHA-256 of every input file a committed run loaded → that run's seq."""
    database = identifier(database)
    try:
        rows = client.query(
            f"SELECT sha, min(seq) FROM {database}.{_RUNS} ARRAY JOIN input_sha256 AS sha "
            "WHERE status = 'committed' GROUP BY sha"
        ).result_rows
    except ClickHouseError as exc:
        raise translate_error(exc, f"reading {database}.{_RUNS}") from exc
    return {sha: int(seq) for sha, seq in rows}


def load_states(client: Client, database: str, runs: StoredRuns) -> Iterator[tuple[str, bytes]]:
    """(buyer id, encoded state) of every journey as the last committed run left it."""
    if runs.committed is None:
        return
    database = identifier(database)
    try:
        with client.query_row_block_stream(
            f"SELECT buyer_id, argMax(state, run_seq) AS state FROM {database}.{_STATES} "
            "WHERE run_seq <= %(seq)s GROUP BY buyer_id",
            parameters={"seq": runs.committed.seq},
            column_formats={"state": "bytes"},
        ) as stream:
            for block in stream:
                yield from block
    except ClickHouseError as exc:
        raise translate_error(exc, f"reading {database}.{_STATES}") from exc


def begin_run(
    client: Client,
    database: str,
    runs: StoredRuns,
    *,
    run_id: str,
    inputs: str,
    input_sha256: Sequence[str],
    rules_sha256: str,
) -> int:
    """Record the start of a run; returns its seq.

    Raises :class:`InputError` if another run started after the last commit and did
    not finish (its rows are in the tables, its journeys are not): finishing it first
    is the only way to keep the journeys true.
    """
    unfinished = runs.unfinished
    database = identifier(database)
    if unfinished is not None:
        if unfinished.run_id != run_id:
            raise InputError(
                f"the previous run into {database} (run {unfinished.seq}, inputs "
                f"{unfinished.inputs}) did not finish: run `touchpoint run` again with the same "
                "inputs and settings to complete it (what it wrote is not written twice), or "
                "start over in a new database or data directory"
            )
        seq = unfinished.seq
        try:
            client.command(
                f"DELETE FROM {database}.{_STATES} WHERE run_seq >= %(seq)s",
                parameters={"seq": seq},
            )
        except ClickHouseError as exc:
            raise translate_error(exc, f"deleting from {database}.{_STATES}") from exc
        return seq
    seq = runs.next_seq
    _insert_run(
        client, database, seq, "started", run_id, inputs, input_sha256, rules_sha256, None, 0, 0
    )
    return seq


def commit_run(
    client: Client,
    database: str,
    seq: int,
    *,
    run_id: str,
    inputs: str,
    input_sha256: Sequence[str],
    rules_sha256: str,
    states: Iterable[tuple[str, int, bytes]],
    newest_event_time: datetime | None,
    records: int,
) -> int:
    """Store the journeys the run changed, (buyer id, partition, encoded state), then mark
    the run committed. Returns how many journeys were stored."""
    database = identifier(database)
    stored = 0
    chunk: list[tuple[str, int, bytes]] = []
    for item in states:
        chunk.append(item)
        if len(chunk) >= _CHUNK:
            _insert_states(client, database, seq, chunk)
            stored += len(chunk)
            chunk = []
    if chunk:
        _insert_states(client, database, seq, chunk)
        stored += len(chunk)
    _insert_run(
        client,
        database,
        seq,
        "committed",
        run_id,
        inputs,
        input_sha256,
        rules_sha256,
        newest_event_time,
        records,
        stored,
    )
    return stored


def _insert_states(
    client: Client, database: str, seq: int, chunk: list[tuple[str, int, bytes]]
) -> None:
    buyers, partitions, blobs = zip(*chunk, strict=True)
    try:
        client.insert(
            _STATES,
            [list(buyers), list(partitions), list(blobs), [seq] * len(chunk)],
            column_names=["buyer_id", "partition", "state", "run_seq"],
            database=database,
            column_oriented=True,
        )
    except ClickHouseError as exc:
        raise translate_error(exc, f"insert into {database}.{_STATES}") from exc


def _insert_run(
    client: Client,
    database: str,
    seq: int,
    status: str,
    run_id: str,
    inputs: str,
    input_sha256: Sequence[str],
    rules_sha256: str,
    newest_event_time: datetime | None,
    records: int,
    journeys: int,
) -> None:
    try:
        client.insert(
            _RUNS,
            [
                [
                    seq,
                    status,
                    run_id,
                    inputs,
                    list(input_sha256),
                    rules_sha256,
                    newest_event_time,
                    records,
                    journeys,
                ]
            ],
            column_names=[
                "seq",
                "status",
                "run_id",
                "inputs",
                "input_sha256",
                "rules_sha256",
                "newest_event_time",
                "records",
                "journeys",
            ],
            database=database,
        )
    except ClickHouseError as exc:
        raise translate_error(exc, f"insert into {database}.{_RUNS}") from exc
