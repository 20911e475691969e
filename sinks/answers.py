"""Everything the report shows, gathered once: the analysis queries plus what is derived
from them (best and worst hours, persona cards, progress against targets).

Stages are the journey rules' own (``stages``, default the shipped six) and so are their
meanings: the purchase stage (``JourneyRules.purchase_stage``), the stage just below it
(high intent now) and the last stage (advocates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from schemas.errors import ConfigError
from schemas.report_config import ReportConfig
from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks import analysis, queries
from sinks.analysis import DEFAULT_PURCHASE_STAGE, Period
from sinks.clickhouse import Client

__all__ = [
    "Answers",
    "Brief",
    "Comparison",
    "PersonaCard",
    "Slot",
    "TargetProgress",
    "check_stages",
    "check_targets",
    "gather",
    "gather_brief",
]


@dataclass(frozen=True, slots=True)
class Slot:
    channel: str
    kind: str
    day_of_week: int
    hour: int
    touches: int

    @property
    def label(self) -> str:
        day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[self.day_of_week - 1]
        return f"{day} {self.hour:02d}:00 UTC"


@dataclass(frozen=True, slots=True)
class PersonaCard:
    name: str
    label: str
    description: str
    stats: analysis.PersonaStats | None
    pain_points: list[str]
    delights: list[str]
    growth: list[str]


@dataclass(frozen=True, slots=True)
class Comparison:
    metric: str
    current: float | None
    previous: float | None

    @property
    def change(self) -> float | None:
        if self.current is None or self.previous is None:
            return None
        return self.current - self.previous


@dataclass(frozen=True, slots=True)
class TargetProgress:
    metric: str
    actual: float | None
    target: float

    @property
    def progress_pct(self) -> float | None:
        return None if self.actual is None or not self.target else 100.0 * self.actual / self.target


@dataclass(frozen=True, slots=True)
class Brief:
    """``touchpoint report --brief``: the funnel, drop-offs and exits — the same rows, by the
    same definitions, as the full report's first sections."""

    database: str
    period: Period
    by: analysis.FunnelGroup | None
    funnel: list[analysis.FunnelRow]
    funnel_by: list[analysis.FunnelRow]
    dropoffs: list[queries.DropoffCount]
    exits: list[queries.ExitCount]
    stages: StageOrder = DEFAULT_ORDER


@dataclass
class Answers:
    database: str
    period: Period
    by: analysis.FunnelGroup | None
    funnel: list[analysis.FunnelRow]
    funnel_by: list[analysis.FunnelRow]
    dropoffs: list[queries.DropoffCount]
    diagnosis: list[analysis.DropoffDiagnosis]
    exits: list[queries.ExitCount]
    heat: list[analysis.HeatCell]
    best_slots: list[Slot]
    worst_slots: list[Slot]
    channels: list[analysis.ChannelEffect]
    promos: list[analysis.PromoEffect]
    attribution: dict[str, list[analysis.AttributionShare]]
    attribution_campaigns: list[analysis.AttributionShare]
    spend_by_campaign: list[analysis.SpendReturn]
    spend_by_channel: list[analysis.SpendReturn]
    high_intent: list[analysis.HighIntentBuyer]
    why_not: list[analysis.WhyNot]
    cohorts: list[analysis.CohortCell]
    tracker: list[analysis.TrackedBuyer]
    weekly: list[analysis.WeekSales]
    flow: list[analysis.Flow]
    personas: list[PersonaCard]
    stages: StageOrder = DEFAULT_ORDER
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE
    comparison: list[Comparison] = field(default_factory=list)
    compare_period: Period | None = None
    targets: list[TargetProgress] = field(default_factory=list)
    generated_at: datetime | None = None

    @property
    def intent_stage(self) -> str | None:
        """The stage of the high-intent buyers (:func:`sinks.analysis.intent_stage`)."""
        return analysis.intent_stage(self.stages, self.purchase_stage)


def _slots(heat: list[analysis.HeatCell]) -> tuple[list[Slot], list[Slot]]:
    """Per channel × kind: the busiest and the quietest hour of the week (of 168)."""
    best, worst = [], []
    groups: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
    for cell in heat:
        groups.setdefault((cell.channel, cell.kind), {})[(cell.day_of_week, cell.hour)] = (
            cell.touches
        )
    for (channel, kind), cells in sorted(groups.items()):
        full = {(day, hour): cells.get((day, hour), 0) for day in range(1, 8) for hour in range(24)}
        top = max(full.items(), key=lambda item: (item[1], -item[0][0], -item[0][1]))
        low = min(full.items(), key=lambda item: (item[1], item[0][0], item[0][1]))
        best.append(Slot(channel, kind, top[0][0], top[0][1], top[1]))
        worst.append(Slot(channel, kind, low[0][0], low[0][1], low[1]))
    return best, worst


def _persona_cards(
    config: ReportConfig,
    stats: list[analysis.PersonaStats],
    funnel_by_persona: list[analysis.FunnelRow],
    stages: StageOrder,
    purchase_stage: str | None,
) -> list[PersonaCard]:
    by_name = {item.persona: item for item in stats}
    names = [persona.name for persona in config.personas] or sorted(by_name)
    labels = {persona.name: persona for persona in config.personas}
    purchase_rank = stages.rank.get(purchase_stage) if purchase_stage is not None else None
    advocates = (
        "advocates (reviews, referrals)"
        if stages == DEFAULT_ORDER
        else f"advocates (reached {stages.last})"
    )
    cards = []
    for name in names:
        item = by_name.get(name)
        rows = [row for row in funnel_by_persona if row.group == name]
        pains: list[str] = []
        delights: list[str] = []
        growth: list[str] = []
        judged = [row for row in rows if row.reached and not row.is_last]
        if judged:
            worst = max(judged, key=lambda row: row.dropoff_pct or 0.0)
            if worst.dropped:
                pains.append(f"{worst.dropoff_pct:.0f}% drop off at {worst.stage}")
            best = max(judged, key=lambda row: row.conversion_pct or 0.0)
            delights.append(f"{best.conversion_pct or 0:.0f}% move on from {best.stage}")
            revenue_per_purchaser = (
                item.revenue / item.purchasers
                if item is not None and item.purchasers
                else Decimal(0)
            )
            at_stake = []
            for row in judged:
                rank = stages.rank.get(row.stage)
                if (
                    purchase_rank is None
                    or rank is None
                    or rank >= purchase_rank
                    or not row.dropped
                ):
                    continue
                purchase = next((r for r in rows if r.stage == purchase_stage), None)
                later = next((r for r in rows if stages.rank.get(r.stage) == rank + 1), None)
                if purchase is None or later is None or not later.reached:
                    continue
                # Win back a tenth of this stage's drop-offs; they buy like those who moved on.
                value = (
                    Decimal(row.dropped)
                    / 10
                    * Decimal(purchase.reached)
                    / Decimal(later.reached)
                    * revenue_per_purchaser
                )
                at_stake.append((value, row))
            if at_stake:
                value, row = max(at_stake, key=lambda pair: pair[0])
                growth.append(
                    f"win back 10% of the {row.dropped} drop-offs at {row.stage}: "
                    f"≈{value:,.0f} in revenue"
                )
        if item is not None:
            top_exit = max(item.exits.items(), key=lambda pair: pair[1], default=None)
            if top_exit:
                pains.append(f"{top_exit[1]} {top_exit[0].replace('_', ' ')} exits")
            if item.tickets:
                pains.append(f"{item.tickets} support tickets")
            if item.advocates:
                delights.append(f"{item.advocates} {advocates}")
            if item.nps is not None:
                (delights if item.nps >= 30 else pains).append(f"NPS {item.nps:+.0f}")
        config_entry = labels.get(name)
        cards.append(
            PersonaCard(
                name,
                config_entry.label if config_entry else name,
                config_entry.description if config_entry else "",
                item,
                pains,
                delights,
                growth,
            )
        )
    return cards


def _funnel(
    client: Client,
    database: str,
    config: ReportConfig,
    period: Period,
    by: analysis.FunnelGroup | None = None,
    *,
    stages: StageOrder,
) -> list[analysis.FunnelRow]:
    """The stage funnel as the report defines it (conversion within the configured window):
    one definition for the funnel tables, persona cards, comparison and KPI targets."""
    return analysis.funnel(
        client, database, by=by, period=period, window=config.conversion_window, stages=stages
    )


def _headline(
    client: Client,
    database: str,
    period: Period,
    funnel: list[analysis.FunnelRow],
    stages: StageOrder,
    stats: list[analysis.PersonaStats] | None = None,
    weekly: list[analysis.WeekSales] | None = None,
    source: analysis.Source = "summary",
) -> dict[str, float | None]:
    """The comparison and KPI metrics; conversion per stage is ``funnel``'s, exactly.
    ``stats`` and ``weekly``: the period's persona stats and weekly sales, if already read."""
    if stats is None:
        stats = analysis.persona_stats(
            client, database, period=period, stages=stages, source=source
        )
    if weekly is None:
        weekly = analysis.weekly_sales(client, database, period=period, source=source)
    values: dict[str, float | None] = {
        "buyers reached": float(next((r.reached for r in funnel if r.stage == stages.first), 0)),
        "purchases": float(sum(w.purchases for w in weekly)),
        "revenue": float(sum((w.revenue for w in weekly), Decimal(0))),
    }
    for row in funnel:
        if not row.is_last:
            values[f"conversion % {row.stage}"] = row.conversion_pct
    answered = [s for s in stats if s.csat is not None]
    values["csat"] = (sum(s.csat or 0 for s in answered) / len(answered)) if answered else None
    nps = [s for s in stats if s.nps is not None]
    values["nps"] = (sum(s.nps or 0 for s in nps) / len(nps)) if nps else None
    return values


def gather_brief(
    client: Client,
    database: str,
    config: ReportConfig,
    *,
    period: Period | None = None,
    by: analysis.FunnelGroup | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> Brief:
    """The funnel (and ``by`` split), drop-offs and exits of buyers whose first touch is in
    ``period`` — what the full report shows first — by ``stages``."""
    check_stages(client, database, stages)
    period = period or Period()
    split = _funnels(client, database, config, period, (None, by), stages=stages)
    return _brief(client, database, period, by, split, stages)


def _funnels(
    client: Client,
    database: str,
    config: ReportConfig,
    period: Period,
    groups: tuple[analysis.FunnelGroup | None, ...],
    *,
    stages: StageOrder,
) -> dict[analysis.FunnelGroup | None, list[analysis.FunnelRow]]:
    """:func:`_funnel` split by each of ``groups`` (``None``: not split), from one read."""
    return analysis.funnels(
        client,
        database,
        groups,
        period=period,
        window=config.conversion_window,
        stages=stages,
    )


def _brief(
    client: Client,
    database: str,
    period: Period,
    by: analysis.FunnelGroup | None,
    split: dict[analysis.FunnelGroup | None, list[analysis.FunnelRow]],
    stages: StageOrder,
) -> Brief:
    """The brief from the funnels already read (``split``: by None and by ``by``)."""
    return Brief(
        database=database,
        period=period,
        by=by,
        funnel=split[None],
        funnel_by=split[by] if by else [],
        dropoffs=queries.dropoffs_by_stage_channel(client, database, period=period, stages=stages),
        exits=queries.exits_by_stage_channel(client, database, period=period, stages=stages),
        stages=stages,
    )


def check_stages(client: Client, database: str, stages: StageOrder) -> None:
    """ConfigError when the database holds stages ``stages`` does not name: the report would
    count none of their buyers (the data was run with other journey rules)."""
    unknown = [name for name in queries.stage_names(client, database) if name not in stages]
    if unknown:
        raise ConfigError(
            f"database {database} holds stages the journey rules in use do not name: "
            f"{', '.join(unknown)} (their stages: {', '.join(stages)}); report with the rules "
            "the data was run with (--rules or TOUCHPOINT_RULES_FILE)"
        )


def check_targets(config: ReportConfig, stages: StageOrder) -> None:
    """ConfigError unless every conversion target names one of ``stages``."""
    for name in config.targets.conversion_pct:
        if name not in stages:
            raise ConfigError(
                f"report config: targets.conversion_pct.{name}: {name!r} is not one of the "
                f"stages of the journey rules in use [{', '.join(stages)}]"
            )


def gather(
    client: Client,
    database: str,
    config: ReportConfig,
    *,
    period: Period | None = None,
    by: analysis.FunnelGroup | None = None,
    compare: Period | None = None,
    now: datetime | None = None,
    stages: StageOrder = DEFAULT_ORDER,
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE,
    source: analysis.Source = "summary",
) -> Answers:
    """Run every analysis query once and derive the report's answers, by the journey rules'
    ``stages`` and ``purchase_stage``; ConfigError for a KPI target naming another stage.

    ``source="raw"``: every answer the report summaries serve is read from ``touchpoints``
    instead (:data:`sinks.analysis.Source`), the same rows more slowly — for the benchmark
    and the tests that compare the two."""
    check_targets(config, stages)
    period = period or Period()
    check_stages(client, database, stages)
    # the funnel, its split by ``by`` and by persona (the persona cards): one read
    split = _funnels(client, database, config, period, (None, by, "persona"), stages=stages)
    brief = _brief(client, database, period, by, split, stages)
    heat = analysis.hour_of_week(client, database, period=None if period == Period() else period)
    best, worst = _slots(heat)
    funnel_by_persona = split["persona"]
    personas = analysis.persona_stats(client, database, period=period, stages=stages, source=source)
    # Every model by channel and by campaign in one query; the channel table and the spend
    # returns use its linear credit (linear does not depend on the half-life).
    credit = analysis.attribution_all(
        client,
        database,
        period=period,
        lookback=config.attribution_lookback,
        half_life=config.attribution_half_life,
        source=source,
    )
    attribution: dict[str, list[analysis.AttributionShare]] = {
        model: credit[(model, "channel")] for model in analysis.ATTRIBUTION_MODELS
    }
    weekly = analysis.weekly_sales(client, database, period=period, source=source)
    answers = Answers(
        database=database,
        period=period,
        by=by,
        funnel=brief.funnel,
        funnel_by=brief.funnel_by,
        dropoffs=brief.dropoffs,
        diagnosis=analysis.dropoff_diagnosis(client, database, period=period, stages=stages),
        exits=brief.exits,
        heat=heat,
        best_slots=best,
        worst_slots=worst,
        channels=analysis.channel_effectiveness(
            client,
            database,
            period=period,
            lookback=config.attribution_lookback,
            linear=credit[("linear", "channel")],
            source=source,
        ),
        promos=analysis.promo_effectiveness(client, database, period=period, source=source),
        attribution=attribution,
        attribution_campaigns=credit[("linear", "campaign")],
        spend_by_campaign=analysis.spend_returns(
            client,
            database,
            by="campaign",
            period=period,
            lookback=config.attribution_lookback,
            shares=credit[("linear", "campaign")],
        ),
        spend_by_channel=analysis.spend_returns(
            client,
            database,
            by="channel",
            period=period,
            lookback=config.attribution_lookback,
            shares=credit[("linear", "channel")],
        ),
        high_intent=analysis.high_intent(
            client, database, limit=25, stages=stages, purchase_stage=purchase_stage
        ),
        why_not=analysis.why_not_buy_or_stay(
            client,
            database,
            period=period,
            stages=stages,
            purchase_stage=purchase_stage,
            source=source,
        ),
        cohorts=list(analysis.retention_cohorts(client, database, period=period, source=source)),
        tracker=analysis.buyer_tracker(
            client, database, lapsed_after=config.lapsed_after, limit=25, source=source
        ),
        weekly=weekly,
        flow=analysis.transition_flow(client, database, period=period, stages=stages),
        personas=_persona_cards(config, personas, funnel_by_persona, stages, purchase_stage),
        stages=stages,
        purchase_stage=purchase_stage,
        generated_at=now,
    )
    current = _headline(client, database, period, brief.funnel, stages, personas, weekly)
    if compare is not None:
        previous = _headline(
            client,
            database,
            compare,
            _funnel(client, database, config, compare, stages=stages),
            stages,
            source=source,
        )
        answers.compare_period = compare
        answers.comparison = [
            Comparison(name, value, previous.get(name)) for name, value in current.items()
        ]
    targets = config.targets
    wanted: list[tuple[str, float | None]] = [
        ("revenue", targets.revenue),
        ("purchases", targets.purchases),
        ("buyers reached", targets.buyers_reached),
        ("csat", targets.csat),
        ("nps", targets.nps),
    ] + [(f"conversion % {stage}", value) for stage, value in targets.conversion_pct.items()]
    answers.targets = [
        TargetProgress(name, current.get(name), float(target))
        for name, target in wanted
        if target is not None
    ]
    return answers
