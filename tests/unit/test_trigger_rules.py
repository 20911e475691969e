"""Trigger rules are data: ``[[trigger]]`` entries in the journey rules file, validated."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from processors.classify import default_rules, load_rules
from schemas.errors import RulesError
from schemas.rules import JourneyRules

BASE = """
version = 1
[timeouts]
awareness = "21d"
[[rule]]
channel = "email"
event_type = "email_open"
stage = "awareness"
[[rule]]
channel = "web"
event_type = "purchase"
stage = "purchase"
purchase = true
"""


def rules_with(tmp_path: Path, triggers: str) -> JourneyRules:
    path = tmp_path / "rules.toml"
    path.write_text(BASE + triggers, encoding="utf-8")
    return load_rules(path)


def test_every_kind_of_trigger_reads_from_the_rules_file(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path,
        """
[[trigger]]
id = "nudge-awareness"
on = "dropoff"
stage = "awareness"
channel = "email"
cooldown = "7d"

[[trigger]]
id = "welcome"
on = "stage_move"
stage = "purchase"
from_stage = "awareness"
campaign = ["spring", "summer"]

[[trigger]]
id = "hot"
on = "high_intent"
threshold = 5
window = "3d"
persona = "smb_owner"

[[trigger]]
id = "winback"
on = "exit"
kinds = ["cancellation", "refund"]
""",
    )
    dropoff, move, hot, exit_ = rules.triggers
    assert (dropoff.on, dropoff.stage, dropoff.channel) == ("dropoff", "awareness", ["email"])
    assert dropoff.cooldown == timedelta(days=7)
    assert (move.from_stage, move.campaign) == ("awareness", ["spring", "summer"])
    assert (hot.threshold, hot.score_window, hot.persona) == (5, timedelta(days=3), ["smb_owner"])
    assert rules.high_intent_stage(hot) == "consideration"  # the stage below purchase
    assert exit_.kinds == ["cancellation", "refund"]


def test_rules_without_triggers_dump_as_before_so_stored_journeys_still_match() -> None:
    assert "triggers" not in default_rules().model_dump_json()
    assert default_rules().triggers == []


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ('id = "a"\non = "dropoff"\nstage = "nowhere"', "stage 'nowhere' is not one of the stages"),
        ('id = "a"\non = "dropoff"\nstage = "purchase"', "has no timeout"),
        ('id = "a"\non = "dropoff"', "needs a stage"),
        ('id = "a"\non = "stage_move"\nstage = "purchase"\nfrom_stage = "x"', "from_stage 'x'"),
        (
            'id = "a"\non = "stage_move"\nstage = "awareness"\nfrom_stage = "purchase"',
            "must be below",
        ),
        ('id = "a"\non = "high_intent"', "needs a threshold"),
        ('id = "a"\non = "high_intent"\nthreshold = 0', "greater than or equal to 1"),
        ('id = "a"\non = "exit"\nstage = "awareness"', "stage does not apply to on = 'exit'"),
        ('id = "a"\non = "exit"\nkinds = ["divorce"]', "kinds.0"),
        ('id = "a"\non = "exit"\ncooldown = "0s"', "cooldown must be positive"),
        ('id = "a"\non = "exit"\nchannel = "fax"', "channel.0"),
        ('id = "a"\non = "teleport"', "on: Input should be"),
        ('on = "exit"', "trigger.0.id: Field required"),
        ('id = "A b"\non = "exit"', "trigger.0.id"),
    ],
)
def test_a_bad_trigger_is_a_clear_error(tmp_path: Path, trigger: str, message: str) -> None:
    with pytest.raises(RulesError, match=message.replace("(", r"\(").replace(".", r"\.")):
        rules_with(tmp_path, "\n[[trigger]]\n" + trigger + "\n")


def test_trigger_ids_are_unique(tmp_path: Path) -> None:
    twice = '\n[[trigger]]\nid = "a"\non = "exit"\n'
    with pytest.raises(RulesError, match="trigger id 'a' is used twice"):
        rules_with(tmp_path, twice * 2)


def test_high_intent_needs_a_stage_when_there_is_none_below_purchase() -> None:
    data = tomllib.loads(
        """
stages = ["buy", "love"]
[[rule]]
channel = "web"
event_type = "purchase"
stage = "buy"
purchase = true
[[trigger]]
id = "hot"
on = "high_intent"
threshold = 3
"""
    )
    with pytest.raises(ValueError, match="no stage below a purchase stage"):
        JourneyRules.model_validate(data)
    data["trigger"][0]["stage"] = "buy"
    assert JourneyRules.model_validate(data).triggers[0].stage == "buy"
