"""Outbound webhooks: where fired triggers are POSTed, and how hard to try.

The file (TOML, ``TOUCHPOINT_WEBHOOKS_FILE``) lists destinations::

    [[webhook]]
    name = "crm"
    url = "https://crm.example.com/hooks/touchpoint"
    secret_env = "CRM_WEBHOOK_SECRET"     # the signing secret, read from this variable
    triggers = ["cart-abandoned"]          # default: every trigger
    rate_per_second = 5
    max_attempts = 6
    backoff = "2s"                          # doubled per retry, up to backoff_max
    backoff_max = "5m"
    timeout = "10s"

Secrets never live in the file: a destination names the environment variable that
holds its secret, so the file can be committed and reviewed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas.duration import Duration
from schemas.errors import ConfigError

__all__ = ["WebhookDestination", "WebhooksConfig"]


class WebhookDestination(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    url: str
    secret_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    """The environment variable holding the HMAC-SHA256 signing secret."""
    triggers: tuple[str, ...] = ()
    """Trigger ids sent here (empty: all)."""
    rate_per_second: float = Field(default=10.0, gt=0, le=10_000)
    burst: int = Field(default=10, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff: Duration = timedelta(seconds=1)
    backoff_max: Duration = timedelta(minutes=5)
    timeout: Duration = timedelta(seconds=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url

    def wants(self, trigger_id: str) -> bool:
        return not self.triggers or trigger_id in self.triggers

    def secret(self) -> bytes:
        value = os.environ.get(self.secret_env)
        if not value:
            raise ConfigError(
                f"webhook {self.name}: the signing secret variable {self.secret_env} is not set"
            )
        return value.encode()


class WebhooksConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    webhooks: tuple[WebhookDestination, ...] = Field(alias="webhook", min_length=1)

    @field_validator("webhooks")
    @classmethod
    def _unique_names(
        cls, webhooks: tuple[WebhookDestination, ...]
    ) -> tuple[WebhookDestination, ...]:
        names = [webhook.name for webhook in webhooks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"webhook names used twice: {', '.join(repeated)}")
        return webhooks
