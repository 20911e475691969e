"""Runtime settings: read once at start from ``TOUCHPOINT_*`` environment variables and flags."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.duration import Duration

__all__ = ["ClickHouseSettings", "ProcessingSettings", "Settings"]


class ClickHouseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_CLICKHOUSE_", extra="ignore")

    url: str | None = None
    """``chdb:PATH`` (embedded, the default: ``chdb:<data dir>/clickhouse``) or ``http(s)://host:port``."""
    database: str = Field(default="touchpoint", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    user: str = "default"
    password: SecretStr = SecretStr("")
    insert_retries: int = Field(default=5, ge=0)
    retry_backoff: Duration = timedelta(milliseconds=200)


class ProcessingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", extra="ignore")

    rules_file: Path | None = None
    """Journey rules (TOML); the shipped default when unset."""
    allowed_lateness: Duration = timedelta(hours=2)
    """How far behind the newest event time an event may arrive and still count as in order."""
    dedup_window: Duration = timedelta(days=7)
    """How long (event time) event ids are remembered for de-duplication."""
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", extra="ignore")

    data_dir: Path = Path("touchpoint-data")
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)

    def clickhouse_url(self) -> str:
        return self.clickhouse.url or f"chdb:{self.data_dir / 'clickhouse'}"
