"""The distributed driver: a Faust app that runs the same :class:`JourneyProcessor` over Kafka.

``touchpoints.raw`` → one event at a time → ``JourneyProcessor`` (journey state
in a Faust table with a changelog) → rows to the output topics of
:mod:`schemas.topics`, each written to the partition number the input came
from. Under ``exactly_once`` (the default) Faust sends the outputs, the table
changelog and the input offset in one Kafka transaction per partition, so a
crash at any point neither loses nor repeats anything.

Raw bytes are validated inside the agent (never in a Faust deserializer, where
a decode error would crash-loop the agent): a bad record becomes a dead letter
on ``touchpoints.dlq`` with its partition and offset.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from datetime import datetime
from typing import Any

import faust

from processors.engine import JourneyProcessor
from schemas.enums import DeadLetterReason
from schemas.journey import JOURNEY_STATE_ADAPTER, JourneyState
from schemas.rows import ROW_ADAPTERS
from schemas.rules import JourneyRules
from schemas.settings import KafkaSettings, ProcessingSettings
from schemas.topics import CONTROL_HEADER, CONTROL_WATERMARK, Topics

__all__ = ["RecoveryErrorWatch", "TableStates", "control_kind", "create_app", "run_worker"]

logger = logging.getLogger(__name__)
STATE_TABLE = "journeys"


class TableStates(MutableMapping[str, JourneyState]):
    """Journey states over a Faust table of JSON text, decoded once and cached.

    An assignment updates the table's local store at once and queues the key;
    :meth:`write_changelog` then sends one changelog record per changed key with an
    awaited send. Faust's own ``table[key] = value`` would hand the changelog record
    to a background buffer that can still be sending after a rebalance has
    committed the partition's transaction ("Can't send messages while not in
    transaction"), losing the state change while its input offset commits; an
    awaited send joins the event's transaction before the event is acknowledged.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._cache: dict[str, JourneyState] = {}
        self._unsent: dict[str, str] = {}

    def __getitem__(self, key: str) -> JourneyState:
        state = self._cache.get(key)
        if state is None:
            raw = self._table[key]
            if raw is None:
                raise KeyError(key)
            state = JOURNEY_STATE_ADAPTER.validate_json(raw)
            self._cache[key] = state
        return state

    def __setitem__(self, key: str, value: JourneyState) -> None:
        raw = JOURNEY_STATE_ADAPTER.dump_json(value).decode()
        self._cache[key] = value
        self._table.data[key] = raw  # the local store only; the changelog follows below
        self._unsent[key] = raw

    def __delitem__(self, key: str) -> None:
        self._cache.pop(key, None)
        self._unsent.pop(key, None)
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table.keys()))

    def __len__(self) -> int:
        return len(self._table)

    async def write_changelog(self, partition: int) -> None:
        """Send the changed states to the table's changelog, on the input's partition."""
        if not self._unsent:
            return
        unsent, self._unsent = self._unsent, {}
        changelog = self._table.changelog_topic
        for key, raw in unsent.items():
            await changelog.send(key=key, value=raw, partition=partition)

    def forget_cache(self) -> None:
        self._cache.clear()
        self._unsent.clear()


class RecoveryErrorWatch(logging.Handler):
    """Catches the table-recovery errors Faust only logs, so the worker can crash instead.

    Faust's recovery loop logs ``Error in recovery …`` as a warning and carries on
    with whatever state it had read — a silent loss of journey state. A crash
    lets the worker's supervisor restart it and recover again from the changelog.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Error in recovery"):
            self.errors.append(message)


def control_kind(headers: Any) -> bytes | None:
    """The control header's value of a raw record, if it is a control message."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == CONTROL_HEADER:
            return bytes(value) if value is not None else b""
    return None


def create_app(
    kafka: KafkaSettings, processing: ProcessingSettings, rules: JourneyRules
) -> tuple[Any, JourneyProcessor]:
    """The Faust app (not started) and the processor its agent drives."""
    topics = Topics(kafka.topic_prefix)
    raw_name = topics.raw
    app = faust.App(
        kafka.app_id,
        broker=[f"kafka://{address.strip()}" for address in kafka.bootstrap.split(",")],
        store=kafka.store,
        processing_guarantee=kafka.processing_guarantee,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication,
        topic_allow_declare=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        web_enabled=False,
        autodiscover=False,
        producer_acks=-1,
        producer_max_request_size=2_000_000,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    raw_topic = app.topic(
        raw_name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=kafka.partitions,
    )
    output_topics = {
        table: app.topic(
            topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=kafka.partitions,
        )
        for topic, table in topics.table_by_topic.items()
    }
    # Keys and values are str (the state as JSON text); Faust's JSON codec wraps them
    # on the changelog, and recovery unwraps them with the same codec.
    table: Any = app.Table(
        STATE_TABLE, default=None, key_type=str, value_type=str, partitions=kafka.partitions
    )
    states = TableStates(table)
    processor = JourneyProcessor(
        rules,
        allowed_lateness=processing.allowed_lateness,
        dedup_window=processing.dedup_window,
        states=states,
    )

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == raw_name}

    recovery_errors = RecoveryErrorWatch()
    logging.getLogger("faust.tables.recovery").addHandler(recovery_errors)

    @table.on_recover  # type: ignore[untyped-decorator]  # the Faust table is typed Any
    async def _recovered() -> None:
        if recovery_errors.errors:
            problem = recovery_errors.errors[0]
            await app.crash(RuntimeError(f"journey state recovery failed: {problem}"))
            return
        states.forget_cache()
        owned = owned_partitions()
        processor.restore(owned)
        logger.info("journey state recovered; partitions %s", sorted(owned))

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[Any] = args[0] if args else set()
        processor.forget({tp.partition for tp in revoked if tp.topic == raw_name})
        states.forget_cache()

    handled = 0

    async def handle(event: Any) -> None:
        nonlocal handled
        handled += 1
        if handled % 10_000 == 0:
            gc.freeze()  # long-lived journey state: keep the collector from rescanning it
        message = event.message
        partition = int(message.partition)
        position = f"{partition}:{message.offset}"
        value = event.value if event.value is not None else b""
        control = control_kind(event.headers)
        if control == CONTROL_WATERMARK:
            try:
                processor.advance_watermark(partition, datetime.fromisoformat(value.decode()))
            except (UnicodeDecodeError, ValueError) as exc:
                processor.dead_letter(
                    DeadLetterReason.INVALID_FIELD,
                    f"watermark control message with an unreadable time: {exc}",
                    value,
                    source=raw_name,
                    position=position,
                )
        else:
            processor.process_raw(value, source=raw_name, position=position, partition=partition)
        output = processor.flush()
        await states.write_changelog(partition)
        for table_name, rows in output.tables().items():
            if not rows:
                continue
            topic = output_topics[table_name]
            adapter = ROW_ADAPTERS[table_name]
            for row in rows:
                buyer = getattr(row, "buyer_id", None)
                await topic.send(
                    key=buyer.encode() if isinstance(buyer, str) else None,
                    value=adapter.dump_json(row),
                    partition=partition,
                )

    @app.agent(raw_topic, name="journeys")
    async def journeys(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            await handle(event)
            yield None

    return app, processor


def run_worker(
    kafka: KafkaSettings,
    processing: ProcessingSettings,
    rules: JourneyRules,
    *,
    loglevel: str = "warning",
) -> None:
    """Run one worker until SIGTERM/SIGINT (Faust handles the signals and a clean stop)."""
    app, _ = create_app(kafka, processing, rules)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()
