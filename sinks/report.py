"""Terminal rendering of the analysis queries: plain-text tables, no dependencies."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sinks import columns
from sinks.analysis import FunnelGroup, FunnelRow, SpendReturn, spend_total
from sinks.answers import Answers, Brief
from sinks.columns import Column, Kind, Row, Value
from sinks.queries import DropoffCount, ExitCount

__all__ = [
    "render_answers",
    "render_brief",
    "render_columns",
    "render_dropoffs",
    "render_exits",
    "render_funnel",
    "render_funnel_by",
    "render_spend",
    "render_table",
]


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    title: str = "",
    *,
    numeric: Sequence[bool] | None = None,
) -> str:
    """A left/right-aligned text table; numbers (or the columns ``numeric`` says) align right."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    if numeric is None:
        numeric = [
            all(isinstance(row[index], int | float) or row[index] is None for row in rows)
            and bool(rows)
            for index in range(len(headers))
        ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(widths[index]) if numeric[index] else value.ljust(widths[index])
            for index, value in enumerate(values)
        ).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(headers))
    out.append("  ".join("-" * width for width in widths))
    out.extend(line(row) for row in cells)
    if not rows:
        out.append("(no rows)")
    return "\n".join(out)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _money(value: Decimal | float | None) -> str:
    return "-" if value is None else f"{float(value):,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _metric(metric: str, value: float | None) -> str:
    """A comparison or KPI value, formatted as the table it comes from shows it."""
    return _pct(value) if metric.startswith("conversion %") else _money(value)


def _cell(kind: Kind, value: Value) -> object:
    """A value of ``kind`` as the terminal shows it (ints and floats stay numbers: they
    align right)."""
    if kind in ("count", "number"):
        return value
    if kind == "text":
        return "-" if value is None or value == "" else str(value)
    number = None if value is None or isinstance(value, str) else value
    if kind == "money":
        return _money(number)
    if number is None:
        return "-"
    if kind == "amount":
        return f"{float(number):,.2f}"
    return _pct(float(number))  # pct, days: one decimal


def render_columns(columns: Sequence[Column[Row]], rows: Sequence[Row], title: str) -> str:
    """``rows`` as a table of ``columns`` (:mod:`sinks.columns`), wide columns left out."""
    shown = [column for column in columns if not column.wide]
    return render_table(
        [column.header for column in shown],
        [tuple(_cell(column.kind, column.value(row)) for column in shown) for row in rows],
        title,
    )


def render_funnel(rows: Sequence[FunnelRow]) -> str:
    """The stage funnel: reached, moved on (in the conversion window), dropped, timing."""
    return render_columns(
        columns.FUNNEL,
        rows,
        "Where do customers drop off? Stage funnel (conversion within the window)",
    )


def render_funnel_by(rows: Sequence[FunnelRow], by: FunnelGroup | None) -> str:
    return render_columns(columns.FUNNEL_BY, rows, f"Funnel by {by}")


def render_dropoffs(counts: Sequence[DropoffCount]) -> str:
    """Stages down, channels of the last touch before the drop across."""
    channels = sorted({count.channel for count in counts})
    by_stage: dict[str, dict[str, int]] = {}
    for count in counts:
        by_stage.setdefault(count.stage, {})[count.channel] = count.buyers
    rows = [
        (stage, sum(cells.values()), *(cells.get(channel, 0) for channel in channels))
        for stage, cells in by_stage.items()
    ]
    return render_table(
        ("stage", "dropped", *channels),
        rows,
        "Drop-offs by stage × channel of the last touch before the drop",
    )


def render_exits(counts: Sequence[ExitCount]) -> str:
    return render_columns(columns.EXITS, counts, "Exits by stage × channel")


def render_brief(brief: Brief) -> str:
    """``--brief``: the full report's funnel, split, drop-off and exit tables, nothing else."""
    blocks = [render_funnel(brief.funnel)]
    if brief.funnel_by:
        blocks.append(render_funnel_by(brief.funnel_by, brief.by))
    blocks.append(render_dropoffs(brief.dropoffs))
    blocks.append(render_exits(brief.exits))
    return "\n\n".join(blocks)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render_spend(rows: Sequence[SpendReturn], by: str) -> str:
    """Spend, new buyers, revenue, CPA and ROAS per campaign or channel, and the total.

    No spend (nothing imported, or 0): spend, CPA and ROAS are "-". Spend but no new buyer:
    CPA is "-", ROAS is revenue / spend (0.00 when nothing came back)."""
    shown = [*rows, spend_total(rows)] if rows else []
    return render_columns(
        columns.spend_columns(by),
        shown,
        f"What does a new buyer cost? Ad spend, CPA and ROAS by {by} "
        "(linear attribution of purchases in the period)",
    )


def _intent_title(stage: str | None) -> str:
    if stage is None:
        return "High intent now: none (the journey rules have no stage below a purchase stage)"
    return f"High intent now: buyers in {stage}, ready to contact"


def render_answers(answers: Answers) -> str:
    """Every answer of the report as terminal tables, in the order analysts ask them."""
    blocks: list[str] = [render_funnel(answers.funnel)]
    if answers.funnel_by:
        blocks.append(render_funnel_by(answers.funnel_by, answers.by))
    blocks.append(render_dropoffs(answers.dropoffs))
    blocks.append(
        render_columns(
            columns.DIAGNOSIS,
            answers.diagnosis[:20],
            "Drop-off diagnosis: last touch before the drop, and what came next",
        )
    )
    blocks.append(render_exits(answers.exits))
    blocks.append(
        render_table(
            ("channel", "kind", "busiest", "touches", "quietest", "touches"),
            [
                (best.channel, best.kind, best.label, best.touches, worst.label, worst.touches)
                for best, worst in zip(answers.best_slots, answers.worst_slots, strict=True)
            ],
            "When do they interact, click and book most and least? (hour of week)",
        )
    )
    blocks.append(render_columns(columns.CHANNELS, answers.channels, "Which channels work?"))
    blocks.append(render_columns(columns.PROMOS, answers.promos, "Which promos work?"))
    channels = sorted({share.key for shares in answers.attribution.values() for share in shares})
    rows = []
    for channel in channels:
        cells: list[object] = [channel]
        for model in answers.attribution:
            share = next((s for s in answers.attribution[model] if s.key == channel), None)
            cells.append(_money(share.revenue if share else 0))
        rows.append(cells)
    blocks.append(
        render_table(
            ("channel", *answers.attribution),
            rows,
            "Attribution of revenue by channel, five models",
        )
    )
    blocks.append(render_spend(answers.spend_by_campaign, "campaign"))
    blocks.append(render_spend(answers.spend_by_channel, "channel"))
    if not any(row.spend is not None for row in answers.spend_by_channel):
        blocks.append(
            "No ad spend in this period: load an ad-platform export with "
            "`touchpoint import ads-csv FILE` for CPA and ROAS."
        )
    blocks.append(
        render_columns(
            columns.HIGH_INTENT, answers.high_intent, _intent_title(answers.intent_stage)
        )
    )
    blocks.append(
        render_columns(
            columns.WHY_NOT, answers.why_not[:20], "Why don't new customers buy, or stay?"
        )
    )
    weeks = sorted({cell.week for cell in answers.cohorts})
    cohort_rows: dict[str, list[object]] = {}
    for cell in answers.cohorts:
        row = cohort_rows.setdefault(
            cell.cohort_week.date().isoformat(),
            [cell.cohort_week.date().isoformat(), cell.cohort_size] + ["-"] * len(weeks),
        )
        row[2 + weeks.index(cell.week)] = f"{cell.retention_pct:.0f}%"
    blocks.append(
        render_table(
            ("cohort", "buyers", *(f"w{w}" for w in weeks)),
            list(cohort_rows.values()),
            "Retention by first-purchase week",
        )
    )
    for card in answers.personas:
        stats = card.stats
        lines = [f"Persona: {card.label} ({card.name})"]
        if card.description:
            lines.append(f"  {card.description}")
        if stats is not None:
            lines.append(
                f"  buyers {stats.buyers}, purchasers {stats.purchasers}, revenue "
                f"{_money(stats.revenue)}, web visits/week {stats.web_visits_per_week}, "
                f"CSAT {stats.csat if stats.csat is not None else '-'}, NPS "
                f"{stats.nps if stats.nps is not None else '-'}, prefers "
                f"{stats.preferred_channel or '-'}"
            )
        lines.append("  pain points: " + ("; ".join(card.pain_points) or "-"))
        lines.append("  delights:    " + ("; ".join(card.delights) or "-"))
        lines.append("  growth:      " + ("; ".join(card.growth) or "-"))
        blocks.append("\n".join(lines))
    blocks.append(
        render_columns(
            columns.TRACKER, answers.tracker, "Buyer tracker (top 25 by reward over effort)"
        )
    )
    if answers.weekly:
        peak = max(answers.weekly, key=lambda w: w.revenue)
        dip = min(answers.weekly, key=lambda w: w.revenue)
        blocks.append(
            f"Sales peak: week of {peak.week.date()} ({_money(peak.revenue)}); "
            f"dip: week of {dip.week.date()} ({_money(dip.revenue)})"
        )
    if answers.comparison:
        blocks.append(
            render_table(
                ("metric", "current", "previous", "change"),
                [
                    (
                        c.metric,
                        _metric(c.metric, c.current),
                        _metric(c.metric, c.previous),
                        _metric(c.metric, c.change),
                    )
                    for c in answers.comparison
                ],
                "Current vs previous period",
            )
        )
    if answers.targets:
        blocks.append(
            render_table(
                ("metric", "actual", "target", "progress %"),
                [
                    (
                        t.metric,
                        _metric(t.metric, t.actual),
                        _metric(t.metric, t.target),
                        _pct(t.progress_pct),
                    )
                    for t in answers.targets
                ],
                "Progress against targets",
            )
        )
    return "\n\n".join(blocks)
