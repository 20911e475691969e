"""The report as one self-contained HTML file: inline CSS and SVG charts, nothing loaded
from the network, no script — it opens offline and prints well."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import Final

from sinks import columns
from sinks.analysis import ATTRIBUTION_MODELS, SpendReturn, spend_total
from sinks.answers import Answers
from sinks.columns import Column, Row

__all__ = ["render_html"]

_PALETTE: Final = ("#2563eb", "#f97316", "#16a34a", "#a855f7", "#dc2626", "#0891b2", "#ca8a04")
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CSS: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111827;
background:#f9fafb}h1{margin:0 0 4px}h2{margin:32px 0 8px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}.muted{color:#6b7280}.grid{display:grid;grid-template-columns:
repeat(auto-fit,minmax(320px,1fr));gap:16px}.card{background:#fff;border:1px solid #e5e7eb;
border-radius:8px;padding:12px 16px}table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}td.n{text-align:right;
font-variant-numeric:tabular-nums}svg{background:#fff;border:1px solid #e5e7eb;border-radius:8px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;
width:10px;height:10px;margin-right:4px}ul{margin:4px 0 8px 18px;padding:0}
"""


def _color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _num(value: float | Decimal | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            numeric = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
            if value is None:
                text = "–"
            elif isinstance(value, float | Decimal):
                text = _num(value, 2)
            else:
                text = str(value)
            cells.append(
                f'<td class="n">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">no rows</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _columns_table(spec: Sequence[Column[Row]], rows: Sequence[Row]) -> str:
    """``rows`` as a table of ``spec`` (:mod:`sinks.columns`), wide columns included; an
    empty text is shown as a dash, like a missing value."""
    return _table(
        [column.header for column in spec],
        [
            tuple(
                None if column.kind == "text" and value == "" else value
                for column, value in ((column, column.value(row)) for column in spec)
            )
            for row in rows
        ],
    )


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        f'<span><i style="background:{_color(i)}"></i>{escape(name)}</span>'
        for i, name in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def _svg(name: str, width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg data-chart="{name}" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def _funnel_chart(answers: Answers) -> str:
    rows = answers.funnel
    top = max((row.reached for row in rows), default=0) or 1
    width, bar, left = 760, 26, 130
    parts = []
    for i, row in enumerate(rows):
        y = 14 + i * (bar + 12)
        reached = (width - left - 90) * row.reached / top
        moved = (width - left - 90) * row.moved_on / top
        parts.append(
            f'<text x="8" y="{y + 18}" font-size="12">{escape(row.stage)}</text>'
            f'<rect x="{left}" y="{y}" width="{reached:.1f}" height="{bar}" fill="#bfdbfe"/>'
            f'<rect x="{left}" y="{y}" width="{moved:.1f}" height="{bar}" fill="{_color(0)}"/>'
            f'<text x="{left + reached + 6:.1f}" y="{y + 18}" font-size="12">{row.reached:,}'
            f"</text>"
        )
    height = 20 + len(rows) * (bar + 12)
    return _svg(
        "funnel", width, height, "".join(parts), "Stage funnel: reached (light) and moved on (dark)"
    )


def _dropoff_chart(answers: Answers) -> str:
    channels = sorted({d.channel for d in answers.dropoffs})
    dropped = {d.stage for d in answers.dropoffs}
    stages = [s for s in answers.stages if s in dropped]
    totals = {s: sum(d.buyers for d in answers.dropoffs if d.stage == s) for s in stages}
    top = max(totals.values(), default=0) or 1
    width, bar, left = 760, 26, 130
    parts = []
    for i, stage in enumerate(stages):
        y = 14 + i * (bar + 12)
        x = float(left)
        parts.append(f'<text x="8" y="{y + 18}" font-size="12">{escape(stage)}</text>')
        for c, channel in enumerate(channels):
            count = sum(
                d.buyers for d in answers.dropoffs if d.stage == stage and d.channel == channel
            )
            w = (width - left - 70) * count / top
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" '
                    f'fill="{_color(c)}"><title>{escape(channel)}: {count}</title></rect>'
                )
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 18}" font-size="12">{totals[stage]:,}</text>')
    height = 20 + max(1, len(stages)) * (bar + 12)
    return _legend(channels) + _svg(
        "dropoffs",
        width,
        height,
        "".join(parts),
        "Drop-offs by stage and channel of the last touch",
    )


def _flow_chart(answers: Answers) -> str:
    columns = ["(entry)", *answers.stages]
    width, height, node_w = 820, 300, 14
    step = (width - 60) / (len(columns) - 1)
    x_of = {name: 20 + i * step for i, name in enumerate(columns)}
    inflow: dict[str, int] = {}
    for flow in answers.flow:
        inflow[flow.to_stage] = inflow.get(flow.to_stage, 0) + flow.buyers
    inflow["(entry)"] = sum(f.buyers for f in answers.flow if f.from_stage == "(entry)")
    top = max(inflow.values(), default=0) or 1
    scale = (height - 60) / top
    parts = []
    for i, name in enumerate(columns):
        size = max(2.0, inflow.get(name, 0) * scale)
        parts.append(
            f'<rect x="{x_of[name]:.1f}" y="30" width="{node_w}" height="{size:.1f}" '
            f'fill="{_color(i)}"/><text x="{x_of[name]:.1f}" y="20" font-size="11">'
            f"{escape(name)}</text>"
        )
    offsets_out: dict[str, float] = {}
    offsets_in: dict[str, float] = {}
    for flow in sorted(
        answers.flow,
        key=lambda f: (
            columns.index(f.from_stage) if f.from_stage in columns else 0,
            answers.stages.rank.get(f.to_stage, -1),
        ),
    ):
        source, target = flow.from_stage, flow.to_stage
        if source not in x_of or target not in x_of:
            continue
        thickness = max(1.0, flow.buyers * scale)
        y0 = 30 + offsets_out.get(source, 0.0) + thickness / 2
        y1 = 30 + offsets_in.get(target, 0.0) + thickness / 2
        offsets_out[source] = offsets_out.get(source, 0.0) + thickness
        offsets_in[target] = offsets_in.get(target, 0.0) + thickness
        x0, x1 = x_of[source] + node_w, x_of[target]
        middle = (x0 + x1) / 2
        parts.append(
            f'<path d="M{x0:.1f},{y0:.1f} C{middle:.1f},{y0:.1f} {middle:.1f},{y1:.1f} '
            f'{x1:.1f},{y1:.1f}" stroke="{_color(columns.index(target))}" stroke-opacity="0.35" '
            f'stroke-width="{thickness:.1f}" fill="none"><title>{escape(source)} → '
            f"{escape(target)}: {flow.buyers:,}</title></path>"
        )
    return _svg(
        "flow",
        width,
        height,
        "".join(parts),
        "Stage-transition flow: how buyers moved between stages",
    )


def _heatmap(answers: Answers, kind: str) -> str:
    grid = {(day, hour): 0 for day in range(1, 8) for hour in range(24)}
    for cell in answers.heat:
        if cell.kind == kind:
            grid[(cell.day_of_week, cell.hour)] += cell.touches
    top = max(grid.values()) or 1
    size, left, top_margin = 18, 40, 22
    parts = [f'<text x="{left}" y="14" font-size="12">{escape(kind)}</text>']
    for (day, hour), touches in grid.items():
        shade = touches / top
        parts.append(
            f'<rect x="{left + hour * size}" y="{top_margin + (day - 1) * size}" '
            f'width="{size - 2}" height="{size - 2}" fill="rgb({int(239 - 202 * shade)},'
            f'{int(246 - 147 * shade)},{int(255 - 20 * shade)})"><title>{_DAYS[day - 1]} '
            f"{hour:02d}:00 UTC: {touches}</title></rect>"
        )
    for day in range(7):
        parts.append(
            f'<text x="4" y="{top_margin + day * size + 13}" font-size="11">{_DAYS[day]}</text>'
        )
    for hour in range(0, 24, 3):
        parts.append(
            f'<text x="{left + hour * size}" y="{top_margin + 7 * size + 12}" '
            f'font-size="10">{hour:02d}</text>'
        )
    return _svg(
        f"heatmap-{kind}",
        left + 24 * size + 8,
        top_margin + 7 * size + 18,
        "".join(parts),
        f"Hour-of-week heatmap of {kind} actions (UTC)",
    )


def _attribution_chart(answers: Answers) -> str:
    channels = sorted({share.key for shares in answers.attribution.values() for share in shares})
    values = {
        (model, share.key): float(share.revenue)
        for model, shares in answers.attribution.items()
        for share in shares
    }
    top = max(values.values(), default=0.0) or 1.0
    group_w, bar_w, height, base = 150, 24, 260, 220
    parts = []
    for g, channel in enumerate(channels):
        x0 = 40 + g * group_w
        for m, model in enumerate(ATTRIBUTION_MODELS):
            value = values.get((model, channel), 0.0)
            h = (base - 20) * value / top
            parts.append(
                f'<rect x="{x0 + m * bar_w}" y="{base - h:.1f}" width="{bar_w - 3}" '
                f'height="{h:.1f}" fill="{_color(m)}"><title>{escape(channel)}, '
                f"{model}: {value:,.0f}</title></rect>"
            )
        parts.append(f'<text x="{x0}" y="{base + 16}" font-size="12">{escape(channel)}</text>')
    width = 60 + max(1, len(channels)) * group_w
    return _legend(list(ATTRIBUTION_MODELS)) + _svg(
        "attribution", width, height, "".join(parts), "Revenue credited by channel, per model"
    )


def _weekly_chart(answers: Answers) -> str:
    weeks = answers.weekly
    top = max((float(w.revenue) for w in weeks), default=0.0) or 1.0
    bar_w, base, height = 22, 180, 210
    parts = []
    for i, week in enumerate(weeks):
        h = (base - 10) * float(week.revenue) / top
        parts.append(
            f'<rect x="{20 + i * bar_w}" y="{base - h:.1f}" width="{bar_w - 3}" '
            f'height="{h:.1f}" fill="{_color(2)}"><title>week of {week.week.date()}: '
            f"{float(week.revenue):,.0f} ({week.purchases} purchases)</title></rect>"
        )
        if i % 4 == 0:
            parts.append(
                f'<text x="{20 + i * bar_w}" y="{base + 16}" font-size="10">'
                f"{week.week.date().isoformat()[5:]}</text>"
            )
    return _svg(
        "weekly", 40 + max(1, len(weeks)) * bar_w, height, "".join(parts), "Revenue per week"
    )


def _persona_cards(answers: Answers) -> str:
    cards = []
    for card in answers.personas:
        stats = card.stats
        kpis = (
            f"<p><b>{stats.buyers:,}</b> buyers · <b>{stats.purchasers:,}</b> purchasers · "
            f"revenue <b>{_num(stats.revenue)}</b><br>web visits/week {stats.web_visits_per_week}"
            f" · CSAT {stats.csat if stats.csat is not None else '–'} · NPS "
            f"{stats.nps if stats.nps is not None else '–'} · prefers "
            f"{escape(stats.preferred_channel or '–')}</p>"
            if stats is not None
            else '<p class="muted">no buyers yet</p>'
        )

        def items(values: list[str]) -> str:
            return (
                "<ul>" + "".join(f"<li>{escape(v)}</li>" for v in values) + "</ul>"
                if values
                else '<p class="muted">–</p>'
            )

        cards.append(
            f'<div class="card persona"><h3>{escape(card.label)}</h3>'
            f'<p class="muted">{escape(card.description)}</p>{kpis}'
            f"<b>Pain points</b>{items(card.pain_points)}<b>Delights</b>{items(card.delights)}"
            f"<b>Growth opportunities</b>{items(card.growth)}</div>"
        )
    return f'<div class="grid">{"".join(cards)}</div>'


def _spend_table(rows: Sequence[SpendReturn], by: str) -> str:
    shown = [*rows, spend_total(rows)] if rows else []
    table = _columns_table(columns.spend_columns(by), shown)
    return f'<div class="card" data-table="spend-by-{by}"><h3>By {by}</h3>{table}</div>'


def render_html(answers: Answers) -> str:
    """The whole report as a single offline HTML document."""
    generated = (answers.generated_at or datetime.now(UTC)).isoformat(timespec="seconds")
    period = answers.period
    span = (
        f"{period.start.date() if period.start else 'the beginning'} to "
        f"{period.end.date() if period.end else 'now'}"
    )
    sections = [
        "<h2>Where do customers drop off?</h2>",
        _funnel_chart(answers),
        _columns_table(columns.FUNNEL, answers.funnel),
        "<h2>Drop-off by channel</h2>",
        _dropoff_chart(answers),
        _columns_table(columns.DIAGNOSIS, answers.diagnosis[:25]),
        "<h2>How buyers move between stages</h2>",
        _flow_chart(answers),
        "<h2>Where do they cancel and leave?</h2>",
        _columns_table(columns.EXITS, answers.exits),
        "<h2>When do they interact, click and book?</h2>",
        '<div class="grid">'
        + "".join(
            f'<div class="card">{_heatmap(answers, kind)}</div>'
            for kind in ("interact", "click", "book")
        )
        + "</div>",
        _table(
            ("channel", "kind", "busiest", "touches", "quietest", "touches"),
            [
                (b.channel, b.kind, b.label, b.touches, w.label, w.touches)
                for b, w in zip(answers.best_slots, answers.worst_slots, strict=True)
            ],
        ),
        "<h2>Which channels and promos work?</h2>",
        _columns_table(columns.CHANNELS, answers.channels),
        _columns_table(columns.PROMOS, answers.promos),
        "<h2>Attribution, five models side by side</h2>",
        _attribution_chart(answers),
        "<h2>What does a new buyer cost? Ad spend, CPA and ROAS</h2>",
        '<p class="muted">Linear attribution of the period\'s purchases: acquisitions are '
        "buyers' first purchases, revenue is every purchase. CPA = spend / acquisitions, "
        "ROAS = revenue / spend; – where there is no spend (or, for CPA, no acquisition)."
        + (
            ""
            if any(row.spend is not None for row in answers.spend_by_channel)
            else " No ad spend in this period: load an export with "
            "<code>touchpoint import ads-csv FILE</code>."
        )
        + "</p>",
        '<div class="grid">'
        + _spend_table(answers.spend_by_campaign, "campaign")
        + _spend_table(answers.spend_by_channel, "channel")
        + "</div>",
        "<h2>High intent now</h2>",
        '<p class="muted">'
        + (
            f"Buyers in {escape(answers.intent_stage)}, ranked by recent engagement."
            if answers.intent_stage
            else "None: the journey rules have no stage below a purchase stage."
        )
        + "</p>",
        _columns_table(columns.HIGH_INTENT, answers.high_intent),
        "<h2>Why new customers don't buy or stay</h2>",
        _columns_table(columns.WHY_NOT, answers.why_not[:25]),
        "<h2>Personas</h2>",
        _persona_cards(answers),
        "<h2>Buyer tracker</h2>",
        _columns_table(columns.TRACKER, answers.tracker),
        "<h2>Sales per week</h2>",
        _weekly_chart(answers),
        "<h2>Retention by first-purchase week</h2>",
        _table(
            ("cohort", "week", "buyers", "active", "retention %"),
            [
                (c.cohort_week.date().isoformat(), c.week, c.cohort_size, c.active, c.retention_pct)
                for c in answers.cohorts
            ],
        ),
    ]
    if answers.comparison:
        sections += [
            "<h2>Current vs previous period</h2>",
            _table(
                ("metric", "current", "previous", "change"),
                [(c.metric, c.current, c.previous, c.change) for c in answers.comparison],
            ),
        ]
    if answers.targets:
        sections += [
            "<h2>Progress against targets</h2>",
            _table(
                ("metric", "actual", "target", "progress %"),
                [(t.metric, t.actual, t.target, t.progress_pct) for t in answers.targets],
            ),
        ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Touchpoint journey report</title><style>{_CSS}</style></head><body>"
        f'<h1>Customer journey report</h1><p class="muted">Database '
        f"{escape(answers.database)} · event time {escape(span)} · generated {generated}</p>"
        + "".join(sections)
        + "</body></html>"
    )
