"""The analyst answers: ``touchpoint report`` (full and brief) and its report config."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from schemas.errors import ConfigError
from schemas.report_config import ReportConfig
from schemas.settings import Settings
from sinks.analysis import FunnelGroup, Period
from sinks.answers import Answers, Brief, gather, gather_brief
from sinks.clickhouse import Client
from touchpoint.config import clickhouse, rules_for

__all__ = ["brief_report", "full_report", "load_report_config"]


def load_report_config(path: Path | None) -> ReportConfig:
    """Personas and KPI targets for the report; the shipped default when ``path`` is None."""
    if path is None:
        text = resources.files("sinks").joinpath("default_report.toml").read_text("utf-8")
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read report config {path}: {exc.strerror}") from exc
    try:
        return ReportConfig.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"report config {path or 'default'} is invalid: {exc}") from exc


def full_report(
    settings: Settings,
    *,
    config_path: Path | None,
    start: datetime | None,
    end: datetime | None,
    by: FunnelGroup | None,
    compare: tuple[datetime | None, datetime | None] | None,
) -> Answers:
    """Gather every analyst answer (see sinks.answers), by the stages of the journey rules
    in use. The shipped report config's conversion targets name the shipped stages: under
    rules of one's own, those of other stages are left out; a config of one's own naming a
    stage the rules do not have is a ConfigError."""
    rules = rules_for(settings)
    config = load_report_config(config_path)
    if config_path is None:
        config = config.for_stages(rules.order)
    with clickhouse(settings) as client:
        return gather(
            client,
            settings.clickhouse.database,
            config,
            period=Period(start, end),
            by=by,
            compare=Period(*compare) if compare else None,
            now=datetime.now(UTC),
            stages=rules.order,
            purchase_stage=rules.purchase_stage,
        )


def brief_report(
    settings: Settings,
    client: Client,
    *,
    config_path: Path | None,
    start: datetime | None,
    end: datetime | None,
    by: FunnelGroup | None,
) -> Brief:
    """The funnel, drop-offs and exits of the full report (see sinks.answers.gather_brief),
    by the stages of the journey rules in use."""
    return gather_brief(
        client,
        settings.clickhouse.database,
        load_report_config(config_path),
        period=Period(start, end),
        by=by,
        stages=rules_for(settings).order,
    )
