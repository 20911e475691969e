"""The event-time sort for bounded inputs (ingest.ordering), as a spec.

- Records come out in event-time order, in one total order that depends only on
  their bytes: the same output, record for record, whatever the input order.
- Equal times are ordered by bytes; identical records all come out, each with its
  own source and position, in input order.
- Records whose time cannot be read are kept (they become dead letters downstream),
  before every timed record, with their source, position and framing error.
- An input larger than a run is spilled to temporary files and merged; the files
  are removed at the end, on an error and when the consumer stops early; an input
  that fits in one run writes nothing.
- Peak memory depends on the run size, not on the input size.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.ordering import UNTIMED, event_time_key, in_order_within, sort_by_event_time
from schemas.enums import DeadLetterReason
from schemas.errors import InputError
from schemas.raw import RawRecord
from schemas.touchpoint import MAX_RECORD_BYTES, parse_touchpoint
from tests.factories import T0, event

REPO = Path(__file__).resolve().parents[2]


def line(at: timedelta | datetime | str, event_id: str = "e", **fields: object) -> bytes:
    record = event("page_view", at=timedelta(0), event_id=event_id, **fields)
    if isinstance(at, str):
        record["occurred_at"] = at
    else:
        record["occurred_at"] = (T0 + at if isinstance(at, timedelta) else at).isoformat()
    return json.dumps(record).encode()


def records(lines: list[bytes], source: str = "in.jsonl") -> list[RawRecord]:
    return [RawRecord(source, f"line {n}", data) for n, data in enumerate(lines, start=1)]


def micros(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def sort(items: list[RawRecord], **options: Any) -> list[RawRecord]:
    return list(sort_by_event_time(items, **options))


def test_records_come_out_in_one_event_time_order_whatever_the_input_order() -> None:
    rng = random.Random(5)
    lines = [line(timedelta(minutes=rng.randrange(10_000)), f"e{n}") for n in range(300)]
    lines.append(line("2026-03-02T11:00:00+02:00", "cet"))  # 09:00 UTC, the same instant as T0
    lines.append(line("2026-03-02T09:00:00Z", "utc"))
    expected = sort(records(lines))
    times = [event_time_key(record.data) for record in expected]
    assert times == sorted(times)
    for _ in range(5):
        shuffled = records(lines)
        rng.shuffle(shuffled)
        out = sort(shuffled)
        assert [record.data for record in out] == [record.data for record in expected]
        assert set(out) == set(shuffled)  # each with its own position


def test_equal_times_go_by_bytes_and_identical_records_all_come_out_in_input_order() -> None:
    same_time = [line(timedelta(0), event_id) for event_id in ("c", "a", "b")]
    twice = line(timedelta(hours=1), "dup")
    items = records([twice, *same_time, twice])
    out = sort(items)
    assert [record.data for record in out] == [*sorted(same_time), twice, twice]
    assert [record.position for record in out[-2:]] == ["line 1", "line 5"]
    assert sorted(out, key=lambda record: record.position) == sorted(
        items, key=lambda record: record.position
    )


def test_records_without_a_readable_time_are_kept_first_with_positions_and_errors() -> None:
    timed = [line(timedelta(hours=2), "late"), line(timedelta(hours=1), "early")]
    unreadable = [
        b"{broken json",
        b"[1, 2, 3]",
        line("2026-03-02T10:00:00", "naive"),
        json.dumps({"event_id": "no-time", "buyer_id": "b"}).encode(),
        line(timedelta(0), "big", properties={"blob": "x" * MAX_RECORD_BYTES}),
        b"\xff\xfe",
    ]
    framing = RawRecord("in.csv", "line 9", b"a,b", (DeadLetterReason.MALFORMED_ROW, "2 fields"))
    items = [*records(timed + unreadable), framing]
    random.Random(1).shuffle(items)
    out = sort(items)
    assert len(out) == len(items)
    head = out[: len(unreadable) + 1]
    assert [record.data for record in head] == sorted([*unreadable, b"a,b"])
    assert framing in head  # source, position and error unchanged
    assert [record.data for record in out[len(head) :]] == [timed[1], timed[0]]
    assert set(out) == set(items)


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-03-02T09:14:07Z",
        "2026-03-02T09:14:07.123+02:00",
        "2026-03-02T09:14:07.123456-05:30",
        "2026-03-02T09:14:07.1234567Z",
        "2026-03-02 09:14:07Z",
        "2026-03-02t09:14:07z",
        "2026-03-02T09:14:07+0530",
        1772442847,
        1772442847123,
        1772442847.5,
        "1772442847",
        "2026-03-02T09:14:07",
        "2026-03-02T09:14:60Z",
        "2026-13-02T09:14:07Z",
        None,
    ],
)
def test_the_sort_key_is_the_time_the_processor_will_see(occurred_at: object) -> None:
    record = event("page_view", at=timedelta(0), properties={"note": "café"})
    record["occurred_at"] = occurred_at
    for data in (
        json.dumps(record).encode(),  # escaped: the careful path
        json.dumps(record, ensure_ascii=False).encode(),
        json.dumps({**record, "properties": {"occurred_at": "1999-01-01T00:00:00Z"}}).encode(),
    ):
        try:
            expected = micros(parse_touchpoint(data).occurred_at)
        except ValueError:
            expected = UNTIMED
        assert event_time_key(data) == expected, data


def test_an_escaped_key_and_a_nested_decoy_give_the_top_level_time() -> None:
    data = (
        b'{"event_id":"e","buyer_id":"b","channel":"web","event_type":"page_view",'
        b'"occurred\\u005fat":"2026-03-02T09:00:00Z",'
        b'"properties":{"occurred_at":"1999-01-01T00:00:00Z"}}'
    )
    assert event_time_key(data) == micros(parse_touchpoint(data).occurred_at) == micros(T0)


def run_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


@pytest.mark.parametrize(("run_records", "fan_in"), [(7, 64), (3, 2), (1, 3)])
def test_an_input_larger_than_a_run_is_spilled_merged_and_the_files_removed(
    tmp_path: Path, run_records: int, fan_in: int
) -> None:
    rng = random.Random(run_records)
    lines = [line(timedelta(seconds=rng.randrange(50)), f"e{n % 40}") for n in range(100)]
    lines += [b"not json", b"not json"]
    items = records(lines)
    rng.shuffle(items)
    ordered = sort_by_event_time(items, temp_dir=tmp_path, run_records=run_records, fan_in=fan_in)
    first = next(ordered)
    assert run_files(tmp_path), "spilled runs are on disk while the merge runs"
    out = [first, *ordered]
    assert out == sort(items)  # the same as one run in memory
    assert list(tmp_path.iterdir()) == []


def test_a_byte_bound_also_ends_a_run(tmp_path: Path) -> None:
    items = records([line(timedelta(seconds=50 - n), f"e{n}") for n in range(50)])
    ordered = sort_by_event_time(items, temp_dir=tmp_path, run_bytes=2_000)
    first = next(ordered)
    assert len(run_files(tmp_path)) > 5
    assert [first, *ordered] == items[::-1]
    assert list(tmp_path.iterdir()) == []


def test_an_input_that_fits_in_one_run_writes_nothing(tmp_path: Path) -> None:
    items = records([line(timedelta(seconds=-n), f"e{n}") for n in range(100)])
    ordered = sort_by_event_time(items, temp_dir=tmp_path, run_records=100)
    first = next(ordered)
    assert list(tmp_path.iterdir()) == []
    assert [first, *ordered] == items[::-1]


def test_records_of_several_sources_keep_their_source(tmp_path: Path) -> None:
    a = records([line(timedelta(hours=n), f"a{n}") for n in (3, 1)], source="a.jsonl")
    b = records([line(timedelta(hours=n), f"b{n}") for n in (2, 0)], source="b.csv")
    out = sort([*a, *b], temp_dir=tmp_path, run_records=1)
    assert out == [b[1], a[1], b[0], a[0]]


def many(
    count: int, fail_at: int | None = None, error: type[BaseException] = InputError
) -> Iterator[RawRecord]:
    for n in range(count):
        if n == fail_at:
            raise error("reading in.jsonl failed")
        yield RawRecord("in.jsonl", f"line {n + 1}", line(timedelta(seconds=-n), f"e{n}"))


@pytest.mark.parametrize("error", [InputError, KeyboardInterrupt])
def test_the_files_are_removed_when_reading_fails(
    tmp_path: Path, error: type[BaseException]
) -> None:
    with pytest.raises(error):
        list(
            sort_by_event_time(many(50, fail_at=30, error=error), temp_dir=tmp_path, run_records=4)
        )
    assert list(tmp_path.iterdir()) == []


def test_the_files_are_removed_when_the_consumer_fails_or_stops_early(tmp_path: Path) -> None:
    ordered = sort_by_event_time(many(50), temp_dir=tmp_path, run_records=4)
    with pytest.raises(RuntimeError):
        for index, _ in enumerate(ordered):
            assert run_files(tmp_path)
            if index == 10:
                raise RuntimeError("the sink failed")
    ordered.close()
    assert list(tmp_path.iterdir()) == []


def test_reading_progress_counts_every_record() -> None:
    seen: list[int] = []
    out = list(sort_by_event_time(many(10_000), run_records=3_000, on_read=seen.append))
    assert sum(seen) == len(out) == 10_000
    assert len(seen) > 1


def test_a_missing_sort_directory_is_a_one_line_config_error(tmp_path: Path) -> None:
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot create a sort directory"):
        list(sort_by_event_time(many(10), temp_dir=tmp_path / "absent", run_records=2))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so the child would report
# this pytest process's peak whenever that is the larger one, and the test could not fail.
_RSS_SCRIPT = """
import json, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from ingest.ordering import sort_by_event_time
from ingest.reader import read_records

path, count = Path(sys.argv[1]), int(sys.argv[2])
t0 = datetime(2026, 1, 1, tzinfo=UTC)
with path.open("w") as handle:
    for n in range(count):
        at = t0 + timedelta(seconds=(n * 7919) % count)  # far out of order
        handle.write(json.dumps({"event_id": f"e{n}", "buyer_id": f"b{n % 977}",
            "channel": "web", "event_type": "page_view", "occurred_at": at.isoformat(),
            "properties": {"url": "https://example.com/" + "p" * 200}}) + "\\n")
def peak_kib():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak_kib()
last, seen = None, 0
for record in sort_by_event_time(read_records(path), temp_dir=path.parent, run_records=5_000):
    seen += 1
    last = record
after = peak_kib()
print(json.dumps({"records": seen, "base_kib": before, "peak_kib": after}))
"""


@pytest.mark.slow
def test_peak_memory_depends_on_the_run_size_not_on_the_input_size(tmp_path: Path) -> None:
    peaks = {}
    for count in (25_000, 100_000):
        folder = tmp_path / str(count)
        folder.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(folder / "in.jsonl"), str(count)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        measured = json.loads(result.stdout)
        assert measured["records"] == count
        peaks[count] = measured["peak_kib"]
        assert [path.name for path in folder.iterdir()] == ["in.jsonl"]
    # 75,000 more records of ~330 bytes: held in memory they would add well over 30 MiB
    assert peaks[100_000] - peaks[25_000] < 8 * 1024, peaks


def test_an_input_in_order_within_the_lateness_needs_no_sort() -> None:
    hour = timedelta(hours=1)
    late_but_within = [line(2 * hour, "a"), line(hour + timedelta(minutes=1), "b"), b"{oops"]
    assert in_order_within(records(late_but_within), lateness=hour)
    too_late = [line(3 * hour, "a"), line(hour, "b"), line(4 * hour, "c")]
    assert not in_order_within(records(too_late), lateness=hour)
    assert in_order_within(records([]), lateness=hour)


def test_the_order_check_stops_at_the_first_record_too_far_behind() -> None:
    hour = timedelta(hours=1)
    read: list[int] = []

    def lines() -> Iterator[RawRecord]:
        for index, record in enumerate(records([line(5 * hour, "a"), line(0 * hour, "b")])):
            read.append(index)
            yield record
        raise AssertionError("read past the first record out of order")

    assert not in_order_within(lines(), lateness=hour)
    assert read == [0, 1]


def test_an_invalid_record_far_behind_does_not_force_a_sort() -> None:
    hour = timedelta(hours=1)
    no_buyer = json.dumps(
        {k: v for k, v in json.loads(line(0 * hour, "x")).items() if k != "buyer_id"}
    )
    lines = [line(5 * hour, "a"), no_buyer.encode(), line(5 * hour, "b")]
    assert in_order_within(records(lines), lateness=hour)  # a dead letter wherever it stands
