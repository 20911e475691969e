"""A rules file that names and orders its own stages, end to end through the CLI.

Five stages whose alphabetical order ("champion" < "customer" < "evaluation" < "lead" <
"trial") is not the journey order: `touchpoint run` stores them (the stage columns are
strings since migration 0008) and `touchpoint report`, terminal and HTML, lists every
stage in the rules' order, with the rules' own purchase stage (customer), high-intent
stage (trial, the one below it) and advocates (champion, the last). A KPI target naming a
stage the rules do not have, and a report by rules other than the data's, are clear errors.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sinks import analysis, queries
from tests.factories import event
from touchpoint.cli import main

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)
STAGES = ["lead", "evaluation", "trial", "customer", "champion"]
RULES = """
version = 1
stages = ["lead", "evaluation", "trial", "customer", "champion"]

[timeouts]
lead = "14d"
evaluation = "21d"
trial = "30d"

[[rule]]
channel = "email"
event_type = "email_sent"
stage = "lead"

[[rule]]
channel = "email"
event_type = "email_click"
stage = "evaluation"

[[rule]]
channel = "web"
event_type = "page_view"
stage = "evaluation"

[[rule]]
channel = "web"
event_type = "signup"
stage = "trial"

[[rule]]
channel = "web"
event_type = "purchase"
stage = "customer"
purchase = true

[[rule]]
channel = "web"
event_type = "referral"
stage = "champion"

[[rule]]
channel = "email"
event_type = "email_unsubscribe"
exit = "unsubscribe"
"""
SMB = {"persona": "smb_owner"}


def journeys() -> list[dict[str, Any]]:
    """ana goes all the way; ben stalls in evaluation, cy as a lead; dee starts in evaluation,
    unsubscribes in trial and stalls there; eve skips evaluation and is in trial now; clock's
    email on day 60 moves the watermark past everyone's deadline but eve's."""
    return [
        event("email_sent", at=0 * DAY, buyer="ana", properties=SMB),
        event("email_click", at=1 * DAY, buyer="ana"),
        event("signup", at=2 * DAY, buyer="ana"),
        event("purchase", at=3 * DAY, buyer="ana", revenue="120.00", currency="USD"),
        event("referral", at=5 * DAY, buyer="ana", properties={"referred": "colleague"}),
        event("email_sent", at=0 * DAY, buyer="ben", properties=SMB),
        event("email_click", at=2 * DAY, buyer="ben"),
        event("email_sent", at=0 * DAY, buyer="cy"),
        event("page_view", at=1 * DAY, buyer="dee", properties={"url": "/pricing"}),
        event("signup", at=3 * DAY, buyer="dee"),
        event("email_unsubscribe", at=4 * DAY, buyer="dee"),
        event("email_sent", at=50 * DAY, buyer="eve"),
        event("signup", at=51 * DAY, buyer="eve"),
        event("page_view", at=52 * DAY, buyer="eve", properties={"url": "/docs"}),
        event("email_sent", at=60 * DAY, buyer="clock"),
    ]


@pytest.fixture
def loaded(
    tmp_path: Path,
    chdb_url: str,
    clickhouse_client: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """A fresh database loaded by `touchpoint run --rules` with the journeys above."""
    for key in list(os.environ):
        if key.startswith("TOUCHPOINT_"):
            monkeypatch.delenv(key)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in journeys()), encoding="utf-8")
    database = f"stages_{uuid.uuid4().hex[:12]}"
    base = ["--clickhouse-url", chdb_url, "--database", database]

    def touchpoint(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*base, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = touchpoint("run", "--input", str(events), "--rules", str(rules))
    assert code == 0, err
    yield {
        "database": database,
        "rules": rules,
        "tmp": tmp_path,
        "touchpoint": touchpoint,
        "run_output": out,
    }
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def table_rows(output: str, title: str) -> list[list[str]]:
    """The cells of the terminal table whose title starts with ``title``."""
    block = next(b for b in output.split("\n\n") if b.startswith(title))
    lines = block.splitlines()
    dashes = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and "-" in line)
    return [line.split() for line in lines[dashes + 1 :] if line != "(no rows)"]


def test_the_stored_journeys_carry_the_rules_own_stage_names_in_their_order(
    loaded: dict[str, Any], clickhouse_client: Any
) -> None:
    from processors.classify import load_rules

    database = loaded["database"]
    order = load_rules(loaded["rules"]).order
    funnel = analysis.funnel(clickhouse_client, database, stages=order)
    assert [(r.stage, r.reached, r.moved_on, r.dropped) for r in funnel] == [
        ("lead", 6, 4, 1),  # cy stalled
        ("evaluation", 4, 3, 1),  # dee entered here, eve jumped over it; ben stalled
        ("trial", 3, 1, 1),  # dee stalled (unsubscribed too); eve is inside her timeout
        ("customer", 1, 1, 0),
        ("champion", 1, 0, 0),
    ]
    assert [r.is_last for r in funnel] == [False, False, False, False, True]
    assert funnel[-1].conversion_pct is None
    flow = analysis.transition_flow(clickhouse_client, database, stages=order)
    assert [(f.from_stage, f.to_stage, f.buyers) for f in flow] == [
        ("(entry)", "lead", 5),
        ("(entry)", "evaluation", 1),
        ("lead", "evaluation", 2),
        ("evaluation", "trial", 2),
        ("lead", "trial", 1),
        ("trial", "customer", 1),
        ("customer", "champion", 1),
    ]
    drops = queries.dropoffs_by_stage_channel(clickhouse_client, database, stages=order)
    assert [(d.stage, d.channel, d.buyers) for d in drops] == [
        ("lead", "email", 1),
        ("evaluation", "email", 1),
        ("trial", "email", 1),
    ]
    exits = queries.exits_by_stage_channel(clickhouse_client, database, stages=order)
    assert [(e.stage, e.kind, e.channel, e.exits) for e in exits] == [
        ("trial", "unsubscribe", "email", 1)
    ]
    intent = analysis.high_intent(
        clickhouse_client, database, stages=order, purchase_stage="customer"
    )
    assert [b.buyer_id for b in intent] == ["eve"]
    stored = clickhouse_client.query(
        f"SELECT buyer_id, furthest_stage, dropoff_stage FROM {database}.journey_state FINAL "
        "ORDER BY buyer_id"
    ).result_rows
    assert [tuple(row) for row in stored] == [
        ("ana", "champion", None),
        ("ben", "evaluation", "evaluation"),
        ("clock", "lead", None),
        ("cy", "lead", "lead"),
        ("dee", "trial", "trial"),
        ("eve", "trial", None),
    ]
    # The brief report `touchpoint run` prints follows the rules too.
    assert [row[0] for row in table_rows(loaded["run_output"], "Where do customers")] == STAGES


def test_the_report_terminal_and_html_lists_the_stages_in_the_rules_order(
    loaded: dict[str, Any],
) -> None:
    touchpoint, rules, html = loaded["touchpoint"], loaded["rules"], loaded["tmp"] / "r.html"
    config = loaded["tmp"] / "report.toml"
    config.write_text("[targets]\nconversion_pct = { lead = 60, trial = 40 }\n", "utf-8")
    code, out, err = touchpoint(
        "report", "--rules", str(rules), "--config", str(config), "--html", str(html)
    )
    assert code == 0, err

    funnel = table_rows(out, "Where do customers drop off?")
    assert [row[:5] for row in funnel] == [
        ["lead", "6", "4", "4", "1"],
        ["evaluation", "4", "3", "3", "1"],
        ["trial", "3", "1", "1", "1"],
        ["customer", "1", "1", "1", "0"],
        ["champion", "1", "0", "0", "0"],
    ]
    assert [(row[0], row[1]) for row in table_rows(out, "Drop-offs by stage")] == [
        ("lead", "1"),
        ("evaluation", "1"),
        ("trial", "1"),
    ]
    assert [row[0] for row in table_rows(out, "Drop-off diagnosis")] == [
        "lead",
        "evaluation",
        "trial",
    ]
    assert table_rows(out, "Exits by stage") == [["trial", "unsubscribe", "email", "1"]]
    intent = table_rows(out, "High intent now: buyers in trial, ready to contact")
    assert [row[0] for row in intent] == ["eve"]
    targets = {
        row[2]: (row[3], row[4])
        for row in table_rows(out, "Progress against targets")
        if row[:2] == ["conversion", "%"]
    }
    assert targets == {"lead": ("66.7", "60.0"), "trial": ("33.3", "40.0")}
    assert "1 advocates (reached champion)" in out  # ana, an smb_owner
    assert "drop-offs at evaluation" in out  # ben, the smb_owner who stalled: growth
    assert not re.search(r"\b(pre_awareness|awareness|consideration|advocacy)\b", out)

    page = html.read_text(encoding="utf-8")
    first_table = page[page.index("<h2>Where do customers drop off?</h2>") :]
    first_table = first_table[first_table.index("<table>") : first_table.index("</table>")]
    assert re.findall(r"<tr><td>(\w+)</td>", first_table) == STAGES
    charts = {
        name: re.findall(r"<text [^>]*>([^<]+)</text>", body)
        for name, body in re.findall(r'<svg data-chart="(\w+)"(.*?)</svg>', page, flags=re.S)
    }
    assert charts["funnel"][::2] == STAGES  # each bar: its stage, then its count
    assert charts["dropoffs"][::2] == ["lead", "evaluation", "trial"]
    assert charts["flow"] == ["(entry)", *STAGES]
    assert "Buyers in trial, ranked by recent engagement." in page
    assert not re.search(r"\b(pre_awareness|consideration|advocacy)\b", page)


def test_a_kpi_target_for_a_stage_the_rules_do_not_have_is_a_clear_error(
    loaded: dict[str, Any],
) -> None:
    touchpoint, rules = loaded["touchpoint"], loaded["rules"]
    config = loaded["tmp"] / "report.toml"
    config.write_text("[targets]\nconversion_pct = { lead = 60, consideration = 45 }\n", "utf-8")
    code, out, err = touchpoint("report", "--rules", str(rules), "--config", str(config))
    assert code == 1
    assert out == ""
    assert err.strip() == (
        "touchpoint: error: report config: targets.conversion_pct.consideration: "
        "'consideration' is not one of the stages of the journey rules in use "
        "[lead, evaluation, trial, customer, champion]"
    )
    # Without a config of one's own, the shipped targets of the shipped stages are left out.
    code, out, err = touchpoint("report", "--rules", str(rules))
    assert code == 0, err
    metrics = [row[0] for row in table_rows(out, "Progress against targets")]
    assert "conversion" not in metrics and {"revenue", "purchases", "csat"} <= set(metrics)


def test_a_report_by_rules_without_the_datas_stages_is_a_clear_error(
    loaded: dict[str, Any],
) -> None:
    code, _, err = loaded["touchpoint"]("report", "--brief")  # the shipped rules' six stages
    assert code == 1
    assert "holds stages the journey rules in use do not name: champion, customer" in err
    assert "--rules or TOUCHPOINT_RULES_FILE" in err
