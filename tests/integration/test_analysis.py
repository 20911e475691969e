"""The analyst questions, checked against hand-computed cases, the generator's ground truth,
and independent recomputations from the raw touchpoints table."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.local import run_local
from schemas.raw import RawRecord
from sinks import analysis
from sinks.writer import ClickHouseWriter
from tests.factories import T0, event
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files
from touchpoint.imports import import_ads_csv

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)


def load(client: Any, database: str, records: list[dict[str, Any]]) -> None:
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=timedelta(days=7)
    )
    raw = [RawRecord("t", str(i), json.dumps(r).encode()) for i, r in enumerate(records)]
    run_local(raw, processor, ClickHouseWriter(client, database), batch_size=100, run_id=database)


@pytest.fixture
def two_purchases(clickhouse_client: Any, database: str) -> str:
    """Ana: email, ad click, site visit, then a 100.00 purchase. Ben: a purchase out of nowhere."""
    load(
        clickhouse_client,
        database,
        [
            event("email_open", at=0 * DAY, buyer="ana", campaign="spring"),
            event("ad_click", at=1 * DAY, buyer="ana", campaign="retarget"),
            event("page_view", at=2 * DAY, buyer="ana"),
            event("purchase", at=3 * DAY, buyer="ana", revenue="100.00", currency="USD"),
            event("email_open", at=-60 * DAY, buyer="ben"),  # outside the 30-day look-back
            event("purchase", at=3 * DAY, buyer="ben", revenue="50.00", currency="USD"),
        ],
    )
    return database


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("first_touch", {"email": 1.0, "web": 1.0}),
        ("last_touch", {"web": 2.0}),
        ("linear", {"email": 1 / 3, "ads": 1 / 3, "web": 1 / 3 + 1}),
        ("position_based", {"email": 0.4, "ads": 0.2, "web": 0.4 + 1}),
        # half-life 1 day; ages 3, 2, 1 days → weights 1/8, 1/4, 1/2 → 1/7, 2/7, 4/7
        ("time_decay", {"email": 1 / 7, "ads": 2 / 7, "web": 4 / 7 + 1}),
    ],
)
def test_attribution_by_hand(
    clickhouse_client: Any,
    two_purchases: str,
    model: analysis.AttributionModel,
    expected: dict[str, float],
) -> None:
    shares = analysis.attribution(
        clickhouse_client, two_purchases, model=model, lookback=timedelta(days=30), half_life=DAY
    )
    got = {share.key: share.purchases for share in shares}
    assert got == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(2.0)
    assert sum(share.revenue for share in shares) == pytest.approx(Decimal("150.00"))
    ana_web = expected["web"] - 1 if model != "last_touch" and model != "first_touch" else None
    if ana_web is not None:  # Ben's 50.00 is all web; the rest of web is Ana's share of 100.00
        web = next(share for share in shares if share.key == "web")
        assert float(web.revenue) == pytest.approx(50 + 100 * ana_web)


def test_attribution_by_campaign(clickhouse_client: Any, two_purchases: str) -> None:
    shares = analysis.attribution(
        clickhouse_client, two_purchases, model="first_touch", by="campaign"
    )
    assert {s.key: s.purchases for s in shares} == {"spring": 1.0, "(none)": 1.0}


@pytest.fixture(scope="module")
def generated(
    tmp_path_factory: pytest.TempPathFactory, chdb_url: str, clickhouse_client: Any
) -> tuple[str, GroundTruth]:
    folder = tmp_path_factory.mktemp("analysis")
    events = folder / "events.jsonl"
    truth = write_dataset(
        GeneratorConfig(buyers=1500, seed=99, timeouts=dict(default_rules().timeouts)), events
    )
    database = "analysis_generated"
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    with clickhouse(settings) as client:
        run_files(settings, inspect_inputs([events]), client)
    return database, truth


def raw_touchpoints(client: Any, database: str) -> list[dict[str, Any]]:
    result = client.query(
        f"SELECT buyer_id, channel, event_type, occurred_at, toString(stage), is_purchase, "
        f"toFloat64(ifNull(revenue, 0)), ifNull(promo, '(none)') FROM {database}.touchpoints FINAL"
    )
    names = ("buyer", "channel", "event_type", "at", "stage", "is_purchase", "revenue", "promo")
    return [dict(zip(names, row, strict=True)) for row in result.result_rows]


def test_every_model_credits_each_purchase_exactly_once(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, truth = generated
    purchases = sum(buyer.purchases for buyer in truth.buyers)
    revenue = sum((buyer.revenue for buyer in truth.buyers), Decimal(0))
    for model in analysis.ATTRIBUTION_MODELS:
        shares = analysis.attribution(clickhouse_client, database, model=model)
        assert sum(s.purchases for s in shares) == pytest.approx(purchases), model
        assert float(sum(s.revenue for s in shares)) == pytest.approx(float(revenue), abs=0.05)


def test_the_funnel_matches_truth_and_a_recount_from_raw_touchpoints(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, truth = generated
    rows = {row.stage: row for row in analysis.funnel(clickhouse_client, database)}
    expected = truth.funnel()
    for stage, counts in expected.items():
        row = rows[stage.value]
        assert (row.reached, row.moved_on, row.dropped) == (
            counts["reached"],
            counts["moved_on"],
            counts["dropped"],
        )
    order = [stage.value for stage in expected]
    furthest: dict[str, int] = {}
    for touch in raw_touchpoints(clickhouse_client, database):
        if touch["stage"]:
            rank = order.index(touch["stage"])
            furthest[touch["buyer"]] = max(furthest.get(touch["buyer"], -1), rank)
    for rank, stage in enumerate(order):
        assert rows[stage].reached == sum(1 for value in furthest.values() if value >= rank)
    windowed = analysis.funnel(clickhouse_client, database, window=timedelta(days=7))
    assert all(w.moved_on_in_window <= w.moved_on for w in windowed)
    assert any(w.moved_on_in_window < w.moved_on for w in windowed)


def test_drop_off_diagnosis_matches_truth(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, truth = generated
    rows = analysis.dropoff_diagnosis(clickhouse_client, database)
    by_stage_channel: Counter[tuple[str, str]] = Counter()
    for row in rows:
        by_stage_channel[(row.stage, row.last_channel)] += row.buyers
        assert row.came_back <= row.buyers
    assert dict(by_stage_channel) == dict(truth.dropoffs())


def test_promos_and_cohorts_match_a_recount_from_raw_touchpoints(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, _ = generated
    orders = [t for t in raw_touchpoints(clickhouse_client, database) if t["is_purchase"]]
    promos = {p.promo: p for p in analysis.promo_effectiveness(clickhouse_client, database)}
    count = Counter(order["promo"] for order in orders)
    assert {name: p.purchases for name, p in promos.items()} == dict(count)
    by_buyer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in orders:
        by_buyer[order["buyer"]].append(order)
    only = Counter()
    for buyer_orders in by_buyer.values():
        used = {o["promo"] for o in buyer_orders}
        if "(none)" not in used:
            only.update(used)
    assert {name: p.promo_only_buyers for name, p in promos.items() if p.promo_only_buyers} == dict(
        only
    )

    cells = analysis.retention_cohorts(clickhouse_client, database, weeks=52)
    expected: Counter[tuple[str, int]] = Counter()
    for buyer_orders in by_buyer.values():
        first = min(o["at"] for o in buyer_orders)
        monday = (first - timedelta(days=first.weekday())).date()
        weeks = {
            ((o["at"] - timedelta(days=o["at"].weekday())).date() - monday).days // 7
            for o in buyer_orders
        }
        for week in weeks:
            expected[(monday.isoformat(), week)] += 1
    assert {(c.cohort_week.date().isoformat(), c.week): c.active for c in cells} == dict(expected)
    assert all(c.week > 0 or c.active == c.cohort_size for c in cells)


def test_the_hour_of_week_aggregate_equals_the_raw_recount(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, _ = generated
    from_view = analysis.hour_of_week(clickhouse_client, database)
    from_raw = analysis.hour_of_week(clickhouse_client, database, period=analysis.Period())
    assert from_view == from_raw
    assert {cell.kind for cell in from_view} == {"interact", "click", "book"}


def test_why_new_customers_do_not_buy_or_stay_counts_match_truth(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, truth = generated
    rows = analysis.why_not_buy_or_stay(clickhouse_client, database)
    never = sum(r.buyers for r in rows if r.segment == "never_bought")
    once = sum(r.buyers for r in rows if r.segment == "bought_once")
    assert never == sum(1 for b in truth.buyers if b.purchases == 0)
    assert once == sum(1 for b in truth.buyers if b.purchases == 1 and b.furthest_stage.rank < 4)
    exited = sum(r.exited for r in rows if r.segment == "never_bought")
    assert exited == sum(1 for b in truth.buyers if b.purchases == 0 and b.exits)


def test_high_intent_lists_engaged_buyers_in_consideration_now(
    clickhouse_client: Any, database: str
) -> None:
    load(
        clickhouse_client,
        database,
        [
            event("email_click", at=0 * DAY, buyer="hot"),
            event("add_to_cart", at=1 * DAY, buyer="hot"),
            event("checkout_started", at=1 * DAY + timedelta(hours=1), buyer="hot"),
            event("email_click", at=0 * DAY, buyer="warm"),
            event("email_click", at=0 * DAY, buyer="gone"),
            event("email_unsubscribe", at=DAY, buyer="gone"),
            event("purchase", at=DAY, buyer="bought"),
            event("page_view", at=2 * DAY, buyer="clock"),
        ],
    )
    buyers = analysis.high_intent(clickhouse_client, database)
    assert [b.buyer_id for b in buyers] == ["hot", "warm"]
    now = T0 + 2 * DAY
    assert buyers[0].score == pytest.approx(
        2 * 0.5 ** (2 / 7)
        + 6 * 0.5 ** (1 / 7)
        + 8 * 0.5 ** (((now - (T0 + DAY + timedelta(hours=1))) / DAY) / 7),
        abs=1e-3,
    )
    assert analysis.high_intent(clickhouse_client, database, as_of=T0 + 30 * DAY) == []


def test_a_period_limits_the_questions(clickhouse_client: Any, two_purchases: str) -> None:
    later = analysis.Period(start=T0 + 10 * DAY)
    assert (
        analysis.attribution(clickhouse_client, two_purchases, model="linear", period=later) == []
    )
    assert analysis.promo_effectiveness(clickhouse_client, two_purchases, period=later) == []
    early = analysis.Period(end=datetime(2026, 1, 1, tzinfo=UTC))
    assert analysis.funnel(clickhouse_client, two_purchases, period=early) == []


def test_weekly_sales_personas_and_tracker_match_recounts(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, truth = generated
    touches = raw_touchpoints(clickhouse_client, database)
    orders = [t for t in touches if t["is_purchase"]]

    weekly: Counter[str] = Counter()
    for order in orders:
        weekly[(order["at"] - timedelta(days=order["at"].weekday())).date().isoformat()] += 1
    assert {
        w.week.date().isoformat(): w.purchases
        for w in analysis.weekly_sales(clickhouse_client, database)
    } == dict(weekly)

    stats = {s.persona: s for s in analysis.persona_stats(clickhouse_client, database)}
    for persona in {b.persona for b in truth.buyers}:
        members = [b for b in truth.buyers if b.persona == persona]
        assert stats[persona].buyers == len(members)
        assert stats[persona].purchasers == sum(1 for b in members if b.purchases)
        assert stats[persona].revenue == sum((b.revenue for b in members), Decimal(0))
        assert stats[persona].advocates == sum(
            1 for b in members if b.furthest_stage.value == "advocacy"
        )

    as_of = max(t["at"] for t in touches).replace(tzinfo=UTC)
    tracker = analysis.buyer_tracker(
        clickhouse_client, database, as_of=as_of, limit=100_000, lapsed_after=timedelta(days=60)
    )
    assert len(tracker) == len(truth.buyers)
    last_order: dict[str, datetime] = {}
    count: Counter[str] = Counter()
    for order in orders:
        count[order["buyer"]] += 1
        at = order["at"].replace(tzinfo=UTC)
        last_order[order["buyer"]] = max(last_order.get(order["buyer"], at), at)
    for row in tracker:
        purchases = count[row.buyer_id]
        if purchases == 0:
            expected = "prospect"
        elif as_of - last_order[row.buyer_id] > timedelta(days=60):
            expected = "lapsed"
        else:
            expected = "new" if purchases == 1 else "existing"
        assert (row.frequency_class, row.purchases) == (expected, purchases), row.buyer_id
    ranks = [row.revenue_per_touch for row in tracker]
    assert ranks == sorted(ranks, reverse=True)


def test_the_transition_flow_matches_a_recount_from_raw_touchpoints(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, _ = generated
    order = ["pre_awareness", "awareness", "consideration", "purchase", "retention", "advocacy"]
    first_hit: dict[str, dict[str, tuple[datetime, str]]] = defaultdict(dict)
    result = clickhouse_client.query(
        "SELECT buyer_id, toString(stage), occurred_at, event_id "
        f"FROM {database}.touchpoints FINAL WHERE stage IS NOT NULL"
    )
    for buyer, stage, at, event_id in result.result_rows:
        known = first_hit[buyer].get(stage)
        if known is None or (at, event_id) < known:
            first_hit[buyer][stage] = (at, event_id)
    expected: Counter[tuple[str, str]] = Counter()
    for hits in first_hit.values():
        moves, earliest = [], None
        for stage in reversed(order):
            if stage in hits and (earliest is None or hits[stage] < earliest):
                moves.append(stage)
                earliest = hits[stage]
        moves.reverse()
        for index, stage in enumerate(moves):
            expected[(moves[index - 1] if index else "(entry)", stage)] += 1
    flow = analysis.transition_flow(clickhouse_client, database)
    assert {(f.from_stage, f.to_stage): f.buyers for f in flow} == dict(expected)


def test_the_gathered_report_compares_periods_and_tracks_targets(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    from schemas.report_config import KpiTargets, ReportConfig
    from sinks.answers import gather
    from sinks.report import render_answers

    database, truth = generated
    config = ReportConfig(targets=KpiTargets(revenue=1_000_000.0, purchases=100))
    split = datetime(2026, 3, 1, tzinfo=UTC)
    answers = gather(
        clickhouse_client,
        database,
        config,
        period=analysis.Period(start=split),
        compare=analysis.Period(end=split),
        by="persona",
    )
    weekly = analysis.weekly_sales(clickhouse_client, database, period=analysis.Period(start=split))
    revenue = next(c for c in answers.comparison if c.metric == "revenue")
    assert revenue.current == pytest.approx(float(sum(w.revenue for w in weekly)))
    target = next(t for t in answers.targets if t.metric == "revenue")
    assert target.progress_pct == pytest.approx(100 * float(revenue.current or 0) / 1_000_000)
    whole = gather(clickhouse_client, database, config)
    purchases = next(t for t in whole.targets if t.metric == "purchases")
    assert purchases.actual == sum(b.purchases for b in truth.buyers)
    text = render_answers(whole)
    for stage, counts in truth.funnel().items():
        line = next(row for row in text.splitlines() if row.startswith(stage.value + " "))
        assert line.split()[1:3] == [str(counts["reached"]), str(counts["moved_on"])]
    assert {card.name for card in whole.personas} == {b.persona for b in truth.buyers}


def test_every_sql_example_in_the_analysis_docs_runs(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    import re
    from pathlib import Path

    database, _ = generated
    text = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()
    examples = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(examples) >= 5
    for sql in examples:
        rows = clickhouse_client.query(sql.replace("touchpoint.", f"{database}.")).result_rows
        assert rows, sql


# -- ad spend: CPA and ROAS ---------------------------------------------------------------

SPEND_PERIOD = analysis.Period(datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 23, tzinfo=UTC))
SPEND_CSV = """Day,Platform,Campaign,Impressions,Clicks,Cost
2026-03-02,google,spring,1000,40,30.00
2026-03-03,meta,spring,800,25,20.00
2026-03-06,google,summer,500,10,45.00
2026-03-03,google,winter,300,5,15.00
2026-03-04,google,autumn,100,0,0.00
2026-02-25,google,spring,999,99,999.00
2026-03-23,google,spring,777,77,777.00
"""
"""Spring on two platforms; summer; winter (spend, no buyer); autumn (spend 0); spring's
spend before the period and on its end day (excluded: ``[from, to)``)."""


def spend_events() -> list[dict[str, Any]]:
    """Ana: first purchase and a repeat; Ben: three touches; Cy: an ad, no purchase; Dee: her
    first purchase before the period, a repeat in it with no touch in the look-back; Eve:
    after the period; Fay: an email campaign without spend."""
    records = [
        event("ad_click", at=0 * DAY, buyer="ana", campaign="spring"),
        event("email_click", at=1 * DAY, buyer="ana", campaign="news"),
        event("purchase", at=2 * DAY, buyer="ana", revenue="120.00", currency="USD"),
        event("purchase", at=10 * DAY, buyer="ana", revenue="60.00", currency="USD"),
        event("ad_click", at=3 * DAY, buyer="ben", campaign="spring"),
        event("ad_click", at=4 * DAY, buyer="ben", campaign="summer"),
        event("page_view", at=5 * DAY, buyer="ben"),
        event("purchase", at=6 * DAY, buyer="ben", revenue="90.00", currency="USD"),
        event("ad_click", at=1 * DAY, buyer="cy", campaign="winter"),
        event("ad_click", at=-40 * DAY, buyer="dee", campaign="spring"),
        event("purchase", at=-35 * DAY, buyer="dee", revenue="30.00", currency="USD"),
        event("purchase", at=5 * DAY, buyer="dee", revenue="45.00", currency="USD"),
        event("ad_click", at=25 * DAY, buyer="eve", campaign="spring"),
        event("purchase", at=26 * DAY, buyer="eve", revenue="500.00", currency="USD"),
        event("email_click", at=7 * DAY, buyer="fay", campaign="news"),
        event("purchase", at=8 * DAY, buyer="fay", revenue="80.00", currency="USD"),
    ]
    return sorted(records, key=lambda r: r["occurred_at"])


def expected_spend_returns(
    records: list[dict[str, Any]], csv_text: str, period: analysis.Period, by: str
) -> dict[str, tuple[Decimal | None, float, float]]:
    """(spend, acquisitions, revenue) per key, straight from the input: linear attribution of
    the period's purchases over the buyer's touches in the 30 days before; a buyer's first
    purchase is an acquisition; every ad-spend row is the ads channel."""
    assert period.start is not None and period.end is not None
    lookback = timedelta(days=30)

    def at(record: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(record["occurred_at"])

    def key(record: dict[str, Any]) -> str:
        return str(record["channel"] if by == "channel" else record.get("campaign", "(none)"))

    purchases = [r for r in records if r["event_type"] == "purchase"]
    first = {
        buyer: min((p for p in purchases if p["buyer_id"] == buyer), key=at)["event_id"]
        for buyer in {p["buyer_id"] for p in purchases}
    }
    credit: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for purchase in purchases:
        if not period.start <= at(purchase) < period.end:
            continue
        path = [
            r
            for r in records
            if r["buyer_id"] == purchase["buyer_id"]
            and r["event_type"] != "purchase"
            and at(purchase) - lookback <= at(r) < at(purchase)
        ] or [purchase]
        for touch in path:
            credit[key(touch)][0] += (first[purchase["buyer_id"]] == purchase["event_id"]) / len(
                path
            )
            credit[key(touch)][1] += float(purchase["revenue"]) / len(path)
    spend: dict[str, Decimal] = defaultdict(Decimal)
    for line in csv_text.strip().splitlines()[1:]:
        day, _platform, campaign, _impressions, _clicks, cost = line.split(",")
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        if period.start <= start < period.end:
            spend["ads" if by == "channel" else campaign] += Decimal(cost)
    return {
        name: (spend.get(name), credit[name][0] if name in credit else 0.0, credit[name][1])
        for name in set(spend) | set(credit)
    }


def _money(value: float | Decimal | None) -> str:
    return "-" if value is None else f"{float(value):,.2f}"


@pytest.fixture
def with_spend(clickhouse_client: Any, database: str, chdb_url: str, tmp_path: Any) -> str:
    load(clickhouse_client, database, spend_events())
    (tmp_path / "spend.csv").write_text(SPEND_CSV, encoding="utf-8")
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    assert import_ads_csv(settings, tmp_path / "spend.csv", "google") == (7, 0)
    return database


def test_cpa_and_roas_by_campaign_and_channel_from_the_raw_input(
    clickhouse_client: Any, with_spend: str
) -> None:
    from schemas.report_config import ReportConfig
    from sinks.answers import gather
    from sinks.html_report import render_html
    from sinks.report import render_answers

    records = spend_events()
    answers = gather(clickhouse_client, with_spend, ReportConfig(), period=SPEND_PERIOD)
    text = render_answers(answers)
    html = render_html(answers)
    for by, rows in (
        ("campaign", answers.spend_by_campaign),
        ("channel", answers.spend_by_channel),
    ):
        expected = expected_spend_returns(records, SPEND_CSV, SPEND_PERIOD, by)
        got = {row.key: row for row in rows}
        assert set(got) == set(expected), by
        for name, (spend, acquisitions, revenue) in expected.items():
            row = got[name]
            assert row.spend == spend, (by, name)
            assert row.acquisitions == pytest.approx(acquisitions), (by, name)
            assert float(row.revenue) == pytest.approx(revenue), (by, name)
            cpa = float(spend) / acquisitions if spend and acquisitions else None
            roas = revenue / float(spend) if spend else None
            got_cpa = None if row.cpa is None else float(row.cpa)
            assert got_cpa == (None if cpa is None else pytest.approx(cpa)), (by, name)
            assert row.roas == (None if roas is None else pytest.approx(roas)), (by, name)
            cells = [name, _money(spend), f"{acquisitions:,.2f}", _money(revenue)]
            cells += [_money(cpa), _money(roas)]
            # the terminal table, and the HTML one (a dash there is "–")
            section = text.split(f"Ad spend, CPA and ROAS by {by}")[1].split("\n\n")[0]
            assert cells in [line.split() for line in section.splitlines()], (by, name)
            table = html.split(f'data-table="spend-by-{by}"')[1].split("</table>")[0]
            html_rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tr>")[2:]]
            assert [c.replace("-", "–") if c == "-" else c for c in cells] in html_rows
        total = analysis.spend_total(rows)
        assert total.acquisitions == pytest.approx(3)  # Ana, Ben, Fay; Dee's first was earlier
        assert total.spend == Decimal("110")
        assert float(total.revenue) == pytest.approx(120 + 60 + 90 + 45 + 80)

    # By hand, for the reader: spring has half of Ana's first purchase and a third of Ben's.
    spring = next(r for r in answers.spend_by_campaign if r.key == "spring")
    assert (spring.spend, spring.acquisitions) == (Decimal(50), pytest.approx(1 / 2 + 1 / 3))
    assert float(spring.cpa or 0) == pytest.approx(60.0)  # 50 / (5/6)
    assert spring.roas == pytest.approx(2.4)  # (60 + 30 + 30) / 50
    winter = next(r for r in answers.spend_by_campaign if r.key == "winter")
    assert (winter.cpa, winter.roas) == (None, 0.0)  # spend, no buyer
    autumn = next(r for r in answers.spend_by_campaign if r.key == "autumn")
    assert (autumn.spend, autumn.cpa, autumn.roas) == (Decimal(0), None, None)  # spend 0


def test_cpa_and_roas_are_recomputed_by_the_plain_sql_of_the_docs(
    clickhouse_client: Any, with_spend: str
) -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()
    sql = next(s for s in re.findall(r"```sql\n(.*?)```", docs, flags=re.S) if "ad_spend" in s)
    assert SPEND_PERIOD.start is not None and SPEND_PERIOD.end is not None
    sql = (
        sql.replace("touchpoint.", f"{with_spend}.")
        .replace("2026-03-01", SPEND_PERIOD.start.date().isoformat())
        .replace("2026-04-01", SPEND_PERIOD.end.date().isoformat())
    )
    recomputed = {
        name: (spend, acquisitions, revenue, cpa, roas)
        for name, spend, acquisitions, revenue, cpa, roas in clickhouse_client.query(
            sql
        ).result_rows
    }
    rows = analysis.spend_returns(clickhouse_client, with_spend, period=SPEND_PERIOD)
    assert set(recomputed) == {row.key for row in rows}
    for row in rows:
        spend, acquisitions, revenue, cpa, roas = recomputed[row.key]
        assert spend == row.spend, row.key
        assert acquisitions == pytest.approx(row.acquisitions), row.key
        assert revenue == pytest.approx(float(row.revenue)), row.key
        assert cpa == (None if row.cpa is None else pytest.approx(float(row.cpa))), row.key
        assert roas == (None if row.roas is None else pytest.approx(row.roas)), row.key


def test_no_spend_shows_a_dash_and_says_how_to_load_it(
    clickhouse_client: Any, two_purchases: str
) -> None:
    from schemas.report_config import ReportConfig
    from sinks.answers import gather
    from sinks.report import render_answers

    answers = gather(clickhouse_client, two_purchases, ReportConfig())
    assert answers.spend_by_channel and all(
        (r.spend, r.cpa, r.roas) == (None, None, None) for r in answers.spend_by_channel
    )
    text = render_answers(answers)
    assert "touchpoint import ads-csv FILE" in text
    web = next(
        line.split()
        for line in text.split("Ad spend, CPA and ROAS by channel")[1].splitlines()
        if line.startswith("web ")
    )
    assert web[1] == "-" and web[-2:] == ["-", "-"]


# -- raw twins: each rewritten query beside the formulation it replaced -----------------------

# analysis.attribution until issue 14: one query per model and key, on the raw touchpoints.
_ATTRIBUTION_BEFORE_14 = """
    WITH firsts AS (
        SELECT buyer_id, argMin(event_id, (occurred_at, event_id)) AS first_purchase
        FROM {db}.touchpoints FINAL
        WHERE is_purchase
        GROUP BY buyer_id
    ),
    purchases AS (
        SELECT buyer_id, event_id, occurred_at AS at,
               toFloat64(ifNull(revenue, 0)) AS revenue,
               channel AS own_channel, ifNull(campaign, '(none)') AS own_campaign,
               (buyer_id, event_id) IN (SELECT buyer_id, first_purchase FROM firsts)
                   AS acquired
        FROM {db}.touchpoints FINAL
        WHERE is_purchase AND occurred_at >= {{start:DateTime64(3, 'UTC')}}
          AND occurred_at < {{end:DateTime64(3, 'UTC')}}
    ),
    paths AS (
        SELECT buyer_id,
               groupArray((occurred_at, channel, ifNull(campaign, '(none)'))) AS touches
        FROM {db}.touchpoints FINAL
        WHERE NOT is_purchase AND buyer_id IN (SELECT buyer_id FROM purchases)
        GROUP BY buyer_id
    ),
    credited AS (
        SELECT p.revenue AS revenue, p.acquired AS acquired,
            arraySort(x -> x.1, arrayFilter(
                x -> x.1 < p.at AND x.1 >= p.at - toIntervalSecond({{lookback:UInt32}}),
                t.touches)) AS found,
            if(empty(found), [(p.at, p.own_channel, p.own_campaign)], found) AS path,
            length(path) AS n,
            arrayMap(x -> pow(2, -dateDiff('millisecond', x.1, p.at)
                              / (1000. * {{half_life:UInt32}})), path) AS decay,
            {weights} AS weights
        FROM purchases AS p LEFT JOIN paths AS t USING (buyer_id)
    )
    SELECT {key} AS credited_key, sum(w) AS purchases, sum(w * revenue) AS revenue,
           sum(w * acquired) AS acquisitions
    FROM credited
    ARRAY JOIN path AS touch, weights AS w
    GROUP BY credited_key
    HAVING purchases > 0
    ORDER BY revenue DESC, credited_key
"""


def attribution_before_14(
    client: Any,
    database: str,
    model: analysis.AttributionModel,
    by: str,
    period: analysis.Period,
    lookback: timedelta,
    half_life: timedelta,
) -> list[tuple[str, float, float, float]]:
    sql = _ATTRIBUTION_BEFORE_14.format(
        db=database,
        weights=analysis._WEIGHTS[model],
        key="touch.2" if by == "channel" else "touch.3",
    )
    parameters = {
        **period.parameters(),
        "lookback": int(lookback.total_seconds()),
        "half_life": max(1, int(half_life.total_seconds())),
    }
    return [
        (str(key), float(purchases), float(revenue), float(acquisitions))
        for key, purchases, revenue, acquisitions in client.query(
            sql, parameters=parameters
        ).result_rows
    ]


@pytest.mark.parametrize(
    ("period", "lookback", "half_life"),
    [
        (analysis.Period(), timedelta(days=30), timedelta(days=7)),
        (analysis.Period(start=datetime(2026, 2, 1, tzinfo=UTC)), timedelta(days=7), DAY),
        (analysis.Period(end=datetime(2026, 3, 1, tzinfo=UTC)), timedelta(days=90), 3 * DAY),
    ],
)
def test_every_attribution_from_one_query_equals_one_query_per_model(
    clickhouse_client: Any,
    generated: tuple[str, GroundTruth],
    period: analysis.Period,
    lookback: timedelta,
    half_life: timedelta,
) -> None:
    database, _ = generated
    every = analysis.attribution_all(
        clickhouse_client, database, period=period, lookback=lookback, half_life=half_life
    )
    assert set(every) == {
        (model, by) for model in analysis.ATTRIBUTION_MODELS for by in ("channel", "campaign")
    }
    for (model, by), shares in every.items():
        twin = attribution_before_14(
            clickhouse_client, database, model, by, period, lookback, half_life
        )
        assert twin, (model, by)
        assert [share.key for share in shares] == [key for key, *_ in twin], (model, by)
        for share, (_, purchases, revenue, acquisitions) in zip(shares, twin, strict=True):
            assert share.model == model
            assert share.purchases == pytest.approx(purchases, rel=1e-12)
            assert share.acquisitions == pytest.approx(acquisitions, rel=1e-12, abs=1e-12)
            # the value shown: rounded to 4 places, as before
            assert share.revenue == Decimal(str(round(revenue, 4))), (model, by, share.key)
        single = analysis.attribution(
            clickhouse_client,
            database,
            model=model,
            by=by,
            period=period,
            lookback=lookback,
            half_life=half_life,
        )
        # float sums of parallel threads: equal to the last bits only run by run
        assert [(s.key, s.revenue) for s in single] == [(s.key, s.revenue) for s in shares]
        assert [s.purchases for s in single] == pytest.approx([s.purchases for s in shares])


def test_channel_effectiveness_takes_the_linear_credit_it_would_query(
    clickhouse_client: Any, generated: tuple[str, GroundTruth]
) -> None:
    database, _ = generated
    period = analysis.Period(end=datetime(2026, 2, 15, tzinfo=UTC))
    lookback = timedelta(days=30)
    queried = analysis.channel_effectiveness(
        clickhouse_client, database, period=period, lookback=lookback
    )
    linear = analysis.attribution(
        clickhouse_client, database, model="linear", period=period, lookback=lookback
    )
    given = analysis.channel_effectiveness(
        clickhouse_client, database, period=period, lookback=lookback, linear=linear
    )
    assert given == queried
    assert any(row.revenue for row in given)


# analysis.retention_cohorts until issue 14: the purchases read three times, joined twice.
_COHORTS_BEFORE_14 = """
    WITH orders AS (
        SELECT buyer_id, occurred_at FROM {db}.touchpoints FINAL WHERE is_purchase
    ),
    firsts AS (
        SELECT buyer_id, toMonday(min(occurred_at)) AS cohort FROM orders GROUP BY buyer_id
        HAVING min(occurred_at) >= {{start:DateTime64(3, 'UTC')}}
           AND min(occurred_at) < {{end:DateTime64(3, 'UTC')}}
    ),
    sizes AS (SELECT cohort, count() AS size FROM firsts GROUP BY cohort)
    SELECT f.cohort, intDiv(dateDiff('day', f.cohort, toMonday(o.occurred_at)), 7) AS week,
           any(s.size) AS size, uniqExact(o.buyer_id) AS active
    FROM orders AS o
    INNER JOIN firsts AS f USING (buyer_id)
    INNER JOIN sizes AS s ON s.cohort = f.cohort
    WHERE week < {{weeks:UInt32}}
    GROUP BY f.cohort, week
    ORDER BY f.cohort, week
"""


@pytest.mark.parametrize(
    ("period", "weeks"),
    [
        (analysis.Period(), 12),
        (analysis.Period(), 52),
        (analysis.Period(start=datetime(2026, 2, 1, tzinfo=UTC)), 4),
        (analysis.Period(), 0),
    ],
)
def test_retention_cohorts_equal_their_raw_twin(
    clickhouse_client: Any, generated: tuple[str, GroundTruth], period: analysis.Period, weeks: int
) -> None:
    database, _ = generated
    twin = [
        (datetime(cohort.year, cohort.month, cohort.day, tzinfo=UTC), int(week), int(size), int(n))
        for cohort, week, size, n in clickhouse_client.query(
            _COHORTS_BEFORE_14.format(db=database),
            parameters={**period.parameters(), "weeks": weeks},
        ).result_rows
    ]
    cells = analysis.retention_cohorts(clickhouse_client, database, period=period, weeks=weeks)
    assert [(c.cohort_week, c.week, c.cohort_size, c.active) for c in cells] == twin
    assert bool(cells) == (weeks > 0)
