"""A rules file may name and order its own stages; the fold ranks by that order.

The names are chosen so that their alphabetical order is not the journey order
("champion" < "customer" < "evaluation" < "lead" < "trial"): any code that sorted
stage names, or still ranked by the shipped six, gives other moves or drop-offs.
"""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.classify import Classifier, load_rules
from processors.journey_processor import JourneyProcessor
from schemas.errors import RulesError
from schemas.rules import JourneyRules
from tests.factories import event, final_rows

DAY = timedelta(days=1)
STAGES = ["lead", "evaluation", "trial", "customer", "champion"]
RULES = """
version = 1
stages = ["lead", "evaluation", "trial", "customer", "champion"]

[timeouts]
lead = "10d"
evaluation = "10d"
trial = "14d"

[[rule]]
channel = "ads"
event_type = "ad_click"
stage = "lead"

[[rule]]
channel = "web"
event_type = "demo_request"
stage = "evaluation"

[[rule]]
channel = "web"
event_type = "trial_started"
stage = "trial"

[[rule]]
channel = "web"
event_type = "purchase"
stage = "customer"
purchase = true

[[rule]]
channel = "web"
event_type = "review_written"
stage = "champion"
"""


@pytest.fixture
def rules(tmp_path: Path) -> JourneyRules:
    path = tmp_path / "rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return load_rules(path)


def feed(rules: JourneyRules, *records: dict[str, Any]) -> dict[str, Any]:
    processor = JourneyProcessor(rules, allowed_lateness=timedelta(hours=2), dedup_window=7 * DAY)
    for index, record in enumerate(records):
        processor.process_raw(json.dumps(record), source="test", position=str(index))
    return final_rows(processor.flush().tables())


def test_the_rules_order_ranks_the_stages(rules: JourneyRules) -> None:
    assert rules.stages == tuple(STAGES)
    assert rules.order.rank["trial"] > rules.order.rank["evaluation"]
    assert rules.purchase_stage == "customer"
    classification = Classifier(rules).classify_fields("web", "demo_request", {})
    assert classification.stage == "evaluation"


def test_moves_and_drop_offs_follow_the_custom_order(rules: JourneyRules) -> None:
    rows = feed(
        rules,
        event("ad_click", at=0 * DAY, buyer="a"),
        event("demo_request", at=2 * DAY, buyer="a"),
        event("ad_click", at=0 * DAY, buyer="b"),
        event("demo_request", at=1 * DAY, buyer="b"),
        event("trial_started", at=3 * DAY, buyer="b"),
        event("purchase", at=5 * DAY, buyer="b"),
        event("review_written", at=9 * DAY, buyer="b"),
        event("page_view", at=40 * DAY, buyer="clock", channel="web"),  # the watermark
    )
    a, b = rows["journey_state"][("a",)], rows["journey_state"][("b",)]
    assert (a.furthest_stage, a.dropoff_stage) == ("evaluation", "evaluation")
    assert (b.furthest_stage, b.dropoff_stage) == ("champion", None)
    assert b.purchases == 1
    moves = {
        (row.from_stage, row.to_stage)
        for key, row in rows["stage_transitions"].items()
        if key[0] == "b"
    }
    assert moves == {
        (None, "lead"),
        ("lead", "evaluation"),
        ("evaluation", "trial"),
        ("trial", "customer"),
        ("customer", "champion"),
    }
    assert set(b.stage_entered_at) == set(STAGES)
    assert {key: row.stage for key, row in rows["dropoffs"].items()} == {
        ("a", "evaluation"): "evaluation"
    }


def test_skipping_a_custom_stage_reaches_it_without_a_move_of_its_own(
    rules: JourneyRules,
) -> None:
    rows = feed(
        rules,
        event("ad_click", at=0 * DAY),
        event("trial_started", at=1 * DAY),
    )
    moves = {(row.from_stage, row.to_stage) for row in rows["stage_transitions"].values()}
    assert moves == {(None, "lead"), ("lead", "trial")}
    assert set(rows["journey_state"][("b1",)].stage_entered_at) == {"lead", "evaluation", "trial"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": ["lead", "lead"]}, "lead listed more than once"),
        ({"stages": ["Lead"]}, "stages.0"),
        ({"timeouts": {"onboarding": "3d"}}, "timeouts.onboarding: not one of the stages"),
        (
            {"rule": [{"channel": "web", "event_type": "x", "stage": "onboarding"}]},
            "stage 'onboarding' is not one of the stages [lead, evaluation",
        ),
    ],
)
def test_a_stage_the_rules_do_not_name_is_a_clear_error(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    document = tomllib.loads(RULES)
    document.update(change)
    if "stages" in change:
        document["timeouts"] = {}
        document["rule"] = [{"channel": "web", "event_type": "x"}]
    path = tmp_path / "rules.toml"
    path.write_text(_toml(document), encoding="utf-8")
    with pytest.raises(RulesError, match=message.replace("[", r"\[")):
        load_rules(path)


def _toml(document: dict[str, Any]) -> str:
    lines = [f"version = {document['version']}"]
    lines.append("stages = [" + ", ".join(json.dumps(s) for s in document["stages"]) + "]")
    lines.append("[timeouts]")
    lines += [f"{stage} = {json.dumps(value)}" for stage, value in document["timeouts"].items()]
    for rule in document["rule"]:
        lines.append("[[rule]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in rule.items()]
    return "\n".join(lines) + "\n"
