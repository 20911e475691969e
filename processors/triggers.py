"""Real-time triggers: pure functions that decide what fires, over a buyer's journey state.

The journey rules' ``[[trigger]]`` entries (:class:`schemas.rules.Trigger`) are compiled
once into a :class:`TriggerSet`; the processor calls it at the moment something happens:

- :meth:`TriggerSet.on_touch` after a touch is folded: a ``stage_move`` when the touch is
  the buyer's new first event at a stage and raised their furthest stage, an ``exit`` when
  it is one, and ``high_intent`` when it makes the intent score cross its threshold;
- :meth:`TriggerSet.on_dropoff` when a drop-off is judged (the watermark passed its
  deadline);
- :meth:`TriggerSet.retractions` after a touch that may disprove a drop-off that fired
  (progress at or before the deadline, arriving after the judgement);
- :meth:`TriggerSet.unmoved` at a batch's flush, when the buyer's moves changed: a fired
  stage move that a late event showed was no move.

Each returns row dicts of the ``journey_triggers`` table, and records what fired in
``state.fired`` (:class:`schemas.journey.FiredTrigger`), which is stored with the state:
an occurrence never fires twice, also when its events are delivered again after a
restart (the dedup window and the stored partition positions see to the events; the
fired list to everything else, e.g. a late event that moves a stage's entry earlier).

Everything is event time: ``fired_at`` is the time of the cause, cooldowns compare event
times, the intent score counts touches in a window of event time. Nothing reads a clock.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from processors.journey import micros_of, stage_at
from schemas.journey import DropoffRecord, FiredTrigger, JourneyState, TouchRef
from schemas.rows import JsonRow, JsonScalar
from schemas.rules import JourneyRules, StageOrder, Trigger

__all__ = ["CompiledTrigger", "TriggerSet", "trigger_event_id"]

_encode: Final = msgspec.json.Encoder().encode


def trigger_event_id(trigger_id: str, buyer_id: str, occurrence: str) -> str:
    """The id of one firing: the same trigger, buyer and occurrence give the same id."""
    digest = hashlib.sha256(f"{trigger_id}\x1f{buyer_id}\x1f{occurrence}".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class CompiledTrigger:
    """A :class:`~schemas.rules.Trigger` in the shape the hot path reads (times in µs)."""

    id: str
    kind: str
    stage: str | None
    from_stage: str | None
    threshold: int
    window: int
    kinds: frozenset[str]
    channels: frozenset[str]
    campaigns: frozenset[str]
    personas: frozenset[str]
    cooldown: int | None

    @classmethod
    def of(cls, trigger: Trigger, rules: JourneyRules) -> CompiledTrigger:
        stage = rules.high_intent_stage(trigger) if trigger.on == "high_intent" else trigger.stage
        return cls(
            id=trigger.id,
            kind=trigger.on,
            stage=stage,
            from_stage=trigger.from_stage,
            threshold=trigger.threshold or 0,
            window=micros_of(trigger.score_window),
            kinds=frozenset(trigger.kinds),
            channels=frozenset(trigger.channel),
            campaigns=frozenset(trigger.campaign),
            personas=frozenset(trigger.persona),
            cooldown=None if trigger.cooldown is None else micros_of(trigger.cooldown),
        )

    def matches(self, touch: TouchRef | None, persona: str | None) -> bool:
        """The filters: channel and campaign of the causing touch, the buyer's persona."""
        if self.channels and (touch is None or touch.channel not in self.channels):
            return False
        if self.campaigns and (touch is None or touch.campaign not in self.campaigns):
            return False
        return not self.personas or persona in self.personas


class TriggerSet:
    """The rules' triggers, grouped by what they fire on."""

    def __init__(self, rules: JourneyRules) -> None:
        compiled = [CompiledTrigger.of(trigger, rules) for trigger in rules.triggers]
        self.order: StageOrder = rules.order
        self.ids: tuple[str, ...] = tuple(trigger.id for trigger in compiled)
        self._by_event = frozenset(
            trigger.id for trigger in compiled if trigger.kind in ("exit", "high_intent")
        )
        """Triggers whose occurrences are events (not stages): their fired list can grow."""
        self.moves: dict[str, list[CompiledTrigger]] = {}
        self.dropoffs: dict[str, list[CompiledTrigger]] = {}
        for trigger in compiled:
            if trigger.kind in ("stage_move", "dropoff"):
                by_stage = self.moves if trigger.kind == "stage_move" else self.dropoffs
                by_stage.setdefault(trigger.stage or "", []).append(trigger)
        self.exits = [trigger for trigger in compiled if trigger.kind == "exit"]
        self.high_intent = [trigger for trigger in compiled if trigger.kind == "high_intent"]
        self.longest_window = max((trigger.window for trigger in self.high_intent), default=0)

    def __bool__(self) -> bool:
        return bool(self.ids)

    # -- what happened -------------------------------------------------------------

    def on_touch(
        self, state: JourneyState, touch: TouchRef, exit_kind: str | None
    ) -> list[JsonRow]:
        """Triggers a just-folded touch fires: a move it made, its exit, a high intent."""
        rows: list[JsonRow] = []
        payload: dict[str, JsonScalar]
        stage = touch.stage
        if stage is not None and stage in self.moves and state.stage_hits.get(stage) is touch:
            is_move, from_stage = self._move_from(state, stage, touch)
            if is_move:
                for trigger in self.moves[stage]:
                    if trigger.from_stage is None or trigger.from_stage == from_stage:
                        payload = {
                            "from_stage": from_stage,
                            "to_stage": stage,
                            "event_type": touch.event_type,
                        }
                        occurrence = f"{stage}:{touch.event_id}"
                        self._fire(
                            state, trigger, stage, occurrence, touch.at, touch, payload, rows
                        )
        if exit_kind is not None:
            for trigger in self.exits:
                if not trigger.kinds or exit_kind in trigger.kinds:
                    payload = {
                        "exit_kind": exit_kind,
                        "stage": stage_at(state, (touch.at, touch.event_id), self.order),
                        "event_type": touch.event_type,
                    }
                    key = touch.event_id
                    self._fire(state, trigger, key, key, touch.at, touch, payload, rows)
        for trigger in self.high_intent:
            score = self._crossing(state, trigger, touch)
            if score is not None:
                payload = {
                    "score": score,
                    "threshold": trigger.threshold,
                    "window_seconds": trigger.window // 1_000_000,
                    "event_type": touch.event_type,
                }
                key = touch.event_id
                self._fire(state, trigger, key, key, touch.at, touch, payload, rows)
        return rows

    def on_dropoff(self, state: JourneyState, record: DropoffRecord) -> list[JsonRow]:
        """Triggers a just-judged drop-off fires (``fired_at`` = its deadline)."""
        rows: list[JsonRow] = []
        for trigger in self.dropoffs.get(record.stage, ()):
            self._fire(
                state,
                trigger,
                record.stage,
                f"{record.stage}:{record.deadline}",
                record.deadline,
                record.last_touch,
                _dropoff_payload(record),
                rows,
            )
        return rows

    def retractions(self, state: JourneyState) -> list[JsonRow]:
        """Retraction rows for fired drop-offs that progress at or before the deadline disproved."""
        rows: list[JsonRow] = []
        if not state.fired or not state.dropoffs:
            return rows
        for stage, record in state.dropoffs.items():
            if record.recovered_at is None or record.recovered_at > record.deadline:
                continue
            triggers = {trigger.id: trigger for trigger in self.dropoffs.get(stage, ())}
            for index, fired in enumerate(state.fired):
                trigger = triggers.get(fired.trigger)
                if trigger is None or fired.key != stage or fired.retracted:
                    continue
                state.fired[index] = FiredTrigger(
                    fired.trigger, fired.key, fired.at, fired.trigger_event_id, True
                )
                payload = _dropoff_payload(record)
                payload["disproved_by_progress_at"] = record.recovered_at / 1_000_000
                rows.append(
                    _row(
                        state,
                        trigger,
                        fired.trigger_event_id,
                        record.deadline,
                        stage,
                        record.last_touch,
                        payload,
                        retraction=True,
                    )
                )
        return rows

    def unmoved(self, state: JourneyState, moves: Collection[str]) -> list[JsonRow]:
        """Retraction rows for fired stage moves that are no moves any more.

        A late event showed the buyer had been past the stage before they entered it (the
        ``stage_transitions`` row is deleted too). ``moves``: the stages that are moves now.
        """
        rows: list[JsonRow] = []
        for index, fired in enumerate(state.fired):
            if fired.retracted or fired.key in moves:
                continue
            trigger = next(
                (t for t in self.moves.get(fired.key, ()) if t.id == fired.trigger), None
            )
            if trigger is None:
                continue
            state.fired[index] = FiredTrigger(
                fired.trigger, fired.key, fired.at, fired.trigger_event_id, True
            )
            hit = state.stage_hits.get(fired.key)
            touch = hit if hit is not None and hit.at == fired.at else None
            payload = {"to_stage": fired.key, "retracted": "the buyer had been past it before"}
            rows.append(
                _row(
                    state,
                    trigger,
                    fired.trigger_event_id,
                    fired.at,
                    fired.key,
                    touch,
                    payload,
                    retraction=True,
                )
            )
        return rows

    def forget(self, state: JourneyState, cutoff: int) -> None:
        """Drop fired occurrences no check can need any more, so ``state.fired`` stays small.

        An exit or a high-intent crossing is keyed by its event, and an event before
        ``cutoff`` (the watermark minus the dedup window) is never folded again (it is
        ``too_late``), so its entry is only needed for the cooldown: each trigger's latest
        firing is kept. Moves and drop-offs are keyed by stage (a few per buyer) and kept:
        they stop a stage from firing twice, and a drop-off's entry is what a retraction
        finds. Entries of triggers no longer in the rules go once they are old.
        """
        fired = state.fired
        known = set(self.ids)
        latest: dict[str, int] = {}
        for entry in fired:
            if entry.at > latest.get(entry.trigger, -1):
                latest[entry.trigger] = entry.at
        kept = [
            entry
            for entry in fired
            if entry.at >= cutoff
            or entry.at == latest[entry.trigger]
            or (entry.trigger in known and entry.trigger not in self._by_event)
        ]
        if len(kept) != len(fired):
            state.fired = kept

    # -- helpers -------------------------------------------------------------------

    def _move_from(
        self, state: JourneyState, stage: str, touch: TouchRef
    ) -> tuple[bool, str | None]:
        """Whether ``touch`` (the first hit of ``stage``) is a move, and the stage it came
        from (None: the buyer's first move). No move: the buyer had been past ``stage``."""
        key = (touch.at, touch.event_id)
        hits = state.stage_hits
        names = self.order.names
        rank = self.order.rank[stage]
        for higher in names[rank + 1 :]:
            hit = hits.get(higher)
            if hit is not None and (hit.at, hit.event_id) <= key:
                return False, None
        for lower in reversed(names[:rank]):
            hit = hits.get(lower)
            if hit is not None and (hit.at, hit.event_id) < key:
                return True, lower
        return True, None

    def _crossing(
        self, state: JourneyState, trigger: CompiledTrigger, touch: TouchRef
    ) -> int | None:
        """The intent score at ``touch`` if it crosses the trigger's threshold there.

        Only touches at or after the buyer's entry into the trigger's stage count: while
        ``touch`` finds the buyer there, every touch from their first hit of the stage
        up to it does too (nothing higher came between, or ``touch`` would be past it).
        """
        key = (touch.at, touch.event_id)
        stage = trigger.stage
        if stage is None or stage_at(state, key, self.order) != stage:
            return None
        entry = state.stage_hits[stage]
        recent = state.recent
        first = bisect.bisect_left(recent, (entry.at, entry.event_id), key=_touch_key)
        index = bisect.bisect_left(recent, key, key=_touch_key)
        score = _score(recent, first, index, trigger.window)
        if score < trigger.threshold:
            return None
        if index > first and _score(recent, first, index - 1, trigger.window) >= trigger.threshold:
            return None  # already at the threshold at the touch before: no crossing here
        return score

    def _fire(
        self,
        state: JourneyState,
        trigger: CompiledTrigger,
        key: str,
        occurrence: str,
        at: int,
        touch: TouchRef | None,
        payload: Mapping[str, JsonScalar],
        rows: list[JsonRow],
    ) -> None:
        last: int | None = None
        for fired in state.fired:
            if fired.trigger == trigger.id and not fired.retracted:
                if fired.key == key:
                    return  # this occurrence fired before
                if last is None or fired.at > last:
                    last = fired.at
        persona = None if state.persona is None else state.persona.value
        if not trigger.matches(touch, persona):
            return
        if trigger.cooldown is not None and last is not None and at < last + trigger.cooldown:
            return
        event_id = trigger_event_id(trigger.id, state.buyer_id, occurrence)
        state.fired.append(FiredTrigger(trigger.id, key, at, event_id))
        stage = trigger.stage
        if trigger.kind == "exit":  # the stage the buyer was in at the exit
            at_exit = payload.get("stage")
            stage = at_exit if isinstance(at_exit, str) else None
        rows.append(_row(state, trigger, event_id, at, stage, touch, payload))


def _touch_key(touch: TouchRef) -> tuple[int, str]:
    return (touch.at, touch.event_id)


def _score(recent: Sequence[TouchRef], first: int, index: int, window: int) -> int:
    """Touches from ``recent[first]`` on in the window of event time ending at
    ``recent[index]`` (itself included)."""
    start = bisect.bisect_right(recent, recent[index].at - window, first, index, key=_at)
    return index - start + 1


def _at(touch: TouchRef) -> int:
    return touch.at


def _dropoff_payload(record: DropoffRecord) -> dict[str, JsonScalar]:
    last = record.last_touch
    return {
        "stage": record.stage,
        "entered_at": record.entered_at / 1_000_000,
        "deadline": record.deadline / 1_000_000,
        "last_touch_at": None if last is None else last.at / 1_000_000,
        "last_touch_event_type": None if last is None else last.event_type,
    }


def _row(
    state: JourneyState,
    trigger: CompiledTrigger,
    event_id: str,
    at: int,
    stage: str | None,
    touch: TouchRef | None,
    payload: Mapping[str, JsonScalar],
    *,
    retraction: bool = False,
) -> JsonRow:
    return {
        "trigger_event_id": event_id,
        "trigger_id": trigger.id,
        "kind": trigger.kind,
        "buyer_id": state.buyer_id,
        "fired_at": at / 1_000_000,
        "stage": stage,
        "event_id": None if touch is None else touch.event_id,
        "channel": None if touch is None else touch.channel,
        "campaign": None if touch is None else touch.campaign,
        "persona": None if state.persona is None else state.persona.value,
        "payload": _encode(payload).decode(),
        "is_retraction": int(retraction),
        "version": state.version,
    }
