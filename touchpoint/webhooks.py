"""Fired triggers → signed webhooks: ``touchpoint webhooks``."""

from __future__ import annotations

import threading
import tomllib
from pathlib import Path

from pydantic import ValidationError

from ingest.topics import ensure_topics
from schemas.errors import ConfigError
from schemas.settings import Settings
from schemas.topics import Topics
from schemas.webhooks import WebhooksConfig
from sinks.webhooks import WebhookDeliverer, WebhookMetrics, WebhookStats
from sinks.webhooks import run_webhooks as deliver_triggers
from touchpoint.kafka import metrics_registry

__all__ = ["load_webhooks", "run_webhooks"]


def load_webhooks(path: Path | None) -> WebhooksConfig:
    """The webhook destinations file (TOML, :class:`schemas.webhooks.WebhooksConfig`)."""
    if path is None:
        raise ConfigError("no webhooks file: pass --file or set TOUCHPOINT_WEBHOOKS_FILE")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read webhooks file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return WebhooksConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def run_webhooks(
    settings: Settings, stop: threading.Event, *, idle_timeout: float | None = None
) -> WebhookStats:
    """Deliver fired triggers to the configured webhooks until ``stop``; returns the stats."""
    config = load_webhooks(settings.webhooks_file)
    registry = metrics_registry(settings, "webhooks")
    metrics = WebhookMetrics(registry) if registry is not None else None
    topics = Topics(settings.kafka.topic_prefix)
    kafka = settings.kafka
    ensure_topics(
        kafka.bootstrap,
        {topics.triggers: kafka.partitions, topics.triggers_dlq: kafka.partitions},
        replication=kafka.replication,
    )
    deliverer = WebhookDeliverer(
        config.webhooks, observe=metrics.observe if metrics is not None else None
    )
    return deliver_triggers(
        kafka.bootstrap,
        topic=topics.triggers,
        dlq_topic=topics.triggers_dlq,
        group=kafka.webhook_group,
        deliverer=deliverer,
        stop=stop,
        idle_timeout=idle_timeout,
    )
