"""Terminal rendering of the analysis queries: plain-text tables, no dependencies."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from sinks.queries import DropoffCount, ExitCount, FunnelStep

__all__ = ["render_dropoffs", "render_exits", "render_funnel", "render_table"]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A left/right-aligned text table; numbers align right."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
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


def render_funnel(steps: Sequence[FunnelStep], by_label: str | None = None) -> str:
    blocks = []
    for group, group_steps in groupby(steps, key=lambda step: step.group):
        rows = [
            (
                step.stage.value,
                step.reached,
                step.moved_on,
                step.dropped,
                step.in_progress,
                step.conversion_pct,
            )
            for step in group_steps
        ]
        title = "Stage funnel" if by_label is None else f"Stage funnel — {by_label} = {group}"
        blocks.append(
            render_table(
                ("stage", "reached", "moved on", "dropped", "in progress", "conversion %"),
                rows,
                title,
            )
        )
    if not blocks:
        blocks.append(render_table(("stage", "reached"), [], "Stage funnel"))
    return "\n\n".join(blocks)


def render_dropoffs(counts: Sequence[DropoffCount]) -> str:
    """Stages down, channels of the last touch before the drop across."""
    channels = sorted({count.channel for count in counts})
    by_stage: dict[str, dict[str, int]] = {}
    for count in counts:
        by_stage.setdefault(count.stage.value, {})[count.channel] = count.buyers
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
    return render_table(
        ("stage", "exit", "channel", "exits"),
        [(count.stage, count.kind, count.channel, count.exits) for count in counts],
        "Exits by stage × channel",
    )
