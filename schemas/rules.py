"""The journey rules file: how events map to stages and exits, and when a stall is a drop-off.

Classification is data: the shipped default (``processors/default_rules.toml``)
can be replaced by any file that validates against :class:`JourneyRules`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from schemas.duration import Duration
from schemas.enums import STAGES, Channel, ExitKind

__all__ = [
    "DEFAULT_ORDER",
    "DEFAULT_STAGES",
    "Condition",
    "JourneyRules",
    "Rule",
    "StageName",
    "StageOrder",
    "Trigger",
    "TriggerKind",
]

StageName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
"""A stage's name: lower case letters, digits and underscores, at most 40."""
DEFAULT_STAGES: Final = tuple(stage.value for stage in STAGES)
"""The shipped stages, in journey order (:class:`schemas.enums.Stage`)."""


@dataclass(frozen=True)
class StageOrder:
    """The stages of one rules file, in journey order: what ranks above what."""

    names: tuple[str, ...]
    rank: Mapping[str, int] = field(init=False, repr=False, compare=False)
    descending: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"stages must be distinct and at least one: {self.names}")
        object.__setattr__(self, "rank", {name: index for index, name in enumerate(self.names)})
        object.__setattr__(self, "descending", tuple(reversed(self.names)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.rank

    @property
    def first(self) -> str:
        return self.names[0]

    @property
    def last(self) -> str:
        return self.names[-1]

    def sql_array(self) -> str:
        """The names as a ClickHouse array literal (safe: names match :data:`StageName`)."""
        return "[" + ", ".join(f"'{name}'" for name in self.names) + "]"


DEFAULT_ORDER: Final = StageOrder(DEFAULT_STAGES)

Scalar = str | int | float | bool


class Condition(BaseModel):
    """A test on one property of the event, e.g. ``order_number >= 2``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    property: Annotated[str, StringConstraints(min_length=1)]
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing"] = "eq"
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _check_value(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and (
            not isinstance(self.value, int | float) or isinstance(self.value, bool)
        ):
            raise ValueError(f"op {self.op!r} needs a number value")
        if self.op in ("eq", "ne") and (self.value is None or isinstance(self.value, list)):
            raise ValueError(f"op {self.op!r} needs a single value")
        return self


class Rule(BaseModel):
    """``channel`` + ``event_type`` (+ every ``when`` condition) → stage and/or exit.

    A rule with neither ``stage`` nor ``exit`` classifies the event as a plain
    touch: counted, but no move in the journey.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = None
    channel: Channel
    event_type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    when: list[Condition] = Field(default_factory=list)
    stage: StageName | None = None
    """One of the file's ``stages``."""
    exit: ExitKind | None = None
    purchase: bool = False
    """Counts as an order: adds to purchases and revenue."""


TriggerKind = Literal["dropoff", "stage_move", "high_intent", "exit"]
"""What a trigger fires on (see :class:`Trigger`)."""
DEFAULT_HIGH_INTENT_WINDOW: Final = timedelta(days=7)


def _as_list(value: object) -> object:
    """A single filter value (``channel = "email"``) is a list of one."""
    return [value] if isinstance(value, str) else value


class Trigger(BaseModel):
    """A real-time trigger: fire a row on ``journey.triggers`` when a buyer does something.

    ``on`` is what it fires on:

    - ``dropoff`` — the buyer dropped off at ``stage`` (fires when the drop-off is judged,
      i.e. once the watermark passed its deadline; ``fired_at`` is the deadline). If a late
      event later shows progress at or before the deadline, a retraction row follows.
    - ``stage_move`` — the buyer moved into ``stage`` (optionally only from ``from_stage``,
      the move before it); ``fired_at`` is the time of the event that moved them. If a
      late event shows it was no move (the buyer had been past the stage before), a
      retraction row follows, as for the ``stage_transitions`` row.
    - ``high_intent`` — the buyer's *intent score* crossed ``threshold``. At a touch that
      finds the buyer with ``stage`` as their furthest stage (default: the stage just
      below the purchase stage, ``consideration`` in the shipped rules), the score is
      the number of their touches (any channel, any event, that touch included) in the
      ``window`` of event time ending at it (default 7 days, at most the dedup window),
      counting only touches since they entered the stage. It *crosses* at a touch whose
      score reaches ``threshold`` when the touch before it (in the stage) scored lower.
      Event time only, never the clock.
    - ``exit`` — the buyer exited with one of ``kinds`` (default: any kind).

    Filters, all optional, all must match: ``channel``, ``campaign`` (the channel and
    campaign of the touch that caused it: the move's event, the last touch before a
    drop-off's deadline, the exit, the crossing touch) and ``persona`` (the buyer's
    latest persona when it fires); each a value or a list of values.

    ``cooldown``: after a firing, the same trigger does not fire again for the same
    buyer for this long (event time; an occurrence earlier than the last firing is held
    back too; a retracted firing does not count). A trigger fires at most once per
    occurrence, also across restarts and replays: what fired is kept in the buyer's
    journey state.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    on: TriggerKind
    stage: StageName | None = None
    from_stage: StageName | None = None
    threshold: Annotated[int, Field(ge=1)] | None = None
    window: Duration | None = None
    """``high_intent`` only: the score's window (default 7 days)."""
    kinds: list[ExitKind] = Field(default_factory=list)
    """``exit`` only: the exit kinds it fires on (empty: any)."""
    channel: Annotated[list[Channel], BeforeValidator(_as_list)] = Field(default_factory=list)
    campaign: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)
    persona: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)
    cooldown: Duration | None = None

    @property
    def score_window(self) -> timedelta:
        return self.window if self.window is not None else DEFAULT_HIGH_INTENT_WINDOW

    @model_validator(mode="after")
    def _check_fields(self) -> Trigger:
        allowed = {
            "dropoff": {"stage"},
            "stage_move": {"stage", "from_stage"},
            "high_intent": {"stage", "threshold", "window"},
            "exit": {"kinds"},
        }[self.on]
        for name in ("stage", "from_stage", "threshold", "window", "kinds"):
            if name not in allowed and getattr(self, name):
                raise ValueError(f"trigger {self.id}: {name} does not apply to on = {self.on!r}")
        if self.on in ("dropoff", "stage_move") and self.stage is None:
            raise ValueError(f"trigger {self.id}: on = {self.on!r} needs a stage")
        if self.on == "high_intent":
            if self.threshold is None:
                raise ValueError(f"trigger {self.id}: on = 'high_intent' needs a threshold")
            if self.score_window <= timedelta(0):
                raise ValueError(f"trigger {self.id}: window must be positive")
        if self.cooldown is not None and self.cooldown <= timedelta(0):
            raise ValueError(f"trigger {self.id}: cooldown must be positive")
        return self


class JourneyRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    stages: tuple[StageName, ...] = Field(default=DEFAULT_STAGES, min_length=1, max_length=64)
    """The journey's stages, in order (default: the six of :class:`schemas.enums.Stage`)."""
    timeouts: dict[StageName, Duration] = Field(default_factory=dict)
    """Per-stage drop-off timeout (event time). A stage without one never drops."""
    rules: list[Rule] = Field(alias="rule", min_length=1)
    triggers: list[Trigger] = Field(default_factory=list, alias="trigger")
    """Real-time triggers (``[[trigger]]``), evaluated by the processor."""

    @cached_property
    def order(self) -> StageOrder:
        return StageOrder(self.stages)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Rules without triggers dump as they did before triggers existed: the dump is
        # hashed into run ids and the stored journeys' rules check.
        data: dict[str, Any] = handler(self)
        if not self.triggers:
            data.pop("triggers", None)
        return data

    def high_intent_stage(self, trigger: Trigger) -> str | None:
        """The stage a ``high_intent`` trigger scores in: its own, or the one below purchase."""
        if trigger.stage is not None:
            return trigger.stage
        purchase = self.purchase_stage
        if purchase is None or self.order.rank[purchase] == 0:
            return None
        return self.order.names[self.order.rank[purchase] - 1]

    @property
    def purchase_stage(self) -> str | None:
        """The lowest stage a purchase rule classifies into (None: no purchase rule has one)."""
        staged = [rule.stage for rule in self.rules if rule.purchase and rule.stage is not None]
        return min(staged, key=self.order.rank.__getitem__, default=None)

    @model_validator(mode="after")
    def _check(self) -> JourneyRules:
        if len(set(self.stages)) != len(self.stages):
            repeated = sorted({name for name in self.stages if self.stages.count(name) > 1})
            raise ValueError(f"stages: {', '.join(repeated)} listed more than once")
        known = set(self.stages)
        for stage, timeout in self.timeouts.items():
            if stage not in known:
                raise ValueError(f"timeouts.{stage}: not one of the stages {_listed(self.stages)}")
            if timeout <= timedelta(0):
                raise ValueError(f"timeouts.{stage} must be positive")
        for number, rule in enumerate(self.rules, 1):
            if rule.stage is not None and rule.stage not in known:
                raise ValueError(
                    f"rule {rule.id or number}: stage {rule.stage!r} is not one of the stages "
                    f"{_listed(self.stages)} (name and order your own with a top-level "
                    "stages = [...] list)"
                )
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id is not None:
                if rule.id in seen:
                    raise ValueError(f"rule id {rule.id!r} is used twice")
                seen.add(rule.id)
        self._check_triggers(known)
        return self

    def _check_triggers(self, known: set[str]) -> None:
        ids: set[str] = set()
        for trigger in self.triggers:
            if trigger.id in ids:
                raise ValueError(f"trigger id {trigger.id!r} is used twice")
            ids.add(trigger.id)
            for name in ("stage", "from_stage"):
                stage = getattr(trigger, name)
                if stage is not None and stage not in known:
                    raise ValueError(
                        f"trigger {trigger.id}: {name} {stage!r} is not one of the stages "
                        f"{_listed(self.stages)}"
                    )
            if trigger.on == "dropoff" and trigger.stage not in self.timeouts:
                raise ValueError(
                    f"trigger {trigger.id}: stage {trigger.stage!r} has no timeout, so no one "
                    "ever drops off there (add it to [timeouts])"
                )
            if (
                trigger.on == "stage_move"
                and trigger.from_stage is not None
                and trigger.stage is not None
                and self.order.rank[trigger.from_stage] >= self.order.rank[trigger.stage]
            ):
                raise ValueError(
                    f"trigger {trigger.id}: from_stage {trigger.from_stage!r} must be below "
                    f"stage {trigger.stage!r} (a move only goes up)"
                )
            if trigger.on == "high_intent" and self.high_intent_stage(trigger) is None:
                raise ValueError(
                    f"trigger {trigger.id}: no stage given and no stage below a purchase stage "
                    "to default to: set stage"
                )


def _listed(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]"
