"""The journey rules file: how events map to stages and exits, and when a stall is a drop-off.

Classification is data: the shipped default (``processors/default_rules.toml``)
can be replaced by any file that validates against :class:`JourneyRules`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.duration import Duration
from schemas.enums import Channel, ExitKind, Stage

__all__ = ["Condition", "JourneyRules", "Rule"]

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
    stage: Stage | None = None
    exit: ExitKind | None = None
    purchase: bool = False
    """Counts as an order: adds to purchases and revenue."""


class JourneyRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    timeouts: dict[Stage, Duration] = Field(default_factory=dict)
    """Per-stage drop-off timeout (event time). A stage without one never drops."""
    rules: list[Rule] = Field(alias="rule", min_length=1)

    @model_validator(mode="after")
    def _check(self) -> JourneyRules:
        for stage, timeout in self.timeouts.items():
            if timeout <= timedelta(0):
                raise ValueError(f"timeouts.{stage.value} must be positive")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id is not None:
                if rule.id in seen:
                    raise ValueError(f"rule id {rule.id!r} is used twice")
                seen.add(rule.id)
        return self
