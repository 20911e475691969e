"""Classification is data: the shipped rules and user-supplied rules files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processors.classify import Classifier, default_rules, load_rules
from schemas.enums import EVENT_TYPES, ExitKind, Stage
from schemas.errors import RulesError
from schemas.touchpoint import Touchpoint
from tests.factories import event


def touchpoint(event_type: str, **fields: object) -> Touchpoint:
    return Touchpoint.model_validate(
        event(event_type, at=datetime(2026, 1, 1, tzinfo=UTC), **fields)
    )


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(default_rules())


def test_the_default_rules_cover_every_known_event_type(classifier: Classifier) -> None:
    properties = {"csat": {"score": 4}, "nps": {"score": 9}}
    for channel, event_types in EVENT_TYPES.items():
        for event_type in event_types:
            result = classifier.classify(
                touchpoint(
                    event_type, channel=channel.value, properties=properties.get(event_type, {})
                )
            )
            assert result.classified, f"{channel.value}/{event_type} has no rule"


@pytest.mark.parametrize(
    ("event_type", "properties", "stage", "exit_kind", "purchase"),
    [
        ("email_sent", {}, Stage.PRE_AWARENESS, None, False),
        ("ad_impression", {}, Stage.AWARENESS, None, False),
        ("email_click", {}, Stage.CONSIDERATION, None, False),
        ("purchase", {"order_number": 1}, Stage.PURCHASE, None, True),
        ("purchase", {}, Stage.PURCHASE, None, True),
        ("purchase", {"order_number": 3}, Stage.RETENTION, None, True),
        ("review", {"rating": 5}, Stage.ADVOCACY, None, False),
        ("review", {"rating": 2}, None, None, False),
        ("referral", {}, Stage.ADVOCACY, None, False),
        ("email_unsubscribe", {}, None, ExitKind.UNSUBSCRIBE, False),
        ("sms_opt_out", {}, None, ExitKind.OPT_OUT, False),
        ("subscription_cancelled", {}, None, ExitKind.CANCELLATION, False),
        ("refund", {}, None, ExitKind.REFUND, False),
        ("ticket_opened", {}, None, None, False),
    ],
)
def test_default_classification(
    classifier: Classifier,
    event_type: str,
    properties: dict[str, object],
    stage: Stage | None,
    exit_kind: ExitKind | None,
    purchase: bool,
) -> None:
    result = classifier.classify(touchpoint(event_type, properties=properties))
    assert (result.stage, result.exit, result.purchase) == (stage, exit_kind, purchase)


def test_an_event_no_rule_covers_is_unclassified(classifier: Classifier) -> None:
    result = classifier.classify(touchpoint("wishlist_add"))
    assert not result.classified
    assert result.rule_id is None


def test_default_timeouts() -> None:
    timeouts = default_rules().timeouts
    assert timeouts[Stage.PRE_AWARENESS] == timedelta(days=14)
    assert Stage.RETENTION not in timeouts


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_a_custom_rules_file_replaces_the_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version = 1
[timeouts]
awareness = "36h"
[[rule]]
id = "vip-visit"
channel = "web"
event_type = "page_view"
when = [{ property = "segment", op = "in", value = ["vip", "gold"] }]
stage = "consideration"
[[rule]]
channel = "web"
event_type = "page_view"
stage = "awareness"
""",
    )
    rules = load_rules(path)
    assert rules.timeouts[Stage.AWARENESS] == timedelta(hours=36)
    classifier = Classifier(rules)
    vip = classifier.classify(touchpoint("page_view", properties={"segment": "gold"}))
    assert (vip.rule_id, vip.stage) == ("vip-visit", Stage.CONSIDERATION)
    other = classifier.classify(touchpoint("page_view", properties={"segment": "new"}))
    assert other.stage == Stage.AWARENESS
    assert other.rule_id == "web.page_view#1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n[[rule", "not valid TOML"),
        (
            'version = 1\n[[rule]]\nchannel = "web"\nevent_type = "x"\nstage = "delight"',
            "rule 1: stage 'delight' is not one of the stages",
        ),
        ('version = 1\n[[rule]]\nchannel = "fax"\nevent_type = "x"', "rule.0.channel"),
        (
            'version = 1\n[[rule]]\nchannel = "web"\nevent_type = "x"\n'
            'when = [{ property = "n", op = "gte", value = "two" }]',
            "needs a number",
        ),
        (
            'version = 1\n[timeouts]\nawareness = "-1d"\n'
            '[[rule]]\nchannel = "web"\nevent_type = "x"',
            "timeouts",
        ),
        ("version = 1", "rule"),
        (
            'version = 1\n[[rule]]\nid = "a"\nchannel = "web"\nevent_type = "x"\n'
            '[[rule]]\nid = "a"\nchannel = "web"\nevent_type = "y"',
            "used twice",
        ),
    ],
)
def test_a_broken_rules_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        load_rules(write(tmp_path, text))


def test_a_missing_rules_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.toml")
