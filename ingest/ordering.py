"""Event-time order for bounded inputs: an external merge sort of raw records.

A file, or a set of files, is bounded: all of it is there before the first record
is judged, so its result must not depend on the order of its lines. The journey
processor judges drop-offs by a watermark and dead-letters events too far behind
it, which is right for a stream and wrong for a file sorted by buyer. So a bounded
input reaches the processor in event-time order::

    records ─► runs of at most ``run_records`` records / ``run_bytes`` bytes, sorted in memory
            ─► every run but the last spilled to a temporary file
            ─► heapq.merge(spilled runs…, last run) ─► records in event-time order

Memory holds one run (plus a small read buffer per spilled run), whatever the input
size; an input that fits in one run is never written to disk. The temporary files
live in one directory under ``temp_dir`` (default: the system's), removed when the
iterator ends, fails or is closed.

The order is total and depends only on each record's bytes, never on its line:
``(occurred_at as UTC microseconds, raw bytes)``, then the input sequence for records
with identical bytes (they are interchangeable but for their line). Records whose
time cannot be read — framing errors, invalid JSON, no or a naive ``occurred_at``,
records over the size limit — come first, by their bytes: the processor
dead-letters them wherever they stand. Each record keeps its own source and position.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from schemas.enums import DeadLetterReason
from schemas.errors import ConfigError, InputError, SchemaValidationError
from schemas.events import decode_event
from schemas.raw import RawRecord
from schemas.touchpoint import MAX_RECORD_BYTES

__all__ = [
    "DEFAULT_FAN_IN",
    "DEFAULT_RUN_BYTES",
    "DEFAULT_RUN_RECORDS",
    "UNTIMED",
    "event_time_key",
    "in_order_within",
    "sort_by_event_time",
]

logger = logging.getLogger(__name__)

DEFAULT_RUN_RECORDS = 200_000
DEFAULT_RUN_BYTES = 24 << 20
"""A run's estimated size in memory: record bytes plus :data:`_RECORD_OVERHEAD` each."""
DEFAULT_FAN_IN = 64
"""Runs merged at once; more runs are first merged into bigger ones, so memory stays flat."""
UNTIMED: Final = -(1 << 63)
"""The sort key of a record whose event time cannot be read: before every real time."""

_RECORD_OVERHEAD: Final = 200  # tuple, ints, position string: bytes per record besides its data
_READ_BUFFER: Final = 64 << 10
_WRITE_BUFFER: Final = 1 << 20
_PROGRESS_EVERY: Final = 4096
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
# The common RFC 3339 shape, on which datetime.fromisoformat and pydantic agree exactly.
_OCCURRED_AT: Final = re.compile(
    rb'"occurred_at"\s*:\s*"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d))"'
)
_KEY: Final = b'"occurred_at"'
# key, sequence, source index, then the byte lengths of position, data, error ("" = none)
_HEADER: Final = struct.Struct("<qQIIII")

# (key, data, sequence, source index, position, error): compared up to the sequence only.
_Entry = tuple[int, bytes, int, int, str, tuple[DeadLetterReason, str] | None]


class _EventTime(BaseModel):
    """``occurred_at`` as the Touchpoint contract reads it; the rest is ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    occurred_at: AwareDatetime


def event_time_key(data: bytes) -> int:
    """``occurred_at`` of a raw record in UTC microseconds since 1970, or :data:`UNTIMED`.

    The common case — one unescaped ``"occurred_at"`` key with an RFC 3339 value — is a
    regex and ``datetime.fromisoformat``. Anything else goes the way
    :func:`schemas.touchpoint.parse_touchpoint` goes (its JSON parser and datetime rules,
    then ``json.loads`` for what that parser refuses), so a record the processor accepts
    is sorted by the time the processor will see.
    """
    if len(data) > MAX_RECORD_BYTES:
        return UNTIMED  # dead-lettered for its size whatever its time
    if b"\\" not in data and data.count(_KEY) == 1:
        match = _OCCURRED_AT.search(data)
        if match is not None:
            try:
                at = datetime.fromisoformat(match.group(1).decode("ascii"))
            except ValueError:
                pass  # e.g. month 13 or second 60: let the contract decide below
            else:
                return (at - _EPOCH) // _MICROSECOND
    try:
        at = _EventTime.model_validate_json(data).occurred_at
    except ValidationError:
        try:
            decoded = json.loads(data)
        except ValueError:
            return UNTIMED
        if not isinstance(decoded, dict):
            return UNTIMED
        try:
            at = _EventTime.model_validate(decoded).occurred_at
        except ValidationError:
            return UNTIMED
    return (at - _EPOCH) // _MICROSECOND


def _valid(data: bytes) -> bool:
    try:
        decode_event(data)
    except SchemaValidationError:
        return False
    return True


def in_order_within(
    records: Iterable[RawRecord],
    lateness: timedelta,
    on_read: Callable[[int], None] | None = None,
) -> bool:
    """Whether no record is more than ``lateness`` behind the newest event time before it.

    Records that are not valid touchpoints do not count: they become the same dead
    letters wherever they stand. Such an input needs no sort: the journey fold gives
    the same result for any order within the allowed lateness
    (``tests/unit/test_fold_order_property.py``), and nothing in it is late enough to be
    judged differently or dead-lettered as ``too_late``. So an export already in time
    order streams straight through, without the sort's pass over the disk and its
    memory. Stops at the first record that is too far behind.
    """
    bound = lateness // _MICROSECOND
    newest = UNTIMED
    unreported = 0
    for record in records:
        if record.error is None:
            key = event_time_key(record.data)
            if key != UNTIMED:
                if key < newest - bound and _valid(record.data):
                    return False  # (an invalid record is the same dead letter anywhere)
                if key > newest:
                    newest = key
        unreported += 1
        if on_read is not None and unreported >= _PROGRESS_EVERY:
            on_read(unreported)
            unreported = 0
    if on_read is not None and unreported:
        on_read(unreported)
    return True


def sort_by_event_time(
    records: Iterable[RawRecord],
    *,
    temp_dir: Path | None = None,
    run_records: int | None = None,
    run_bytes: int | None = None,
    fan_in: int | None = None,
    on_read: Callable[[int], None] | None = None,
) -> Generator[RawRecord, None, None]:
    """Yield ``records`` in event-time order (see the module docstring), in bounded memory.

    Every record is read before the first is yielded; ``on_read(n)`` reports progress
    of that phase. Close the iterator if you stop early: that removes its files.
    The bounds default to the module's ``DEFAULT_*`` values.
    """
    run_records = DEFAULT_RUN_RECORDS if run_records is None else run_records
    run_bytes = DEFAULT_RUN_BYTES if run_bytes is None else run_bytes
    fan_in = DEFAULT_FAN_IN if fan_in is None else fan_in
    if run_records < 1 or run_bytes < 1 or fan_in < 2:
        raise ValueError("run_records and run_bytes must be positive and fan_in at least 2")
    sorter = _Sorter(temp_dir, fan_in)
    try:
        last = sorter.read(records, run_records, run_bytes, on_read)
        yield from sorter.merged(last)
    finally:
        sorter.close()


def _drain(run: list[_Entry]) -> Iterator[_Entry]:
    """A run sorted high to low, lowest first, freeing each entry as it is taken.

    The run's memory goes back as the processor's (growing journey state) comes in.
    """
    pop = run.pop
    while run:
        yield pop()


class _Sorter:
    def __init__(self, temp_dir: Path | None, fan_in: int) -> None:
        self.temp_dir = temp_dir
        self.fan_in = fan_in
        self.sources: list[str] = []
        self.directory: Path | None = None
        self.runs: list[Path] = []
        self.spilled = 0
        self.open_files: list[IO[bytes]] = []

    def read(
        self,
        records: Iterable[RawRecord],
        run_records: int,
        run_bytes: int,
        on_read: Callable[[int], None] | None,
    ) -> list[_Entry]:
        """Read every record into sorted runs; spill all but the last, returned high to low."""
        source_index: dict[str, int] = {}
        run: list[_Entry] = []
        size = 0
        sequence = 0
        unreported = 0
        for record in records:
            if len(run) >= run_records or size >= run_bytes:  # full, and more is coming
                run.sort()
                self._spill(run)
                run = []
                size = 0
            source = source_index.get(record.source)
            if source is None:
                source = source_index[record.source] = len(self.sources)
                self.sources.append(record.source)
            data = record.data
            key = UNTIMED if record.error is not None else event_time_key(data)
            run.append((key, data, sequence, source, record.position, record.error))
            sequence += 1
            size += len(data) + _RECORD_OVERHEAD
            unreported += 1
            if on_read is not None and unreported >= _PROGRESS_EVERY:
                on_read(unreported)
                unreported = 0
        if on_read is not None and unreported:
            on_read(unreported)
        run.sort(reverse=True)  # popped from the end, lowest first: see _drain
        logger.info(
            "sorted %d records by event time: %d runs spilled to disk, %d kept in memory",
            sequence,
            self.spilled,
            len(run),
        )
        return run

    def merged(self, last: list[_Entry]) -> Iterator[RawRecord]:
        while len(self.runs) >= self.fan_in:  # keep one slot for the run in memory
            group, self.runs = self.runs[: self.fan_in], self.runs[self.fan_in :]
            self._spill(heapq.merge(*(self._read_run(path) for path in group)))
            for path in group:
                path.unlink()
        sources = self.sources
        streams = [self._read_run(path) for path in self.runs]
        entries = heapq.merge(*streams, _drain(last)) if streams else _drain(last)
        for _, data, _, source, position, error in entries:
            yield RawRecord(sources[source], position, data, error)

    def close(self) -> None:
        for handle in self.open_files:
            handle.close()
        self.open_files.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # -- run files -------------------------------------------------------------

    def _spill(self, entries: Iterable[_Entry]) -> None:
        if self.directory is None:
            try:
                self.directory = Path(
                    tempfile.mkdtemp(prefix="touchpoint-sort-", dir=self.temp_dir)
                )
            except OSError as exc:
                parent = self.temp_dir or tempfile.gettempdir()
                raise ConfigError(
                    f"cannot create a sort directory in {parent}: {exc.strerror or exc}"
                ) from exc
        path = self.directory / f"run-{self.spilled:06d}"
        self.spilled += 1
        pack = _HEADER.pack
        try:
            with path.open("wb", buffering=_WRITE_BUFFER) as handle:
                write = handle.write
                for key, data, sequence, source, position, error in entries:
                    where = position.encode()
                    wrong = b"" if error is None else f"{error[0].value}\x1f{error[1]}".encode()
                    write(pack(key, sequence, source, len(where), len(data), len(wrong)))
                    write(where)
                    write(data)
                    if wrong:
                        write(wrong)
        except OSError as exc:
            raise InputError(
                f"cannot write sort run {path}: {exc.strerror or exc}; free some space or "
                "point --sort-dir elsewhere"
            ) from exc
        self.runs.append(path)

    def _read_run(self, path: Path) -> Iterator[_Entry]:
        try:
            handle = path.open("rb", buffering=_READ_BUFFER)
        except OSError as exc:
            raise InputError(f"cannot read sort run {path}: {exc.strerror or exc}") from exc
        self.open_files.append(handle)
        read = handle.read
        unpack = _HEADER.unpack
        header_size = _HEADER.size
        with handle:
            while header := read(header_size):
                key, sequence, source, where_size, data_size, wrong_size = unpack(header)
                body = read(where_size + data_size + wrong_size)
                data = body[where_size : where_size + data_size]
                error = None
                if wrong_size:
                    reason, _, detail = body[where_size + data_size :].decode().partition("\x1f")
                    error = (DeadLetterReason(reason), detail)
                yield key, data, sequence, source, body[:where_size].decode(), error
        self.open_files.remove(handle)
