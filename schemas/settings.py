"""Runtime settings: read once at start from ``TOUCHPOINT_*`` environment variables and flags."""

from __future__ import annotations

import json
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.duration import Duration

__all__ = [
    "ClickHouseSettings",
    "CollectorSettings",
    "KafkaSettings",
    "ProcessingSettings",
    "Settings",
]


class ClickHouseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_CLICKHOUSE_", extra="ignore")

    url: str | None = None
    """``chdb:PATH`` (embedded, the default: ``chdb:<data dir>/clickhouse``) or ``http(s)://host:port``."""
    database: str = Field(default="touchpoint", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    user: str = "default"
    password: SecretStr = SecretStr("")
    insert_retries: int = Field(default=5, ge=0)
    retry_backoff: Duration = timedelta(milliseconds=200)


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    partitions: int = Field(default=6, ge=1, le=10_000)
    """Partitions of every topic the pipeline creates (raw and outputs alike)."""
    replication: int = Field(default=1, ge=1, le=10)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Prepended to every topic name (e.g. ``staging.``), so pipelines can share a cluster."""
    sink_group: str = "touchpoint-sink"
    webhook_group: str = "touchpoint-webhooks"
    """Consumer group of `touchpoint webhooks` (trigger deliveries)."""
    app_id: str = "touchpoint"
    """Faust app id: the workers' consumer group and transactional-id prefix."""
    store: Literal["memory", "rocksdict"] = "memory"
    """Where a worker keeps its partitions' journeys: a dict, or a local RocksDB (extra
    ``rocksdict``) for more journeys than fit in memory. The durable copy is in Kafka."""
    store_dir: Path = Path("touchpoint-data/worker-state")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    """``at_least_once`` is for experiments only: a crash can then repeat output rows."""
    pack_events: int = Field(default=64, ge=1, le=10_000)
    """Touchpoints per raw Kafka record that `touchpoint produce` writes (a pack); 1 sends
    one Touchpoint per record, keyed by buyer id (the classic form)."""
    worker_batch: int = Field(default=500, ge=1, le=100_000)
    """Raw records a worker takes at once (state and rows are sent once per buyer per batch)."""
    worker_wait: float = Field(default=0.2, gt=0)
    """Seconds a worker waits to fill a batch before handling what it has."""
    stitch_identities: bool = False
    """The workers stitch identities across partitions (``TOUCHPOINT_STITCH_IDENTITIES`` must
    be on too; docs/journeys.md). Off by default until its cost under a steady load is
    measured: the soak with it on drained 108 s after the load instead of under 60 s."""
    sink_batch_rows: int = Field(default=20_000, ge=1)
    sink_batch_seconds: float = Field(default=2.0, gt=0)
    sink_session_timeout: Duration = Field(
        default=timedelta(seconds=10), ge=timedelta(seconds=6), le=timedelta(minutes=30)
    )
    """How long the group waits for a sink that stopped heartbeating (killed, host lost)
    before its partitions move: it bounds a killed sink's restart. Within the broker's
    ``group.min/max.session.timeout.ms`` (6 s – 30 min by default)."""
    sink_instance_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$"
    )
    """Static group membership (KIP-345): a restarted sink with the same id takes its
    partitions back at once, without a rebalance. Unique per sink process; unset = dynamic."""
    sink_retry_max: Duration = Field(default=timedelta(seconds=30), gt=timedelta(0))
    """Longest wait between two attempts to write a batch ClickHouse refused (the sink
    retries for as long as it takes, doubling the wait from 1 s up to this)."""


class CollectorSettings(BaseSettings):
    """The HTTP collector: where it listens, who may send, and how vendors prove who they are."""

    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_COLLECTOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Source name → key (JSON). The name binds the key to what it may call: ``segment``
    (or ``segment:NAME``) is a Segment write key, accepted only as the HTTP Basic user of
    the Segment calls; ``ads`` (or ``ads:NAME``) only on ``/v1/webhooks/ads``; any other
    name is an API key for ``/v1/touchpoints`` only (``Authorization: Bearer KEY``)."""
    segment_trust_revenue: bool = False
    """The Segment write key is public (it ships in web pages), so what it sends is marked
    ``origin=browser`` and its revenue kept as ``properties.claimed_revenue``; true makes
    that revenue the touchpoint's ``revenue`` (e.g. when only your servers send Segment)."""
    sendgrid_public_key: SecretStr | None = None
    """SendGrid's signed-event-webhook verification key (base64 DER, from Mail Settings)."""
    mailgun_signing_key: SecretStr | None = None
    twilio_auth_token: SecretStr | None = None
    zendesk_signing_secret: SecretStr | None = None
    public_url: str | None = None
    """The URL vendors call (``https://collect.example.com``, with any path prefix the proxy
    strips); Twilio signs the full URL."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Addresses or networks (comma-separated, e.g. ``10.0.0.0/8,127.0.0.1``) of reverse
    proxies whose X-Forwarded-Proto/Host/Prefix give the URL a vendor called."""
    max_body_bytes: int = Field(default=5_000_000, ge=1024)
    signature_tolerance: Duration = timedelta(minutes=5)
    """How old a signed timestamp may be (replay protection)."""
    replay_cache_size: int = Field(default=100_000, ge=1)
    """Mailgun tokens remembered (per process, for the signature tolerance) to refuse replays."""
    hash_pii: bool = False
    """Hash email addresses and phone numbers before they leave the collector."""
    pii_salt: SecretStr = SecretStr("")
    produce_timeout: Duration = timedelta(seconds=10)
    header_timeout: Duration = timedelta(seconds=10)
    """A connection must deliver a request's line and headers this soon after it opens (or
    after the previous response); idle keep-alive connections close after this too."""
    read_timeout: Duration = timedelta(seconds=30)
    """A request's body must arrive within this, once its headers have (else 408)."""
    max_connections: int = Field(default=512, ge=1, le=1_000_000)
    """Open connections at most; one more is answered 503 and closed at once."""
    shutdown_timeout: Duration = timedelta(seconds=5)
    """On SIGTERM: how long requests in flight may still finish (then the collector exits)."""

    @field_validator("api_keys")
    @classmethod
    def _distinct_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        seen: dict[str, str] = {}
        for source, key in keys.items():
            secret = key.get_secret_value()
            if not secret.strip():
                raise ValueError(f"the API key of source {source!r} is empty")
            if secret in seen:
                raise ValueError(
                    f"sources {seen[secret]!r} and {source!r} have the same key; "
                    "a key is bound to one source"
                )
            seen[secret] = source
        return keys

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ip_network(network, strict=False)  # ValueError names the bad entry
        return value


class ProcessingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", extra="ignore")

    rules_file: Path | None = None
    """Journey rules (TOML); the shipped default when unset."""
    allowed_lateness: Duration = timedelta(hours=2)
    """How far behind the newest event time an event may arrive and still count as in order."""
    dedup_window: Duration = timedelta(days=7)
    """How long (event time) event ids are remembered for de-duplication."""
    max_future_skew: Duration = timedelta(hours=1)
    """An event more than this after its own receipt, or after the clock, is folded but
    does not move the event-time watermark (nor does one stamped with its receive time)."""
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    stitch_identities: bool = True
    """Fold the journeys of ids an event links (anonymous_id, properties.aliases) into one
    person's (embedded runs; the Kafka workers also need ``TOUCHPOINT_KAFKA_STITCH_IDENTITIES``)."""
    identity_max_ids: int = Field(default=50, ge=2, le=10_000)
    """A person never gets more ids than this: a link past it is refused (dead letter
    ``identity_cap``) — a shared device or mailbox would otherwise join everyone."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", extra="ignore")

    data_dir: Path = Path("touchpoint-data")
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Serve Prometheus /metrics on this port (workers and sinks; 0 = do not serve)."""
    metrics_host: str = "127.0.0.1"
    webhooks_file: Path | None = None
    """Webhook destinations for fired triggers (TOML, see schemas.webhooks)."""
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)

    def clickhouse_url(self) -> str:
        return self.clickhouse.url or f"chdb:{self.data_dir / 'clickhouse'}"
