"""Load a journey rules file and classify touchpoints with it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from schemas.enums import ExitKind
from schemas.errors import RulesError
from schemas.rules import Condition, JourneyRules, Rule
from schemas.touchpoint import PropertyValue, Touchpoint

__all__ = ["UNCLASSIFIED", "Classification", "Classifier", "default_rules", "load_rules"]


@dataclass(frozen=True, slots=True)
class Classification:
    """What one rule says about one event. ``rule_id`` is None when no rule matched."""

    rule_id: str | None
    stage: str | None
    exit: ExitKind | None
    purchase: bool

    @property
    def classified(self) -> bool:
        return self.rule_id is not None


UNCLASSIFIED: Final = Classification(rule_id=None, stage=None, exit=None, purchase=False)


def load_rules(path: Path | None = None) -> JourneyRules:
    """Read and validate a rules file (TOML); the shipped default when ``path`` is None."""
    if path is None:
        text = resources.files("processors").joinpath("default_rules.toml").read_text("utf-8")
        where = "the default rules"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from exc
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{where} is not valid TOML: {exc}") from exc
    try:
        return JourneyRules.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise RulesError(
            f"{where}: {loc + ': ' if loc else ''}{message} ({exc.error_count()} problem(s))"
        ) from exc


def default_rules() -> JourneyRules:
    return load_rules(None)


def _matches(condition: Condition, properties: dict[str, PropertyValue]) -> bool:
    present = condition.property in properties and properties[condition.property] is not None
    if condition.op == "exists":
        return present
    if condition.op == "missing":
        return not present
    if not present:
        return False
    actual = properties[condition.property]
    expected = condition.value
    match condition.op:
        case "eq":
            return actual == expected
        case "ne":
            return actual != expected
        case "in":
            return isinstance(expected, list) and actual in expected
        case "not_in":
            return isinstance(expected, list) and actual not in expected
    # The rules model gives these ops a number; a property that is not one never matches.
    if not isinstance(actual, int | float) or isinstance(actual, bool):
        return False
    if not isinstance(expected, int | float):
        return False
    match condition.op:
        case "gt":
            return actual > expected
        case "gte":
            return actual >= expected
        case "lt":
            return actual < expected
        case _:
            return actual <= expected


class Classifier:
    """Maps a touchpoint to its :class:`Classification`; first matching rule wins."""

    def __init__(self, rules: JourneyRules) -> None:
        self.rules = rules
        self._by_key: dict[tuple[str, str], list[tuple[Rule, Classification]]] = {}
        for index, rule in enumerate(rules.rules):
            rule_id = rule.id or f"{rule.channel.value}.{rule.event_type}#{index}"
            result = Classification(rule_id, rule.stage, rule.exit, rule.purchase)
            self._by_key.setdefault((rule.channel.value, rule.event_type), []).append(
                (rule, result)
            )

    def classify(self, touchpoint: Touchpoint) -> Classification:
        return self.classify_fields(
            touchpoint.channel, touchpoint.event_type, touchpoint.properties
        )

    def classify_fields(
        self, channel: str, event_type: str, properties: dict[str, PropertyValue]
    ) -> Classification:
        """:meth:`classify` on plain fields (the hot path's :class:`~schemas.events.Event`)."""
        candidates = self._by_key.get((channel, event_type))
        if not candidates:
            return UNCLASSIFIED
        for rule, result in candidates:
            if not rule.when:
                return result
            if all(_matches(condition, properties) for condition in rule.when):
                return result
        return UNCLASSIFIED
