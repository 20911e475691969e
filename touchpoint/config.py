"""Settings → the objects every command starts from: settings, journey rules, the processor,
a ClickHouse client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from processors.classify import load_rules
from processors.journey_processor import JourneyProcessor
from schemas.errors import ConfigError
from schemas.rules import JourneyRules
from schemas.settings import (
    ClickHouseSettings,
    CollectorSettings,
    KafkaSettings,
    ProcessingSettings,
    Settings,
)
from sinks.clickhouse import Client, connect, describe_target
from sinks.migrate import apply_migrations

__all__ = ["build_processor", "clickhouse", "load_settings", "rules_for", "target_description"]

_PROCESSING_KEYS = frozenset(
    {"rules_file", "allowed_lateness", "dedup_window", "max_future_skew", "batch_size"}
)


def load_settings(**overrides: Any) -> Settings:
    """Settings from ``TOUCHPOINT_*`` env vars, with explicit (flag) values on top.

    ``clickhouse_<name>`` keys go to :class:`ClickHouseSettings`, processing keys to
    :class:`ProcessingSettings`, ``kafka_<name>`` to :class:`KafkaSettings`, ``collector_<name>``
    to :class:`CollectorSettings`, ``data_dir`` to :class:`Settings`; None means "not given".
    """
    given = {key: value for key, value in overrides.items() if value is not None}

    def section(prefix: str) -> dict[str, Any]:
        return {
            key.removeprefix(prefix): value
            for key, value in given.items()
            if key.startswith(prefix)
        }

    clickhouse, kafka, collector = section("clickhouse_"), section("kafka_"), section("collector_")
    processing = {key: value for key, value in given.items() if key in _PROCESSING_KEYS}
    top = {
        key: value
        for key, value in given.items()
        if key in ("data_dir", "metrics_port", "metrics_host", "webhooks_file")
    }
    try:
        return Settings(
            **top,
            clickhouse=ClickHouseSettings(**clickhouse),
            kafka=KafkaSettings(**kafka),
            collector=CollectorSettings(**collector),
            processing=ProcessingSettings(**processing),
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc


def rules_for(settings: Settings) -> JourneyRules:
    return load_rules(settings.processing.rules_file)


def build_processor(settings: Settings, rules: JourneyRules) -> JourneyProcessor:
    processing = settings.processing
    if processing.dedup_window < processing.allowed_lateness:
        raise ConfigError("TOUCHPOINT_DEDUP_WINDOW must be at least TOUCHPOINT_ALLOWED_LATENESS")
    return JourneyProcessor(
        rules,
        allowed_lateness=processing.allowed_lateness,
        dedup_window=processing.dedup_window,
        max_future_skew=processing.max_future_skew,
        stitch_identities=processing.stitch_identities,
        max_person_ids=processing.identity_max_ids,
    )


@contextmanager
def clickhouse(settings: Settings, *, migrate: bool = True) -> Iterator[Client]:
    """A connected (and migrated) ClickHouse client, closed on exit."""
    client = connect(settings.clickhouse_url(), settings.clickhouse)
    try:
        if migrate:
            apply_migrations(client, settings.clickhouse.database)
        yield client
    finally:
        client.close()


def target_description(settings: Settings) -> str:
    return f"{describe_target(settings.clickhouse_url())}, database {settings.clickhouse.database}"
