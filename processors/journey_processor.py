"""The journey processor: dedup → classify → fold → drop-off timers, over any state store.

Both drivers run exactly this class: the local runner with a plain dict as the
state store, the Faust worker with the states of the partitions it owns. It does
no I/O; each batch's :meth:`JourneyProcessor.flush` returns the rows for a sink,
already encoded, and the changed journeys, already encoded for the store. Both hand it
every raw record as they got it (:meth:`JourneyProcessor.process_record`): what a
framing error, a pack of touchpoints or a watermark control message becomes is decided
here, once.

The hot path works on plain data: records are decoded by :func:`schemas.events.decode_event`
(the pydantic contract's verdict, fast), states are msgspec structs
(:mod:`schemas.journey`) that live *encoded* in the store between batches and decoded
only while a batch touches them, and every output row is encoded to JSON once,
when it is made (:data:`ROW_ENCODER`), in the ``JSONEachRow`` shape ClickHouse reads.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import msgspec

from processors import identity, journey
from processors.classify import Classifier
from processors.stitching import rank
from processors.triggers import TriggerSet
from schemas.dead_letter import DeadLetter
from schemas.enums import DeadLetterReason
from schemas.errors import RulesError, SchemaValidationError
from schemas.events import Event, decode_event
from schemas.journey import (
    IdentityMessage,
    JourneyState,
    TouchRef,
    decode_identity_message,
    decode_state,
    encode_identity_message,
    encode_state,
    from_micros,
    to_micros,
)
from schemas.rows import (
    ROW_ADAPTERS,
    DeadLetterRow,
    DropoffRow,
    IdentityLinkRow,
    JourneyStateRow,
    Row,
    StageTransitionRow,
    TouchpointRow,
    TriggerRow,
    row_adapter,
)
from schemas.rules import JourneyRules
from schemas.topics import (
    CONTROL_HEADER,
    CONTROL_IDENTITY,
    CONTROL_WATERMARK,
    PACK_HEADER,
    PACK_NDJSON,
)

__all__ = [
    "HELD_BACK_REASONS",
    "ROW_ENCODER",
    "BatchOutput",
    "BatchStats",
    "JourneyProcessor",
    "ProcessorCounters",
    "header",
]

_R = TypeVar("_R", bound=Row)
ROW_ENCODER: Final = msgspec.json.Encoder()
"""Encodes one row dict as the JSON object ClickHouse's ``JSONEachRow`` reads."""
_encode = ROW_ENCODER.encode
_TOUCHPOINTS: Final = TouchpointRow.table
_TRANSITIONS: Final = StageTransitionRow.table
_STATES: Final = JourneyStateRow.table
_DROPOFFS: Final = DropoffRow.table
_DEAD_LETTERS: Final = DeadLetterRow.table
_TRIGGERS: Final = TriggerRow.table
_IDENTITIES: Final = IdentityLinkRow.table
LINK_EPOCH: Final = 1 << 20
"""``identity_links`` versions: epoch × this + the person's size (sizes stay below it)."""
HELD_BACK_REASONS: Final = ("receive_time", "ahead_of_receipt", "future")
"""Why an event's time may not move its partition's watermark (see JourneyProcessor)."""
TABLES: Final = (
    _TOUCHPOINTS,
    _TRANSITIONS,
    _STATES,
    _DROPOFFS,
    _DEAD_LETTERS,
    _TRIGGERS,
    _IDENTITIES,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProcessorCounters:
    """Running totals since the processor started."""

    accepted: int = 0
    duplicates: int = 0
    unclassified: int = 0
    late: int = 0
    dropoffs: int = 0
    triggers: int = 0
    """Triggers fired (retractions not included)."""
    retractions: int = 0
    merges: int = 0
    """Two persons' journeys folded into one (identity stitching)."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    held_back: Counter[str] = field(default_factory=Counter)
    """Events newer than their partition's event time that did not move it, by why:
    ``receive_time`` (stamped with the time they were received), ``ahead_of_receipt``
    (more than the allowed future skew after their own receipt) or ``future`` (that far
    ahead of the clock)."""

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())


@dataclass
class BatchStats:
    """What one batch produced, tallied as it was made (for metrics; no row is re-read)."""

    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(channel, stage or "") → accepted events."""
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(from stage or "entry", to stage) → new transitions."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    dropoffs: Counter[str] = field(default_factory=Counter)
    """stage → new, unrecovered drop-offs."""
    triggers: Counter[str] = field(default_factory=Counter)
    """trigger id → firings."""
    retractions: Counter[str] = field(default_factory=Counter)
    """trigger id → firings taken back (a late event disproved the drop-off)."""
    merges: int = 0
    """Journeys folded into another person's."""


@dataclass
class BatchOutput:
    """The rows one batch produced, per input partition and table, encoded as JSON rows,
    and the changed journeys, encoded for the state store."""

    rows: dict[int, dict[str, list[bytes]]] = field(default_factory=dict)
    stored: dict[int, list[tuple[str, bytes]]] = field(default_factory=dict)
    """Partition → (buyer id, encoded state) of every journey the batch changed."""
    controls: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    """Input partition → (target partition, encoded :class:`IdentityMessage`) of the control
    records its input made for other partitions (:mod:`processors.stitching`)."""
    stats: BatchStats = field(default_factory=BatchStats)

    def add(self, partition: int, table: str, row: bytes) -> None:
        tables = self.rows.get(partition)
        if tables is None:
            tables = self.rows[partition] = {}
        rows = tables.get(table)
        if rows is None:
            tables[table] = [row]
        else:
            rows.append(row)

    def encoded(self) -> dict[str, list[bytes]]:
        """Every table's encoded rows, all partitions together (what a sink writes)."""
        result: dict[str, list[bytes]] = {table: [] for table in TABLES}
        for tables in self.rows.values():
            for table, rows in tables.items():
                result[table].extend(rows)
        return result

    def tables(self) -> dict[str, list[Row]]:
        """The rows decoded into their typed row classes (for tests and tools; slow)."""
        return {
            table: [ROW_ADAPTERS[table].validate_json(row) for row in rows]
            for table, rows in self.encoded().items()
        }

    def rows_of(self, row_type: type[_R]) -> list[_R]:
        """One table's rows decoded into their row class (for tests and tools; slow)."""
        adapter = row_adapter(row_type)
        return [
            adapter.validate_json(row)
            for tables in self.rows.values()
            for row in tables.get(row_type.table, ())
        ]

    @property
    def touchpoints(self) -> list[TouchpointRow]:
        return self.rows_of(TouchpointRow)

    @property
    def transitions(self) -> list[StageTransitionRow]:
        return self.rows_of(StageTransitionRow)

    @property
    def states(self) -> list[JourneyStateRow]:
        return self.rows_of(JourneyStateRow)

    @property
    def dropoffs(self) -> list[DropoffRow]:
        return self.rows_of(DropoffRow)

    @property
    def dead_letters(self) -> list[DeadLetterRow]:
        return self.rows_of(DeadLetterRow)

    @property
    def triggers(self) -> list[TriggerRow]:
        return self.rows_of(TriggerRow)

    @property
    def identity_links(self) -> list[IdentityLinkRow]:
        return self.rows_of(IdentityLinkRow)

    def __len__(self) -> int:
        return sum(len(rows) for tables in self.rows.values() for rows in tables.values())


def header(headers: Any, wanted: str) -> bytes | None:
    """The value of header ``wanted`` of a Kafka record (headers as pairs or a mapping)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == wanted:
            return bytes(value) if value is not None else b""
    return None


class JourneyProcessor:
    """Turns touchpoints into journey rows. Feed events, then :meth:`flush` per batch.

    Event time is tracked per input partition (the local runner has one,
    partition 0; a Kafka worker has one per assigned partition, and a buyer's
    events all arrive on one of them). A partition's watermark is the newest
    event time seen on it minus ``allowed_lateness`` (or a later source
    watermark, see :meth:`advance_watermark`); a drop-off is judged when the
    watermark of the buyer's partition passes its deadline. Events older than
    ``watermark - dedup_window`` cannot be de-duplicated any more and become
    ``too_late`` dead letters.

    No single event can drag a partition's event time ahead of its history: an event
    stamped with its receive time (``occurred_at == received_at``: the source gave no
    event time, e.g. Twilio status callbacks), one more than ``max_future_skew`` after
    its own ``received_at``, or that far ahead of the clock is folded like any other
    but does not move the watermark (counted in ``counters.held_back``).

    ``states`` maps buyer id → encoded :class:`~schemas.journey.JourneyState`
    (:func:`~schemas.journey.encode_state`); a dict by default.
    """

    def __init__(
        self,
        rules: JourneyRules,
        *,
        allowed_lateness: timedelta,
        dedup_window: timedelta,
        max_future_skew: timedelta = timedelta(hours=1),
        states: MutableMapping[str, bytes] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        stitch_identities: bool = False,
        max_person_ids: int = identity.MAX_IDS,
        home: Callable[[str], int] | None = None,
    ) -> None:
        if dedup_window < allowed_lateness:
            raise ValueError("dedup_window must be at least allowed_lateness")
        self.classifier = Classifier(rules)
        self.triggers = TriggerSet(rules)
        """The rules' real-time triggers (see :mod:`processors.triggers`)."""
        if self.triggers.longest_window > journey.micros_of(dedup_window):
            raise RulesError(
                f"a high_intent trigger's window is longer than the dedup window "
                f"({dedup_window}): the touches it counts would no longer be kept"
            )
        self.order = rules.order
        """The rules' stages, in journey order."""
        self.timeouts: dict[str, int] = {
            stage: journey.micros_of(timeout) for stage, timeout in rules.timeouts.items()
        }
        self.allowed_lateness = allowed_lateness
        self.dedup_window = dedup_window
        self._lateness = journey.micros_of(allowed_lateness)
        self._dedup = journey.micros_of(dedup_window)
        self.states: MutableMapping[str, bytes] = {} if states is None else states
        self.counters = ProcessorCounters()
        self._newest: dict[int, int] = {}
        """Partition → newest event time seen (µs)."""
        self._clock = clock
        self.accept_late = False
        """Fold events however far behind the watermark (a replay of dead letters whose ids
        the driver checked against the stored touchpoints) instead of ``too_late``."""
        self.max_future_skew = max_future_skew
        self._skew = journey.micros_of(max_future_skew)
        self._future = to_micros(clock()) + self._skew
        """No event after this moves the watermark (the clock plus the skew, per batch)."""
        self._timers: dict[int, list[tuple[int, str, int]]] = {}
        self._live: dict[str, JourneyState] = {}
        """Decoded states this batch has read (changed or not)."""
        self._changed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        """Buyers this batch changed → their stage hits and drop-offs before it."""
        self._output = BatchOutput()
        self.stitch_identities = stitch_identities
        """Fold the journeys of ids an event links into one person's
        (:mod:`processors.identity`)."""
        self.home = home
        """Buyer id → the partition its events arrive on, when states are spread over
        partitions (the Kafka workers): stitching then goes through control messages
        (:mod:`processors.stitching`). None: every id's state is in ``states``."""
        self._home_of: Callable[[str], int] = home if home is not None else _one_partition
        if max_person_ids < 2:
            raise ValueError("max_person_ids must be at least 2")
        self.max_person_ids = max_person_ids
        self._retired: set[str] = set()
        """Ids whose journey this batch merged into another person's: their rows are retracted."""
        self.unlinkable: set[str] = set()
        """Ids split off their person (``touchpoint identity split``): never linked again."""
        self.link_epoch = 0
        """Orders ``identity_links`` rows across runs: a row's version is the epoch (the run,
        in the local runner) times 2**20 plus the person's size, so a later run's word on an
        id wins even when a split made its person smaller."""
        self.emit_touchpoints = True
        """False while events already stored are folded again (a split): their touchpoint
        rows are in the table, and writing them again would count them again in the views."""

    # -- event time ----------------------------------------------------------

    def watermark(self, partition: int = 0) -> datetime | None:
        newest = self._newest.get(partition)
        return None if newest is None else from_micros(newest - self._lateness)

    @property
    def max_event_times(self) -> dict[int, datetime]:
        """Partition → the newest event time seen on it."""
        return {partition: from_micros(at) for partition, at in self._newest.items()}

    @property
    def max_event_time(self) -> datetime | None:
        """The newest event time seen on any partition."""
        newest = max(self._newest.values(), default=None)
        return None if newest is None else from_micros(newest)

    def advance_watermark(self, partition: int, event_time: datetime) -> None:
        """A source watermark: no event older than ``event_time - allowed_lateness`` will follow.

        Sent at the end of a finite input (and by idle sources), so drop-offs are
        judged without waiting for newer events.
        """
        at = to_micros(event_time)
        newest = self._newest.get(partition)
        if newest is None or at > newest:
            self._newest[partition] = at
            self._fire_timers(partition)

    def restore(
        self,
        partitions: set[int] | None = None,
        newest_event_times: Mapping[int, datetime] | None = None,
        buyers: Iterable[str] | None = None,
    ) -> None:
        """Re-arm timers and event time from the state store (after a restart or a rebalance).

        A partition's event time restarts at the time it had reached when its
        states were stored (``newest_event_times``, when the driver kept it), and
        never before the newest touch its buyers have. Without a stored time it
        can only be behind the time reached before, so a restart delays
        judgements but never makes a wrong one. ``buyers`` limits the scan to the
        journeys just loaded (default: every state in the store).
        """
        for partition in partitions if partitions is not None else set(self._timers):
            self._timers.pop(partition, None)
            self._newest.pop(partition, None)
        for partition, stored_at in (newest_event_times or {}).items():
            if partitions is None or partition in partitions:
                self._newest[partition] = to_micros(stored_at)
        store = self.states
        for buyer_id in list(store) if buyers is None else buyers:
            blob = store.get(buyer_id)
            if blob is None:
                continue
            state = decode_state(blob)
            if partitions is not None and state.partition not in partitions:
                continue
            self._schedule(buyer_id, state)
            last = journey.last_touch(state)
            if last is not None:
                newest = self._newest.get(state.partition)
                if newest is None or last.at > newest:
                    self._newest[state.partition] = last.at

    def judge_due(self) -> None:
        """Judge every deadline the watermark has passed (after late events armed some)."""
        for partition in list(self._timers):
            if partition in self._newest:
                self._fire_timers(partition)

    def forget(self, partitions: set[int]) -> None:
        """Drop timers and event time of partitions this processor no longer owns."""
        for partition in partitions:
            self._timers.pop(partition, None)
            self._newest.pop(partition, None)

    # -- state ---------------------------------------------------------------

    def state(self, buyer_id: str) -> JourneyState | None:
        """A buyer's journey state as it is now (decoded; for tests and tools)."""
        live = self._live.get(buyer_id)
        if live is not None:
            return live
        blob = self.states.get(buyer_id)
        return None if blob is None else decode_state(blob)

    def _read(self, buyer_id: str) -> JourneyState | None:
        state = self._live.get(buyer_id)
        if state is None:
            blob = self.states.get(buyer_id)
            if blob is None:
                return None
            state = self._live[buyer_id] = decode_state(blob)
        return state

    def _change(self, buyer_id: str, state: JourneyState) -> None:
        """Note the state as it is before this batch's first change to it."""
        if buyer_id not in self._changed:
            self._changed[buyer_id] = (dict(state.stage_hits), dict(state.dropoffs))

    def _schedule_hit(
        self, buyer_id: str, state: JourneyState, stage: str, touch: TouchRef
    ) -> None:
        """Arm the drop-off timer of ``stage``, whose first hit ``touch`` just became.

        Only this stage can have become a move: a new hit can take the move away from a
        lower stage, never give one to another stage, so only its deadline is new (and
        pushing every move's deadline again, as :meth:`_schedule` does, would fill the
        heap with duplicates that each cost a state decode when they fire).
        """
        timeout = self.timeouts.get(stage)
        if timeout is None or stage in state.judged:
            return
        rank = self.order.rank[stage]
        key = (touch.at, touch.event_id)
        for higher in self.order.names[rank + 1 :]:
            hit = state.stage_hits.get(higher)
            if hit is not None and (hit.at, hit.event_id) <= key:
                return  # reached past this stage before: not a move
        timers = self._timers.get(state.partition)
        if timers is None:
            timers = self._timers[state.partition] = []
        heapq.heappush(timers, (touch.at + timeout, buyer_id, rank))

    def _schedule(self, buyer_id: str, state: JourneyState) -> None:
        timers = self._timers.get(state.partition)
        if timers is None:
            timers = self._timers[state.partition] = []
        ranks = self.order.rank
        for deadline, stage in journey.deadlines(state, self.timeouts, order=self.order):
            heapq.heappush(timers, (deadline, buyer_id, ranks[stage]))

    # -- input ---------------------------------------------------------------

    def process_raw(
        self, data: bytes | str, *, source: str, position: str, partition: int = 0
    ) -> Event | None:
        """Validate one raw record and process it; a bad record becomes a dead letter."""
        try:
            event = decode_event(data)
        except SchemaValidationError as exc:
            self.dead_letter(
                exc.reason, exc.detail, data, source=source, position=position, partition=partition
            )
            return None
        self.process(event, source=source, position=position, partition=partition)
        return event

    def process_record(
        self,
        data: bytes,
        *,
        source: str,
        position: str,
        partition: int = 0,
        headers: Any = None,
        error: tuple[DeadLetterReason, str] | None = None,
    ) -> None:
        """One raw record as a driver received it, in whichever form it came.

        ``error``: the reader could not frame it (a CSV row with the wrong number of
        fields), so it becomes a dead letter. ``headers`` (a Kafka record's, as pairs or a
        mapping) mark a pack — many touchpoints, newline-delimited, each at position
        ``{position}:{line}`` — or a control message: a source watermark, whose time
        :meth:`advance_watermark` takes (an unreadable one is a dead letter). Anything
        else is one touchpoint (:meth:`process_raw`).
        """
        if error is not None:
            reason, detail = error
            self.dead_letter(
                reason, detail, data, source=source, position=position, partition=partition
            )
            return
        if headers:
            if header(headers, PACK_HEADER) == PACK_NDJSON:
                process_raw = self.process_raw
                for index, line in enumerate(data.split(b"\n")):
                    if line:
                        process_raw(
                            line, source=source, position=f"{position}:{index}", partition=partition
                        )
                return
            if header(headers, CONTROL_HEADER) == CONTROL_WATERMARK:
                try:
                    at = datetime.fromisoformat(data.decode())
                    if at.tzinfo is None:
                        raise ValueError("the time has no UTC offset")
                    if to_micros(at) > self._future:
                        raise ValueError(
                            f"{at.isoformat()} is more than {self.max_future_skew} ahead of the "
                            "clock: it would judge every pending drop-off at once"
                        )
                    self.advance_watermark(partition, at)
                except (UnicodeDecodeError, ValueError, OverflowError) as exc:
                    self.dead_letter(
                        DeadLetterReason.INVALID_FIELD,
                        f"watermark control message with an unreadable time: {exc}",
                        data,
                        source=source,
                        position=position,
                        partition=partition,
                    )
                return
            if header(headers, CONTROL_HEADER) == CONTROL_IDENTITY:
                self._receive(data, source=source, position=position, partition=partition)
                return
        self.process_raw(data, source=source, position=position, partition=partition)

    def dead_letter(
        self,
        reason: DeadLetterReason,
        detail: str,
        raw: bytes | str,
        *,
        source: str,
        position: str,
        partition: int = 0,
    ) -> None:
        letter = DeadLetter.build(
            reason=reason,
            detail=detail,
            raw=raw,
            source=source,
            position=position,
            recorded_at=self._clock(),
        )
        self.counters.dead_letters[reason.value] += 1
        self._output.stats.dead_letters[reason.value] += 1
        row = DeadLetterRow.from_dead_letter(letter)
        self._output.add(partition, _DEAD_LETTERS, ROW_ADAPTERS[_DEAD_LETTERS].dump_json(row))

    def process(
        self,
        event: Event,
        *,
        source: str,
        position: str,
        partition: int = 0,
        person: str | None = None,
    ) -> None:
        """Process one validated event that arrived on ``partition``.

        ``person``: the event was forwarded to this id's home by the home of its buyer id,
        whose journey is part of that id's person (:mod:`processors.stitching`).
        """
        at = event.at
        newest = self._newest.get(partition)
        watermark = None if newest is None else newest - self._lateness
        if (
            watermark is not None
            and at < watermark - self._dedup
            and not self.accept_late
            and person is None
        ):
            self.dead_letter(
                DeadLetterReason.TOO_LATE,
                f"occurred_at {from_micros(at).isoformat()} is more than the dedup window "
                f"({self.dedup_window}) behind the watermark {from_micros(watermark).isoformat()}",
                _encode(_event_record(event)),
                source=source,
                position=position,
                partition=partition,
            )
            return
        buyer_id = event.buyer_id if person is None else person
        state = self._read(buyer_id)
        if self.home is not None and (state is None or state.merged_into is not None):
            buyer_id, state, here = self._locate(buyer_id, partition)
            if not here:
                forwarded = IdentityMessage(
                    "event",
                    buyer_id,
                    event=_encode(_event_record(event)),
                    source=source,
                    position=position,
                )
                self._send(partition, forwarded)
                return
        elif state is not None and state.merged_into is not None:
            buyer_id = state.merged_into
            state = self._read(buyer_id)
        if state is None:
            state = self._live[buyer_id] = journey.new_state(buyer_id, partition)
            self._changed[buyer_id] = ({}, {})
        elif journey.is_duplicate(state, event.event_id, at):
            self.counters.duplicates += 1
            return
        else:
            self._change(buyer_id, state)
        if watermark is not None and at < watermark:
            self.counters.late += 1

        classification = self.classifier.classify_fields(
            event.channel, event.event_type, event.properties
        )
        touch = journey.fold(state, event, classification, self.order)
        counters = self.counters
        counters.accepted += 1
        stage = classification.stage
        if classification.rule_id is None:
            counters.unclassified += 1
        output = self._output
        output.stats.events[(event.channel, stage or "")] += 1
        properties = event.properties
        if self.emit_touchpoints:
            output.add(
                state.partition,
                _TOUCHPOINTS,
                _encode(
                    journey.touchpoint_row(
                        event,
                        classification,
                        _encode(properties).decode() if properties else "{}",
                        source,
                        position,
                    )
                ),
            )
        if stage is not None and state.stage_hits[stage] is touch:
            self._schedule_hit(buyer_id, state, stage, touch)
        triggers = self.triggers
        if triggers:
            fired = triggers.on_touch(state, touch, classification.exit)
            if stage is not None and state.fired and state.dropoffs:
                fired.extend(triggers.retractions(state))
            if fired:
                self._emit_triggers(state.partition, fired)
        if self.stitch_identities:
            aliases = identity.linked_ids(event)
            if aliases:
                if self.home is None:
                    self._link(buyer_id, event, aliases, source=source, position=position)
                else:
                    self._link_across(buyer_id, event, aliases, partition, source, position)

        partition = state.partition
        newest = self._newest.get(partition)
        if newest is None or at > newest:
            held = self._held_back(event)
            if held is None:
                self._newest[partition] = at
                self._fire_timers(partition)
            else:
                counters.held_back[held] += 1

    # -- identity ------------------------------------------------------------

    def _root(self, buyer_id: str) -> str:
        """The person id a buyer id's journey lives under (itself unless merged)."""
        state = self._read(buyer_id)
        if state is None or state.merged_into is None:
            return buyer_id
        return state.merged_into

    def _link(
        self, person_id: str, event: Event, aliases: list[str], *, source: str, position: str
    ) -> None:
        """Make ``aliases`` (ids the event names beside its buyer's) part of its person."""
        if self.unlinkable and event.buyer_id in self.unlinkable:
            return
        person = self._live[person_id]
        grown = merged = False
        if event.buyer_id not in person.identified:
            bisect.insort(person.identified, event.buyer_id)
            grown = True
        for alias in aliases:
            if alias == person_id or alias in self.unlinkable:
                continue
            index = bisect.bisect_left(person.aliases, alias)
            if index < len(person.aliases) and person.aliases[index] == alias:
                continue
            other_id = self._root(alias)
            if other_id == person_id:
                continue
            other = self._read(other_id)
            size = len(person.aliases) + 1 + (0 if other is None else len(other.aliases) + 1)
            if other is None:
                size += 1
            if size > self.max_person_ids:
                self._refuse_link(person_id, alias, size, event, source=source, position=position)
                continue
            self._change(person_id, person)
            if other is None:
                person.version += 1
                bisect.insort(person.aliases, alias)
                self._live[alias] = self._stub(alias, journey.new_state(alias), person_id)
                self._changed[alias] = ({}, {})
            else:
                self._absorb(person_id, person, other_id, other)
                merged = True
            grown = True
        if grown:
            self._settle(person_id, person, merged)

    def _absorb(
        self, person_id: str, person: JourneyState, other_id: str, other: JourneyState
    ) -> None:
        """Fold ``other``'s journey into ``person``'s; ``other`` and its aliases point to it."""
        self._change(other_id, other)
        journey.merge(person, other)
        person.identified = sorted({*person.identified, *other.identified})
        for alias in other.aliases:
            stub = self._read(alias)
            if stub is not None:
                self._change(alias, stub)
                stub.merged_into = person_id
        if other_id in self.states:
            self._retired.add(other_id)
        self._live[other_id] = self._stub(other_id, other, person_id)
        self.counters.merges += 1
        self._output.stats.merges += 1

    @staticmethod
    def _stub(buyer_id: str, was: JourneyState, person_id: str) -> JourneyState:
        """What is left of a merged id: a pointer, with a version past its rows'."""
        return JourneyState(
            buyer_id=buyer_id,
            partition=was.partition,
            version=was.version + 1,
            persona=was.persona,
            merged_into=person_id,
        )

    def _settle(self, person_id: str, person: JourneyState, merged: bool) -> None:
        """After the person grew: move it to its person id, judge it again, write its links."""
        canonical = identity.person_id([person_id, *person.aliases], person.identified)
        if canonical != person_id:
            stub = self._read(canonical)
            if stub is not None:
                self._change(canonical, stub)
            else:
                self._changed[canonical] = ({}, {})
            person.aliases = sorted({person_id, *person.aliases} - {canonical})
            person.buyer_id = canonical
            person.version += 1 if stub is None else stub.version + 1
            self._live[canonical] = person
            if person_id in self.states:
                self._retired.add(person_id)
            self._live[person_id] = self._stub(person_id, person, canonical)
            for alias in person.aliases:
                other = self._read(alias)
                if other is not None and other.merged_into is not None:
                    self._change(alias, other)
                    other.merged_into = canonical
        if merged or canonical != person_id:
            # the drop-offs are judged again, on the union of the events, under the person id
            self._schedule(canonical, person)
            if person.partition in self._newest:
                self._fire_timers(person.partition)
        self._write_links(person, canonical, retract_own=canonical != person_id)

    def split(self, buyer_id: str, ids: Iterable[str]) -> None:
        """Take ``buyer_id`` out of the person whose ``ids`` these are, for good.

        Every journey of the person starts over empty (its rows are retracted at the next
        flush unless events fold into it again) and ``buyer_id`` becomes unlinkable; the
        driver then folds the person's stored events again (with ``emit_touchpoints`` off),
        which links the other ids once more but not this one.
        """
        self.unlinkable.add(buyer_id)
        version = self.link_epoch * LINK_EPOCH
        for one in ids:
            state = self._read(one)
            if state is None:
                continue
            self._change(one, state)
            fresh = journey.new_state(one, state.partition)
            fresh.version = state.version + 1
            self._live[one] = fresh
            self._retired.add(one)
            self._output.add(
                state.partition,
                _IDENTITIES,
                _encode(
                    {
                        "alias_id": one,
                        "person_id": one,
                        "identified": 0,
                        "version": version,
                        "is_deleted": 1,
                    }
                ),
            )

    def _refuse_link(
        self, person_id: str, alias: str, size: int, event: Event, *, source: str, position: str
    ) -> None:
        self.dead_letter(
            DeadLetterReason.IDENTITY_CAP,
            f"linking {alias!r} to person {person_id!r} would give the person {size} ids, more "
            f"than the cap of {self.max_person_ids} (a shared device or address?); the event "
            f"was processed, the journeys stay apart",
            _encode(_event_record(event)),
            source=source,
            position=position,
        )

    # -- identity across partitions (processors.stitching) ---------------------

    def _locate(self, buyer_id: str, partition: int) -> tuple[str, JourneyState | None, bool]:
        """Follow ``buyer_id``'s stubs on this partition: (the id reached, its state, whether
        its home is here). Not here: the next hop is that id's home."""
        home = self._home_of
        while True:
            if home(buyer_id) != partition:
                return buyer_id, None, False
            state = self._read(buyer_id)
            if state is None or state.merged_into is None:
                return buyer_id, state, True
            buyer_id = state.merged_into

    def _send(self, partition: int, message: IdentityMessage) -> None:
        """Send ``message`` to its target's home, with the output of input ``partition``."""
        home = self._home_of
        controls = self._output.controls.get(partition)
        if controls is None:
            controls = self._output.controls[partition] = []
        controls.append((home(message.target), encode_identity_message(message)))

    def _link_across(
        self,
        person_id: str,
        event: Event,
        aliases: list[str],
        partition: int,
        source: str,
        position: str,
    ) -> None:
        """Ask the homes of the ids ``event`` links to join their persons to this one."""
        person = self._live[person_id]
        named = event.buyer_id not in person.identified
        if named:
            self._change(person_id, person)
            bisect.insort(person.identified, event.buyer_id)
        record = b""
        for alias in aliases:
            if alias == person_id or alias in person.aliases:
                continue
            record = record or _encode(_event_record(event))
            self._send(
                partition, _union_message(alias, person_id, person, record, source, position)
            )
        if named:
            self._settle_across(person_id, person, partition, merged=False)

    def _receive(self, data: bytes, *, source: str, position: str, partition: int) -> None:
        """An identity control message another partition's input made for this one."""
        try:
            message = decode_identity_message(data)
            if message.op == "event":
                event = decode_event(message.event)
            elif message.op == "absorb":
                shipped = decode_state(message.state)
        except SchemaValidationError as exc:
            self.dead_letter(
                exc.reason, exc.detail, data, source=source, position=position, partition=partition
            )
            return
        if message.op == "event":
            self.process(
                event,
                source=message.source,
                position=message.position,
                partition=partition,
                person=message.target,
            )
            return
        if message.adopt:
            # the target is one of the shipped person's own ids, a stub into it: not followed
            root_id, root = message.target, self._read(message.target)
            if root is not None and root.merged_into is not None:
                root = None
        else:
            root_id, root, here = self._locate(message.target, partition)
            if not here:
                self._send(partition, msgspec.structs.replace(message, target=root_id))
                return
            if message.op == "union":
                self._union(root_id, root, message, partition)
                return
        self._absorb_shipped(root_id, root, shipped, partition)

    def _absorb_shipped(
        self, root_id: str, root: JourneyState | None, shipped: JourneyState, partition: int
    ) -> None:
        """Fold a shipped journey into ``root_id``'s person. A journey with no events (an id
        only ever named by a link) adds its ids and nothing else, and one that lands on an
        id with no events is taken over whole: their drop-off judgements stand, where judging
        the union again could no longer see touches pruned since."""
        if root is None or (not root.events and root.merged_into is None):
            if root is not None:
                shipped.aliases = sorted({*shipped.aliases, *root.aliases})
                shipped.identified = sorted({*shipped.identified, *root.identified})
            self._adopt(root_id, shipped, partition)
            return
        self._change(root_id, root)
        root.identified = sorted({*root.identified, *shipped.identified})
        if not shipped.events:
            root.version += shipped.version + 1
            root.aliases = sorted({*root.aliases, shipped.buyer_id, *shipped.aliases} - {root_id})
            self._settle_across(root_id, root, partition, merged=False)
            return
        journey.merge(root, shipped)
        self.counters.merges += 1
        self._output.stats.merges += 1
        self._settle_across(root_id, root, partition, merged=True)

    def _union(
        self, root_id: str, root: JourneyState | None, message: IdentityMessage, partition: int
    ) -> None:
        """``message.other``'s person and ``root_id``'s are one: the lower-ranked root ships."""
        other = message.other
        if root is None:
            root = self._live[root_id] = journey.new_state(root_id, partition)
            self._changed[root_id] = ({}, {})
        if other == root_id or other in root.aliases:
            return
        size = len(root.aliases) + 1 + message.size
        if size > self.max_person_ids:
            self.dead_letter(
                DeadLetterReason.IDENTITY_CAP,
                f"linking {root_id!r} and {other!r} would give their person {size} ids, more "
                f"than the cap of {self.max_person_ids} (a shared device or address?); the "
                f"event was processed, the journeys stay apart",
                message.event,
                source=message.source,
                position=message.position,
                partition=partition,
            )
            return
        theirs = (not message.other_named, other)
        if theirs < rank(root_id, root.identified):
            self._ship(root_id, root, other, partition, adopt=False)
            return
        self._send(
            partition,
            _union_message(other, root_id, root, message.event, message.source, message.position),
        )

    def _ship(
        self, root_id: str, root: JourneyState, target: str, partition: int, *, adopt: bool
    ) -> None:
        """Send ``root_id``'s whole journey to ``target``'s home; ``root_id`` becomes a stub."""
        self._change(root_id, root)
        self._send(
            partition, IdentityMessage("absorb", target, state=encode_state(root), adopt=adopt)
        )
        if root_id in self.states:
            self._retired.add(root_id)
        self._live[root_id] = self._stub(root_id, root, target)

    def _adopt(self, buyer_id: str, shipped: JourneyState, partition: int) -> None:
        """The shipped journey lives under ``buyer_id`` (here) from now on."""
        was = self._read(buyer_id)
        if was is None:
            self._changed[buyer_id] = ({}, {})
        else:
            self._change(buyer_id, was)
        shipped.aliases = sorted({shipped.buyer_id, *shipped.aliases} - {buyer_id})
        shipped.buyer_id = buyer_id
        shipped.partition = partition
        shipped.merged_into = None
        shipped.version = max(shipped.version, 0 if was is None else was.version) + 1
        self._live[buyer_id] = shipped
        self._settle_across(buyer_id, shipped, partition, merged=True, adopted=True)

    def _settle_across(
        self,
        person_id: str,
        person: JourneyState,
        partition: int,
        *,
        merged: bool,
        adopted: bool = False,
    ) -> None:
        """After the person here grew: move it to a better id, or judge it again and write
        its links."""
        canonical = identity.person_id([person_id, *person.aliases], person.identified)
        if canonical != person_id:
            self._ship(person_id, person, canonical, partition, adopt=True)
            return
        if merged:
            self._schedule(person_id, person)
            if partition in self._newest:
                self._fire_timers(partition)
        self._write_links(person, person_id, retract_own=adopted)

    def _write_links(self, person: JourneyState, person_id: str, *, retract_own: bool) -> None:
        """The person's ``identity_links`` rows: each alias → ``person_id`` (and, when
        ``retract_own``, the row that named ``person_id`` itself an alias taken back)."""
        size = len(person.aliases) + 1
        version = self.link_epoch * LINK_EPOCH + size
        identified = set(person.identified)
        output = self._output
        for alias in person.aliases:
            output.add(
                person.partition,
                _IDENTITIES,
                _encode(
                    {
                        "alias_id": alias,
                        "person_id": person_id,
                        "identified": int(alias in identified),
                        "version": version,
                        "is_deleted": 0,
                    }
                ),
            )
        if retract_own:
            output.add(
                person.partition,
                _IDENTITIES,
                _encode(
                    {
                        "alias_id": person_id,
                        "person_id": person_id,
                        "identified": int(person_id in identified),
                        "version": version,
                        "is_deleted": 1,
                    }
                ),
            )

    def _held_back(self, event: Event) -> str | None:
        """Why this event's time may not move the watermark (None: it may)."""
        received = event.received_at
        if received is not None:
            if event.at == received:
                return "receive_time"
            if event.at > received + self._skew:
                return "ahead_of_receipt"
        if event.at > self._future:
            return "future"
        return None

    def _fire_timers(self, partition: int) -> None:
        timers = self._timers.get(partition)
        if not timers:
            return
        watermark = self._newest[partition] - self._lateness
        names = self.order.names
        while timers and timers[0][0] <= watermark:
            deadline, buyer_id, rank = heapq.heappop(timers)
            state = self._read(buyer_id)
            if state is None:
                continue
            stage = names[rank]
            hit = state.stage_hits.get(stage)
            if hit is None or stage in state.judged or hit.at + self.timeouts[stage] != deadline:
                continue  # superseded: a late event moved this stage's entry
            self._change(buyer_id, state)
            record = journey.judge(state, stage, self.timeouts, self.order)
            if record is not None:
                self.counters.dropoffs += 1
                if self.triggers:
                    fired = self.triggers.on_dropoff(state, record)
                    if fired:
                        self._emit_triggers(state.partition, fired)

    def _emit_triggers(
        self, partition: int, rows: list[dict[str, Any]], output: BatchOutput | None = None
    ) -> None:
        output = self._output if output is None else output
        stats = output.stats
        counters = self.counters
        for row in rows:
            if row["is_retraction"]:
                stats.retractions[row["trigger_id"]] += 1
                counters.retractions += 1
            else:
                stats.triggers[row["trigger_id"]] += 1
                counters.triggers += 1
            output.add(partition, _TRIGGERS, _encode(row))

    # -- output --------------------------------------------------------------

    def flush(self) -> BatchOutput:
        """Rows produced since the last flush: touchpoints, dead letters, and changed journeys."""
        output, self._output = self._output, BatchOutput()
        self._future = to_micros(self._clock()) + self._skew
        stats = output.stats
        timeouts = self.timeouts
        order = self.order
        retired, self._retired = self._retired, set()
        for buyer_id, (hits_before, dropoffs_before) in self._changed.items():
            state = self._live[buyer_id]
            partition = state.partition
            if state.merged_into is not None or not state.events:
                # merged into another person's journey, or split off and left with nothing
                if buyer_id in retired:
                    self._retract(output, state, hits_before, dropoffs_before)
                self._store(output, buyer_id, state)
                continue
            hits_changed = state.stage_hits != hits_before
            moves = journey.transitions(state, order) if hits_changed else None
            newest = self._newest.get(partition)
            if newest is not None:
                watermark = newest - self._lateness
                journey.prune(state, watermark, self._dedup, timeouts, moves, order)
                if state.fired:
                    self.triggers.forget(state, watermark - self._dedup)
            if moves is not None:
                previous = journey.moves_of(hits_before, order)
                changed = [move for move in moves if move not in previous]
                still_moves = {to_stage for _, to_stage, _ in moves}
                retracted = [move for move in previous if move[1] not in still_moves]
                for row in journey.transition_rows(state, changed, retracted):
                    output.add(partition, _TRANSITIONS, _encode(row))
                for from_stage, to_stage, _ in changed:
                    stats.moves[(from_stage or "entry", to_stage)] += 1
                if state.fired and self.triggers.moves:
                    unmoved = self.triggers.unmoved(state, still_moves)
                    if unmoved:
                        self._emit_triggers(partition, unmoved, output)
            for stage, record in state.dropoffs.items():
                if dropoffs_before.get(stage) != record:
                    output.add(partition, _DROPOFFS, _encode(journey.dropoff_row(state, record)))
                    if record.recovered_at is None:
                        stats.dropoffs[stage] += 1
            for stage, record in dropoffs_before.items():
                if stage not in state.dropoffs:  # a merge showed no drop-off here
                    row = journey.dropoff_row(state, record)
                    row["is_deleted"] = 1
                    output.add(partition, _DROPOFFS, _encode(row))
            output.add(partition, _STATES, _encode(journey.state_row(state, order)))
            self._store(output, buyer_id, state)
        self._changed.clear()
        self._live.clear()
        return output

    def _store(self, output: BatchOutput, buyer_id: str, state: JourneyState) -> None:
        blob = encode_state(state)
        self.states[buyer_id] = blob
        stored = output.stored.get(state.partition)
        if stored is None:
            output.stored[state.partition] = [(buyer_id, blob)]
        else:
            stored.append((buyer_id, blob))

    def _retract(
        self,
        output: BatchOutput,
        stub: JourneyState,
        hits_before: Mapping[str, TouchRef],
        dropoffs_before: Mapping[str, Any],
    ) -> None:
        """Take back the rows of a journey that was merged into another person's."""
        partition = stub.partition
        moves = journey.moves_of(hits_before, self.order)
        for row in journey.transition_rows(stub, (), moves):
            output.add(partition, _TRANSITIONS, _encode(row))
        for record in dropoffs_before.values():
            row = journey.dropoff_row(stub, record)
            row["is_deleted"] = 1
            output.add(partition, _DROPOFFS, _encode(row))
        row = journey.state_row(stub, self.order)
        row["is_deleted"] = 1
        output.add(partition, _STATES, _encode(row))


def _union_message(
    target: str, root_id: str, root: JourneyState, event: bytes, source: str, position: str
) -> IdentityMessage:
    """The ``union`` asking ``target``'s person to join ``root_id``'s (its root, here)."""
    return IdentityMessage(
        "union",
        target,
        other=root_id,
        other_named=root_id in root.identified,
        size=len(root.aliases) + 1,
        event=event,
        source=source,
        position=position,
    )


def _one_partition(_buyer_id: str) -> int:
    return 0


def _event_record(event: Event) -> dict[str, Any]:
    """The event as a Touchpoint v1 JSON object (the raw form of a too-late dead letter)."""
    record: dict[str, Any] = {
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "buyer_id": event.buyer_id,
        "channel": event.channel,
        "event_type": event.event_type,
        "occurred_at": from_micros(event.at).isoformat(),
    }
    optional = {
        "anonymous_id": event.anonymous_id,
        "account_id": event.account_id,
        "received_at": None
        if event.received_at is None
        else from_micros(event.received_at).isoformat(),
        "campaign": event.campaign,
        "promo": event.promo,
        "revenue": None if event.revenue is None else str(event.revenue),
        "currency": event.currency,
    }
    record.update((name, value) for name, value in optional.items() if value is not None)
    if event.properties:
        record["properties"] = event.properties
    return record
