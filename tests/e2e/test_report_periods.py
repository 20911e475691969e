"""`touchpoint report` over a period, through the CLI: --brief shows the full report's own
funnel, drop-offs and exits for the same --from/--to and --by, and every KPI value is the
number the report shows for it elsewhere (issue 16)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ingest.generator import GeneratorConfig, write_dataset
from processors.classify import default_rules
from schemas.enums import STAGES
from sinks import analysis, queries
from touchpoint.cli import cli

pytestmark = pytest.mark.integration
FEBRUARY = ("--from", "2026-02-01", "--to", "2026-03-01")
FEBRUARY_PERIOD = analysis.Period(
    datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
)
JANUARY_PERIOD = analysis.Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def invoke(
    tmp_path_factory: pytest.TempPathFactory, chdb_url: str, clickhouse_client: Any
) -> Iterator[Any]:
    """Run `touchpoint ARGS…` in this process (chDB: one engine per process) on a database
    loaded by `touchpoint run` with generated journeys over several months."""
    database = f"periods_{uuid.uuid4().hex[:8]}"
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("TOUCHPOINT_")}
    env |= {"TOUCHPOINT_CLICKHOUSE_URL": chdb_url, "TOUCHPOINT_CLICKHOUSE_DATABASE": database}
    folder = tmp_path_factory.mktemp("periods")

    def run(*args: str) -> Result:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    events = folder / "events.jsonl"
    write_dataset(
        GeneratorConfig(buyers=800, seed=16, timeouts=dict(default_rules().timeouts)), events
    )
    run("run", "--input", str(events))
    run.database = database  # type: ignore[attr-defined]
    run.folder = folder  # type: ignore[attr-defined]
    yield run
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def blocks(output: str) -> dict[str, str]:
    """The output's tables by title (their first line)."""
    return {block.splitlines()[0]: block for block in output.strip().split("\n\n") if block}


FUNNEL = "Where do customers drop off? Stage funnel (conversion within the window)"


def funnel_cells(block: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in block.splitlines()
        if line.split() and line.split()[0] in {s.value for s in STAGES}
    }


def test_brief_shows_the_full_reports_tables_for_the_period_and_split(
    invoke: Any, clickhouse_client: Any
) -> None:
    everyone = blocks(invoke("report", "--brief").output)[FUNNEL]
    for by in ((), ("--by", "persona"), ("--by", "tier")):
        full = blocks(invoke("report", *FEBRUARY, *by).output)
        brief = blocks(invoke("report", "--brief", *FEBRUARY, *by).output)
        titles = [
            FUNNEL,
            *(f"Funnel by {by[1]}" for _ in by[:1]),
            "Drop-offs by stage × channel of the last touch before the drop",
            "Exits by stage × channel",
        ]
        assert list(brief) == titles, by
        for title in titles:
            assert brief[title] == full[title], (by, title)

    # The period's buyers, not everyone's: recounted from the raw touchpoints.
    reached = int(funnel_cells(brief[FUNNEL])["pre_awareness"][1])
    recount = clickhouse_client.command(
        f"""SELECT count() FROM (
                SELECT buyer_id, min(occurred_at) AS first, countIf(stage IS NOT NULL) AS staged
                FROM {invoke.database}.touchpoints FINAL GROUP BY buyer_id)
            WHERE staged > 0 AND first >= '2026-02-01' AND first < '2026-03-01'"""
    )
    assert reached == int(recount)
    assert 0 < reached < int(funnel_cells(everyone)["pre_awareness"][1])


def test_every_kpi_and_comparison_value_is_the_funnels_own(
    invoke: Any, clickhouse_client: Any
) -> None:
    from schemas.report_config import ReportConfig
    from sinks.answers import gather
    from touchpoint.report import load_report_config

    output = blocks(
        invoke(
            "report", *FEBRUARY, "--compare-from", "2026-01-01", "--compare-to", "2026-02-01"
        ).output
    )
    funnel = funnel_cells(output[FUNNEL])
    # The window matters in this data: moved on (any time) ≠ moved on in the window.
    assert any(cells[2] != cells[3] for cells in funnel.values())
    targets = {
        line.split()[2]: line.split()[3]
        for line in output["Progress against targets"].splitlines()
        if line.startswith("conversion % ")
    }
    assert set(targets) == {stage.value for stage in STAGES[:-1]}
    for stage, actual in targets.items():
        assert actual == funnel[stage][6], stage  # conversion % column of the funnel

    config: ReportConfig = load_report_config(None)
    answers = gather(
        clickhouse_client,
        invoke.database,
        config,
        period=FEBRUARY_PERIOD,
        compare=JANUARY_PERIOD,
    )
    january = analysis.funnel(
        clickhouse_client,
        invoke.database,
        period=JANUARY_PERIOD,
        window=config.conversion_window,
    )
    for row in answers.funnel[:-1]:
        metric = f"conversion % {row.stage}"
        target = next(t.actual for t in answers.targets if t.metric == metric)
        current = next(c.current for c in answers.comparison if c.metric == metric)
        assert target == current == row.conversion_pct, metric
    for row in january[:-1]:
        metric = f"conversion % {row.stage}"
        previous = next(c.previous for c in answers.comparison if c.metric == metric)
        assert previous == row.conversion_pct, metric
    reached = next(c for c in answers.comparison if c.metric == "buyers reached")
    assert reached.current == answers.funnel[0].reached
    assert reached.previous == january[0].reached


def test_drop_offs_per_stage_are_the_funnels_dropped_for_any_period(
    invoke: Any, clickhouse_client: Any
) -> None:
    for period in (FEBRUARY_PERIOD, JANUARY_PERIOD, analysis.Period()):
        funnel = analysis.funnel(clickhouse_client, invoke.database, period=period)
        drops = queries.dropoffs_by_stage_channel(clickhouse_client, invoke.database, period=period)
        for row in funnel:
            assert row.dropped == sum(d.buyers for d in drops if d.stage == row.stage), period
        assert sum(row.dropped for row in funnel) > 0


def test_imported_spend_reaches_the_report_and_its_html(invoke: Any, tmp_path: Path) -> None:
    (tmp_path / "spend.csv").write_text(
        "Day,Campaign,Impressions,Clicks,Cost\n"
        "2026-02-03,search_brand,1000,40,1234.00\n"
        "2026-02-04,nobody_clicks,500,10,99.00\n"
        "2026-03-01,search_brand,1000,40,5000.00\n",  # March: outside the period
        encoding="utf-8",
    )
    loaded = invoke("import", "ads-csv", str(tmp_path / "spend.csv"))
    assert "Loaded 3 ad-spend rows" in loaded.output
    html = tmp_path / "report.html"
    output = invoke("report", *FEBRUARY, "--html", str(html)).output
    section = blocks(output)[
        "What does a new buyer cost? Ad spend, CPA and ROAS by campaign "
        "(linear attribution of purchases in the period)"
    ]
    rows = {line.split()[0]: line.split() for line in section.splitlines()[2:]}
    assert rows["search_brand"][1] == "1,234.00"
    assert rows["nobody_clicks"][1:] == ["99.00", "0.00", "0.00", "-", "0.00"]
    page = html.read_text(encoding="utf-8")
    assert 'data-table="spend-by-campaign"' in page
    assert '<tr><td>search_brand</td><td class="n">1,234.00</td>' in page
