"""What the ``touchpoint`` commands print besides tables: progress bars, run summaries."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from processors.local import RunSummary
from schemas.duration import format_duration
from schemas.settings import CollectorSettings
from sinks import dead_letters, report, triggers
from touchpoint.options import ENV

__all__ = [
    "Phases",
    "collector_epilog",
    "command_name",
    "dead_letter_tables",
    "print_summary",
    "progress",
    "trigger_cause",
    "trigger_tables",
]


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    with click.progressbar(length=max(total, 1), label=label, file=sys.stderr, width=30) as bar:
        yield bar.update


class Phases:
    """One progress bar per phase (e.g. sorting, then processing), each from its first step.

    ``total`` (the bars' length) may be set after entering, before the first step.
    """

    def __init__(self, *labels: str, total: int = 0) -> None:
        width = max(len(label) for label in labels)
        self.labels = [label.ljust(width) for label in labels]
        self.total = total
        self._shown = ExitStack()
        self._bars: dict[int, Any] = {}

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shown.close()

    def step(self, phase: int) -> Callable[[int], None]:
        def advance(steps: int) -> None:
            if phase not in self._bars:
                self._shown.close()  # the previous phase is done
                self._bars[phase] = self._shown.enter_context(
                    click.progressbar(
                        length=max(self.total, 1),
                        label=self.labels[phase],
                        file=sys.stderr,
                        width=30,
                    )
                )
            self._bars[phase].update(steps)

        return advance


def command_name() -> str:
    """How the user can call this command again (the venv's script if it is not on PATH)."""
    script = Path(sys.executable).parent / "touchpoint"
    found = shutil.which("touchpoint")
    if found is not None and Path(found).resolve() == script.resolve():
        return "touchpoint"
    if script.exists():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return "touchpoint"


def print_summary(summary: RunSummary) -> None:
    counters = summary.counters
    if summary.resumed_from is not None:
        click.echo(
            f"Resumed {summary.resumed_journeys:,} journeys from run {summary.resumed_from} "
            "in this database."
        )
    for path, seq in summary.skipped:
        click.echo(f"Skipped {path}: run {seq} loaded the same content before.")
    click.echo(
        f"Read {summary.records:,} records: {counters.accepted:,} touchpoints, "
        f"{counters.duplicates:,} duplicates skipped, {counters.unclassified:,} unclassified, "
        f"{counters.late:,} late, {counters.dead_lettered:,} dead-lettered."
    )
    if counters.dead_letters:
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(counters.dead_letters.items())
        )
        click.echo(f"Dead letters by reason: {reasons} (table dead_letters).")
    if counters.held_back:
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(counters.held_back.items())
        )
        click.echo(
            f"Events that did not move the event time: {reasons} (stamped when received, "
            "or more than TOUCHPOINT_MAX_FUTURE_SKEW ahead)."
        )
    watermark = summary.watermark.isoformat() if summary.watermark else "none"
    click.echo(f"Drop-offs judged: {counters.dropoffs:,}; event-time watermark {watermark}.")
    if counters.triggers or counters.retractions:
        click.echo(
            f"Triggers fired: {counters.triggers:,}, retracted: {counters.retractions:,} "
            "(table journey_triggers; `touchpoint triggers` lists them)."
        )
    if counters.merges:
        click.echo(
            f"Journeys merged into another id's person: {counters.merges:,} "
            "(table identity_links; `touchpoint identity show ID`)."
        )


def collector_epilog() -> str:
    """Every other collector setting with its env var and default, read from the model."""

    lines = ["\b", "Settings (environment only; meanings in docs/collector.md):"]
    for name, field in CollectorSettings.model_fields.items():
        if name in ("host", "port"):
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, timedelta):
            shown = format_duration(default)
        elif isinstance(default, SecretStr) or default is None:
            shown = "unset"
        else:
            shown = json.dumps(default)
        lines.append(f"  {ENV}COLLECTOR_{name.upper():<23} {shown}")
    return "\n".join(lines)


def trigger_cause(row: triggers.StoredTrigger) -> str:
    payload = json.loads(row.payload)
    match row.kind:
        case "stage_move":
            return (
                f"{payload.get('from_stage') or 'entry'} -> {row.stage} ({payload['event_type']})"
            )
        case "dropoff":
            return f"no progress past {row.stage} (last: {payload['last_touch_event_type'] or '-'})"
        case "exit":
            return f"{payload['exit_kind']} at {payload['stage'] or '-'}"
        case "high_intent":
            return f"{payload['score']} touches in {row.stage} ({payload['event_type']})"
    return row.kind


def dead_letter_tables(found: Sequence[dead_letters.StoredDeadLetter], limit: int) -> list[str]:
    """``touchpoint dead-letters list``: counts by reason and replay outcome, then the oldest
    ``limit`` one by one."""
    counts = Counter((letter.reason, letter.last_outcome or "not replayed") for letter in found)
    tables = [
        report.render_table(
            ("reason", "replay", "dead letters"),
            [(reason, outcome, count) for (reason, outcome), count in sorted(counts.items())],
            title=f"{len(found):,} dead letters",
        )
    ]
    if limit and found:
        tables.append(
            report.render_table(
                ("recorded at", "reason", "source", "position", "replay", "detail"),
                [
                    (
                        letter.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
                        letter.reason,
                        letter.source,
                        letter.position,
                        letter.last_outcome or "-",
                        letter.detail[:80],
                    )
                    for letter in found[:limit]
                ],
                title=f"The oldest {min(limit, len(found)):,}",
            )
        )
    return tables


def trigger_tables(
    counted: Sequence[triggers.TriggerCount],
    shown: Sequence[triggers.StoredTrigger],
    *,
    limit: int,
    retractions: bool,
) -> list[str]:
    """``touchpoint triggers``: counts per trigger, then the latest firings one by one."""
    tables = [
        report.render_table(
            ("trigger", "on", "fired", "retracted", "buyers", "latest"),
            [
                (
                    count.trigger_id,
                    count.kind,
                    count.fired,
                    count.retracted,
                    count.buyers,
                    "-" if count.last_fired_at is None else f"{count.last_fired_at:%Y-%m-%d %H:%M}",
                )
                for count in counted
            ],
            title=f"{sum(count.fired for count in counted):,} firings",
        )
    ]
    if limit and shown:
        tables.append(
            report.render_table(
                ("fired at", "trigger", "buyer", "cause", "channel", "campaign", "retracted"),
                [
                    (
                        f"{row.fired_at:%Y-%m-%d %H:%M:%S}",
                        row.trigger_id,
                        row.buyer_id,
                        trigger_cause(row),
                        row.channel or "-",
                        row.campaign or "-",
                        "yes" if row.is_retraction else "",
                    )
                    for row in shown
                ],
                title=f"The latest {len(shown):,}" + (" retractions" if retractions else ""),
            )
        )
    return tables
