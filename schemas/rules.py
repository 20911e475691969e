"""The journey rules file: how events map to stages and exits, and when a stall is a drop-off.

Classification is data: the shipped default (``processors/default_rules.toml``)
can be replaced by any file that validates against :class:`JourneyRules`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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

    def above(self, stage: str) -> tuple[str, ...]:
        """The stages ranked above ``stage``, in order."""
        return self.names[self.rank[stage] + 1 :]

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


class JourneyRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    stages: tuple[StageName, ...] = Field(default=DEFAULT_STAGES, min_length=1, max_length=64)
    """The journey's stages, in order (default: the six of :class:`schemas.enums.Stage`)."""
    timeouts: dict[StageName, Duration] = Field(default_factory=dict)
    """Per-stage drop-off timeout (event time). A stage without one never drops."""
    rules: list[Rule] = Field(alias="rule", min_length=1)

    @cached_property
    def order(self) -> StageOrder:
        return StageOrder(self.stages)

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
        return self


def _listed(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]"
