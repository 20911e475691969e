"""The peer of the Kafka path: the same journey job written idiomatically with Quix Streams.

``python -m bench.quix_peer`` is one Quix Streams :class:`~quixstreams.Application` (its
own process, started by ``bench.kafka_path --peer quix``) that reads touchpoints from a
topic of the run's broker and writes rows into its own chDB directory, until SIGTERM::

    Application(processing_guarantee="exactly-once", auto_offset_reset="earliest")
    sdf = app.dataframe(app.topic(TOPIC, key_deserializer="str", value_deserializer="bytes"))
    sdf = sdf.filter(not a control record)                # source watermarks: see below
    [packed input: sdf = sdf.apply(unpack, expand=True).group_by(buyer id)]
    sdf = sdf.apply(journey, stateful=True, metadata=True)  # RocksDB state per buyer key
    sdf.sink(ClickHouseSink(...))                           # a BatchingSink: one insert per
    app.run()                                               # table per checkpoint+partition

What ``journey`` does, per message, with the project's pure core (nothing copied): the raw
bytes go through :class:`processors.journey_processor.JourneyProcessor` — ``decode_event`` (the
pydantic contract's verdict; a bad record becomes a dead-letter row), dedup on event id,
``classify_fields`` with the same rules, the fold — over a one-key state store: the Quix
``State`` of the message key, holding the buyer's encoded ``JourneyState``
(``set_bytes``/``get_bytes``, so the changelog carries exactly what Touchpoint's
``journey.store`` carries). ``flush()`` then gives the message's rows, already encoded as
``JSONEachRow``; :class:`ClickHouseSink` writes them with :class:`sinks.writer.ClickHouseWriter`
(one insert per table, an ``insert_deduplication_token`` from the batch's offset range), a
buyer's ``journey_state`` row only once per batch (its newest version).

What it does not replicate: drop-offs judged by a *partition* watermark. Touchpoint's
processor keeps per input partition a timer heap over all its buyers and judges a buyer's
drop-off when the newest event time of the partition (or a source-watermark control
record) passes the deadline, reading that buyer's state while handling another buyer's
event. A Quix ``State`` is the state of the current message key only, and Quix has no
event-time timers, so here a buyer is judged only by its *own* event time (Quix windows
call this ``closing_strategy="key"``): before each message the processor is reset to this
buyer alone (``restore(partition, buyers=[key])``: its pending deadlines re-armed, event
time = its newest touch), and a deadline fires when one of the buyer's own later events
passes it. A buyer who goes silent is never judged, and the control records (no key) are
skipped. With an input in event-time order (what ``touchpoint produce`` sends), every
deadline the buyer's own events pass is judged exactly as Touchpoint judges it; what is
missing are the drop-offs of buyers who never came back after the deadline: fewer
``dropoffs`` rows, and those buyers' ``journey_state`` differs in ``dropoff_stage``,
``dropoff_at`` and ``version`` (a judgement counts as a version). The too-late check and
pruning use the same per-buyer clock.

Run by the bench; by hand::

    python -m bench.quix_peer --bootstrap 127.0.0.1:39492 --topic T --group G \\
        --clickhouse-dir DIR --state-dir DIR [--input per-event|packed]

Rules, lateness and dedup window come from the ``TOUCHPOINT_*`` settings, as for a worker.
On SIGTERM it commits, closes and prints one line: ``Quix peer stopped after N messages
(E events, R rows)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Final

import msgspec
from quixstreams import Application, State, message_context
from quixstreams.sinks import BatchingSink, SinkBatch

from processors.journey_processor import JourneyProcessor
from schemas.rows import JourneyStateRow
from schemas.topics import CONTROL_HEADER, PACK_HEADER, PACK_NDJSON
from sinks.base import RowBatch
from sinks.clickhouse import Client
from sinks.writer import ClickHouseWriter
from touchpoint import wiring

__all__ = ["ClickHouseSink", "KeyStates", "build_app", "main"]

logger = logging.getLogger("bench.quix_peer")

STATE_KEY: Final = "journey"
"""The one value each buyer key keeps in its Quix state: the encoded ``JourneyState``."""
_STATES_TABLE: Final = JourneyStateRow.table
DEFAULT_COMMIT_INTERVAL: Final = 2.0
"""Seconds between checkpoints (sink flush + transaction commit). Quix's default is 5;
2 is Touchpoint's sink batch time (``TOUCHPOINT_KAFKA_SINK_BATCH_SECONDS``)."""


class KeyStates(MutableMapping[str, bytes]):
    """The journey store the processor sees while one message is handled: only the buyer
    of the message key, backed by that key's Quix ``State``. Any other buyer is absent
    (and writing one is an error: it would land under the wrong key)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.state: State | None = None

    def bind(self, key: str | None, state: State) -> None:
        self.key, self.state = key, state

    def __getitem__(self, buyer_id: str) -> bytes:
        if buyer_id != self.key or self.state is None:
            raise KeyError(buyer_id)
        blob: bytes | None = self.state.get_bytes(STATE_KEY)
        if blob is None:
            raise KeyError(buyer_id)
        return blob

    def __setitem__(self, buyer_id: str, blob: bytes) -> None:
        if buyer_id != self.key or self.state is None:
            raise RuntimeError(f"state of buyer {buyer_id!r} written under key {self.key!r}")
        self.state.set_bytes(STATE_KEY, blob)

    def __delitem__(self, buyer_id: str) -> None:
        if buyer_id != self.key or self.state is None:
            raise KeyError(buyer_id)
        self.state.delete(STATE_KEY)

    def __iter__(self) -> Iterator[str]:
        if self.key is not None and self.state is not None and self.state.exists(STATE_KEY):
            yield self.key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ClickHouseSink(BatchingSink):
    """Writes the rows of each checkpoint's batch (one per input partition) to ClickHouse.

    Every item's value is ``{table: [encoded row, ...]}`` from one message; a buyer's
    ``journey_state`` row is kept once per batch (the last one, i.e. its newest version:
    the table is a ``ReplacingMergeTree(version)``). Token: ``quix:topic:partition:first-last``.
    """

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self._settings = settings
        self._client: Client | None = None
        self._writer: ClickHouseWriter | None = None
        self.rows = 0

    def setup(self) -> None:
        # wiring.clickhouse is a context manager: keep the client for the process's life.
        self._context = wiring.clickhouse(self._settings, migrate=True)
        self._client = self._context.__enter__()
        self._writer = ClickHouseWriter(
            self._client,
            self._settings.clickhouse.database,
            retries=self._settings.clickhouse.insert_retries,
            backoff=self._settings.clickhouse.retry_backoff,
        )

    def write(self, batch: SinkBatch) -> None:
        assert self._writer is not None, "setup() runs before the first write"
        tables: dict[str, list[bytes]] = {}
        states: dict[Any, bytes] = {}
        last = batch.start_offset
        for item in batch:
            last = item.offset
            for table, rows in item.value.items():
                if not rows:
                    continue
                if table == _STATES_TABLE:
                    states[item.key] = rows[-1]
                else:
                    tables.setdefault(table, []).extend(rows)
        if states:
            tables[_STATES_TABLE] = list(states.values())
        if not tables:
            return
        token = f"quix:{batch.topic}:{batch.partition}:{batch.start_offset}-{last}"
        self._writer.write(RowBatch(token, tables))
        self.rows += sum(len(rows) for rows in tables.values())

    def close(self) -> None:
        if self._client is not None:
            self._context.__exit__(None, None, None)
            self._client = None


def _is_control(headers: Any) -> bool:
    return bool(headers) and any(name == CONTROL_HEADER for name, _ in headers)


def _is_pack(headers: Any) -> bool:
    return bool(headers) and any(
        name == PACK_HEADER and value == PACK_NDJSON for name, value in headers
    )


class _Buyer(msgspec.Struct):
    buyer_id: str | None = None


_BUYER: Final = msgspec.json.Decoder(_Buyer)


def _buyer_of(value: bytes) -> str | None:
    """The buyer id of one raw touchpoint, the key of the re-keyed stream (None if unreadable:
    such a record becomes a dead letter in ``journey``)."""
    try:
        buyer = _BUYER.decode(value).buyer_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return buyer or None


def build_app(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    state_dir: Path,
    packed: bool,
    commit_interval: float,
    settings: Any,
    loglevel: str = "WARNING",
) -> tuple[Application, dict[str, int], ClickHouseSink]:
    """The application (not running), its counters, and its sink."""
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        processing_guarantee="exactly-once",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        commit_interval=commit_interval,
        loglevel=loglevel,
        # Packed: the repartition topic gets every record, also the generator's oversized
        # one (MAX_RECORD_BYTES + a little, dead-lettered downstream): past librdkafka's
        # 1 MB default, and within the broker's ~1 MiB limit only compressed (so
        # touchpoint produce sends it: max_request_size 2 MB, zstd).
        producer_extra_config=(
            {"message.max.bytes": 2_000_000, "compression.type": "lz4"} if packed else None
        ),
    )
    rules = wiring.rules_for(settings)
    states = KeyStates()
    processor = JourneyProcessor(
        rules,
        allowed_lateness=settings.processing.allowed_lateness,
        dedup_window=settings.processing.dedup_window,
        states=states,
    )
    counts = {"messages": 0, "events": 0}
    process_raw, restore, flush = processor.process_raw, processor.restore, processor.flush

    def journey(
        value: bytes, key: str | None, timestamp: int, headers: Any, state: State
    ) -> dict[str, list[bytes]]:
        context = message_context()
        partition = context.partition
        counts["messages"] += 1
        states.bind(key, state)
        # This buyer alone: its pending deadlines re-armed, its own event time (see above).
        restore({partition}, buyers=() if key is None else (key,))
        if process_raw(
            value, source=input_name, position=f"{partition}:{context.offset}", partition=partition
        ):
            counts["events"] += 1
        return flush().encoded()

    raw = app.topic(topic, key_deserializer="str", value_deserializer="bytes")
    input_name = raw.name
    sdf = app.dataframe(raw)
    sdf = sdf.filter(lambda value, key, timestamp, headers: not _is_control(headers), metadata=True)
    if packed:
        # Packs carry no key (they are placed by partition): unpack, then re-key by buyer
        # through a repartition topic so that state is per buyer.
        sdf = sdf.apply(
            lambda value, key, timestamp, headers: (
                [line for line in value.split(b"\n") if line] if _is_pack(headers) else [value]
            ),
            expand=True,
            metadata=True,
        )
        sdf = sdf.group_by(
            _buyer_of,
            name="buyer",
            key_serializer="str",
            key_deserializer="str",
            value_serializer="bytes",
            value_deserializer="bytes",
        )
    sdf = sdf.apply(journey, stateful=True, metadata=True)
    sink = ClickHouseSink(settings)
    sdf.sink(sink)
    return app, counts, sink


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quix_peer",
        description="The Quix Streams peer of the Kafka path (run by bench.kafka_path "
        "--peer quix): touchpoints from TOPIC → classify, fold per-buyer state (RocksDB, "
        "exactly-once) → rows into a chDB directory, until SIGTERM.",
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, help="input topic")
    parser.add_argument("--group", required=True, help="consumer group (and state names)")
    parser.add_argument(
        "--clickhouse-dir", type=Path, required=True, help="chDB directory (this process only)"
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="RocksDB state directory")
    parser.add_argument(
        "--input",
        choices=("per-event", "packed"),
        default="per-event",
        help="per-event: one Touchpoint JSON per record, keyed by buyer id; packed: "
        "touchpoint produce's packs (unpacked, then re-keyed with group_by) "
        "[default: per-event]",
    )
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=DEFAULT_COMMIT_INTERVAL,
        help=f"seconds between checkpoints [default: {DEFAULT_COMMIT_INTERVAL}]",
    )
    parser.add_argument("--loglevel", default="INFO", help="Quix log level [default: INFO]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = wiring.load_settings(clickhouse_url=f"chdb:{args.clickhouse_dir}")
    app, counts, sink = build_app(
        bootstrap=args.bootstrap,
        topic=args.topic,
        group=args.group,
        state_dir=args.state_dir,
        packed=args.input == "packed",
        commit_interval=args.commit_interval,
        settings=settings,
        loglevel=args.loglevel,
    )
    try:
        app.run()
    finally:
        sink.close()
    print(
        f"Quix peer stopped after {counts['messages']:,} messages "
        f"({counts['events']:,} events, {sink.rows:,} rows)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
