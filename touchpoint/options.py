"""The option blocks several ``touchpoint`` commands share, each with its env-var twin."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "DATES",
    "ENV",
    "dead_letter_filters",
    "kafka_options",
    "metrics_option",
    "option",
    "rules_option",
    "sort_dir_option",
    "utc",
]

ENV = "TOUCHPOINT_"
DATES = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"])

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option read from ``TOUCHPOINT_<env>`` too, shown in ``--help``."""
    return click.option(*names, envvar=ENV + env, show_envvar=True, **kwargs)


def utc(value: datetime | None) -> datetime | None:
    """A date given on the command line, read as UTC."""
    return None if value is None else value.replace(tzinfo=UTC)


def _stacked(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, shown in ``--help`` in the order given."""

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


sort_dir_option = option(
    "--sort-dir",
    env="SORT_DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where an input too big for memory is sorted by event time (temporary "
    "files, removed after).  [default: the system temp dir]",
)

metrics_option = option(
    "--metrics-port",
    env="METRICS_PORT",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics on this port (0 = off).  [default: 0]",
)

kafka_options = _stacked(
    option(
        "--bootstrap",
        env="KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers.  [default: 127.0.0.1:9092]",
    ),
    option(
        "--partitions",
        env="KAFKA_PARTITIONS",
        type=click.IntRange(1, 10_000),
        help="Partitions of every pipeline topic.  [default: 6]",
    ),
)


def rules_option(
    help: str = "Journey rules (TOML).  [default: the shipped rules]",
) -> Callable[[F], F]:
    return option(
        "--rules",
        env="RULES_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help=help,
    )


dead_letter_filters = _stacked(
    click.option(
        "--reason",
        "reasons",
        multiple=True,
        help="Only this reason (e.g. unknown_channel); repeat for more.",
    ),
    click.option(
        "--source",
        help="Only sources matching this SQL LIKE pattern (e.g. 'day-3%', 'touchpoints.raw%').",
    ),
    click.option("--from", "start", type=DATES, help="Recorded at or after (UTC)."),
    click.option("--to", "end", type=DATES, help="Recorded before (UTC)."),
)
